"""Speed and memory benchmarks of the engine, and the set-up of the peer libraries they compare against.

    python -m benchmarks.bench            # adaptation, comparison and meta-step times (benchmarks/bench.py)
    python -m benchmarks.bench_floor      # how much of an adaptation is the convolution kernels
    python -m benchmarks.bench_grouped    # stacked networks as one grouped convolution
    python -m benchmarks.bench_backbones  # stride-2 against max-pooling Conv-4
    bash benchmarks/bench_peers.sh        # .venv-bench with learn2learn and higher (benchmarks/peers.py)

Not part of the library: nothing under ``engine/`` imports from here.
"""

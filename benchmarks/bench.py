"""How fast are adaptation and meta-training, against learn2learn, higher and a naive reference?

    python -m benchmarks.bench [--json FILE] [--repeats N] [--threads 1,2] [--quick] [--skip-peers] [--device cuda]
                               [--sections adaptation,compare,workers,meta,peers] [--shapes 5w1s,5w5s,20w1s]

With the peers: ``bash benchmarks/bench_peers.sh`` once (creates ``.venv-bench``), then
``.venv-bench/bin/python -m benchmarks.bench``. In ``.venv`` the peers are reported unavailable and
everything else still runs.

Measures, in one run on one machine, per thread count (``--threads``):

1. adaptation latency of every registered algorithm (``engine.learners.LEARNERS``: a new one is
   included without edits) at 5-way 1-shot, 5-way 5-shot and 20-way 1-shot: ``learner.adapt``
   with 10 inner steps plus ``predict_proba`` on 20 queries; and all algorithms on the same task
   as the app runs them (``engine.compare.compare``), among them the app's default set (every
   algorithm with its own test-time steps) with and without ``engine.batched``'s batched inner loop;
   each row with its FLOPs and the fraction of the machine's measured peak (a large float32 matrix
   product on the same threads, ``benchmarks.flops``) it runs at;
2. meta-training step time (zero_grad + meta_loss + backward + optimizer step) and peak memory of
   second-order MAML (32 tasks of 5-way 1-shot with one inner step, and the configuration
   models/train.sh trains with), first-order MAML, Reptile and ProtoNet; and the latency and memory
   budgets (``BUDGETS``) those figures are checked against;
3. the same 5-way 1-shot adaptation and MAML meta-step done by the naive reference (deep-copied
   ``nn.Module`` + ``torch.autograd.grad``), learn2learn and higher on the same weights and tasks
   (``benchmarks.peers``), each as a ratio to ours measured in the same run, interleaved call by call.

Learners are randomly initialised 64-channel networks (timings do not depend on trained weights),
each on the backbone of its shipped checkpoint (``models/<algorithm>/model.json``: ProtoNet's is the
max-pooling Conv-4, the others the stride-2 one), so the figures are those of the networks the app
adapts; ``--uniform-backbone`` puts every algorithm on the stride-2 Conv-4. The peers always time
MAML's network. Tasks are synthetic class-dependent blobs. Figures are medians over ``--repeats`` runs after
warm-up; the machine may be shared, so the ratios within one run are the figures that count.
Peak memory is measured in a fresh subprocess per configuration (torch's CPU allocations are
invisible to tracemalloc): the peak resident set size (``VmHWM``) of the whole process, and the
step's own peak, i.e. the peak during its first two steps over the resident size just before
them (the high-water mark is reset through ``/proc/self/clear_refs``). On CUDA,
``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks.flops import count_flops, measured_peak, peak_fraction
from engine import batched, kernels
from engine.data.tasks import Task
from engine.checkpoint import CheckpointError, read_metadata
from engine.device import cpu_model
from engine.learners import LEARNERS, AdaptSettings, Learner
from engine.nets import BackboneConfig
from engine.paths import REPO_ROOT

ADAPT_STEPS = 10
QUERIES = 20
CHANNELS = 64
INNER_LR = 0.4
SHAPES: dict[str, tuple[int, int]] = {"5w1s": (5, 1), "5w5s": (5, 5), "20w1s": (20, 1)}
# The parts of a run (--sections): the adaptation table, the comparisons on one thread, the comparisons
# with two workers, the meta-training steps and the peers.
SECTIONS = ("adaptation", "compare", "workers", "meta", "peers")
MB = 1024 * 1024


@dataclass(frozen=True)
class MetaSpec:
    """One meta-training configuration to time."""

    label: str
    algorithm: str
    tasks: int
    ways: int
    shots: int
    queries: int  # per class
    inner_steps: int | None  # None: the learner has no inner loop

    def describe(self) -> str:
        steps = "" if self.inner_steps is None else f", {self.inner_steps} inner step{'s' * (self.inner_steps > 1)}"
        return f"{self.tasks} x {self.ways}w{self.shots}s, {self.queries} query/class{steps}"


# Second-order MAML on 32 tasks of 5-way 1-shot, 1 query per class, 1 inner step (as in
# benchmarks.bench_backbones), the same batch for FOMAML, Reptile and ProtoNet, and the
# configurations models/train.sh actually trains MAML and ProtoNet with.
META_SPECS: tuple[MetaSpec, ...] = (
    MetaSpec("maml (1 inner step)", "maml", 32, 5, 1, 1, 1),
    MetaSpec("maml (models/train.sh)", "maml", 16, 5, 1, 5, 2),
    MetaSpec("fomaml", "fomaml", 32, 5, 1, 1, 1),
    MetaSpec("reptile", "reptile", 32, 5, 1, 1, 1),
    MetaSpec("protonet", "protonet", 32, 5, 1, 1, None),
    MetaSpec("protonet (models/train.sh)", "protonet", 1, 60, 1, 5, None),
)
PEER_META_SPEC = META_SPECS[0]


@dataclass(frozen=True)
class Budget:
    """A latency, speed-up or memory limit a benchmark figure is checked against (reported, not a unit test)."""

    description: str
    key: str  # where the figure is in the results: see ``budget_values``
    limit: float
    at_least: bool = False  # True: the figure must be >= limit (a speed-up ratio)


BUDGETS: tuple[Budget, ...] = (
    Budget("one gradient-based 10-step 5w1s adaptation + prediction (maml) <= 30 ms", "adapt.maml.5w1s", 30.0),
    Budget("... >= 6x faster than learn2learn", "peers.adapt.learn2learn", 6.0, at_least=True),
    Budget("all gradient-based algorithms + protonet on one 5w1s task <= 150 ms", "compare.5w1s.gradient+protonet",
           150.0),
    Budget("all gradient-based algorithms + protonet on one 5w5s task <= 400 ms", "compare.5w5s.gradient+protonet",
           400.0),
    Budget("... 5w1s with 2 workers <= 150 ms", "compare_workers.5w1s.gradient+protonet", 150.0),
    Budget("... 5w5s with 2 workers <= 400 ms", "compare_workers.5w5s.gradient+protonet", 400.0),
    # The same set as the app runs it by default (each model's own test-time steps): reported beside
    # the figures above, which hold every algorithm to 10 steps.
    Budget("... 5w1s, each model's own test-time steps (the app's default) <= 150 ms",
           "compare.5w1s.gradient+protonet defaults", 150.0),
    Budget("... 5w1s, the app's default steps, 2 workers <= 150 ms",
           "compare_workers.5w1s.gradient+protonet defaults", 150.0),
    # The app's default set: every algorithm with a checkpoint (all registered ones), each with its own
    # test-time steps, on one thread: what a user waits for after drawing a support example.
    Budget("the app's default set (all algorithms, each model's own test-time steps) on one 5w1s task, one thread "
           "<= 100 ms", "compare.5w1s.all defaults", 100.0),
    Budget("second-order MAML meta-step (32 x 5w1s, 1 query/class) <= 300 ms", "meta.maml (1 inner step).ms", 300.0),
    Budget("... with <= 1 GB peak memory (the step's own)", "meta.maml (1 inner step).step_peak_mb", 1024.0),
)


# -- measuring -------------------------------------------------------------------------------------

def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Samples:
    """Wall-clock and CPU times (ms) of repeated calls. On a shared machine the wall time includes
    waiting for a core; the process's CPU time is what the call costs an idle core (roughly: cores
    shared with other jobs also share caches)."""

    wall: list[float] = dataclasses.field(default_factory=list)
    cpu: list[float] = dataclasses.field(default_factory=list)

    @property
    def median_ms(self) -> float:
        return median(self.wall)

    @property
    def cpu_ms(self) -> float:
        return median(self.cpu)


def timed(fn: Callable[[], object], device: torch.device, samples: Samples) -> object:
    synchronise(device)
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    synchronise(device)
    samples.wall.append((time.perf_counter() - wall) * 1000.0)
    samples.cpu.append((time.process_time() - cpu) * 1000.0)
    return result


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int,
                device: torch.device) -> dict[str, Samples]:
    """Times of each function, called in turn (A, B, C, A, B, C...): a load spike on a shared
    machine then hits every contender alike, so ratios stay meaningful."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples = {name: Samples() for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            timed(fn, device, samples[name])
    return samples


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def synthetic_task(ways: int, shots: int, queries: int, seed: int, device: torch.device) -> Task:
    """Class-dependent blobs (something to learn, like the unit tests'), ``queries`` per class."""
    generator = torch.Generator().manual_seed(seed)
    centres = (torch.rand(ways, 1, 28, 28, generator=generator) > 0.8).float()

    def draw(count: int) -> torch.Tensor:
        noise = 0.3 * torch.rand(ways * count, 1, 28, 28, generator=generator)
        return (centres.repeat_interleave(count, dim=0) + noise).clamp(0, 1)

    labels = lambda count: torch.arange(ways).repeat_interleave(count)  # noqa: E731
    task = Task(support_x=draw(shots), support_y=labels(shots), query_x=draw(queries), query_y=labels(queries),
                ways=ways, shots=shots, class_names=tuple(str(i) for i in range(ways)))
    return task.to(device)


def adaptation_task(shape: str, device: torch.device) -> Task:
    """The ``shape`` (e.g. "5w1s") task with exactly ``QUERIES`` query images."""
    ways, shots = SHAPES[shape]
    task = synthetic_task(ways, shots, -(-QUERIES // ways), 0, device)
    return dataclasses.replace(task, query_x=task.query_x[:QUERIES], query_y=task.query_y[:QUERIES])


def build_learner(name: str, backbone: BackboneConfig, device: torch.device, **config: Any) -> Learner:
    cls = LEARNERS[name]
    fields = {field.name for field in dataclasses.fields(cls.config_class)}
    return cls(config=cls.config_class(**{k: v for k, v in config.items() if k in fields}), backbone=backbone,
               seed=0).to(device)


def shipped_backbones(models: Path | None, default: BackboneConfig) -> dict[str, BackboneConfig]:
    """Per registered algorithm, the backbone of its checkpoint in ``models`` (``<name>/model.json``)
    at ``default``'s width; ``default`` where there is none (or ``models`` is None)."""
    backbones: dict[str, BackboneConfig] = {}
    for name in sorted(LEARNERS):
        backbones[name] = default
        if models is None:
            continue
        try:
            shipped = BackboneConfig(**read_metadata(models / name / "model").get("backbone", {}))
        except (CheckpointError, OSError, TypeError):
            continue  # no readable checkpoint: the default network
        backbones[name] = dataclasses.replace(shipped, channels=default.channels)
    return backbones


def shipped_test_steps(models: Path, learners: dict[str, Learner]) -> dict[str, int | None]:
    """Per learner, the inner steps its shipped checkpoint in ``models`` adapts with by default (the
    app's default; None without an inner loop), else the fresh learner's own default."""
    from engine.checkpoint import build_learner as learner_from_metadata

    steps: dict[str, int | None] = {}
    for name, learner in learners.items():
        try:
            learner = learner_from_metadata(read_metadata(models / name / "model"))
        except (CheckpointError, OSError, TypeError, KeyError, ValueError):
            pass  # no readable checkpoint: the fresh learner's default
        steps[name] = learner.resolve_settings(None).steps
    return steps


def build_learners(backbones: dict[str, BackboneConfig], device: torch.device
                   ) -> tuple[dict[str, Learner], dict[str, str]]:
    """Every registered algorithm on its backbone, freshly initialised; those that cannot be built
    get a reason."""
    learners: dict[str, Learner] = {}
    failed: dict[str, str] = {}
    for name in sorted(LEARNERS):
        try:
            learners[name] = build_learner(name, backbones[name], device)
        except Exception as error:  # noqa: BLE001 - one algorithm's failure is a row, not a crash
            failed[name] = f"cannot be built without data or a checkpoint: {type(error).__name__}: {error}"
    return learners, failed


# -- 1. adaptation -----------------------------------------------------------------------------------

def adapt_and_predict(learner: Learner, task: Task) -> Callable[[], torch.Tensor]:
    settings = AdaptSettings(steps=ADAPT_STEPS)
    return lambda: learner.adapt(task.support_x, task.support_y, task.ways, settings).predict_proba(task.query_x)


def bench_adaptation(learners: dict[str, Learner], failed: dict[str, str], shapes: Sequence[str], repeats: int,
                     warmup: int, device: torch.device, peak_gflops: float | None = None) -> list[dict[str, Any]]:
    """Per shape, every algorithm timed in turn (``interleaved``): a slowdown of the shared machine
    during the run then hits all of them alike instead of whichever came last. Each cell also has
    the call's FLOPs (``benchmarks.flops.count_flops``, one untimed call) and the fraction of
    ``peak_gflops`` its median time runs at."""
    rows: dict[str, dict[str, Any]] = {name: {"algorithm": name} for name in sorted({*learners, *failed})}
    for name, reason in failed.items():
        rows[name]["error"] = reason
    for shape in shapes:
        task = adaptation_task(shape, device)
        runnable: dict[str, Callable[[], object]] = {}
        for name, learner in sorted(learners.items()):
            try:  # one call first: an algorithm that fails on this shape is a cell, not a crash
                adapted = learner.adapt(task.support_x, task.support_y, task.ways, AdaptSettings(steps=ADAPT_STEPS))
                rows[name][shape] = {"warning": adapted.warning}
                runnable[name] = adapt_and_predict(learner, task)
                rows[name][shape]["flops"] = count_flops(runnable[name])
            except Exception as error:  # noqa: BLE001
                rows[name][shape] = {"error": f"{type(error).__name__}: {error}"}
        for name, times in interleaved(runnable, repeats, warmup, device).items():
            rows[name][shape].update(median_ms=times.median_ms, cpu_ms=times.cpu_ms, min_ms=min(times.wall),
                                     peak_fraction=peak_fraction(rows[name][shape]["flops"], times.median_ms,
                                                                 peak_gflops))
    return list(rows.values())


def gradient_and_protonet(learners: dict[str, Learner]) -> list[str]:
    """The gradient-based algorithms (those with an inner loop) plus ProtoNet: the set the comparison budgets time."""
    return [name for name, learner in learners.items() if learner.has_inner_loop or name == "protonet"]


def bench_compare(learners: dict[str, Learner], shapes: Sequence[str], repeats: int, warmup: int,
                  device: torch.device, own_steps: dict[str, int | None], workers: int = 1,
                  peak_gflops: float | None = None) -> list[dict[str, Any]]:
    """``engine.compare.compare`` on one task with ``workers`` at once (the app runs one per core:
    ``workers=2`` on 2 cores with one PyTorch thread each), for every algorithm and, timed in turn
    with it, for the gradient-based algorithms plus ProtoNet alone (``gradient_and_protonet``), each
    with ``ADAPT_STEPS`` inner steps; and that set once more as the app runs it by default, with
    ``own_steps`` (each shipped checkpoint's test-time steps, ``subset_defaults``); and the app's default
    set, every algorithm with its own steps (``all_defaults``), also with ``engine.batched`` switched off
    (``all_defaults_per_learner``: each learner's inner loop on its own, as before batching).

    With one worker each figure also has its FLOPs (one untimed call) and the fraction of
    ``peak_gflops`` it runs at (with more workers the peak of one thread is not the yardstick)."""
    from engine.compare import compare

    subset = gradient_and_protonet(learners)
    own_settings = {name: AdaptSettings(steps=own_steps.get(name)) for name in learners}
    rows = []
    for shape in shapes:
        task = adaptation_task(shape, device)
        settings = AdaptSettings(steps=ADAPT_STEPS)

        def run(names: Sequence[str], settings: AdaptSettings | dict[str, AdaptSettings] = settings) -> list[Any]:
            # What the app hands over: CPU images; compare moves them to each learner's device.
            return compare({name: learners[name] for name in names}, task.support_x.cpu(), task.support_y.cpu(),
                           task.ways, task.query_x.cpu(), settings, workers=workers)

        def per_learner() -> list[Any]:
            with batched.batching(False):
                return run(list(learners), own_settings)

        calls: dict[str, Callable[[], object]] = {
            "all": lambda: run(list(learners)), "subset": lambda: run(subset),
            "subset_defaults": lambda: run(subset, own_settings),
            "all_defaults": lambda: run(list(learners), own_settings), "all_defaults_per_learner": per_learner}
        times = interleaved(calls, repeats, warmup, device)
        errors = {result.name: result.error for result in run(list(learners)) if result.error}
        row: dict[str, Any] = {"shape": shape, "workers": workers, "algorithms": list(learners), "subset": subset,
                               "subset_defaults_steps": {name: own_steps.get(name) for name in subset},
                               "errors": errors}
        for key, samples in times.items():
            row[f"{key}_median_ms"], row[f"{key}_cpu_ms"] = samples.median_ms, samples.cpu_ms
            if workers == 1:  # FlopCounterMode sees only its own thread's operators
                row[f"{key}_flops"] = count_flops(calls[key])
                row[f"{key}_peak_fraction"] = peak_fraction(row[f"{key}_flops"], samples.median_ms, peak_gflops)
        rows.append(row)
    return rows


# -- 2. meta-training ----------------------------------------------------------------------------------

def meta_batch(spec: MetaSpec, device: torch.device) -> list[Task]:
    return [synthetic_task(spec.ways, spec.shots, spec.queries, seed, device) for seed in range(spec.tasks)]


def meta_learner(spec: MetaSpec, backbone: BackboneConfig, device: torch.device) -> Learner:
    config: dict[str, Any] = {"inner_lr": INNER_LR}
    if spec.inner_steps is not None:
        config["inner_steps"] = spec.inner_steps
    return build_learner(spec.algorithm, backbone, device, **config)


def meta_step_fn(learner: Learner, tasks: list[Task]) -> Callable[[], object]:
    optimizer = learner.meta_optimizer()

    def step() -> object:
        optimizer.zero_grad(set_to_none=True)
        learner.meta_loss(tasks).loss.backward()
        optimizer.step()
        return None

    return step


def bench_meta(specs: Sequence[MetaSpec], backbones: dict[str, BackboneConfig], repeats: int, warmup: int,
               device: torch.device, memory: bool, threads: int) -> list[dict[str, Any]]:
    rows = []
    for spec in specs:
        row: dict[str, Any] = {"label": spec.label, "algorithm": spec.algorithm, "config": spec.describe()}
        if spec.algorithm not in LEARNERS:
            rows.append({**row, "error": "not registered"})
            continue
        backbone = backbones[spec.algorithm]
        if backbone.downsample != BackboneConfig.downsample:
            row["config"] += f", {backbone.downsample} Conv-4"
        try:
            step = meta_step_fn(meta_learner(spec, backbone, device), meta_batch(spec, device))
            times = interleaved({"step": step}, repeats, warmup, device)["step"]
            row.update(ms=times.median_ms, cpu_ms=times.cpu_ms, min_ms=min(times.wall))
            if memory:
                row.update(probe_memory({"kind": "meta", "spec": dataclasses.asdict(spec)}, backbone, device, threads))
        except Exception as error:  # noqa: BLE001
            row["error"] = f"{type(error).__name__}: {error}"
        rows.append(row)
    return rows


# -- memory (fresh subprocess per measurement) -----------------------------------------------------------

def _status_mb(field: str) -> float | None:
    """A memory figure of this process from /proc/self/status (Linux), in MB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """Peak resident set size of this process. VmHWM, not getrusage's ru_maxrss: Linux carries
    ru_maxrss over fork and exec, so a subprocess would start from its parent's peak."""
    peak = _status_mb("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def reset_peak_rss() -> float:
    """Resets VmHWM to the current RSS where Linux allows it (clear_refs "5") and returns the RSS."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    current = _status_mb("VmRSS")
    return current if current is not None else peak_rss_mb()


# Whether this process runs with engine.device.keep_freed_memory (as the app does); set by main.
_ALLOCATOR_TUNED = False


def probe_memory(probe: dict[str, Any], backbone: BackboneConfig, device: torch.device,
                 threads: int) -> dict[str, Any]:
    """Runs ``probe`` on ``backbone`` in a fresh interpreter and returns its peak memory figures."""
    probe = {**probe, "backbone": dataclasses.asdict(backbone)}
    command = [sys.executable, "-m", "benchmarks.bench", "--memory-probe", json.dumps(probe), "--device", str(device),
               "--threads", str(threads)]
    if not _ALLOCATOR_TUNED:
        command.append("--system-malloc")
    if kernels.CHANNELS_LAST_MIN_IMAGES == sys.maxsize:
        command.append("--no-channels-last")
    result = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent,
                            env={**os.environ, "OMP_NUM_THREADS": str(threads)}, timeout=900)
    if result.returncode != 0:
        return {"memory_error": (result.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_memory_probe(probe: dict[str, Any], device: torch.device) -> dict[str, float]:
    """Inside the subprocess: build what ``probe`` names, note the memory, run two steps."""
    spec = MetaSpec(**probe["spec"])
    backbone = BackboneConfig(**probe["backbone"])
    tasks = meta_batch(spec, device)
    if probe.get("peer"):
        from benchmarks.peers import available_peers, module_from_params

        peer = next(p for p in available_peers() if p.name == probe["peer"])
        if peer.meta_step is None:
            raise RuntimeError(peer.unavailable)
        module = module_from_params(meta_learner(spec, backbone, device).params, backbone, spec.ways)
        meta_step = peer.meta_step
        inner_steps = spec.inner_steps or 1

        def step() -> object:
            module.zero_grad(set_to_none=True)
            return meta_step(module, tasks, inner_steps, INNER_LR)
    else:
        step = meta_step_fn(meta_learner(spec, backbone, device), tasks)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device) / MB
    else:
        # Freed memory stays resident (allocator caches), so the baseline is taken before the
        # first step; its one-off allocations (thread pools, kernel caches) are a few MB.
        before = reset_peak_rss()
    for _ in range(2):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) / MB
    else:
        peak = peak_rss_mb()
    return {"peak_mb": peak, "step_peak_mb": peak - before}


# -- 3. peers ------------------------------------------------------------------------------------------

def bench_peers(backbone: BackboneConfig, repeats: int, warmup: int, device: torch.device, memory: bool,
                threads: int) -> dict[str, Any]:
    """Ours vs each peer on the same weights and the same tasks, interleaved call by call."""
    from benchmarks.peers import available_peers, module_from_params

    peers = available_peers()
    learner = build_learner("maml", backbone, device)
    task = adaptation_task("5w1s", device)
    ways = task.ways
    settings = AdaptSettings(steps=ADAPT_STEPS, lr=INNER_LR)
    ours_transductive = learner.adapt(task.support_x, task.support_y, ways, settings).predict_proba(
        task.query_x, transductive=True)

    def autograd_path() -> object:
        with kernels.fused(False):
            return adapt_and_predict(learner, task)()

    adapt_fns: dict[str, Callable[[], object]] = {"ours": adapt_and_predict(learner, task),
                                                  "ours, autograd path": autograd_path}
    agreement: dict[str, float] = {}
    for peer in peers:
        if peer.adapt is None:
            continue
        module = module_from_params(learner.params, backbone, ways)
        adapt = peer.adapt
        adapt_fns[peer.name] = lambda adapt=adapt, module=module: adapt(  # type: ignore[misc]
            module, task.support_x, task.support_y, task.query_x, ADAPT_STEPS, INNER_LR)
        agreement[peer.name] = float((adapt_fns[peer.name]() - ours_transductive).abs().max())  # type: ignore[operator]
    adapt_times = interleaved(adapt_fns, repeats, warmup, device)

    spec = PEER_META_SPEC
    tasks = meta_batch(spec, device)
    ours_learner = meta_learner(spec, backbone, device)
    meta_fns: dict[str, Callable[[], object]] = {"ours": meta_step_fn(ours_learner, tasks)}
    for peer in peers:
        if peer.meta_step is None:
            continue
        module = module_from_params(ours_learner.params, backbone, spec.ways)
        optimizer = torch.optim.Adam(module.parameters(), lr=1e-3)
        meta_step = peer.meta_step

        def peer_step(meta_step: Any = meta_step, module: Any = module, optimizer: Any = optimizer) -> object:
            optimizer.zero_grad(set_to_none=True)
            meta_step(module, tasks, spec.inner_steps or 1, INNER_LR)
            optimizer.step()
            return None

        meta_fns[peer.name] = peer_step
    meta_times = interleaved(meta_fns, max(3, repeats // 2), max(1, warmup), device)

    def ratios(times: dict[str, Samples]) -> dict[str, dict[str, float]]:
        ours = times["ours"]
        return {name: {"median_ms": values.median_ms, "ratio": values.median_ms / ours.median_ms,
                       "cpu_ms": values.cpu_ms, "cpu_ratio": values.cpu_ms / ours.cpu_ms}
                for name, values in times.items()}

    meta = ratios(meta_times)
    if memory:
        probe = {"kind": "meta", "spec": dataclasses.asdict(spec)}
        meta["ours"].update(probe_memory(probe, backbone, device, threads))
        for peer in peers:
            if peer.meta_step is not None:
                meta[peer.name].update(probe_memory({**probe, "peer": peer.name}, backbone, device, threads))
    return {
        "peers": [{"name": p.name, "version": p.version, "unavailable": p.unavailable} for p in peers],
        "adapt": ratios(adapt_times),
        "adapt_agreement": agreement,
        "meta": meta,
        "meta_config": spec.describe(),
    }


# -- report --------------------------------------------------------------------------------------------

def busy_processes() -> list[str]:
    """Other Python processes running engine.train or tests (they share the cores)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if "engine.train" in command or "pytest" in command:
            found.append(command[:160])
    return found


def environment(device: torch.device) -> dict[str, Any]:
    return {
        "allocator": "glibc malloc keeping freed memory (engine.device.keep_freed_memory)" if _ALLOCATOR_TUNED
        else "the system's malloc as configured (--system-malloc)",
        "channels_last_from_images": kernels.CHANNELS_LAST_MIN_IMAGES if kernels.CHANNELS_LAST_MIN_IMAGES < sys.maxsize
        else None,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average": os.getloadavg(),
        "busy_processes": busy_processes(),
    }


def budget_values(run: dict[str, Any]) -> dict[str, float | None]:
    """The figures the budgets refer to, by key (None when not measured)."""
    values: dict[str, float | None] = {}
    for row in run.get("adaptation", []):
        for shape in SHAPES:
            if isinstance(row.get(shape), dict) and "median_ms" in row[shape]:
                values[f"adapt.{row['algorithm']}.{shape}"] = row[shape]["median_ms"]
    for row in run.get("compare", []):
        values[f"compare.{row['shape']}.all"] = row["all_median_ms"]
        values[f"compare.{row['shape']}.gradient+protonet"] = row["subset_median_ms"]
        values[f"compare.{row['shape']}.gradient+protonet defaults"] = row.get("subset_defaults_median_ms")
        values[f"compare.{row['shape']}.all defaults"] = row.get("all_defaults_median_ms")
    for row in run.get("compare_workers", []):
        values[f"compare_workers.{row['shape']}.gradient+protonet"] = row["subset_median_ms"]
        values[f"compare_workers.{row['shape']}.gradient+protonet defaults"] = row.get("subset_defaults_median_ms")
    for row in run.get("meta", []):
        for field in ("ms", "step_peak_mb", "peak_mb"):
            if field in row:
                values[f"meta.{row['label']}.{field}"] = row[field]
    peers = run.get("peers") or {}
    for name, figures in (peers.get("adapt") or {}).items():
        values[f"peers.adapt.{name}"] = figures["ratio"]
    return values


def check_budgets(run: dict[str, Any]) -> list[dict[str, Any]]:
    values = budget_values(run)
    checks = []
    for budget in BUDGETS:
        value = values.get(budget.key)
        met = None if value is None else (value >= budget.limit if budget.at_least else value <= budget.limit)
        checks.append({"budget": budget.description, "value": value, "met": met})
    return checks


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:.1f}{unit}" if value < 100 else f"{value:.0f}{unit}"


def print_run(run: dict[str, Any], shapes: Sequence[str]) -> None:
    threads = run["threads"]
    print(f"\n### {threads} thread{'s' * (threads > 1)}\n")
    peak = run.get("peak") or {}
    if peak:
        print(f"Measured peak: {fmt(peak['median_gflops'])} GFLOP/s (median of {peak['repeats']} float32 "
              f"{peak['size']}x{peak['size']} matrix products on {threads} thread{'s' * (threads > 1)}; best "
              f"{fmt(peak['best_gflops'])}). % of peak: a row's FLOPs (matrix products and convolutions, "
              "torch.utils.flop_counter) over its median time, against that median.\n")
    print(f"Adaptation: {ADAPT_STEPS} inner steps + predicting {QUERIES} queries (median wall ms; in brackets "
          "the process's CPU ms, what an idle core would take; then GFLOP per call and % of the measured peak)\n")
    print("| algorithm | " + " | ".join(f"{shape} | GFLOP, % of peak" for shape in shapes) + " |")
    print("|---|" + "---:|---:|" * len(shapes))

    def work(cell: dict[str, Any], prefix: str = "") -> str:
        flops, fraction = cell.get(prefix + "flops"), cell.get(prefix + "peak_fraction")
        if flops is None:
            return "-"
        return f"{flops / 1e9:.3g}" + ("" if fraction is None else f", {100 * fraction:.0f}%")

    for row in run["adaptation"]:
        if "error" in row:
            print(f"| {row['algorithm']} | " + " | ".join("- | -" for _ in shapes) + f" |  ({row['error']})")
            continue
        cells = []
        for shape in shapes:
            cell = row.get(shape, {})
            text = f"{fmt(cell.get('median_ms'))} ({fmt(cell.get('cpu_ms'))})" if "median_ms" in cell else "error"
            cells.append(text + (" (diverged)" if cell.get("warning") else "") + f" | {work(cell)}")
        print(f"| {row['algorithm']} | " + " | ".join(cells) + " |")
    compare_rows = {row["shape"]: row for row in run["compare"]}
    if compare_rows:
        count = len(run["compare"][0]["algorithms"])
        subset = run["compare"][0]["subset"]

        def cells(rows: dict[str, dict[str, Any]], key: str) -> str:
            return " | ".join(f"{fmt(rows[s][key + '_median_ms'])} ({fmt(rows[s].get(key + '_cpu_ms'))}) | "
                              f"{work(rows[s], key + '_')}" if s in rows else "- | -" for s in shapes)

        print(f"| **all {count} on one task** (engine.compare) | {cells(compare_rows, 'all')} |")

        print(f"| **gradient-based + protonet** ({len(subset)} on one task) | {cells(compare_rows, 'subset')} |")
        worker_rows = {row["shape"]: row for row in run.get("compare_workers", [])}
        if worker_rows:
            workers = run["compare_workers"][0]["workers"]
            print(f"| all {count} on one task, {workers} workers (compare(workers={workers})) | "
                  f"{cells(worker_rows, 'all')} |")
            print(f"| **gradient-based + protonet, {workers} workers** | {cells(worker_rows, 'subset')} |")
        steps = run["compare"][0]["subset_defaults_steps"]
        fewer = ", ".join(f"{name} {count}" for name, count in steps.items()
                          if count is not None and count != ADAPT_STEPS)
        print(f"| gradient-based + protonet, each model's own test-time steps (the app's default; "
              f"{fewer or 'all ' + str(ADAPT_STEPS)}) | {cells(compare_rows, 'subset_defaults')} |")
        if worker_rows:
            print(f"| ... with {workers} workers | {cells(worker_rows, 'subset_defaults')} |")
        print(f"| **the app's default set: all {count}, each model's own test-time steps** | "
              f"{cells(compare_rows, 'all_defaults')} |")
        print(f"| ... each learner's inner loop on its own (engine.batched off) | "
              f"{cells(compare_rows, 'all_defaults_per_learner')} |")
        if worker_rows:
            print(f"| ... with {workers} workers (batched) | {cells(worker_rows, 'all_defaults')} |")
    if not run["meta"]:
        print("\n(meta-training steps not timed: --sections)")
    else:
        print_meta(run["meta"])
    print_peers_and_budgets(run)


def print_meta(rows: list[dict[str, Any]]) -> None:
    print("\nMeta-training step (zero_grad + meta_loss + backward + optimizer step; median ms, peak memory)\n")
    print("| algorithm | batch | step (CPU) | peak RSS | step's own peak |")
    print("|---|---|---:|---:|---:|")
    for row in rows:
        if "error" in row:
            print(f"| {row['label']} | {row['config']} | error: {row['error']} | | |")
            continue
        print(f"| {row['label']} | {row['config']} | {fmt(row['ms'])} ms ({fmt(row.get('cpu_ms'))}) | "
              f"{fmt(row.get('peak_mb'), ' MB')} | "
              f"{fmt(row.get('step_peak_mb'), ' MB')} |")


def print_peers_and_budgets(run: dict[str, Any]) -> None:
    peers = run.get("peers")
    if peers:
        print(f"\nSame task, same weights: 5w1s adaptation ({ADAPT_STEPS} steps + {QUERIES} queries) and the MAML "
              f"meta-step ({peers['meta_config']}); ratio = their time / ours in this run\n")
        print("| implementation | adaptation | ratio (CPU ratio) | max abs diff of predictions vs ours | "
              "MAML meta-step | "
              "ratio (CPU ratio) | step's own peak |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name, figures in peers["adapt"].items():
            meta = peers["meta"].get(name, {})
            agreement = peers["adapt_agreement"].get(name)
            meta_ratio = "" if not meta else f"{meta['ratio']:.2f}x ({meta['cpu_ratio']:.2f}x)"
            print(f"| {name} | {fmt(figures['median_ms'])} ms | "
                  f"{figures['ratio']:.2f}x ({figures['cpu_ratio']:.2f}x) | "
                  f"{'-' if agreement is None else f'{agreement:.1e}'} | "
                  f"{fmt(meta.get('median_ms'))}{' ms' if meta else ''} | {meta_ratio} | "
                  f"{fmt(meta.get('step_peak_mb'), ' MB')} |")
        for peer in peers["peers"]:
            if peer["unavailable"]:
                print(f"| {peer['name']} | unavailable: {peer['unavailable']} | | | | | |")
    print("\nBudgets\n")
    for check in run["budgets"]:
        state = {True: "met", False: "NOT met", None: "not measured"}[check["met"]]
        print(f"- {check['budget']}: {fmt(check['value'])} -> {state}")


def run_all(args: argparse.Namespace, threads: int, device: torch.device, backbones: dict[str, BackboneConfig],
            memory: bool) -> dict[str, Any]:
    torch.set_num_threads(threads)
    learners, failed = build_learners(backbones, device)
    shapes = args.shapes
    print(f"[{threads} thread(s)] adaptation...", file=sys.stderr, flush=True)
    run: dict[str, Any] = {"threads": threads, "peak": measured_peak(device)}
    peak = run["peak"]["median_gflops"]
    run["adaptation"] = []
    if "adaptation" in args.sections:
        run["adaptation"] = bench_adaptation(learners, failed, shapes, args.repeats, args.warmup, device, peak)
    compare_shapes = [s for s in shapes if s in ("5w1s", "5w5s")]
    own_steps = shipped_test_steps(args.models, learners)
    run["compare"] = []
    if "compare" in args.sections:
        print(f"[{threads} thread(s)] all algorithms on one task...", file=sys.stderr, flush=True)
        run["compare"] = bench_compare(learners, compare_shapes, args.repeats, args.warmup, device, own_steps,
                                       peak_gflops=peak)
    if "workers" in args.sections and threads == 1 and (os.cpu_count() or 1) > 1 and device.type == "cpu":
        # Two learners at a time, one PyTorch thread each (engine.compare's workers).
        run["compare_workers"] = bench_compare(learners, compare_shapes, args.repeats, args.warmup, device,
                                               own_steps, workers=2)
    run["meta"] = []
    if "meta" in args.sections:
        print(f"[{threads} thread(s)] meta-training...", file=sys.stderr, flush=True)
        run["meta"] = bench_meta(META_SPECS, backbones, max(3, args.repeats // 2), args.warmup, device, memory,
                                 threads)
    if not args.skip_peers and "peers" in args.sections:
        print(f"[{threads} thread(s)] peers...", file=sys.stderr, flush=True)
        run["peers"] = bench_peers(backbones["maml"], args.repeats, args.warmup, device, memory, threads)
    run["budgets"] = check_budgets(run)
    return run


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, default=None, help="also write every figure to this JSON file")
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per figure (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs before each figure")
    parser.add_argument("--threads", default="1",
                        help="comma-separated PyTorch thread counts to measure, e.g. 1,2 (several threads are "
                             "many times slower while other jobs share the cores)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 3 repeats, 1 warm-up, first thread count, 5w1s only, no memory probes")
    parser.add_argument("--system-malloc", action="store_true",
                        help="leave malloc as it is (the app, training and evaluation keep freed memory; "
                             "this measures what that gains)")
    parser.add_argument("--no-channels-last", action="store_true",
                        help="run the fused kernels in NCHW layout at every batch size (measures what "
                             "engine.kernels' channels-last layout gains)")
    parser.add_argument("--uniform-backbone", action="store_true",
                        help="every algorithm on the stride-2 Conv-4, not on its shipped checkpoint's backbone")
    parser.add_argument("--models", type=Path, default=REPO_ROOT / "models",
                        help="where the shipped checkpoints (whose backbones are timed) are")
    parser.add_argument("--skip-peers", action="store_true", help="do not time the naive reference and the peers")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated parts to time, of {','.join(SECTIONS)} (default: all); e.g. "
                             "'--sections compare --shapes 5w1s' times only the comparison rows at 5w1s")
    parser.add_argument("--shapes", dest="shape_list", default=None,
                        help=f"comma-separated task shapes, of {','.join(SHAPES)} (default: all; --quick: 5w1s)")
    parser.add_argument("--channels", type=int, default=CHANNELS, help=argparse.SUPPRESS)  # tests: tiny networks
    parser.add_argument("--memory-probe", default=None, help=argparse.SUPPRESS)  # internal: one memory measurement
    args = parser.parse_args(argv)
    args.thread_counts = [int(t) for t in str(args.threads).split(",") if t.strip()]
    args.shapes = list(SHAPES)
    if args.quick:
        args.repeats, args.warmup, args.thread_counts, args.shapes = 3, 1, args.thread_counts[:1], ["5w1s"]
    if args.shape_list is not None:
        args.shapes = [shape.strip() for shape in str(args.shape_list).split(",") if shape.strip()]
        if not args.shapes or set(args.shapes) - set(SHAPES):
            parser.error(f"--shapes takes some of {', '.join(SHAPES)}")
    args.sections = [section.strip() for section in str(args.sections).split(",") if section.strip()]
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from engine.device import keep_freed_memory, resolve_device

    device = resolve_device(args.device)
    global _ALLOCATOR_TUNED
    _ALLOCATOR_TUNED = not args.system_malloc and keep_freed_memory()
    if args.no_channels_last:
        kernels.CHANNELS_LAST_MIN_IMAGES = sys.maxsize
    if args.memory_probe is not None:
        torch.set_num_threads(args.thread_counts[0])
        print(json.dumps(run_memory_probe(json.loads(args.memory_probe), device)))
        return 0
    backbone = BackboneConfig(channels=args.channels)
    backbones = shipped_backbones(None if args.uniform_backbone else args.models, backbone)
    report: dict[str, Any] = {"environment": environment(device), "settings": {
        "adapt_steps": ADAPT_STEPS, "queries": QUERIES, "channels": args.channels, "repeats": args.repeats,
        "warmup": args.warmup, "inner_lr": INNER_LR,
        "backbones": {name: config.downsample for name, config in backbones.items()},
        "memory": "fresh subprocess per configuration: peak RSS "
        "(VmHWM) of the process, and its peak during two steps over the RSS before them; CUDA: "
        "max_memory_allocated"}, "runs": []}
    env = report["environment"]
    print(f"benchmarks.bench: {env['date']}, {env['cpu']} ({env['cores']} cores), device {env['device']}, "
          f"torch {env['torch']}, Python {env['python']}, load average {env['load_average'][0]:.2f}")
    print(f"  allocator: {env['allocator']}; fused kernels in channels-last layout from "
          f"{env['channels_last_from_images'] or 'no'} images on")
    others = {name: config.downsample for name, config in backbones.items() if config != backbone}
    print("  backbones: stride-2 Conv-4" + "".join(f"; {name}: {kind} (its shipped checkpoint's)"
                                                   for name, kind in others.items()))
    for command in env["busy_processes"]:
        print(f"  running beside it: {command}")
    for index, threads in enumerate(args.thread_counts):
        # Memory does not depend on the thread count: probed once.
        run = run_all(args, threads, device, backbones, memory=not args.quick and index == 0)
        report["runs"].append(run)
        print_run(run, args.shapes)
    report["environment"]["load_average_after"] = os.getloadavg()
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

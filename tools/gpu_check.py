"""CUDA against CPU, in one script: ``python -m tools.gpu_check``.

For every shipped checkpoint (``models/``) on one 5-way 1-shot task: adapt, predict and one
meta-gradient step on CPU and on CUDA, and checks that they agree (support losses per inner step,
query probabilities, the meta-loss and the meta-gradient's norm) within float32 tolerances. Prints a
row per algorithm with both timings; exits 1 on a mismatch, 2 without CUDA. ``tests/test_gpu_check.py`` runs it when CUDA is present
and is skipped otherwise.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engine.checkpoint import load_learner  # noqa: E402
from engine.compare import run_one  # noqa: E402
from engine.data.tasks import Task  # noqa: E402
from engine.learners import LEARNERS, AdaptSettings, Learner  # noqa: E402

PROBABILITY_TOLERANCE = 2e-3
LOSS_TOLERANCE = 2e-3
"""Relative: float32 convolutions differ between CPU and cuDNN in the last bits, and an inner loop
of several steps compounds it; a real bug (wrong device, stale statistics) is far larger."""


def synthetic_task(ways: int = 5, shots: int = 1, queries: int = 3, seed: int = 0) -> Task:
    generator = torch.Generator().manual_seed(seed)
    centres = (torch.rand(ways, 1, 28, 28, generator=generator) > 0.8).float()
    support = (centres.repeat_interleave(shots, 0) + 0.2 * torch.rand(ways * shots, 1, 28, 28,
                                                                     generator=generator)).clamp(0, 1)
    query = (centres.repeat_interleave(queries, 0) + 0.2 * torch.rand(ways * queries, 1, 28, 28,
                                                                     generator=generator)).clamp(0, 1)
    return Task(support, torch.arange(ways).repeat_interleave(shots), query,
                torch.arange(ways).repeat_interleave(queries), ways, shots, tuple(f"c{i}" for i in range(ways)))


def learners(device: str) -> dict[str, Learner]:
    models = ROOT / "models"
    out = {}
    for name in sorted(LEARNERS):
        path = models / name / "model"
        out[name] = load_learner(path, device) if path.with_suffix(".safetensors").exists() else \
            LEARNERS[name]().to(device)
    return out


def meta_step(learner: Learner, task: Task, device: str) -> tuple[float, float, float]:
    """(meta-loss, meta-gradient norm, ms) of one meta-step on ``task``."""
    moved = Task(task.support_x.to(device), task.support_y.to(device), task.query_x.to(device),
                 task.query_y.to(device), task.ways, task.shots, task.class_names)
    for value in learner.params.values():
        value.grad = None
    start = time.perf_counter()
    loss = learner.meta_loss([moved])
    loss.loss.backward()
    if device == "cuda":
        torch.cuda.synchronize()
    ms = (time.perf_counter() - start) * 1000
    norm = torch.sqrt(sum((v.grad.detach().double() ** 2).sum() for v in learner.params.values()
                          if v.grad is not None)).item()
    return float(loss.loss.detach()), norm, ms


def close(a: float, b: float, tolerance: float) -> bool:
    return abs(a - b) <= tolerance * max(1.0, abs(a), abs(b))


def check(other: str = "cuda") -> bool:
    """CPU against ``other`` (the tests also run it CPU against CPU, to exercise every step here)."""
    task = synthetic_task()
    cpu, cuda = learners("cpu"), learners(other)
    ok = True
    print(f"{'algorithm':10s} {'adapt cpu':>10s} {'adapt cuda':>10s} {'meta cpu':>9s} {'meta cuda':>9s}  agree")
    for name in cpu:
        results = {}
        for device, models in (("cpu", cpu), (other, cuda)):
            run_one(name, models[name], task.support_x, task.support_y, 5, task.query_x, AdaptSettings())  # warm
            results["cpu" if models is cpu else "other"] = run_one(name, models[name], task.support_x, task.support_y, 5, task.query_x,
                                      AdaptSettings())
        a, b = results["cpu"], results["other"]
        agree = a.ok and b.ok
        agree = agree and all(close(x.loss, y.loss, LOSS_TOLERANCE) for x, y in zip(a.trace, b.trace))
        agree = agree and float(abs(torch.as_tensor(a.probabilities) - torch.as_tensor(b.probabilities)).max()) \
            <= PROBABILITY_TOLERANCE
        loss_cpu, norm_cpu, ms_cpu = meta_step(cpu[name], task, "cpu")
        loss_cuda, norm_cuda, ms_cuda = meta_step(cuda[name], task, other)
        agree = agree and close(loss_cpu, loss_cuda, LOSS_TOLERANCE) and close(norm_cpu, norm_cuda, 1e-2)
        ok = ok and agree
        print(f"{name:10s} {a.adapt_ms:8.1f}ms {b.adapt_ms:8.1f}ms {ms_cpu:7.1f}ms {ms_cuda:7.1f}ms  "
              f"{'yes' if agree else 'NO: ' + str((a.error, b.error, loss_cpu, loss_cuda, norm_cpu, norm_cuda))}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 2
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    ok = check()
    print("CPU and CUDA agree" if ok else "MISMATCH between CPU and CUDA")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

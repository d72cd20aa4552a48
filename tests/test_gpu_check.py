"""tools/gpu_check.py: adapt, compare and a meta-step on CUDA agree with CPU (skipped without CUDA)."""

from __future__ import annotations

import pytest
import torch

from tools import gpu_check


def test_the_synthetic_task_is_a_valid_five_way_task() -> None:
    task = gpu_check.synthetic_task()
    assert task.support_x.shape == (5, 1, 28, 28) and task.query_x.shape == (15, 1, 28, 28)
    assert sorted(task.support_y.tolist()) == list(range(5))


def test_tolerance_check_tells_close_from_far() -> None:
    assert gpu_check.close(1.0, 1.0 + 1e-4, gpu_check.LOSS_TOLERANCE)
    assert not gpu_check.close(1.0, 1.1, gpu_check.LOSS_TOLERANCE)


def test_every_step_of_the_check_runs_cpu_against_cpu() -> None:
    """The same comparison with CPU on both sides (no GPU here): every learner adapts, predicts and
    takes a meta-step, and identical devices agree."""
    assert gpu_check.check(other="cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_agrees_with_cpu() -> None:
    assert gpu_check.check()

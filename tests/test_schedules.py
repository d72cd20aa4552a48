"""The meta learning-rate schedules (engine.schedules) and how training records them."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from engine import train
from engine.checkpoint import read_metadata
from engine.schedules import meta_lr_factor


def test_linear_is_the_straight_line_it_always_was() -> None:
    for step in (0, 1, 50, 99, 100, 150):
        assert meta_lr_factor(step, 100, 0.1) == pytest.approx(1.0 + (0.1 - 1.0) * min(step / 100, 1.0))


def test_cosine_is_flat_at_both_ends_and_halfway_in_the_middle() -> None:
    assert meta_lr_factor(0, 100, 0.1, "cosine") == 1.0
    assert meta_lr_factor(50, 100, 0.1, "cosine") == pytest.approx(0.55)
    assert meta_lr_factor(100, 100, 0.1, "cosine") == pytest.approx(0.1)
    assert meta_lr_factor(200, 100, 0.1, "cosine") == pytest.approx(0.1)
    # Slower than the line early on, faster late: the area under it is the line's.
    assert meta_lr_factor(10, 100, 0.1, "cosine") > meta_lr_factor(10, 100, 0.1)
    assert meta_lr_factor(90, 100, 0.1, "cosine") < meta_lr_factor(90, 100, 0.1)
    assert meta_lr_factor(10, 100, 0.1, "cosine") == pytest.approx(1 - 0.9 * (1 - math.cos(math.pi / 10)) / 2)


def test_warm_up_rises_to_the_full_rate_then_the_schedule_starts() -> None:
    rising = [meta_lr_factor(step, 110, 0.0, "cosine", warmup=10) for step in range(11)]
    assert rising[0] == pytest.approx(1 / 11) and all(a < b for a, b in zip(rising[:10], rising[1:10]))
    assert rising[10] == 1.0  # the schedule's first step, over the 100 steps left
    assert meta_lr_factor(60, 110, 0.0, "cosine", warmup=10) == pytest.approx(0.5)


def test_a_bad_schedule_is_refused() -> None:
    with pytest.raises(ValueError, match="choose from linear, cosine"):
        meta_lr_factor(0, 10, 0.1, "exponential")
    with pytest.raises(ValueError, match="warm-up"):
        meta_lr_factor(0, 10, 0.1, "linear", warmup=-1)


def test_training_follows_the_schedule_and_records_it(tmp_path: Path, omniglot_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    seen: list[float] = []
    original = train.Trainer.train_step

    def recording(self: train.Trainer, *args: object, **kwargs: object) -> object:
        seen.append(self.optimizer.param_groups[0]["lr"])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(train.Trainer, "train_step", recording)
    assert train.main(["--data-dir", str(omniglot_dir), "--algorithm", "protonet", "--out", str(out),
                       "--meta-steps", "6", "--ways", "3", "--shots", "1", "--queries", "1", "--channels", "4",
                       "--val-every", "6", "--val-tasks", "2", "--meta-lr", "0.01", "--meta-lr-final", "0.001",
                       "--meta-lr-schedule", "cosine", "--meta-lr-warmup", "2", "--no-progress"]) == 0
    config = read_metadata(out / "model")["config"]
    assert config["meta_lr_schedule"] == "cosine" and config["meta_lr_warmup"] == 2
    assert seen == pytest.approx([0.01 * meta_lr_factor(step, 6, 0.1, "cosine", 2) for step in range(6)])
    assert train.main(["--data-dir", str(omniglot_dir), "--algorithm", "protonet", "--out", str(tmp_path / "bad"),
                       "--meta-lr-schedule", "steps", "--meta-steps", "1"]) == 2
    assert "unknown meta learning-rate schedule 'steps'" in capsys.readouterr().err

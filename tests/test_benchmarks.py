"""The benchmark harness (``benchmarks/``) runs end to end on tiny networks and reports what it
claims: every registered algorithm, each on its shipped backbone, the app's default steps, the
budgets it checks and the floor benchmark's split of convolution time. Speed itself is not tested."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from engine import kernels
from engine.learners import LEARNERS
from engine.nets import BackboneConfig


def test_benchmark_smoke_run_covers_every_registered_algorithm(tmp_path: Path) -> None:
    from benchmarks.bench import BUDGETS, main

    output = tmp_path / "bench.json"
    assert main(["--quick", "--skip-peers", "--channels", "4", "--threads", "1", "--json", str(output)]) == 0
    report = json.loads(output.read_text())
    run = report["runs"][0]
    assert {row["algorithm"] for row in run["adaptation"]} == set(LEARNERS)
    assert all("median_ms" in row["5w1s"] or "error" in row for row in run["adaptation"])
    compared = run["compare"][0]
    # The gradient-based algorithms and ProtoNet are timed on their own too.
    assert set(compared["subset"]) == {name for name in LEARNERS if LEARNERS[name].has_inner_loop} | {"protonet"}
    assert 0 < compared["subset_median_ms"] and 0 < compared["all_median_ms"]
    # ... and as the app runs it by default: each shipped checkpoint's own test-time steps.
    assert 0 < compared["subset_defaults_median_ms"]
    assert compared["subset_defaults_steps"]["metasgd"] == 1 and compared["subset_defaults_steps"]["maml"] == 10
    assert compared["subset_defaults_steps"]["protonet"] is None
    assert run["compare"][0]["algorithms"] and [check["budget"] for check in run["budgets"]] == [
        budget.description for budget in BUDGETS]
    assert {row["label"] for row in run["meta"]} >= {"maml (1 inner step)", "fomaml", "reptile", "protonet"}
    # The fraction of the measured peak: per adaptation cell and per one-thread comparison.
    assert run["peak"]["median_gflops"] > 0 and run["peak"]["best_gflops"] >= run["peak"]["median_gflops"]
    for row in run["adaptation"]:
        cell = row["5w1s"]
        assert cell["flops"] > 0 and 0 < cell["peak_fraction"], row["algorithm"]
        assert cell["peak_fraction"] == pytest.approx(cell["flops"] / (cell["median_ms"] / 1000)
                                                      / (run["peak"]["median_gflops"] * 1e9))
    # The app's default set (every algorithm, own steps), batched and each learner on its own: the same work.
    assert 0 < compared["all_defaults_median_ms"] and 0 < compared["all_defaults_per_learner_median_ms"]
    assert compared["all_defaults_flops"] > 0 and compared["all_defaults_peak_fraction"] > 0
    assert [check["value"] for check in run["budgets"] if "app's default set" in check["budget"]] == [
        compared["all_defaults_median_ms"]]
    assert report["environment"]["torch"] == torch.__version__
    assert "keep_freed_memory" in report["environment"]["allocator"]
    assert report["environment"]["channels_last_from_images"] == kernels.CHANNELS_LAST_MIN_IMAGES


def test_benchmark_times_each_algorithm_on_its_shipped_backbone(tmp_path: Path) -> None:
    from benchmarks.bench import build_learners, shipped_backbones

    (tmp_path / "protonet").mkdir()
    (tmp_path / "protonet" / "model.json").write_text(json.dumps(
        {"algorithm": "protonet", "backbone": {"channels": 64, "layers": 4, "downsample": "maxpool"}}))
    (tmp_path / "maml").mkdir()
    (tmp_path / "maml" / "model.json").write_text("{not json")  # unreadable: the default network
    default = BackboneConfig(channels=4)
    backbones = shipped_backbones(tmp_path, default)
    assert set(backbones) == set(LEARNERS)
    # The shipped downsampling at the benchmark's width; everything else on the default.
    assert backbones["protonet"] == BackboneConfig(channels=4, downsample="maxpool")
    assert all(backbone == default for name, backbone in backbones.items() if name != "protonet")
    assert shipped_backbones(None, default) == dict.fromkeys(LEARNERS, default)
    learners, failed = build_learners(backbones, torch.device("cpu"))
    assert learners["protonet"].backbone.downsample == "maxpool" and not failed


def test_the_apps_default_steps_come_from_the_shipped_checkpoints(tmp_path: Path) -> None:
    from benchmarks.bench import build_learners, shipped_test_steps

    learners, _ = build_learners(dict.fromkeys(LEARNERS, BackboneConfig(channels=4)), torch.device("cpu"))
    (tmp_path / "maml").mkdir()
    (tmp_path / "maml" / "model.json").write_text(json.dumps(
        {"algorithm": "maml", "config": {"inner_steps": 2, "test_inner_steps": 3}}))
    (tmp_path / "mc1").mkdir()
    (tmp_path / "mc1" / "model.json").write_text("{not json")  # unreadable: the fresh learner's default
    steps = shipped_test_steps(tmp_path, learners)
    assert steps["maml"] == 3 and steps["mc1"] == learners["mc1"].default_test_steps()
    assert steps["protonet"] is None and set(steps) == set(learners)


def test_meta_step_specs_describe_the_configurations() -> None:
    from benchmarks.bench import META_SPECS

    one_step = next(spec for spec in META_SPECS if spec.label == "maml (1 inner step)")
    assert (one_step.tasks, one_step.ways, one_step.shots, one_step.queries) == (32, 5, 1, 1)
    assert dataclasses.asdict(one_step)["algorithm"] == "maml"




def test_the_floor_benchmark_splits_convolution_time_from_the_rest(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.bench_floor import main, profiled_ms

    x, weight = torch.randn(5, 8, 14, 14), torch.randn(8, 8, 3, 3)
    conv, other = profiled_ms(lambda: F.conv2d(x, weight, padding=1), repeats=3)
    assert conv > 0 and other < conv
    conv, other = profiled_ms(lambda: x.flatten(1) @ x.flatten(1).t(), repeats=3)
    assert conv == 0 and other > 0
    assert main(["--repeats", "1", "--channels", "4"]) == 0
    rows = {line.split(" | ")[0].strip("| *"): line for line in capsys.readouterr().out.splitlines()
            if line.startswith("| ")}
    assert set(LEARNERS) <= set(rows) and any(name.startswith("gradient-based + protonet") for name in rows)
    wall, conv_ms, other_ms = (float(cell) for cell in rows["maml"].strip("| ").split(" | ")[1:])
    assert wall > 0 and conv_ms > 0 and other_ms > 0


def test_the_preprocessing_benchmark_times_every_kind_of_input(capsys: pytest.CaptureFixture[str]) -> None:
    """Each input the app receives goes through preprocessing (a photo's ink is found, the oversized header
    is refused) and gets its row, timed against its budget."""
    from benchmarks.bench_preprocess import CASES, main

    assert main(["--repeats", "1"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if any(line.startswith(case.name) for case in CASES)]
    assert len(rows) == len(CASES) and all(row.split()[-1] in ("yes", "NO") for row in rows)
    assert f"of {len(CASES)} inputs within budget" in out


def test_flop_counts_are_the_convolutions_and_products_arithmetic() -> None:
    from benchmarks.bench import adapt_and_predict, adaptation_task, build_learner
    from benchmarks.flops import count_flops, peak_fraction

    x, weight = torch.randn(5, 8, 14, 14), torch.randn(16, 8, 3, 3)
    # 2 FLOPs per multiply-add: 5 images x 16 x 7 x 7 outputs of 8 x 3 x 3 each.
    assert count_flops(lambda: F.conv2d(x, weight, stride=2, padding=1)) == 2 * 5 * 16 * 7 * 7 * 8 * 9
    # A backward counts the forward's FLOPs once per gradient asked for, grouped convolutions too
    # (engine.batched's stacked networks): three stacked networks are three networks' work.
    grad = torch.randn(5, 16, 7, 7)
    assert count_flops(lambda: torch.ops.aten.convolution_backward(
        grad, x, weight, None, [2, 2], [1, 1], [1, 1], False, [0, 0], 1, [True, True, False])) == 2 * 2 * 5 * 16 * 7 * 7 * 8 * 9
    stacked_x, stacked_w, stacked_grad = torch.randn(5, 24, 14, 14), torch.randn(48, 8, 3, 3), torch.randn(5, 48, 7, 7)
    assert count_flops(lambda: torch.ops.aten.convolution_backward(
        stacked_grad, stacked_x, stacked_w, None, [2, 2], [1, 1], [1, 1], False, [0, 0], 3,
        [False, True, False])) == 3 * 2 * 5 * 16 * 7 * 7 * 8 * 9
    one_channel = torch.randn(5, 1, 28, 28)  # PyTorch's im2col kernel, which the Conv-4's first layer uses
    assert count_flops(lambda: torch.ops.aten._slow_conv2d_forward(
        one_channel, torch.randn(16, 1, 3, 3), [3, 3], None, [2, 2], [1, 1])) == 2 * 5 * 16 * 14 * 14 * 9
    # An adaptation's count grows with the support set (the inner loop's passes run over it).
    maml = build_learner("maml", BackboneConfig(channels=4), torch.device("cpu"))
    one_shot, five_shot = (count_flops(adapt_and_predict(maml, adaptation_task(shape, torch.device("cpu"))))
                           for shape in ("5w1s", "5w5s"))
    assert 0 < one_shot < five_shot
    assert 2.5 * one_shot < five_shot  # the support passes dominate: 5x the images, 20 queries alike
    assert peak_fraction(2e9, 1000.0, 4.0) == pytest.approx(0.5) and peak_fraction(None, 1.0, 1.0) is None


def test_sections_and_shapes_choose_what_is_timed() -> None:
    from benchmarks.bench import SECTIONS, SHAPES, parse_args

    args = parse_args(["--sections", "compare", "--shapes", "5w1s"])
    assert args.sections == ["compare"] and args.shapes == ["5w1s"]
    default = parse_args([])
    assert default.sections == list(SECTIONS) and default.shapes == list(SHAPES)
    for bad in (["--sections", "everything"], ["--shapes", "3w2s"]):
        with pytest.raises(SystemExit):
            parse_args(bad)

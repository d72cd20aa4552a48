"""One image pipeline for training, evaluation and the app; training-time augmentation; within-alphabet tasks."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from app.images import example_from_bytes
from engine import evaluate, train
from engine.checkpoint import build_learner, load_tensors, read_metadata, read_tensor_metadata, save_tensors
from engine.compare import as_images
from engine.config import TrainConfig
from engine.data.augment import augment_images, augment_task
from engine.data.frames import omniglot_to_28, to_uint8
from engine.data.loader import StepBatches
from engine.data.omniglot import CharacterSet, decode_drawing, load_split
from engine.data.tasks import alphabet_task_stream, sample_task, sample_training_task


def _evaluation_pngs(omniglot_dir: Path, count: int, seed: int) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(omniglot_dir / "images_evaluation.zip") as zf:
        names = sorted(n for n in zf.namelist() if n.endswith(".png"))
        picks = np.random.default_rng(seed).choice(len(names), count, replace=False)
        return [(names[i], zf.read(names[i])) for i in picks]


def test_a_dataset_drawing_and_the_same_png_uploaded_reach_the_network_as_one_tensor(omniglot_dir: Path) -> None:
    chars = load_split(omniglot_dir, "evaluation", progress=False)
    for name, png in _evaluation_pngs(omniglot_dir, 6, seed=3):
        alphabet, character, file_name = name.split("/")[-3:]
        c = chars.characters.index(f"{alphabet}/{character}")
        d = int(file_name.split("_")[1].removesuffix(".png")) - 1  # drawer 01..20, sorted by file name
        # What training and evaluation feed the network: a task sampled from the cached dataset.
        one = CharacterSet(images=chars.images[c : c + 1, d : d + 1], characters=(chars.characters[c],),
                           alphabets=(chars.alphabets[c],))
        dataset_tensor = sample_task(one, 1, 1, 0, np.random.default_rng(0)).support_x
        # What the app feeds it when a user uploads that PNG.
        uploaded = example_from_bytes(png, "upload", file_name)
        app_tensor = as_images(np.stack([uploaded.pixels]))
        assert dataset_tensor.dtype == app_tensor.dtype == torch.float32
        assert torch.equal(dataset_tensor, app_tensor), name


def test_the_raw_pipeline_is_the_plain_resize_and_differs_from_the_canonical_one(omniglot_dir: Path) -> None:
    differing = 0
    for _, png in _evaluation_pngs(omniglot_dir, 8, seed=5):
        grey = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float32) / 255.0
        raw = decode_drawing(png, "raw")
        np.testing.assert_array_equal(raw, to_uint8(omniglot_to_28(1.0 - grey)))
        canonical = decode_drawing(png, "canonical")
        assert canonical.dtype == np.uint8 and canonical.shape == (28, 28) and canonical.max() > 128
        differing += int(np.abs(canonical.astype(int) - raw.astype(int)).max() > 64)
    assert differing == 8  # re-drawn at Omniglot's median size and pen: never the same pixels


def test_each_pipeline_has_its_own_cache(tiny_omniglot: Path, isolated_cache: Path) -> None:
    canonical = load_split(tiny_omniglot, "evaluation", progress=False)
    raw = load_split(tiny_omniglot, "evaluation", progress=False, pipeline="raw")
    assert not np.array_equal(canonical.images, raw.images)
    assert {p.name.split("-")[2] for p in isolated_cache.glob("omniglot-evaluation-*.npz")} >= {"canonical", "raw"}
    with pytest.raises(ValueError, match="pipeline"):
        load_split(tiny_omniglot, "evaluation", pipeline="fancy")


# --------------------------------------------------------------------------- augmentation


def _strokes(count: int) -> torch.Tensor:
    images = torch.zeros(count, 1, 28, 28)
    for i in range(count):
        images[i, 0, 6 + i % 5 : 20, 12 + i % 3] = 1.0  # a vertical stroke
        images[i, 0, 14, 6 : 22 - i % 4] = 1.0  # and a horizontal one
    return images


def test_augmentation_is_seeded_varied_and_keeps_the_character() -> None:
    images = _strokes(16)
    first = augment_images(images, np.random.default_rng(7))
    again = augment_images(images, np.random.default_rng(7))
    other = augment_images(images, np.random.default_rng(8))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert first.shape == images.shape and float(first.min()) >= 0.0 and float(first.max()) <= 1.0
    changed = (first - images).abs().flatten(1).amax(1)
    assert bool((changed > 0.2).all())  # every image moved
    # ... but stays the same drawing: most of its ink is kept, and it stays closest to its own source.
    ratio = first.flatten(1).sum(1) / images.flatten(1).sum(1)
    assert bool(((ratio > 0.5) & (ratio < 2.2)).all())  # pen x1.6 at most (1-px strokes), size x1.15^2
    blur = lambda x: torch.nn.functional.avg_pool2d(x, 5, stride=1, padding=2).flatten(1)  # a 2-px shift is small
    own = torch.nn.functional.cosine_similarity(blur(first), blur(images))
    assert float(own.min()) > 0.7


def test_zero_strength_changes_nothing_and_draws_no_random_numbers() -> None:
    images = _strokes(4)
    rng = np.random.default_rng(1)
    state = rng.bit_generator.state
    assert augment_images(images, rng, 0.0) is images
    assert rng.bit_generator.state == state


def test_augment_task_keeps_labels_and_sizes(tiny_omniglot: Path, isolated_cache: Path) -> None:
    chars = load_split(tiny_omniglot, "background", progress=False)
    task = sample_task(chars, 3, 2, 4, np.random.default_rng(0))
    augmented = augment_task(task, np.random.default_rng(0))
    assert augmented.support_x.shape == task.support_x.shape and augmented.query_x.shape == task.query_x.shape
    assert torch.equal(augmented.support_y, task.support_y) and torch.equal(augmented.query_y, task.query_y)
    assert not torch.equal(augmented.support_x, task.support_x) and not torch.equal(augmented.query_x, task.query_x)


SMALL_PROTONET = ["--algorithm", "protonet", "--channels", "8", "--ways", "3", "--meta-batch", "1",
                  "--val-every", "3", "--val-tasks", "4", "--meta-steps", "3", "--no-progress"]


def test_training_augments_by_default_and_records_its_pipeline(tiny_omniglot: Path, isolated_cache: Path,
                                                               tmp_path: Path) -> None:
    weights = {}
    for strength in ("1.0", "0"):
        out = tmp_path / f"augment-{strength}"
        extra = [] if strength == "1.0" else ["--augment", strength]
        assert train.main(["--data-dir", str(tiny_omniglot), "--out", str(out), *SMALL_PROTONET, *extra]) == 0
        metadata = read_metadata(out / "last")
        assert metadata["train"]["pipeline"] == "canonical"
        assert metadata["train"]["augment"] == float(strength)
        weights[strength] = (out / "last.safetensors").read_bytes()
    assert weights["1.0"] != weights["0"]  # the augmentation reached the meta-gradient


def test_a_run_saved_before_the_pipeline_setting_resumes_as_it_trained(tiny_omniglot: Path, isolated_cache: Path,
                                                                       tmp_path: Path) -> None:
    out = tmp_path / "legacy"
    assert train.main(["--data-dir", str(tiny_omniglot), "--out", str(out), *SMALL_PROTONET]) == 0
    for stem in ("last", "model"):  # strip the new fields, as an older version wrote them
        path = out / f"{stem}.json"
        metadata = json.loads(path.read_text())
        del metadata["train"]["pipeline"], metadata["train"]["augment"]
        path.write_text(json.dumps(metadata))
    state = out / "resume.safetensors"  # whose header then held no copy of the metadata
    header = read_tensor_metadata(state)
    save_tensors(state, load_tensors(state, "cpu"), metadata={"state": header["state"]})
    assert train.main(["--data-dir", str(tiny_omniglot), "--out", str(out), *SMALL_PROTONET[:-3],
                       "--meta-steps", "6", "--no-progress", "--resume"]) == 0
    resumed = read_metadata(out / "last")
    assert resumed["meta_step"] == 6
    assert resumed["train"]["pipeline"] == "raw" and resumed["train"]["augment"] == 0.0


# --------------------------------------------------------------------------- within-alphabet tasks


def test_within_alphabet_tasks_draw_every_class_from_one_alphabet(tiny_omniglot: Path, isolated_cache: Path) -> None:
    chars = load_split(tiny_omniglot, "background", progress=False)  # Cyrillic 3, Futurama 2, Greek 3, Latin 4
    seen = set()
    for task, _ in zip(alphabet_task_stream(chars, 3, 1, 2, seed=0), range(40)):
        alphabets = {name.split("/")[0] for name in task.class_names}
        assert len(alphabets) == 1 and task.ways == 3
        seen |= alphabets
    assert seen == {"Cyrillic", "Greek", "Latin"}  # Futurama has only 2 characters: never eligible
    with pytest.raises(ValueError, match="the largest has 4"):
        alphabet_task_stream(chars, 5, 1, 1, seed=0)


def test_training_episodes_from_one_alphabet_at_the_fraction_asked(tiny_omniglot: Path, isolated_cache: Path) -> None:
    chars = load_split(tiny_omniglot, "background", progress=False)  # Cyrillic 3, Futurama 2, Greek 3, Latin 4

    def alphabets(task) -> set[str]:
        return {name.split("/")[0] for name in task.class_names}

    # Off: the very tasks sample_task draws from the same stream (runs without it are unchanged).
    for seed in range(5):
        plain = sample_task(chars, 4, 1, 1, np.random.default_rng(seed), rotations=True)
        same = sample_training_task(chars, 4, 1, 1, np.random.default_rng(seed), rotations=True, within_alphabet=0.0)
        assert plain.class_names == same.class_names and torch.equal(plain.support_x, same.support_x)
    # Always: every class from one alphabet; with rotations Futurama's 2 characters make 8 classes, enough for 6.
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(60):
        task = sample_training_task(chars, 6, 1, 1, rng, rotations=True, within_alphabet=1.0)
        assert len(alphabets(task)) == 1 and len(set(task.class_names)) == 6
        seen |= alphabets(task)
    assert seen == {"Cyrillic", "Futurama", "Greek", "Latin"}
    # Half: both kinds, about half each (12 ways span several alphabets unless drawn from Latin's 16 classes).
    rng = np.random.default_rng(1)
    within = [len(alphabets(sample_training_task(chars, 12, 1, 1, rng, rotations=True, within_alphabet=0.5))) == 1
              for _ in range(200)]
    assert 70 <= sum(within) <= 130
    with pytest.raises(ValueError, match="need an alphabet of 20 rotated classes; the largest has 16"):
        sample_training_task(chars, 20, 1, 1, rng, rotations=True, within_alphabet=1.0)


def test_a_within_alphabet_run_is_checked_before_it_trains(tiny_omniglot: Path, isolated_cache: Path) -> None:
    chars = load_split(tiny_omniglot, "background", progress=False)
    protonet = build_learner({"algorithm": "protonet"})
    StepBatches(protonet, chars, TrainConfig(ways=12, within_alphabet=0.5))
    with pytest.raises(ValueError, match="in 0..1; got 1.5"):
        StepBatches(protonet, chars, TrainConfig(ways=5, within_alphabet=1.5))
    with pytest.raises(ValueError, match="the largest has 16"):  # before any worker process draws a step
        StepBatches(protonet, chars, TrainConfig(ways=20, within_alphabet=0.5))
    pretrain = build_learner({"algorithm": "pretrain", "config": {"num_classes": 48}})
    with pytest.raises(ValueError, match="pretrain trains on batches of images, not episodes"):
        StepBatches(pretrain, chars, TrainConfig(within_alphabet=0.5))
    batch = StepBatches(protonet, chars, TrainConfig(ways=6, meta_batch=3, within_alphabet=1.0))[4]
    assert all(len({name.split("/")[0] for name in task.class_names}) == 1 for task in batch.tasks)


def test_evaluate_within_alphabet(tiny_omniglot: Path, isolated_cache: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert train.main(["--data-dir", str(tiny_omniglot), "--out", str(out), *SMALL_PROTONET]) == 0
    result = tmp_path / "result.json"
    args = ["--checkpoint", str(out / "model"), "--ways", "3", "--shots", "1", "--queries", "2", "--tasks", "4",
            "--data-dir", str(tiny_omniglot), "--within-alphabet"]
    assert evaluate.main([*args, "--json", str(result)]) == 0
    payload = json.loads(result.read_text())
    assert payload["within_alphabet"] is True and payload["pipeline"] == "canonical"
    assert "within one alphabet" in capsys.readouterr().out
    # The tiny evaluation split's alphabets hold 2 and 3 characters: 4-way within one alphabet is impossible.
    assert evaluate.main([*args[:2], "--ways", "4", *args[4:]]) == 2
    assert "within-alphabet tasks need an alphabet of 4 characters" in capsys.readouterr().err


def test_resume_safetensors_alone_resumes_a_run(tiny_omniglot: Path, isolated_cache: Path, tmp_path: Path) -> None:
    """The one file a run still in progress commits is enough to continue it on a fresh checkout."""
    out = tmp_path / "run"
    assert train.main(["--data-dir", str(tiny_omniglot), "--out", str(out), *SMALL_PROTONET, "--augment", "0.5"]) == 0
    for path in out.iterdir():
        if path.name != "resume.safetensors":
            path.unlink()
    assert train.main(["--data-dir", str(tiny_omniglot), "--out", str(out), *SMALL_PROTONET[:-3],
                       "--meta-steps", "6", "--no-progress", "--resume"]) == 0
    resumed = read_metadata(out / "last")
    assert resumed["meta_step"] == 6 and resumed["train"]["augment"] == 0.5  # the run's own settings


def test_fallback_drawings_are_counted_and_read_in_the_cached_order(tiny_omniglot: Path, isolated_cache: Path,
                                                                   tmp_path: Path) -> None:
    from tools.pipeline_fallbacks import count_fallbacks
    from engine.data.omniglot import iter_drawings

    # A copy of the tiny split with one drawing blanked: the app's preprocessing refuses it.
    with zipfile.ZipFile(tiny_omniglot / "images_evaluation.zip") as source:
        entries = [(name, source.read(name)) for name in source.namelist()]
    blank = io.BytesIO()
    Image.new("L", (105, 105), 255).save(blank, format="PNG")
    blanked = sorted(name for name, _ in entries if name.endswith(".png"))[3]
    with zipfile.ZipFile(tmp_path / "images_evaluation.zip", "w") as target:
        for name, data in entries:
            target.writestr(name, blank.getvalue() if name == blanked else data)

    report = count_fallbacks(tmp_path, "evaluation")
    assert report["drawings"] == 5 * 20 and report["fallbacks"] == 1
    assert report["by_reason"] == {"NoInkError": 1} and "drawing 4" in report["examples"][0]
    assert count_fallbacks(tiny_omniglot, "evaluation")["fallbacks"] == 0
    # iter_drawings yields the drawings in the order load_split caches them.
    chars = load_split(tiny_omniglot, "evaluation", progress=False)
    decoded = np.stack([decode_drawing(png) for _, _, png in iter_drawings(tiny_omniglot, "evaluation")])
    assert np.array_equal(decoded, chars.images.reshape(-1, 28, 28))

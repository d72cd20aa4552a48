"""The black-box learner (attention over the support set) and the pre-train + fine-tune baseline,
on tiny models and synthetic tasks (plus the tiny synthetic Omniglot for the training hooks)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine import evaluate, train
from engine.checkpoint import load_learner, save_learner
from engine.config import TrainConfig
from engine.data.omniglot import Splits, load_splits
from engine.data.tasks import ROTATIONS, Task
from engine.learners import AdaptSettings, Learner, get_learner_class
from engine.learners.blackbox import MAX_WAYS, SlottedTask
from engine.learners.gradient import META_PREFIX
from engine.learners.pretrain import GLOBAL_HEAD, HEAD_NAMES, Pretrain, labelled_batch
from engine.nets import BackboneConfig, embed
from engine.optim import INNER_OPTIMIZERS
from tests.test_learners import synthetic_task, tasks

SMALL = BackboneConfig(channels=8)


def make(name: str, **config: object) -> Learner:
    cls = get_learner_class(name)
    return cls(config=cls.config_class(**config), backbone=SMALL, seed=0)


def one_task(ways: int, shots: int, queries: int, seed: int = 0) -> Task:
    return synthetic_task(ways, shots, queries, torch.Generator().manual_seed(seed))


def predictions(learner: Learner, task: Task, settings: AdaptSettings | None = None) -> torch.Tensor:
    return learner.adapt(task.support_x, task.support_y, task.ways, settings).predict_proba(task.query_x)


# --------------------------------------------------------------------------- both


def new_trainer(name: str, splits: Splits, config: TrainConfig, out: Path) -> train.Trainer:
    cls = get_learner_class(name)
    learner = cls(config=cls.config_for_data(cls.config_class(), splits.train, config), backbone=SMALL, seed=0)
    return train.Trainer(learner, config, splits, out, torch.device("cpu"), provenance={}, progress=False)


@pytest.mark.parametrize("name", ["blackbox", "pretrain"])
def test_training_continues_exactly_after_a_restart(name: str, isolated_cache: Path, tiny_omniglot: Path,
                                                    tmp_path: Path) -> None:
    """Their own batches (random shapes and slots; image batches) come from the trainer's saved
    generator, so a resumed run takes the same steps as an uninterrupted one."""
    splits = load_splits(tiny_omniglot, progress=False)
    config = TrainConfig(ways=6, shots=2, queries=2, meta_batch=2, meta_steps=4, val_every=2, val_tasks=2)
    straight = new_trainer(name, splits, config, tmp_path / "straight")
    straight.run()
    first = new_trainer(name, splits, replace(config, meta_steps=2), tmp_path / "split")
    first.run()
    resumed = new_trainer(name, splits, config, tmp_path / "split")
    resumed.restore_state()
    resumed.run()
    assert resumed.step == straight.step == 4
    for key, value in straight.learner.params.items():
        assert torch.equal(resumed.learner.params[key], value), key
    assert not torch.equal(first.learner.params["conv0.weight"], straight.learner.params["conv0.weight"])


# --------------------------------------------------------------------------- blackbox


def test_blackbox_answers_any_ways_and_shots_from_one_learner() -> None:
    learner = make("blackbox")
    for ways in (2, 5, 20):
        for shots in (1, 5, 10):
            task = one_task(ways, shots, queries=2, seed=ways * 100 + shots)
            adapted = learner.adapt(task.support_x, task.support_y, ways)
            logits = adapted.predict_logits(task.query_x, False)
            assert logits.shape == (2 * ways, ways)
            assert torch.isfinite(logits).all()
            assert len(adapted.trace) == 1 and adapted.trace[0].step == 0
    with pytest.raises(ValueError, match="1 to 20 classes"):
        task = one_task(MAX_WAYS + 1, 1, 1)
        learner.adapt(task.support_x, task.support_y, MAX_WAYS + 1)


def test_blackbox_ignores_the_order_of_the_support_examples() -> None:
    learner = make("blackbox")
    task = one_task(5, 3, queries=2)
    order = torch.randperm(task.support_x.shape[0], generator=torch.Generator().manual_seed(3))
    shuffled = learner.adapt(task.support_x[order], task.support_y[order], 5).predict_proba(task.query_x)
    torch.testing.assert_close(shuffled, predictions(learner, task), rtol=1e-4, atol=1e-5)
    # ... but not the labels: swapping two classes' labels swaps their probabilities.
    swap = torch.tensor([1, 0, 2, 3, 4])
    swapped = learner.adapt(task.support_x, swap[task.support_y], 5).predict_proba(task.query_x)
    assert not torch.allclose(swapped, predictions(learner, task), atol=1e-3)


def test_blackbox_predicts_one_query_as_in_a_batch() -> None:
    learner = make("blackbox")
    task = one_task(4, 2, queries=3)
    adapted = learner.adapt(task.support_x, task.support_y, 4)
    together = adapted.predict_proba(task.query_x)
    for index in range(task.query_x.shape[0]):
        torch.testing.assert_close(adapted.predict_proba(task.query_x[index:index + 1])[0], together[index],
                                   rtol=1e-4, atol=1e-5)
    assert not torch.allclose(adapted.predict_proba(task.query_x, transductive=True), together)


def test_blackbox_meta_gradient_reaches_every_parameter() -> None:
    learner = make("blackbox")
    batch = [one_task(3, 2, 2, seed=1), one_task(6, 1, 2, seed=2)]
    learner.meta_loss(batch).loss.backward()
    for name, value in learner.params.items():
        assert value.grad is not None and torch.isfinite(value.grad).all(), name
        if name != "attn.labels":
            assert value.grad.abs().sum() > 0, name
    # Plain tasks use slots 0..ways-1: only those label embeddings get a gradient.
    label_grads = learner.params["attn.labels"].grad.abs().sum(dim=1)
    assert (label_grads[:6] > 0).all() and (label_grads[6:] == 0).all()


def test_blackbox_training_episodes_vary_in_shape_and_slots(isolated_cache: Path, tiny_omniglot: Path) -> None:
    chars = load_splits(tiny_omniglot, progress=False).train
    learner = make("blackbox", min_train_ways=2, min_train_shots=1)
    config = TrainConfig(ways=6, shots=3, queries=2, meta_batch=40)
    batch = learner.training_batch(chars, config, np.random.default_rng(0))
    assert len(batch) == 40 and all(isinstance(task, SlottedTask) for task in batch)
    assert {task.ways for task in batch} == set(range(2, 7)) and {task.shots for task in batch} == {1, 2, 3}
    for task in batch:
        assert len(task.slots) == task.ways == len(set(task.slots)) and max(task.slots) < MAX_WAYS
        assert task.support_x.shape[0] == task.ways * task.shots and task.query_x.shape[0] == task.ways * 2
    assert len({slot for task in batch for slot in task.slots}) == MAX_WAYS  # every slot gets trained
    # The episode's slots are what the loss uses: moving them changes it.
    task = batch[0]
    other = SlottedTask(**{**task.__dict__, "slots": tuple((s + 1) % MAX_WAYS for s in task.slots)})
    assert learner.meta_loss([task]).loss.item() != learner.meta_loss([other]).loss.item()
    # Same generator state, same batch (what --resume relies on).
    again = learner.training_batch(chars, config, np.random.default_rng(0))
    assert [t.slots for t in again] == [t.slots for t in batch]
    assert all(torch.equal(a.support_x, b.support_x) for a, b in zip(again, batch))
    with pytest.raises(ValueError, match="min_train_ways"):
        learner.training_batch(chars, TrainConfig(ways=21), np.random.default_rng(0))


def test_blackbox_checkpoint_round_trip_keeps_predictions(tmp_path: Path) -> None:
    learner = make("blackbox", dim=32, heads=2, blocks=1)
    learner.params = {k: (v + 0.01 * torch.randn_like(v)).detach().requires_grad_(True)
                      for k, v in learner.params.items()}  # not just the seeded initialisation
    save_learner(tmp_path / "model", learner)
    loaded = load_learner(tmp_path / "model")
    assert loaded.config == learner.config and loaded.backbone == learner.backbone
    task = one_task(5, 2, 3)
    torch.testing.assert_close(predictions(loaded, task), predictions(learner, task))


# --------------------------------------------------------------------------- pretrain


def backbone_names(learner: Learner) -> list[str]:
    return [name for name in learner.params if not name.startswith(META_PREFIX)]


def test_pretrain_head_is_sized_by_the_data_and_survives_a_checkpoint(isolated_cache: Path, tiny_omniglot: Path,
                                                                        tmp_path: Path) -> None:
    chars = load_splits(tiny_omniglot, progress=False).train
    config = TrainConfig(rotations=True)
    learner_config = Pretrain.config_for_data(Pretrain.config_class(batch_size=12), chars, config)
    assert learner_config.num_classes == chars.num_classes * ROTATIONS
    learner = Pretrain(config=learner_config, backbone=SMALL)
    assert learner.params[GLOBAL_HEAD + "weight"].shape == (chars.num_classes * ROTATIONS, 8)
    assert learner.params[GLOBAL_HEAD + "bias"].shape == (chars.num_classes * ROTATIONS,)
    save_learner(tmp_path / "model", learner)
    loaded = load_learner(tmp_path / "model")
    assert loaded.config.num_classes == chars.num_classes * ROTATIONS
    assert loaded.params[GLOBAL_HEAD + "weight"].shape == learner.params[GLOBAL_HEAD + "weight"].shape
    # A batch is one classification problem over every class; a mismatch with the head is refused.
    (batch,) = learner.training_batch(chars, config, np.random.default_rng(0))
    assert batch.query_x.shape == (12, 1, 28, 28) and batch.support_x.shape[0] == 0
    assert batch.ways == learner_config.num_classes and int(batch.query_y.max()) < batch.ways
    with pytest.raises(ValueError, match="outputs but the training data has"):
        learner.training_batch(chars, TrainConfig(rotations=False), np.random.default_rng(0))


def test_pretrain_batches_label_rotations_as_sample_task_does(isolated_cache: Path, tiny_omniglot: Path) -> None:
    chars = load_splits(tiny_omniglot, progress=False).train
    batch = labelled_batch(chars, 64, np.random.default_rng(5), rotations=True)
    assert len(set(batch.query_y.tolist())) > 10
    for image, label in zip(batch.query_x, batch.query_y.tolist()):
        character, turns = divmod(label, ROTATIONS)
        candidates = [np.rot90(drawing, k=turns) for drawing in chars.images[character]]
        pixels = np.rint(image[0].numpy() * 255).astype(np.uint8)
        assert any(np.array_equal(pixels, candidate) for candidate in candidates)
        assert batch.class_names[label].startswith(chars.characters[character])


def test_pretrain_loss_is_ordinary_classification_with_the_global_head() -> None:
    learner = make("pretrain", num_classes=7)
    generator = torch.Generator().manual_seed(0)
    x, y = torch.rand(10, 1, 28, 28, generator=generator), torch.randint(7, (10,), generator=generator)
    batch = Task(support_x=x[:0], support_y=y[:0], query_x=x, query_y=y, ways=7, shots=0, class_names=())
    result = learner.meta_loss([batch])
    params = learner.detached_params()
    logits = F.linear(embed(params, x, SMALL), params[GLOBAL_HEAD + "weight"], params[GLOBAL_HEAD + "bias"])
    assert result.loss.item() == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    result.loss.backward()
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in learner.params.values())
    with pytest.raises(ValueError, match="do not fit"):
        learner.meta_loss(tasks(1, ways=8))


@pytest.mark.parametrize("mode", ["head", "all"])
def test_pretrain_finetunes_the_head_only_or_every_layer_with_a_scaled_step(mode: str) -> None:
    """SGD from a zero head: the head moves by -lr * g; the backbone stays put ("head") or moves by
    -lr * scale * g ("all"). Two steps, since at a zero head the backbone's gradient is exactly zero.
    Checked through the adapted model's predictions against the same steps taken by hand."""
    lr, scale, steps = 0.5, 0.1, 2
    learner = make("pretrain", num_classes=5, inner_lr=lr, backbone_lr_scale=scale)
    task = one_task(3, 2, 2)
    fast = {name: learner.params[name].detach().clone() for name in backbone_names(learner)}
    fast |= {"head.weight": torch.zeros(3, 8), "head.bias": torch.zeros(3)}
    backbone_rate = 0.0 if mode == "head" else lr * scale
    for _ in range(steps):
        fast = {name: value.requires_grad_(True) for name, value in fast.items()}
        logits = F.linear(embed(fast, task.support_x, SMALL), fast["head.weight"], fast["head.bias"])
        grads = dict(zip(fast, torch.autograd.grad(F.cross_entropy(logits, task.support_y), list(fast.values()))))
        fast = {name: (value - (lr if name in HEAD_NAMES else backbone_rate) * grads[name]).detach()
                for name, value in fast.items()}
    if mode == "head":
        assert all(torch.equal(fast[name], learner.params[name].detach()) for name in backbone_names(learner))
    num_support = task.support_x.shape[0]
    features = embed(fast, torch.cat([task.support_x, task.query_x]), SMALL, stats_count=num_support)[num_support:]
    manual = torch.softmax(F.linear(features, fast["head.weight"], fast["head.bias"]), dim=-1)

    adapted = learner.adapt(task.support_x, task.support_y, 3, AdaptSettings(steps=steps, finetune=mode))
    torch.testing.assert_close(adapted.predict_proba(task.query_x), manual, rtol=1e-4, atol=1e-6)
    # The other mode predicts differently: the backbone really is frozen / really moves.
    other = "all" if mode == "head" else "head"
    different = learner.adapt(task.support_x, task.support_y, 3, AdaptSettings(steps=steps, finetune=other))
    assert not torch.allclose(different.predict_proba(task.query_x), manual, atol=1e-6)


def test_pretrain_default_mode_comes_from_the_config_and_bad_modes_are_refused() -> None:
    task = one_task(3, 2, 2)
    head = make("pretrain", num_classes=5, finetune="head")
    all_layers = make("pretrain", num_classes=5, finetune="all")
    settings = AdaptSettings(steps=2)
    torch.testing.assert_close(predictions(head, task, settings),
                               predictions(all_layers, task, AdaptSettings(steps=2, finetune="head")))
    assert not torch.allclose(predictions(head, task, settings), predictions(all_layers, task, settings))
    rates = all_layers.adapt_step_sizes(settings)
    assert isinstance(rates, dict) and set(rates) == set(backbone_names(all_layers)) | set(HEAD_NAMES)
    assert float(rates["conv0.weight"]) == pytest.approx(0.1 * float(rates["head.weight"]))
    assert all_layers.inner_lr(settings) == all_layers.config.inner_lr  # what the app displays
    with pytest.raises(ValueError, match="not 'everything'"):
        head.adapt(task.support_x, task.support_y, 3, AdaptSettings(finetune="everything"))
    with pytest.raises(ValueError, match="finetune must be one of"):
        make("pretrain", finetune="everything")


@pytest.mark.parametrize("optimizer", sorted(INNER_OPTIMIZERS))
@pytest.mark.parametrize("mode", ["head", "all"])
def test_pretrain_adapts_with_every_inner_optimizer_without_writing_its_parameters(optimizer: str,
                                                                                    mode: str) -> None:
    learner = make("pretrain", num_classes=5)
    before = {name: value.detach().clone() for name, value in learner.params.items()}
    task = one_task(4, 2, 2)
    adapted = learner.adapt(task.support_x, task.support_y, 4, AdaptSettings(steps=3, optimizer=optimizer,
                                                                            finetune=mode))
    probabilities = adapted.predict_proba(task.query_x)
    assert probabilities.shape == (8, 4) and torch.isfinite(probabilities).all()
    assert [record.step for record in adapted.trace] == [0, 1, 2, 3]
    assert adapted.trace[-1].loss < adapted.trace[0].loss
    for name, value in learner.params.items():
        assert torch.equal(value.detach(), before[name]), name


def test_evaluate_chooses_the_finetuning_mode(isolated_cache: Path, tiny_omniglot: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    learner = make("pretrain", num_classes=5)
    save_learner(tmp_path / "model", learner)
    results = {}
    for mode in ("head", "all"):
        path = tmp_path / f"{mode}.json"
        assert evaluate.main(["--checkpoint", str(tmp_path / "model"), "--ways", "3", "--shots", "2", "--tasks", "3",
                              "--queries", "2", "--data-dir", str(tiny_omniglot), "--finetune", mode,
                              "--inner-steps", "3", "--json", str(path)]) == 0
        results[mode] = __import__("json").loads(path.read_text())
    assert results["head"]["finetune"] == "head" and results["all"]["finetune"] == "all"
    assert "fine-tuning all" in capsys.readouterr().out
    # A learner without the choice refuses the flag rather than silently ignoring it.
    save_learner(tmp_path / "blackbox", make("blackbox"))
    assert evaluate.main(["--checkpoint", str(tmp_path / "blackbox"), "--data-dir", str(tiny_omniglot),
                          "--finetune", "head"]) == 2
    assert "blackbox cannot fine-tune 'head'" in capsys.readouterr().err

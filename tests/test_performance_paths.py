"""The fast paths compute exactly what the plain autograd reference computes (float64, tight
tolerances): the fused inner-loop kernels, PyTorch's batch norm inside ``engine.nets``, cached
support statistics for predictions, the multi-tensor SGD step and threaded comparisons. Speed
itself is measured by ``python -m benchmarks.bench``, not here."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from engine import kernels, nets
from engine.compare import compare
from engine.data.tasks import Task
from engine.learners import LEARNERS, AdaptSettings, Learner
from engine.learners.imaml import ProximalProblem
from engine.nets import BackboneConfig, Params, classify, embed, init_backbone
from engine.optim import InnerProblem
from benchmarks.peers import module_from_params, naive_adapt
from tests.test_learners import make, meta_gradient, tasks, to_double

SMALL = BackboneConfig(channels=6)
MAXPOOL = BackboneConfig(channels=6, downsample="maxpool")
TIGHT = {"rtol": 1e-9, "atol": 1e-11}


def random_network(backbone: BackboneConfig, ways: int, seed: int = 0) -> Params:
    """Backbone + head in float64, batch-norm parameters and head away from their initial values
    (so every gradient term is exercised)."""
    generator = torch.Generator().manual_seed(seed)
    params = {name: value.double() for name, value in init_backbone(backbone, generator).items()}
    for name in params:
        if name.startswith("bn"):
            noise = torch.randn(params[name].shape, generator=generator, dtype=torch.float64)
            params[name] = params[name] + 0.2 * noise
    params["head.weight"] = torch.randn(ways, backbone.embedding_dim, generator=generator, dtype=torch.float64)
    params["head.bias"] = torch.randn(ways, generator=generator, dtype=torch.float64)
    return params


def images(count: int, seed: int) -> torch.Tensor:
    return torch.rand(count, 1, 28, 28, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def autograd_loss_and_grads(params: Params, x: torch.Tensor, y: torch.Tensor,
                            backbone: BackboneConfig) -> tuple[torch.Tensor, Params]:
    leaves = {name: value.clone().requires_grad_(True) for name, value in params.items()}
    loss = F.cross_entropy(classify(leaves, x, backbone), y)
    return loss.detach(), dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))


@pytest.mark.parametrize("backbone", [SMALL, MAXPOOL], ids=["stride", "maxpool"])
@pytest.mark.parametrize(("ways", "shots"), [(2, 1), (5, 3)])
def test_fused_support_gradient_equals_autograd(backbone: BackboneConfig, ways: int, shots: int) -> None:
    params = random_network(backbone, ways)
    x, y = images(ways * shots, 1), torch.arange(ways).repeat_interleave(shots)
    loss, grads = autograd_loss_and_grads(params, x, y, backbone)
    fused = kernels.support_pass(params, x, y, backbone)
    torch.testing.assert_close(fused.loss, loss, **TIGHT)
    assert fused.grads is not None and list(fused.grads) == list(params)
    for name in params:
        torch.testing.assert_close(fused.grads[name], grads[name], **TIGHT, msg=name)


@pytest.mark.parametrize("downsample", ["stride", "maxpool"])
@pytest.mark.parametrize("shots", [1, 4])
def test_fused_path_in_float32_matches_autograd(shots: int, downsample: str) -> None:
    """float32 takes other kernels (oneDNN, and PyTorch's own first-layer convolution), and from
    CHANNELS_LAST_MIN_IMAGES images on the channels-last layout (20 images here; 5 stay NCHW)."""
    backbone = BackboneConfig(channels=16, downsample=downsample)
    params = {name: value.float() for name, value in random_network(backbone, 5).items()}
    x, y = images(5 * shots, 9).float(), torch.arange(5).repeat(shots)
    assert (kernels.layout_for(x) == torch.channels_last) == (len(x) >= kernels.CHANNELS_LAST_MIN_IMAGES)
    loss, grads = autograd_loss_and_grads(params, x, y, backbone)
    fused = kernels.support_pass(params, x, y, backbone)
    torch.testing.assert_close(fused.loss, loss, rtol=1e-5, atol=1e-6)
    assert fused.grads is not None
    for name in params:
        assert fused.grads[name].is_contiguous(), name  # optimizers may view them flat
        torch.testing.assert_close(fused.grads[name], grads[name], rtol=1e-4, atol=1e-5, msg=name)
    queries = images(kernels.CHANNELS_LAST_MIN_IMAGES + 4, 10).float()
    joint = classify(params, torch.cat([x, queries]), backbone, stats_count=len(x))[len(x):]
    assert fused.stats is not None
    # Two float32 routes through four batch norms (NHWC queries against an NCHW joint batch): 1e-4.
    torch.testing.assert_close(kernels.logits_with_stats(params, queries, backbone, fused.stats), joint,
                               rtol=1e-4, atol=1e-4)
    features, _ = kernels.support_embedding(nets.backbone_only(params), x, backbone)
    torch.testing.assert_close(features, embed(params, x, backbone), rtol=1e-4, atol=1e-5)


def test_zero_head_gives_exactly_zero_backbone_gradient_as_autograd_does() -> None:
    params = random_network(SMALL, 3)
    params["head.weight"] = torch.zeros_like(params["head.weight"])
    x, y = images(6, 2), torch.arange(3).repeat(2)
    _, grads = autograd_loss_and_grads(params, x, y, SMALL)
    fused = kernels.support_pass(params, x, y, SMALL)
    assert fused.grads is not None
    for name in params:
        torch.testing.assert_close(fused.grads[name], grads[name], **TIGHT, msg=name)
    assert all(not fused.grads[name].any() for name in params if not name.startswith("head."))


@pytest.mark.parametrize("backbone", [SMALL, MAXPOOL], ids=["stride", "maxpool"])
def test_cached_support_statistics_predict_as_the_joint_batch(backbone: BackboneConfig) -> None:
    params = random_network(backbone, 4)
    support, queries = images(8, 3), images(5, 4)
    fused = kernels.support_pass(params, support, torch.arange(4).repeat(2), backbone, with_grads=False)
    assert fused.grads is None and fused.stats is not None
    joint = classify(params, torch.cat([support, queries]), backbone, stats_count=8)[8:]
    torch.testing.assert_close(kernels.logits_with_stats(params, queries, backbone, fused.stats), joint, **TIGHT)
    features, stats = kernels.support_embedding(nets.backbone_only(params), support, backbone)
    torch.testing.assert_close(features, embed(params, support, backbone), **TIGHT)
    torch.testing.assert_close(kernels.embed_with_stats(params, queries, backbone, stats),
                               embed(params, torch.cat([support, queries]), backbone, stats_count=8)[8:], **TIGHT)


def test_extra_objective_terms_join_the_fused_gradient() -> None:
    """iMAML's proximal term: cross-entropy by the kernels, the penalty in closed form."""
    params = random_network(SMALL, 3)
    anchor = {name: value + 0.1 for name, value in params.items()}
    x, y = images(6, 5), torch.arange(3).repeat(2)
    problem = ProximalProblem(x, y, SMALL, anchor=anchor, lam=0.7)
    leaves = {name: value.clone().requires_grad_(True) for name, value in params.items()}
    with kernels.fused(False):
        reference = problem.evaluate(leaves)
    fast = problem.evaluate(params)
    assert fast.stats is not None and reference.stats is None
    torch.testing.assert_close(fast.loss, reference.loss.detach(), **TIGHT)
    assert fast.grads is not None and reference.grads is not None
    for name in params:
        torch.testing.assert_close(fast.grads[name], reference.grads[name], **TIGHT, msg=name)


@pytest.mark.parametrize("path", ["fused", "autograd", "proximal", "frozen backbone"])
def test_an_evaluation_without_gradient_completes_it_later_exactly(path: str) -> None:
    """``evaluate(with_grads=False)`` followed by ``gradient()`` (what armijo's accepted trial does)
    gives the gradient of an eager evaluation, on every path; it is computed once."""
    params = random_network(SMALL, 3)
    x, y = images(6, 7), torch.arange(3).repeat(2)
    problem: InnerProblem = InnerProblem(x, y, SMALL)
    if path == "proximal":
        problem = ProximalProblem(x, y, SMALL, anchor={name: value + 0.1 for name, value in params.items()}, lam=0.7)
    if path == "frozen backbone":
        backbone = frozenset(name for name in params if not name.startswith("head."))
        eager = kernels.support_pass(params, x, y, SMALL, True, backbone, kernels.FrozenBackbone())
        lazy = kernels.support_pass(params, x, y, SMALL, False, backbone, kernels.FrozenBackbone())
    else:
        with kernels.fused(path != "autograd"):
            eager, lazy = problem.evaluate(params), problem.evaluate(params, with_grads=False)
    assert lazy.grads is None and eager.grads is not None
    torch.testing.assert_close(lazy.loss.detach(), eager.loss.detach(), **TIGHT)
    completed = lazy.gradient()
    assert lazy.gradient() is completed and list(completed) == list(params)
    for name in params:
        torch.testing.assert_close(completed[name], eager.grads[name], **TIGHT, msg=name)
    assert any(completed[name].any() for name in params)


def test_inner_problem_keeps_autograd_when_a_graph_is_needed() -> None:
    params = {name: value.requires_grad_(True) for name, value in random_network(SMALL, 2).items()}
    problem = InnerProblem(images(4, 6), torch.tensor([0, 1, 0, 1]), SMALL, create_graph=True)
    result = problem.evaluate(params)
    assert result.stats is None and result.grads is not None
    assert all(grad.requires_grad for grad in result.grads.values())  # differentiable: second-order MAML


def test_builtin_batch_norm_equals_the_hand_written_one_to_second_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """MAML's meta-gradient (a double backward through every inner step) with PyTorch's batch
    norm kernel in the inner loop equals the one through the elementary-op batch norm."""
    batch = tasks(2, dtype=torch.float64)
    fast = meta_gradient(to_double(make("maml", inner_steps=2, inner_lr=0.5)), batch)
    monkeypatch.setattr(nets, "batch_norm", nets.batch_norm_by_hand)
    reference = meta_gradient(to_double(make("maml", inner_steps=2, inner_lr=0.5)), batch)
    for name in reference:
        torch.testing.assert_close(fast[name], reference[name], **TIGHT, msg=name)


def test_partial_statistics_batch_norm_has_the_hand_written_gradient() -> None:
    """Queries normalised with the support set's statistics: closed-form backward = autograd's."""
    x = images(7, 8).expand(7, 3, 28, 28)[:, :, :6, :5].contiguous().requires_grad_(True)
    weight = torch.rand(3, dtype=torch.float64, requires_grad=True)
    bias = torch.rand(3, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(7, 3, 6, 5, dtype=torch.float64)
    fast = nets.batch_norm(x, weight, bias, 4)
    reference = nets.batch_norm_by_hand(x, weight, bias, 4)
    torch.testing.assert_close(fast, reference, **TIGHT)
    for mine, theirs in zip(torch.autograd.grad(fast, [x, weight, bias], upstream),
                            torch.autograd.grad(reference, [x, weight, bias], upstream)):
        torch.testing.assert_close(mine, theirs, **TIGHT)
    assert torch.autograd.gradcheck(lambda a, w, b: nets.PartialStatsBatchNorm.apply(a, w, b, 4, 1), (x, weight, bias))
    grad_x = torch.autograd.grad(nets.batch_norm(x, weight, bias, 4), x, upstream, create_graph=True)[0]
    with pytest.raises(RuntimeError):  # never a silently wrong second derivative
        grad_x.sum().backward()


def test_grouped_batch_norm_is_per_group_batch_norm() -> None:
    """Tasks embedded together (``groups``) are normalised exactly as one by one, and so is their
    gradient, through the closed-form backward as through the hand-written ops."""
    x = images(12, 10).expand(12, 3, 28, 28)[:, :, :5, :6].contiguous().requires_grad_(True)
    weight = torch.rand(3, dtype=torch.float64, requires_grad=True)
    bias = torch.rand(3, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(12, 3, 5, 6, dtype=torch.float64)
    together = nets.batch_norm(x, weight, bias, 2, groups=3)
    apart = torch.cat([nets.batch_norm_by_hand(part, weight, bias, 2) for part in x.split(4)])
    torch.testing.assert_close(together, apart, **TIGHT)
    for mine, theirs in zip(torch.autograd.grad(together, [x, weight, bias], upstream),
                            torch.autograd.grad(apart, [x, weight, bias], upstream)):
        torch.testing.assert_close(mine, theirs, **TIGHT)
    assert torch.autograd.gradcheck(lambda a, w, b: nets.PartialStatsBatchNorm.apply(a, w, b, 2, 3), (x, weight, bias))
    params = random_network(SMALL, 2)
    tasks_images = images(3 * 7, 11)
    torch.testing.assert_close(
        embed(params, tasks_images, SMALL, stats_count=4, groups=3),
        torch.cat([embed(params, part, SMALL, stats_count=4) for part in tasks_images.split(7)]), **TIGHT)


def test_hand_written_batch_norm_is_vmap_safe() -> None:
    """Under vmap ``batch_norm`` takes the hand-written path and still matches per-task calls."""
    x = images(12, 7).view(3, 4, 1, 28, 28).expand(3, 4, 2, 28, 28).contiguous()
    weight, bias = torch.rand(2, dtype=torch.float64), torch.rand(2, dtype=torch.float64)
    batched = torch.func.vmap(lambda t: nets.batch_norm(t, weight, bias, None))(x)
    for index in range(3):
        torch.testing.assert_close(batched[index], F.batch_norm(x[index], None, None, weight, bias, True, 0.0,
                                                                nets.BN_EPS), **TIGHT)


def gradient_learners() -> list[str]:
    return sorted(name for name, cls in LEARNERS.items() if cls.has_inner_loop)


def double_learner(name: str) -> Learner:
    learner = LEARNERS[name](backbone=SMALL, seed=3)
    return to_double(learner)


@pytest.mark.parametrize("name", gradient_learners())
@pytest.mark.parametrize("optimizer", ["sgd", "bounded", "natgrad"])
def test_adaptation_equals_the_autograd_reference(name: str, optimizer: str) -> None:
    """Every gradient-based learner: same trace and same predictions with and without the fast
    paths (fused kernels, multi-tensor SGD, cached support statistics)."""
    learner = double_learner(name)
    task = tasks(1, ways=4, shots=2, queries=3, dtype=torch.float64)[0]
    settings = AdaptSettings(steps=4, lr=0.3, optimizer=optimizer)
    fast = learner.adapt(task.support_x, task.support_y, task.ways, settings)
    with kernels.fused(False):
        reference = learner.adapt(task.support_x, task.support_y, task.ways, settings)
    assert [r.step for r in fast.trace] == [r.step for r in reference.trace]
    for mine, theirs in zip(fast.trace, reference.trace):
        assert mine.loss == pytest.approx(theirs.loss, rel=1e-9, abs=1e-12)
        assert mine.accuracy == theirs.accuracy
    for transductive in (False, True):
        torch.testing.assert_close(fast.predict_proba(task.query_x, transductive),
                                   reference.predict_proba(task.query_x, transductive), **TIGHT)


@pytest.mark.parametrize(("name", "steps", "passes"), [("metasgd", 1, 1), ("maml", 3, 3), ("mc2", 2, 2)])
def test_the_pass_after_the_zero_head_step_reuses_the_backbones_pass(name: str, steps: int, passes: int,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The first step from the zero head moves only the head, so the evaluation after it reuses the
    backbone's pass (``kernels.LastBackbonePass``): one backbone pass fewer per adaptation, the same
    trace as the autograd reference (``test_adaptation_equals_the_autograd_reference``)."""
    learner = LEARNERS[name](backbone=SMALL, seed=3)
    task = tasks(1, ways=4, shots=2, queries=3)[0]
    calls: list[int] = []
    full_pass = kernels._forward
    monkeypatch.setattr(kernels, "_forward", lambda *args: calls.append(1) or full_pass(*args))
    adapted = learner.adapt(task.support_x, task.support_y, task.ways, AdaptSettings(steps=steps))
    assert len(adapted.trace) == steps + 1 and len(calls) == passes
    assert adapted.trace[1].loss < adapted.trace[0].loss  # the head did move


def test_protonet_cached_support_statistics_predict_as_before() -> None:
    learner = double_learner("protonet")
    task = tasks(1, ways=3, shots=2, queries=2, dtype=torch.float64)[0]
    fast = learner.adapt(task.support_x, task.support_y, task.ways)
    with kernels.fused(False):
        reference = learner.adapt(task.support_x, task.support_y, task.ways)
    assert fast.trace[0].loss == pytest.approx(reference.trace[0].loss, rel=1e-9)
    torch.testing.assert_close(fast.predict_proba(task.query_x), reference.predict_proba(task.query_x), **TIGHT)


@pytest.mark.parametrize(("name", "steps"), [("maml", 1), ("maml", 2), ("metasgd", 1), ("mc1", 1), ("mc2", 2),
                                           ("fomaml", 1), ("fomaml", 2)])
def test_closed_form_first_inner_step_keeps_the_second_order_meta_gradient(name: str, steps: int) -> None:
    """MAML-family learners take their first step from the zero head in closed form (and, with one
    step, a single forward pass): the same meta-gradient for every meta-parameter, including
    learned rates and curvature matrices whose gradient from that step is exactly zero."""
    batch = tasks(2, dtype=torch.float64)
    fast = meta_gradient(to_double(make(name, inner_steps=steps, inner_lr=0.5)), batch)
    with kernels.fused(False):
        reference = meta_gradient(to_double(make(name, inner_steps=steps, inner_lr=0.5)), batch)
    for key in reference:
        torch.testing.assert_close(fast[key], reference[key], rtol=1e-9, atol=1e-12, msg=key)


@pytest.mark.parametrize("name", ["fomaml", "reptile", "imaml"])
def test_meta_gradients_of_graph_free_inner_loops_equal_the_reference(name: str) -> None:
    batch = tasks(2, dtype=torch.float64)
    fast = meta_gradient(to_double(make(name, inner_steps=2)), batch)
    with kernels.fused(False):
        reference = meta_gradient(to_double(make(name, inner_steps=2)), batch)
    for key in reference:
        torch.testing.assert_close(fast[key], reference[key], **TIGHT, msg=key)


def test_naive_reference_module_adapts_to_the_same_weights() -> None:
    """The benchmark's nn.Module reference computes our adaptation (batch statistics of the
    batch it sees: compared with our transductive predictions)."""
    learner = double_learner("maml")
    task = tasks(1, ways=3, shots=1, queries=4, dtype=torch.float64)[0]
    ours = learner.adapt(task.support_x, task.support_y, 3, AdaptSettings(steps=5, lr=0.4))
    module = module_from_params(learner.params, SMALL, 3).double()
    theirs = naive_adapt(module, task.support_x, task.support_y, task.query_x, 5, 0.4)
    torch.testing.assert_close(theirs, ours.predict_proba(task.query_x, transductive=True), **TIGHT)


def test_threaded_comparison_returns_the_same_results_in_order() -> None:
    models = {name: LEARNERS[name](backbone=BackboneConfig(channels=4), seed=1) for name in sorted(LEARNERS)}
    task: Task = tasks(1, ways=3, shots=2, queries=2)[0]
    settings = AdaptSettings(steps=3)
    serial = compare(models, task.support_x, task.support_y, 3, task.query_x, settings)
    threaded = compare(models, task.support_x, task.support_y, 3, task.query_x, settings, workers=3)
    assert [r.name for r in threaded] == [r.name for r in serial] == list(models)
    for one, other in zip(serial, threaded):
        assert one.error == other.error
        if one.probabilities is not None:
            torch.testing.assert_close(torch.from_numpy(other.probabilities), torch.from_numpy(one.probabilities))


# In a fresh interpreter: page faults while the same 40 MiB of 1 MiB activations are allocated,
# touched and freed five times over (an inner loop's pattern), with or without keep_freed_memory().
_FAULT_PROBE = """
import resource, sys, torch
from engine.device import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
def cycle():
    blocks = [torch.ones(1 << 18) for _ in range(40)]
    del blocks
cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    cycle()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_keep_freed_memory_reuses_freed_activations_without_page_faults() -> None:
    import subprocess
    import sys

    if not sys.platform.startswith("linux"):
        pytest.skip("glibc malloc only")

    def faults(mode: str) -> tuple[str, int]:
        result = subprocess.run([sys.executable, "-c", _FAULT_PROBE, mode], capture_output=True, text=True,
                                check=True, cwd=Path(__file__).resolve().parent.parent)
        applied, count = result.stdout.split()
        return applied, int(count)

    applied, kept = faults("keep")
    if applied != "True":
        pytest.skip("mallopt is not available (not glibc)")
    _, default = faults("default")
    # Default glibc hands the freed blocks back to the kernel (munmap or trimming), so each cycle
    # faults its pages in again: 10k-20k faults here against 1.5k-2.5k kept.
    assert kept * 4 < default, (kept, default)

"""The inner-loop optimizers' maths, pinned on tiny networks and synthetic tasks (no dataset)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from engine import kernels
from engine.learners import AdaptSettings, get_learner_class
from engine.learners.gradient import inner_loop
from engine.nets import BackboneConfig, Params, classify, embed, init_backbone, zero_head
from engine.optim import INNER_OPTIMIZERS, InnerProblem, make_inner_optimizer
from engine.optim.bounded import BoundedGradient
from engine.optim.curvature import damped_solve, head_matrix, softmax_head_fisher, with_ones
from engine.optim.kfac import (
    KFAC,
    LayerTrace,
    conv_input_factor,
    extra_curvature,
    kronecker_solve,
    label_cotangents,
    linear_input_factor,
    output_factor,
    pi_damped,
    traced_forward,
)
from engine.optim.natgrad import NaturalGradient
from engine.optim.newton import Newton

ALL = sorted(INNER_OPTIMIZERS)
TINY = BackboneConfig(channels=4)
DOUBLE = torch.float64


def images(count: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.rand(count, 1, 28, 28, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def blobs(ways: int, shots: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-dependent blobs: a centre per class plus noise, labels 0..ways-1."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.rand(ways, 1, 28, 28, generator=generator)
    x = centres.repeat_interleave(shots, dim=0) + 0.3 * torch.rand(ways * shots, 1, 28, 28, generator=generator)
    return x, torch.arange(ways).repeat_interleave(shots)


def network(config: BackboneConfig, ways: int, head_scale: float = 0.0, seed: int = 0) -> Params:
    """Float64 backbone weights plus a head (zero, or random with ``head_scale``), requiring grad."""
    generator = torch.Generator().manual_seed(seed)
    params = {k: v.double() for k, v in init_backbone(config, generator).items()}
    head = zero_head(ways, config, torch.zeros((), dtype=DOUBLE))
    head = {k: head_scale * torch.randn(v.shape, generator=generator, dtype=DOUBLE) for k, v in head.items()}
    return {k: v.requires_grad_(True) for k, v in {**params, **head}.items()}


def gradients(params: Params, problem: InnerProblem) -> tuple[torch.Tensor, Params]:
    loss = problem.loss(params)
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=problem.create_graph)
    return loss, dict(zip(params, grads))


def leaves(params: Params) -> Params:
    """Fast weights cut from the previous step's graph, as ``adapt`` does."""
    return {k: v.detach().requires_grad_(True) for k, v in params.items()}


def flat(tensors: Params, names: list[str]) -> torch.Tensor:
    return torch.cat([tensors[name].reshape(-1) for name in names])


# ----------------------------------------------------------------------------- registry


def test_every_optimizer_is_registered_documented_and_fresh() -> None:
    assert {"sgd", "armijo", "bounded", "newton", "natgrad", "kfac"} <= set(INNER_OPTIMIZERS)
    for name in ALL:
        optimizer = make_inner_optimizer(name)
        assert optimizer.name == name and optimizer.messages == []
        assert "<-" in (type(optimizer).__doc__ or ""), f"{name} documents its update formula"
        assert make_inner_optimizer(name) is not optimizer


# ----------------------------------------------------------------------------- newton


def test_damped_newton_solve_lands_on_the_minimum_of_a_quadratic_in_one_step() -> None:
    generator = torch.Generator().manual_seed(0)
    basis = torch.randn(6, 6, generator=generator, dtype=DOUBLE)
    curvature = basis @ basis.T + 0.1 * torch.eye(6, dtype=DOUBLE)  # f(x) = x^T Q x / 2 - b^T x
    linear = torch.randn(6, generator=generator, dtype=DOUBLE)
    start = torch.randn(6, generator=generator, dtype=DOUBLE)
    step = damped_solve(curvature, curvature @ start - linear, damping=0.0)
    assert step is not None
    torch.testing.assert_close(start - step, torch.linalg.solve(curvature, linear), rtol=1e-10, atol=1e-10)
    # Damping shrinks the step: (Q + lambda I)^-1 g, not Q^-1 g.
    damped = damped_solve(curvature, curvature @ start - linear, damping=1.0)
    assert damped is not None and damped.norm() < step.norm()
    # Not positive definite: no solution rather than a wrong one.
    assert damped_solve(-curvature, linear, damping=0.0) is None


@dataclass(frozen=True)
class PenalisedProblem(InnerProblem):
    """Cross-entropy plus strength/2 ||params||^2, a problem with an extra term like iMAML's."""

    strength: float = 0.0

    def objective(self, params: Params, logits: torch.Tensor) -> torch.Tensor:
        penalty = sum((value**2).sum() for value in params.values())
        return super().objective(params, logits) + 0.5 * self.strength * penalty


@pytest.mark.parametrize("strength", [0.0, 0.5])
def test_newton_solves_softmax_regression_in_a_few_steps(strength: float) -> None:
    """lr = 0 freezes the backbone, leaving softmax regression on fixed features: Newton reaches
    a stationary point (the data are not separable: 30 points, 3 random classes, 5-d features)
    in a few steps, where gradient descent is still far from it. With an extra penalty term the
    Hessian is the objective's, penalty included."""
    x, y = images(30, seed=1, dtype=DOUBLE), torch.randint(0, 3, (30,), generator=torch.Generator().manual_seed(2))
    problem = PenalisedProblem(x, y, TINY, strength=strength)
    runs: dict[str, float] = {}
    for name, optimizer, lr in [("newton", Newton(damping=1e-8), 0.0), ("sgd", make_inner_optimizer("sgd"), 0.4)]:
        params = network(TINY, ways=3)
        losses = []
        for _ in range(8):
            loss, grads = gradients(params, problem)
            losses.append(loss.item())
            params = leaves(optimizer.step(params, grads, loss, lr, problem))
        _, grads = gradients(params, problem)
        runs[name] = flat(grads, ["head.weight", "head.bias"]).norm().item()
        assert all(b <= a for a, b in zip(losses, losses[1:])), f"{name}: {losses}"
    assert runs["newton"] < 1e-9 < 1e-3 < runs["sgd"], runs


def test_newton_falls_back_to_a_gradient_step_with_a_message() -> None:
    x, y = blobs(3, 2, seed=0)
    problem = InnerProblem(x.double(), y, TINY)
    params = network(TINY, ways=3, head_scale=0.1)
    loss, grads = gradients(params, problem)
    for optimizer in [Newton(damping=-1.0, line_search=False), NaturalGradient(damping=-1.0, line_search=False)]:
        stepped = optimizer.step(params, grads, loss, 0.3, problem)
        for name, value in params.items():
            torch.testing.assert_close(stepped[name], value - 0.3 * grads[name])
        assert len(optimizer.messages) == 1 and "not positive definite" in optimizer.messages[0]


@pytest.mark.parametrize("name", ["newton", "natgrad"])
def test_line_search_never_increases_the_support_loss(name: str) -> None:
    """On a random backbone the preconditioned head step makes the backbone's fixed-lr step
    overshoot (without the search the loss rises from the second step on); the backtracking line
    search keeps every step downhill."""
    x, y = blobs(5, 1, seed=1)
    problem = InnerProblem(x.double(), y, BackboneConfig(channels=8))
    params = network(BackboneConfig(channels=8), ways=5, seed=1)
    optimizer = make_inner_optimizer(name)
    losses = []
    for _ in range(6):
        loss, grads = gradients(params, problem)
        losses.append(loss.item())
        params = leaves(optimizer.step(params, grads, loss, 0.4, problem))
    assert all(b <= a for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.05 * losses[0], losses


# ----------------------------------------------------------------------------- natural gradient


def test_head_fisher_is_the_expectation_over_the_models_own_labels() -> None:
    """Brute force: 1/n sum_n sum_c p_nc grad log p_c(x_n) grad log p_c(x_n)^T over the head, and it
    is not the empirical Fisher of the true labels."""
    generator = torch.Generator().manual_seed(0)
    inputs = with_ones(torch.randn(4, 3, generator=generator, dtype=DOUBLE))
    theta = torch.randn(3 * 4, generator=generator, dtype=DOUBLE, requires_grad=True)
    log_probs = torch.log_softmax(inputs @ theta.view(3, 4).T, dim=1)
    probs = log_probs.exp().detach()
    scores = torch.stack([torch.stack([torch.autograd.grad(log_probs[n, c], theta, retain_graph=True)[0]
                                       for c in range(3)]) for n in range(4)])  # [n, C, P]
    brute = torch.einsum("nc,ncp,ncq->pq", probs, scores, scores) / 4
    torch.testing.assert_close(softmax_head_fisher(inputs, probs), brute, rtol=1e-10, atol=1e-12)
    labels = torch.tensor([0, 1, 2, 0])
    empirical = torch.einsum("np,nq->pq", scores[torch.arange(4), labels], scores[torch.arange(4), labels]) / 4
    assert not torch.allclose(brute, empirical, atol=1e-3)


@pytest.mark.parametrize("strength", [0.0, 0.5])
def test_natural_gradient_equals_the_newton_step_for_softmax_regression(strength: float) -> None:
    """Fisher = Hessian for the canonical link: with lr = 1 and the same damping the natural
    gradient's head step is Newton's (with an extra penalty, its Hessian joins the Fisher); both
    move the backbone by plain gradient descent."""
    x, y = blobs(3, 2, seed=0)
    problem = PenalisedProblem(x.double(), y, TINY, strength=strength)
    params = network(TINY, ways=3, head_scale=0.5)
    loss, grads = gradients(params, problem)
    natural = NaturalGradient(damping=1e-3, line_search=False).step(params, grads, loss, 1.0, problem)
    newton = Newton(damping=1e-3, line_search=False).step(params, grads, loss, 0.25, problem)
    torch.testing.assert_close(head_matrix(natural), head_matrix(newton), rtol=1e-8, atol=1e-10)
    assert not torch.allclose(head_matrix(natural), head_matrix(params) - head_matrix(grads), atol=1e-3)
    for name in params:
        if not name.startswith("head."):
            torch.testing.assert_close(natural[name], params[name] - 1.0 * grads[name])
            torch.testing.assert_close(newton[name], params[name] - 0.25 * grads[name])


# ----------------------------------------------------------------------------- K-FAC


def linear_fisher(inputs: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Brute force: 1/n sum_n sum_c p_nc s s^T, s = grad of log p_c(x_n) w.r.t. [W|b] (row-major)."""
    n, classes = inputs.shape[0], theta.shape[0]
    theta = theta.detach().reshape(-1).requires_grad_(True)
    log_probs = torch.log_softmax(inputs @ theta.view(classes, -1).T, dim=1)
    fisher = torch.zeros(theta.numel(), theta.numel(), dtype=theta.dtype)
    for i in range(n):
        for c in range(classes):
            score = torch.autograd.grad(log_probs[i, c], theta, retain_graph=True)[0]
            fisher += log_probs[i, c].exp().detach() * torch.outer(score, score) / n
    return fisher


def exact_natural_gradient(inputs: torch.Tensor, theta: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """pinv(F) g with the brute-force Fisher (singular: one example, and softmax's shift symmetry)."""
    fisher = linear_fisher(inputs, theta)
    return (torch.linalg.pinv(fisher, hermitian=True, rtol=1e-10) @ grad.reshape(-1)).view_as(grad)


def test_kfac_is_the_exact_natural_gradient_of_a_linear_layer_on_one_example() -> None:
    """One example: F = (diag(p) - p p^T) (x) x x^T is exactly G (x) A, so K-FAC's step is the
    natural gradient (pseudo-inverse; here the limit of vanishing damping)."""
    generator = torch.Generator().manual_seed(0)
    inputs = with_ones(torch.randn(1, 5, generator=generator, dtype=DOUBLE))
    theta = 0.3 * torch.randn(4, 6, generator=generator, dtype=DOUBLE)
    probs = torch.softmax(inputs @ theta.T, dim=1)
    grad = torch.outer(probs[0] - F.one_hot(torch.tensor(2), 4).double(), inputs[0])  # dL/d[W|b], label 2
    a = linear_input_factor(inputs)
    g = output_factor(label_cotangents(probs, "exact"))
    torch.testing.assert_close(torch.kron(g, a), linear_fisher(inputs, theta), rtol=1e-12, atol=1e-14)
    damped = pi_damped(a, g, damping=1e-10)
    assert damped is not None
    direction = kronecker_solve(grad, *damped)
    assert direction is not None
    # Both factors are singular, so the damping's bias (~sqrt(damping)) and rounding set the tolerance.
    torch.testing.assert_close(direction, exact_natural_gradient(inputs, theta, grad), rtol=1e-4, atol=1e-6)


def test_kfac_optimizer_takes_the_exact_natural_gradient_step_on_one_example() -> None:
    """A backbone with no layers is a linear layer on the mean pixel: the optimizer's K-FAC step
    on one example is the exact natural-gradient step."""
    config = BackboneConfig(channels=1, layers=0)
    x, y = images(1, seed=3, dtype=DOUBLE), torch.tensor([1])
    problem = InnerProblem(x, y, config)
    params = network(config, ways=4, head_scale=0.3)
    loss, grads = gradients(params, problem)
    stepped = KFAC(damping=1e-10).step(params, grads, loss, 0.5, problem)
    inputs = with_ones(embed(params, x, config)).detach()
    expected = head_matrix(params) - 0.5 * exact_natural_gradient(inputs, head_matrix(params), head_matrix(grads))
    torch.testing.assert_close(head_matrix(stepped), expected, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(head_matrix(stepped), head_matrix(params) - 0.5 * head_matrix(grads), atol=1e-2)


@pytest.mark.parametrize("downsample", ["stride", "maxpool"])
def test_kfac_traced_forward_is_the_network(downsample: str) -> None:
    """K-FAC's own forward pass (which keeps each conv's input and output) computes
    ``engine.nets.classify``; each conv's recorded output is its input convolved."""
    config = BackboneConfig(channels=4, downsample=downsample)  # type: ignore[arg-type]
    params = network(config, ways=3, head_scale=0.5)
    x = images(4, seed=0, dtype=DOUBLE)
    trace = traced_forward(params, x, config)
    torch.testing.assert_close(trace.logits, classify(params, x, config))
    torch.testing.assert_close(trace.features, embed(params, x, config))
    assert len(trace.conv_inputs) == len(trace.conv_outputs) == config.layers
    for layer, (inputs, outputs) in enumerate(zip(trace.conv_inputs, trace.conv_outputs)):
        torch.testing.assert_close(outputs, F.conv2d(inputs, params[f"conv{layer}.weight"],
                                                     stride=2 if downsample == "stride" else 1, padding=1))


def test_kfac_conv_factors_follow_the_weight_layout_and_are_exact_at_one_position() -> None:
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(3, 2, 3, 3, generator=generator, dtype=DOUBLE, requires_grad=True)
    # Unfolded patches are ordered like weight.reshape(C_out, -1): dW = sum_n,t ds_t a_t^T.
    x = torch.randn(2, 2, 5, 5, generator=generator, dtype=DOUBLE)
    out = F.conv2d(x, weight, stride=2, padding=1)
    loss = (out * torch.randn(out.shape, generator=generator, dtype=DOUBLE)).sum()
    d_out, d_weight = torch.autograd.grad(loss, [out, weight])
    patches = F.unfold(x, kernel_size=3, padding=1, stride=2)
    torch.testing.assert_close(torch.einsum("nct,nit->ci", d_out.flatten(2), patches), d_weight.reshape(3, -1))
    # One example, one output position: the conv is a linear layer on its patch, and G (x) A is
    # its exact Fisher (G from a batched backward pass with the model's labels).
    x = torch.randn(1, 2, 1, 1, generator=generator, dtype=DOUBLE)
    readout = torch.randn(4, 3, generator=generator, dtype=DOUBLE)
    out = F.conv2d(x, weight, padding=1)
    logits = out.flatten(1) @ readout.T
    probs = torch.softmax(logits, dim=1).detach()
    trace = LayerTrace(logits, [x], [out], out.flatten(1))
    d_out = KFAC.output_gradients(trace, label_cotangents(probs, "exact"), create_graph=False)[0]
    factors = torch.kron(output_factor(d_out), conv_input_factor(x, stride=1))
    log_probs = torch.log_softmax(F.conv2d(x, weight, padding=1).flatten(1) @ readout.T, dim=1)[0]
    scores = [torch.autograd.grad(log_probs[c], weight, retain_graph=True)[0].reshape(-1) for c in range(4)]
    brute = sum(probs[0, c] * torch.outer(scores[c], scores[c]) for c in range(4))
    torch.testing.assert_close(factors, brute, rtol=1e-10, atol=1e-12)


def test_kfac_exact_and_sampled_conv_factors_agree_in_expectation() -> None:
    """Sampled labels give the same G as the exact expectation, up to Monte Carlo noise."""
    probs = torch.softmax(torch.randn(3, 4, generator=torch.Generator().manual_seed(0), dtype=DOUBLE), dim=1)
    exact = output_factor(label_cotangents(probs, "exact"))
    sampled = output_factor(label_cotangents(probs, "sampled", torch.Generator().manual_seed(1), samples=20000))
    torch.testing.assert_close(exact, torch.diag_embed(probs).mean(0) - (probs.T @ probs) / 3)
    torch.testing.assert_close(sampled, exact, atol=0.01, rtol=0.0)


def test_kfac_preconditions_every_conv_and_leaves_batch_norm_to_gradient_descent() -> None:
    x, y = blobs(3, 2, seed=0)
    problem = InnerProblem(x.double(), y, TINY)
    params = network(TINY, ways=3, head_scale=0.5)
    loss, grads = gradients(params, problem)
    stepped = KFAC().step(params, grads, loss, 0.4, problem)
    for name in params:
        plain = params[name] - 0.4 * grads[name]
        if name.startswith("bn"):
            torch.testing.assert_close(stepped[name], plain)
        else:
            assert not torch.allclose(stepped[name], plain), name
            # A preconditioned step is still a descent direction.
            assert ((params[name] - stepped[name]) * grads[name]).sum() > 0, name


def test_kfac_adds_the_curvature_of_extra_objective_terms_to_its_damping() -> None:
    """A proximal-style penalty strength/2 ||params||^2 has Hessian strength * I: K-FAC measures it
    per layer and stays stable where ignoring it makes the inner loop diverge (lr * strength /
    damping = 0.4 * 3 / 0.1 = 12 times too far along the penalty's gradient)."""
    x, y = blobs(5, 1, seed=0)
    config = BackboneConfig(channels=8)
    params = network(config, ways=5, head_scale=0.5)
    layers = {f"conv{i}.weight": [f"conv{i}.weight"] for i in range(4)} | {"head": ["head.weight", "head.bias"]}
    penalised = PenalisedProblem(x.double(), y, config, strength=3.0)
    assert extra_curvature(penalised, params, layers) == pytest.approx({layer: 3.0 for layer in layers})
    assert extra_curvature(InnerProblem(x.double(), y, config), params, layers) == {layer: 0.0 for layer in layers}
    optimizer = KFAC()
    losses = []
    for _ in range(5):
        loss, grads = gradients(params, penalised)
        losses.append(loss.item())
        params = leaves(optimizer.step(params, grads, loss, 0.4, penalised))
    assert losses[-1] < losses[0], losses


# ----------------------------------------------------------------------------- bounded


def bounded_step(loss: float, lr: float | Params) -> tuple[Params, Params]:
    params = {"a": torch.ones(2), "b": torch.zeros(1)}
    grads = {"a": torch.tensor([1.0, 1.0]), "b": torch.tensor([1.0])}  # ||g||^2 = 3 jointly
    problem = InnerProblem(torch.zeros(1, 1, 28, 28), torch.zeros(1, dtype=torch.long), TINY)
    stepped = BoundedGradient().step(params, grads, torch.tensor(loss), lr, problem)
    return {k: params[k] - stepped[k] for k in params}, grads


def test_bounded_step_is_the_smaller_of_alpha_and_loss_over_squared_gradient_norm() -> None:
    moved, grads = bounded_step(loss=0.3, lr=0.5)  # L / ||g||^2 = 0.1 < alpha
    for name in moved:
        torch.testing.assert_close(moved[name], 0.1 * grads[name])
    # It stops exactly where the linearised loss reaches zero.
    assert abs(0.3 - sum((grads[k] * moved[k]).sum().item() for k in moved)) < 1e-6
    moved, grads = bounded_step(loss=3.0, lr=0.5)  # L / ||g||^2 = 1 > alpha
    for name in moved:
        torch.testing.assert_close(moved[name], 0.5 * grads[name])
    moved, _ = bounded_step(loss=0.0, lr=0.5)  # zero loss: no step
    assert all(bool((value == 0).all()) for value in moved.values())


def test_bounded_step_with_per_parameter_rates_shares_one_clipping_factor() -> None:
    rates = {"a": torch.tensor([0.5, 0.5]), "b": torch.tensor([1.0])}  # g^T A g = 2
    moved, grads = bounded_step(loss=0.5, lr=rates)  # factor min(1, 0.5 / 2) = 0.25
    for name in moved:
        torch.testing.assert_close(moved[name], 0.25 * rates[name] * grads[name])


def test_bounded_step_with_a_zero_gradient_is_finite() -> None:
    problem = InnerProblem(torch.zeros(1, 1, 28, 28), torch.zeros(1, dtype=torch.long), TINY)
    stepped = BoundedGradient().step({"a": torch.ones(2)}, {"a": torch.zeros(2)}, torch.tensor(0.7), 0.4, problem)
    torch.testing.assert_close(stepped["a"], torch.ones(2))


# ----------------------------------------------------------------------------- every optimizer


@pytest.mark.parametrize("name", ALL)
def test_adapting_a_learner_reduces_support_loss_and_leaves_meta_parameters_alone(name: str) -> None:
    learner = get_learner_class("maml")(backbone=BackboneConfig(channels=8))
    before = {k: v.detach().clone() for k, v in learner.params.items()}
    x, y = blobs(5, 1, seed=0)
    queries, _ = blobs(5, 2, seed=1)
    # Optimizers with a step size of their own (Adam's 1e-3, made for meta-trained weights) get one
    # on their scale that 5 steps from random weights can show.
    lr = None if INNER_OPTIMIZERS[name].default_lr is None else 0.05
    adapted = learner.adapt(x, y, 5, AdaptSettings(steps=5, optimizer=name, lr=lr))
    for key, value in learner.params.items():
        assert torch.equal(value.detach(), before[key]), key
    probs = adapted.predict_proba(queries)
    assert probs.shape == (10, 5) and torch.isfinite(probs).all()
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(10))
    assert adapted.warning is None
    assert adapted.trace[-1].loss < 0.9 * adapted.trace[0].loss, [r.loss for r in adapted.trace]


@pytest.mark.parametrize("name", ALL)
def test_steps_never_write_to_params_and_accept_per_parameter_rates(name: str) -> None:
    """Meta-SGD hands a dict of rates (the head's broadcast over classes)."""
    x, y = blobs(3, 2, seed=0)
    problem = InnerProblem(x.double(), y, TINY)
    params = network(TINY, ways=3, head_scale=0.5)
    before = {k: v.detach().clone() for k, v in params.items()}
    loss, grads = gradients(params, problem)
    rates = {k: torch.full_like(v, 0.3) for k, v in params.items() if not k.startswith("head.")}
    rates |= {"head.weight": torch.full((1, TINY.embedding_dim), 0.3, dtype=DOUBLE),
              "head.bias": torch.full((1,), 0.3, dtype=DOUBLE)}
    with_dict = make_inner_optimizer(name).step(params, grads, loss, rates, problem)
    with_float = make_inner_optimizer(name).step(params, grads, loss, 0.3, problem)
    for key, value in params.items():
        assert torch.equal(value.detach(), before[key]), key
        assert with_dict[key].shape == value.shape and torch.isfinite(with_dict[key]).all()
        torch.testing.assert_close(with_dict[key], with_float[key])
    assert list(with_dict) == list(params)


@pytest.mark.parametrize("name", ALL)
def test_steps_are_differentiable_for_second_order_meta_gradients(name: str) -> None:
    """With create_graph the inner loop is a differentiable function of the meta-parameters: the
    meta-gradient through two steps is finite, nonzero and matches central finite differences."""
    x, y = blobs(3, 2, seed=0)
    queries, query_labels = blobs(3, 2, seed=1)
    x, queries = x.double(), queries.double()
    problem = InnerProblem(x, y, TINY, create_graph=True)
    meta = {k: v for k, v in network(TINY, ways=3).items() if not k.startswith("head.")}

    def query_loss(meta: Params) -> torch.Tensor:
        start = {**meta, **{k: v.requires_grad_(True) for k, v in zero_head(3, TINY, x).items()}}
        fast = inner_loop(start, problem, 2, 0.4, make_inner_optimizer(name))
        return F.cross_entropy(classify(fast, torch.cat([x, queries]), TINY, stats_count=6)[6:], query_labels)

    grads = torch.autograd.grad(query_loss(meta), list(meta.values()))
    assert all(torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0
    generator = torch.Generator().manual_seed(5)
    direction = {k: torch.randn(v.shape, generator=generator, dtype=DOUBLE) for k, v in meta.items()}
    eps = 1e-7  # the loss after Newton-type steps from a random backbone is very curved
    shifted = [query_loss({k: (v + sign * eps * direction[k]).detach().requires_grad_(True) for k, v in meta.items()})
               for sign in (1.0, -1.0)]
    numeric = (shifted[0] - shifted[1]).item() / (2 * eps)
    analytic = sum((g * direction[k]).sum() for g, k in zip(grads, meta)).item()
    assert abs(analytic - numeric) <= 1e-5 * max(1.0, abs(numeric)), (analytic, numeric)


# ----------------------------------------------------------------------------- armijo


def test_armijo_cuts_a_step_too_large_for_the_curvature_and_keeps_a_small_one() -> None:
    """At lr 8 plain gradient descent overshoots and raises the loss; the backtracking version
    never does. At a small lr its full step passes the test and it is plain gradient descent."""
    x, y = blobs(5, 1, seed=1)
    problem = InnerProblem(x.double(), y, BackboneConfig(channels=8))

    def losses(name: str, lr: float) -> tuple[list[float], Params]:
        params, values = network(BackboneConfig(channels=8), ways=5, seed=1), []
        optimizer = make_inner_optimizer(name)
        for _ in range(6):
            loss, grads = gradients(params, problem)
            values.append(loss.item())
            params = leaves(optimizer.step(params, grads, loss, lr, problem))
        return values, params

    plain, _ = losses("sgd", 8.0)
    searched, _ = losses("armijo", 8.0)
    assert any(b > a for a, b in zip(plain, plain[1:])), plain
    assert all(b <= a for a, b in zip(searched, searched[1:])), searched
    (_, small_sgd), (_, small_armijo) = losses("sgd", 0.05), losses("armijo", 0.05)
    for name in small_sgd:
        torch.testing.assert_close(small_armijo[name], small_sgd[name], msg=name)


def count_passes(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts support-loss evaluations and fused backward passes from now on (reset by the caller)."""
    calls = {"evaluate": 0, "backward": 0}
    evaluate, backward = InnerProblem.evaluate, kernels._backward

    def counting(self: InnerProblem, *args: object, **kwargs: object) -> object:
        calls["evaluate"] += 1
        return evaluate(self, *args, **kwargs)  # type: ignore[arg-type]

    def counting_backward(*args: object) -> object:
        calls["backward"] += 1
        return backward(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(InnerProblem, "evaluate", counting)
    monkeypatch.setattr(kernels, "_backward", counting_backward)
    return calls


def test_armijo_hands_its_accepted_trial_to_the_next_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each trial is evaluated without its gradient; the inner loop reuses the accepted one and
    completes its gradient, so with every full step accepted an adaptation makes as many forward
    and backward passes as plain sgd (the last step's gradient is never computed)."""
    calls = count_passes(monkeypatch)
    learner = get_learner_class("maml")(backbone=BackboneConfig(channels=8))
    x, y = blobs(5, 1, seed=0)
    traces = {}
    for name in ("sgd", "armijo"):
        calls.update(evaluate=0, backward=0)
        traces[name] = [record.loss for record in learner.adapt(x, y, 5, AdaptSettings(steps=5, lr=0.05,
                                                                                      optimizer=name)).trace]
        traces[name + " passes"] = (calls["evaluate"], calls["backward"])
    assert traces["armijo passes"] == traces["sgd passes"] == (6, 5)
    assert traces["armijo"] == pytest.approx(traces["sgd"], rel=1e-5)


def test_a_rejected_armijo_trial_costs_no_backward_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """At a step size that needs halvings, every trial is a forward pass; only the accepted
    trials that are stepped from again get a backward pass."""
    calls = count_passes(monkeypatch)
    learner = get_learner_class("maml")(backbone=BackboneConfig(channels=8))
    x, y = blobs(5, 1, seed=1)
    adapted = learner.adapt(x, y, 5, AdaptSettings(steps=4, lr=64.0, optimizer="armijo"))
    assert calls["evaluate"] > 5  # halvings happened
    assert calls["backward"] == 4  # the start and the three accepted points stepped from
    assert all(b.loss <= a.loss for a, b in zip(adapted.trace, adapted.trace[1:]))


# ----------------------------------------------------------------------------- adam


@pytest.mark.parametrize(("name", "beta1"), [("adam", 0.9), ("adam-no-momentum", 0.0)])
@pytest.mark.parametrize("create_graph", [False, True])
def test_adam_takes_torch_optim_adams_steps_from_fresh_moments(name: str, beta1: float, create_graph: bool) -> None:
    """Four steps on given gradients equal torch.optim.Adam's from zero moments; a second instance
    starts from zero moments again (Reptile makes one per task)."""
    generator = torch.Generator().manual_seed(0)
    start = {"a": torch.randn(3, 4, generator=generator, dtype=DOUBLE),
             "b": torch.randn(5, generator=generator, dtype=DOUBLE)}
    gradient_sequence = [{k: torch.randn(v.shape, generator=generator, dtype=DOUBLE) * scale for k, v in start.items()}
                         for scale in (1.0, 0.1, 3.0, 0.5)]
    problem = InnerProblem(torch.zeros(1, 1, 28, 28), torch.zeros(1, dtype=torch.long), TINY, create_graph)
    reference = {k: v.clone().requires_grad_(True) for k, v in start.items()}
    torch_adam = torch.optim.Adam(list(reference.values()), lr=0.01, betas=(beta1, 0.999), eps=1e-8)
    for fresh in (make_inner_optimizer(name), make_inner_optimizer(name)):
        params = {k: v.clone().requires_grad_(create_graph) for k, v in start.items()}
        for grads in gradient_sequence:
            params = fresh.step(params, grads, torch.zeros(()), 0.01, problem)
        assert params["a"].requires_grad == create_graph
    for grads in gradient_sequence:
        for key, value in reference.items():
            value.grad = grads[key].clone()
        torch_adam.step()
    # With a graph eps sits inside the square root (the optimizer says why): a relative change of
    # about eps / sqrt(v) per step.
    tolerance = 1e-7 if create_graph else 1e-12
    for key, value in reference.items():
        torch.testing.assert_close(params[key].detach(), value.detach(), rtol=tolerance, atol=tolerance)


def test_an_optimizer_picked_without_a_step_size_brings_its_own() -> None:
    """Adam named in place of a learner's own optimizer takes its 1e-3, not the learner's
    gradient-descent step size (0.4 would throw every weight 0.4 a step); an explicit step size
    still wins, and Meta-SGD's learned rates are rescaled to it."""
    maml = get_learner_class("maml")(backbone=TINY)
    assert maml.inner_lr(AdaptSettings(optimizer="adam")) == 1e-3
    assert maml.inner_lr(AdaptSettings(optimizer="adam", lr=0.05)) == 0.05
    assert maml.inner_lr(AdaptSettings(optimizer="newton")) == maml.config.inner_lr
    assert maml.inner_lr(AdaptSettings()) == maml.config.inner_lr
    x, y = blobs(3, 2, seed=0)
    implicit = maml.adapt(x, y, 3, AdaptSettings(steps=3, optimizer="adam"))
    explicit = maml.adapt(x, y, 3, AdaptSettings(steps=3, optimizer="adam", lr=1e-3))
    assert [record.loss for record in implicit.trace] == [record.loss for record in explicit.trace]
    metasgd = get_learner_class("metasgd")(backbone=TINY)
    learned, rescaled = metasgd.inner_lr(), metasgd.inner_lr(AdaptSettings(optimizer="adam"))
    for name, rate in learned.items():
        torch.testing.assert_close(rescaled[name], rate * (1e-3 / metasgd.config.inner_lr))

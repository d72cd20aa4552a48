"""iMAML (Rajeswaran, Finn, Kakade & Levine 2019): meta-learning with implicit gradients.

The inner problem keeps the adapted weights near the initialisation,

    phi*(theta) = argmin_phi  L_support(phi) + lambda/2 ||phi - theta||^2,

and the meta-gradient comes from the implicit function theorem instead of back-propagating
through the inner loop:

    d L_query(phi*) / d theta = (I + H/lambda)^-1 grad L_query(phi*),   H = Hessian of L_support at phi*,

solved with conjugate gradient on Hessian-vector products. The inner loop runs without an
autograd graph, so memory does not grow with the number of inner steps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.learners.base import About, MetaLoss, PaperReference, accuracy, mean_metrics, register_learner
from engine.learners.gradient import GradientConfig, GradientLearner, inner_loop, query_logits
from engine.nets import Params
from engine.optim import InnerProblem, make_inner_optimizer

if TYPE_CHECKING:
    from engine.data.tasks import Task

MatVec = Callable[[Params], Params]


@dataclass
class IMAMLConfig(GradientConfig):
    # Defaults: models/train.sh's configuration (the paper's lambda, CG steps and damping).
    inner_steps: int = 10
    inner_lr: float = 0.2
    lam: float = 2.0  # strength of the proximal term (the paper's lambda)
    cg_steps: int = 5
    cg_damping: float = 1.0  # solve (I + (H + damping I)/lambda) v = g: guards against negative curvature
    # 4x MAML's: the conv weights start 4x larger (below), so Adam's steps are 4x smaller relative to them.
    meta_lr: float = 4e-3
    # Conv weights start this many times larger than nn.Conv2d's default. Batch norm makes the
    # network's function blind to a conv's scale, but its curvature scales as 1/scale^2: at the
    # default scale the support loss's top Hessian eigenvalue is ~50 on Omniglot tasks, the inner
    # loop oscillates instead of converging, and the implicit gradient (which assumes it converged)
    # points anywhere (tests/test_imaml.py measures its cosine with the unrolled gradient: about
    # -0.07 at the default scale, 0.99 at 4x). MAML's weights grow
    # to about this scale during meta-training; iMAML's never would from garbage gradients.
    conv_init_scale: float = 4.0
    # The inner solver in meta-training (engine.optim's registry): "armijo" backtracks a step that
    # would raise the proximal objective, which a fixed step size starts doing as meta-training
    # sharpens the network (with plain sgd, full-size training runs diverged; they are not kept).
    inner_optimizer: str = "armijo"


@dataclass(frozen=True)
class ProximalProblem(InnerProblem):
    """Support cross-entropy plus lambda/2 ||phi - anchor||^2 (the head's anchor is its zero start)."""

    anchor: Params | None = None
    lam: float = 1.0

    def objective(self, params: Params, logits: Tensor) -> Tensor:
        penalty = sum((params[k] - self.anchor[k]).pow(2).sum() for k in self.anchor)  # type: ignore[union-attr]
        return super().objective(params, logits) + 0.5 * self.lam * penalty

    def extra_terms(self, params: Params, logits: Tensor) -> tuple[Tensor, Params]:
        """lambda/2 ||phi - anchor||^2 and its gradient lambda (phi - anchor), in closed form."""
        assert self.anchor is not None
        with torch.no_grad():
            # Multi-tensor kernels: this runs at every inner step, for every entry.
            names = list(self.anchor)
            offsets = torch._foreach_sub([params[name].detach() for name in names], list(self.anchor.values()))
            value = 0.5 * self.lam * torch.stack(torch._foreach_norm(offsets)).square().sum()
            penalty_grads = dict(zip(names, torch._foreach_mul(offsets, self.lam)))
            grads = {name: penalty_grads[name] if name in penalty_grads else torch.zeros_like(entry.detach())
                     for name, entry in params.items()}
            return value, grads


def dot(a: Params, b: Params) -> Tensor:
    return sum((a[k] * b[k]).sum() for k in a)  # type: ignore[return-value]


def conjugate_gradient(matvec: MatVec, b: Params, steps: int) -> Params:
    """Approximately solve A x = b for symmetric positive-definite A, from x = 0."""
    x = {k: torch.zeros_like(v) for k, v in b.items()}
    residual = {k: v.clone() for k, v in b.items()}
    direction = {k: v.clone() for k, v in b.items()}
    rr = dot(residual, residual)
    for _ in range(steps):
        if rr <= 1e-20:
            break
        a_direction = matvec(direction)
        alpha = rr / dot(direction, a_direction)
        x = {k: x[k] + alpha * direction[k] for k in x}
        residual = {k: residual[k] - alpha * a_direction[k] for k in residual}
        rr_next = dot(residual, residual)
        direction = {k: residual[k] + (rr_next / rr) * direction[k] for k in direction}
        rr = rr_next
    return x


def hessian_vector_product(loss_fn: Callable[[Params], Tensor], at: Params) -> MatVec:
    """v -> H v for the Hessian of ``loss_fn`` at ``at`` (double backward, one graph reused)."""
    point = {k: v.detach().requires_grad_(True) for k, v in at.items()}
    grads = torch.autograd.grad(loss_fn(point), list(point.values()), create_graph=True)

    def matvec(vector: Params) -> Params:
        products = torch.autograd.grad(grads, list(point.values()), grad_outputs=[vector[k] for k in point],
                                       retain_graph=True)
        return {k: p.detach() for k, p in zip(point, products)}

    return matvec


def implicit_meta_gradient(hvp: MatVec, query_grad: Params, lam: float, cg_steps: int, damping: float = 0.0) -> Params:
    """(I + (H + damping I)/lambda)^-1 g by conjugate gradient; ``cg_steps=0`` takes the identity
    for the inverse (first-order iMAML: the query gradient at phi* as it is)."""
    if cg_steps == 0:
        return dict(query_grad)
    def matvec(v: Params) -> Params:
        hv = hvp(v)
        return {k: v[k] + (hv[k] + damping * v[k]) / lam for k in v}

    return conjugate_gradient(matvec, query_grad, cg_steps)


@register_learner
class IMAML(GradientLearner):
    name = "imaml"
    config: IMAMLConfig
    config_class = IMAMLConfig
    about = About(
        summary="MAML whose inner loop solves a regularised problem, fitting the support set while staying "
                "close to the initialisation. The meta-gradient comes from the implicit function theorem, "
                "solved by conjugate gradient on Hessian-vector products, instead of back-propagating through "
                "the steps, so memory does not grow with the number of inner steps.",
        update_rule="φ* = argmin_φ L_support(φ) + λ/2 ‖φ − θ‖²  (approximately, by K gradient steps from θ)",
        paper=PaperReference(
            citation="Rajeswaran et al. 2019", title="Meta-Learning with Implicit Gradients",
            url="https://arxiv.org/abs/1909.04630", label="iMAML, Hessian-free (Rajeswaran et al. 2019)",
            figures={(5, 1): 99.50, (5, 5): 99.74, (20, 1): 96.18, (20, 5): 99.14}),
        notes="did not learn in its first full-size runs (not kept). Two changes made it "
              "learn: its conv weights start 4x larger than nn.Conv2d's default, because under batch norm "
              "the support loss's curvature grows as 1/scale^2 and at the default scale the inner loop "
              "oscillates instead of converging, which the implicit gradient assumes "
              "(`tests/test_imaml.py` checks the implicit gradient against the unrolled one); and its inner "
              "loop backtracks (`armijo`), because a fixed step size starts diverging as meta-training "
              "sharpens the network. It therefore also adapts with `armijo` by default: plain sgd at the "
              "same step size diverges on this checkpoint (5-way 1-shot validation tasks: 40.94% with "
              "`python -m engine.evaluate --checkpoint models/imaml/model --tasks 200 --split validation "
              "--optimizer sgd`, 93.61% without `--optimizer`; checkpoint of step 5000). Its 6000-step "
              "schedule is ours; the paper does not state its number of meta-steps.")

    def default_optimizer(self) -> str:
        return self.config.inner_optimizer

    def init_params(self, generator: torch.Generator) -> Params:
        return {name: value * self.config.conv_init_scale if name.startswith("conv") else value
                for name, value in super().init_params(generator).items()}

    def inner_problem(self, support_x: Tensor, support_y: Tensor, start: Params,
                      create_graph: bool = False) -> InnerProblem:
        anchor = {k: v.detach() for k, v in start.items()}
        return ProximalProblem(support_x, support_y, self.backbone, create_graph, anchor=anchor, lam=self.config.lam)

    def task_meta_gradient(self, task: "Task") -> tuple[Params, Tensor, Tensor]:
        """The implicit meta-gradient for the backbone, and the query loss and logits at phi*."""
        start = self.detached_start(task.ways)
        problem = self.inner_problem(task.support_x, task.support_y, start)
        adapted = inner_loop(start, problem, self.config.inner_steps, self.inner_lr(),
                             make_inner_optimizer(self.config.inner_optimizer))
        phi = {k: v.detach().requires_grad_(True) for k, v in adapted.items()}
        logits = query_logits(self, phi, task)
        query_loss = F.cross_entropy(logits, task.query_y)
        query_grad = dict(zip(phi, torch.autograd.grad(query_loss, list(phi.values()))))
        # H is the Hessian of the support loss alone; the proximal term is the identity in (I + H/lambda).
        support_hvp = hessian_vector_product(lambda p: InnerProblem.objective(problem, p, problem.logits(p)), phi)
        solution = implicit_meta_gradient(support_hvp, query_grad, self.config.lam, self.config.cg_steps,
                                          self.config.cg_damping)
        # phi depends on theta only through the backbone (the head always starts at zero).
        return {k: solution[k] for k in self.params}, query_loss.detach(), logits.detach()

    def meta_loss(self, tasks: Sequence["Task"]) -> MetaLoss:
        total = {k: torch.zeros_like(v) for k, v in self.params.items()}
        losses, accuracies = [], []
        for task in tasks:
            gradient, loss, logits = self.task_meta_gradient(task)
            for k in total:
                total[k] += gradient[k] / len(tasks)
            losses.append(loss)
            accuracies.append(accuracy(logits, task.query_y))
        query_loss, query_accuracy = mean_metrics(losses, accuracies)
        # A surrogate whose gradient w.r.t. theta is the averaged implicit meta-gradient.
        surrogate = dot(self.params, total)
        return MetaLoss(loss=surrogate, query_loss=query_loss, query_accuracy=query_accuracy)

"""MAML (Finn et al. 2017) and its first-order approximation.

    for each task:  phi = inner_loop(theta, support)            # a few gradient steps
                    meta_loss += L_query(phi)
    theta <- theta - beta * d meta_loss / d theta                # through the inner loop (MAML)
                                                                 # or with d phi/d theta := I (FOMAML)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from engine import kernels
from engine.learners.base import About, MetaLoss, PaperReference, query_meta_loss, register_learner
from engine.learners.gradient import GradientLearner, GradientTransform, inner_loop, query_logits, straight_through
from engine.nets import Params, backbone_only, embed
from engine.optim import InnerOptimizer, InnerProblem, LearningRate, make_inner_optimizer

if TYPE_CHECKING:
    from engine.data.tasks import Task


def zero_head_step(start: Params, support_features: Tensor, support_y: Tensor, lr: LearningRate,
                   optimizer: InnerOptimizer, problem: InnerProblem,
                   transform: GradientTransform | None = None) -> Params:
    """The first inner step from the zero head, in closed form.

    With a zero head every logit is 0 whatever the backbone, so the predicted distribution is
    uniform and d CE / d logits = (1/N - onehot(y)) / n is a constant; the backbone's gradient
    passes through the zero head and is exactly zero, as a function of the meta-parameters too.
    Only the head moves: its gradient is (1/N - onehot)^T f / n for the support features f. This
    is the same step (value and derivatives) as differentiating the support loss, without a
    backward pass through the backbone, and, for second-order MAML, without a double backward.
    With a leading task dimension on ``support_features`` and ``support_y`` the head entries of
    the result carry it too (one head per task).
    """
    head = start["head.weight"]
    count, ways = support_y.shape[-1], head.shape[0]
    # [..., n, N]: a leading task dimension (features [T, n, D], labels [T, n]) gives a head per task.
    residual = (1.0 / ways - F.one_hot(support_y, ways).to(head.dtype)) / count
    grads = {name: torch.zeros_like(value) for name, value in start.items()}
    grads["head.weight"] = residual.mT @ support_features
    grads["head.bias"] = residual.sum(dim=-2)
    if transform is not None:
        grads = transform(grads)
    loss = torch.full((), math.log(ways), dtype=head.dtype, device=head.device)  # CE of uniform predictions
    return optimizer.step(start, grads, loss, lr, problem)


@register_learner
class MAML(GradientLearner):
    """Second-order MAML: the meta-gradient differentiates through every inner step."""

    name = "maml"
    first_order = False
    about = About(
        summary="Meta-learns an initialisation from which a few gradient steps on a new task's support set fit "
                "that task. The meta-gradient differentiates the query loss after the inner steps through the "
                "steps themselves (second-order derivatives). Here the classifier head starts at zero, so one "
                "checkpoint serves any number of classes.",
        update_rule="φ_0 = θ,  φ_{k+1} = φ_k − α ∇_φ L_support(φ_k)",
        paper=PaperReference(
            citation="Finn et al. 2017", title="Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks",
            url="https://arxiv.org/abs/1703.03400", label="MAML (Finn et al. 2017)",
            figures={(5, 1): 98.7, (5, 5): 99.9, (20, 1): 95.8, (20, 5): 98.9}, meta_steps=60_000,
            transductive=True, must_match=True))

    def adapted_weights(self, task: "Task") -> Params:
        """The task's fast weights as a differentiable function of ``self.params``."""
        optimizer = make_inner_optimizer("sgd")
        if not self.first_order:
            problem = InnerProblem(task.support_x, task.support_y, self.backbone, create_graph=True)
            start = self.initial_weights(self.params, task.ways)
            transform = self.gradient_transform(self.params)
            steps = self.config.inner_steps
            if steps > 0 and kernels.enabled():  # the first step in closed form (zero_head_step)
                features = embed(backbone_only(start), task.support_x, self.backbone)
                start = zero_head_step(start, features, task.support_y, self.inner_lr(), optimizer, problem,
                                       transform)
                steps -= 1
            return inner_loop(start, problem, steps, self.inner_lr(), optimizer, transform)
        problem = InnerProblem(task.support_x, task.support_y, self.backbone)
        start = self.detached_start(task.ways)
        adapted = inner_loop(start, problem, self.config.inner_steps, self.inner_lr(), optimizer,
                             self.gradient_transform(self.detached_params()))
        return straight_through(self.params, adapted)

    def one_pass_query_logits(self, tasks: Sequence["Task"]) -> list[Tensor] | None:
        """Each task's query logits after one inner step, with a single forward pass for them all.

        One step from the zero head moves only the head (``zero_head_step``): the backbone stays at
        theta - lr * transform(0), numerically theta, the same for every task. So one pass of that
        backbone over all tasks' support and query images (each task normalised with its own
        support statistics: ``embed(groups=...)``) gives both each task's head update (its support
        rows) and its query logits: the same values and derivatives as ``adapted_weights``
        followed by ``query_logits`` task by task (the backbone's learning rates and transforms get
        their exactly-zero gradients), in one large forward pass instead of three small ones per
        task. First-order MAML: the same with the head held constant, as ``straight_through``
        does. None unless the learner takes exactly one inner step and the tasks have one shape.
        """
        first = tasks[0] if tasks else None
        if (first is None or self.config.inner_steps != 1 or not kernels.enabled()
                or any(task.ways != first.ways or task.support_x.shape != first.support_x.shape
                       or task.query_x.shape != first.query_x.shape for task in tasks)):
            return None
        count = first.support_x.shape[0]
        images = torch.cat([torch.cat([task.support_x, task.query_x]) for task in tasks])
        support_y = torch.stack([task.support_y for task in tasks])
        optimizer = make_inner_optimizer("sgd")
        # create_graph: the step is written with broadcasting ops (a head per task).
        problem = InnerProblem(first.support_x, first.support_y, self.backbone, create_graph=True)
        if self.first_order:
            meta, lr = self.detached_params(), self.inner_lr()
            lr = {k: v.detach() for k, v in lr.items()} if isinstance(lr, dict) else lr
            features = embed(self.params, images, self.backbone, stats_count=count, groups=len(tasks))
            features = features.view(len(tasks), -1, features.shape[-1])
            start = self.initial_weights(meta, first.ways)
            fast = zero_head_step(start, features[:, :count].detach(), support_y, lr, optimizer, problem,
                                  self.gradient_transform(meta))
            head_weight, head_bias = fast["head.weight"].detach(), fast["head.bias"].detach()
        else:
            lr, transform = self.inner_lr(), self.gradient_transform(self.params)
            start = self.initial_weights(self.params, first.ways)
            zeros = {name: torch.zeros_like(value) for name, value in start.items()}
            unchanged = optimizer.step(start, zeros if transform is None else transform(zeros),
                                       torch.zeros(()), lr, problem)
            features = embed(unchanged, images, self.backbone, stats_count=count, groups=len(tasks))
            features = features.view(len(tasks), -1, features.shape[-1])
            fast = zero_head_step(start, features[:, :count], support_y, lr, optimizer, problem, transform)
            head_weight, head_bias = fast["head.weight"], fast["head.bias"]
        logits = torch.baddbmm(head_bias.unsqueeze(1), features[:, count:], head_weight.mT)
        return list(logits.unbind(0))

    def meta_loss(self, tasks: Sequence["Task"]) -> MetaLoss:
        logits = self.one_pass_query_logits(tasks)
        if logits is None:
            logits = [query_logits(self, self.adapted_weights(task), task) for task in tasks]
        return query_meta_loss([(task_logits, task.query_y) for task_logits, task in zip(logits, tasks)])


@register_learner
class FirstOrderMAML(MAML):
    """First-order MAML: the query gradient at the adapted weights is applied to the initialisation."""

    name = "fomaml"
    first_order = True
    about = About(
        summary="MAML without second-order derivatives: the query loss's gradient at the adapted weights is "
                "applied to the initialisation as if the inner steps were the identity. Each meta-step is "
                "cheaper; adaptation at test time is the same gradient descent as MAML's.",
        update_rule="φ_0 = θ,  φ_{k+1} = φ_k − α ∇_φ L_support(φ_k)",
        paper=PaperReference(
            citation="Finn et al. 2017", title="Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks",
            url="https://arxiv.org/abs/1703.03400", label="first-order MAML (Finn et al. 2017)",
            figures={(5, 1): 98.3, (5, 5): 99.2, (20, 1): 89.4, (20, 5): 97.9}, meta_steps=60_000,
            transductive=True))

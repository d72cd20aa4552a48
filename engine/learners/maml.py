"""MAML (Finn et al. 2017) and its first-order approximation.

    for each task:  phi = inner_loop(theta, support)            # a few gradient steps
                    meta_loss += L_query(phi)
    theta <- theta - beta * d meta_loss / d theta                # through the inner loop (MAML)
                                                                 # or with d phi/d theta := I (FOMAML)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.learners.base import MetaLoss, accuracy, mean_metrics, register_learner
from engine.learners.gradient import GradientLearner, inner_loop, straight_through
from engine.nets import Params, classify
from engine.optim import InnerProblem, make_inner_optimizer

if TYPE_CHECKING:
    from engine.data.tasks import Task


def query_logits(learner: GradientLearner, fast: Params, task: "Task") -> Tensor:
    """Query logits with batch norm normalised by the support set's statistics."""
    num_support = task.support_x.shape[0]
    both = torch.cat([task.support_x, task.query_x])
    return classify(fast, both, learner.backbone, stats_count=num_support)[num_support:]


@register_learner
class MAML(GradientLearner):
    """Second-order MAML: the meta-gradient differentiates through every inner step."""

    name = "maml"
    first_order = False

    def adapted_weights(self, task: "Task") -> Params:
        """The task's fast weights as a differentiable function of ``self.params``."""
        optimizer = make_inner_optimizer("sgd")
        if not self.first_order:
            problem = InnerProblem(task.support_x, task.support_y, self.backbone, create_graph=True)
            start = self.initial_weights(self.params, task.ways)
            return inner_loop(start, problem, self.config.inner_steps, self.inner_lr(), optimizer,
                              self.gradient_transform(self.params))
        problem = InnerProblem(task.support_x, task.support_y, self.backbone)
        start = self.detached_start(task.ways)
        adapted = inner_loop(start, problem, self.config.inner_steps, self.inner_lr(), optimizer,
                             self.gradient_transform(self.detached_params()))
        return straight_through(self.params, adapted)

    def meta_loss(self, tasks: Sequence["Task"]) -> MetaLoss:
        losses: list[Tensor] = []
        accuracies: list[float] = []
        for task in tasks:
            logits = query_logits(self, self.adapted_weights(task), task)
            losses.append(F.cross_entropy(logits, task.query_y))
            accuracies.append(accuracy(logits, task.query_y))
        query_loss, query_accuracy = mean_metrics(losses, accuracies)
        return MetaLoss(loss=torch.stack(losses).mean(), query_loss=query_loss, query_accuracy=query_accuracy)


@register_learner
class FirstOrderMAML(MAML):
    """First-order MAML: the query gradient at the adapted weights is applied to the initialisation."""

    name = "fomaml"
    first_order = True

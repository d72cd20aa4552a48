"""Reptile (Nichol, Achiam & Schulman 2018).

    for each task:  phi_i = inner_loop(theta, task's examples)
    theta <- theta + epsilon * (mean_i phi_i - theta)

Expressed as a meta-loss for the shared trainer: L = 1/2 ||theta - stopgrad(mean_i phi_i)||^2 has
gradient theta - mean_i phi_i, so one SGD step with learning rate epsilon is exactly the Reptile
interpolation (the paper anneals epsilon linearly from 1 to 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from engine.learners.base import MetaLoss, accuracy, mean_metrics, register_learner
from engine.learners.gradient import GradientConfig, GradientLearner, inner_loop
from engine.learners.maml import query_logits
from engine.nets import Params
from engine.optim import InnerProblem, make_inner_optimizer

if TYPE_CHECKING:
    from engine.data.tasks import Task


@dataclass
class ReptileConfig(GradientConfig):
    meta_optimizer: str = "sgd"
    meta_lr: float = 1.0
    meta_lr_final: float | None = 0.0


def interpolation_loss(meta_params: Params, target: Params) -> torch.Tensor:
    """1/2 sum ||theta - target||^2 over the meta-parameters; its gradient is theta - target."""
    return sum(0.5 * (meta_params[k] - target[k].detach()).pow(2).sum() for k in meta_params)  # type: ignore[return-value]


@register_learner
class Reptile(GradientLearner):
    name = "reptile"
    config: ReptileConfig
    config_class = ReptileConfig
    # The paper trains on more shots than it tests (inner batches drawn from 10-15 examples per class).
    train_defaults = {"shots": 10, "meta_batch": 5}

    def meta_loss(self, tasks: Sequence["Task"]) -> MetaLoss:
        adapted_sum: Params = {k: torch.zeros_like(v) for k, v in self.params.items()}
        losses, accuracies = [], []
        optimizer = make_inner_optimizer("sgd")
        for task in tasks:
            start = self.detached_start(task.ways)
            problem = InnerProblem(task.support_x, task.support_y, self.backbone)
            adapted = inner_loop(start, problem, self.config.inner_steps, self.inner_lr(), optimizer)
            for k in adapted_sum:
                adapted_sum[k] += adapted[k].detach()
            with torch.no_grad():  # query metrics are for the progress bar only
                logits = query_logits(self, adapted, task)
                losses.append(F.cross_entropy(logits, task.query_y))
                accuracies.append(accuracy(logits, task.query_y))
        target = {k: v / len(tasks) for k, v in adapted_sum.items()}
        query_loss, query_accuracy = mean_metrics(losses, accuracies)
        return MetaLoss(loss=interpolation_loss(self.params, target), query_loss=query_loss, query_accuracy=query_accuracy)

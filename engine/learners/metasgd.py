"""Meta-SGD (Li, Zhou, Chen & Li 2017): MAML that also meta-learns a learning rate per weight.

    phi = theta - alpha (.) grad L_support(theta)        # alpha: same shape as theta, meta-learned
    (theta, alpha) <- (theta, alpha) - beta * grad_(theta, alpha) L_query(phi)

The head is zero-initialised with N rows for any N, so its rates are shared across classes:
one rate per input feature for ``head.weight`` ([1, dim], broadcast over rows) and one for the bias.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.learners.base import AdaptSettings, register_learner
from engine.learners.gradient import META_PREFIX, GradientConfig
from engine.learners.maml import MAML
from engine.nets import Params
from engine.optim import LearningRate

LR_PREFIX = META_PREFIX + "lr."


@dataclass
class MetaSGDConfig(GradientConfig):
    inner_steps: int = 1


@register_learner
class MetaSGD(MAML):
    name = "metasgd"
    config: MetaSGDConfig
    config_class = MetaSGDConfig

    def init_params(self, generator: torch.Generator) -> Params:
        network = super().init_params(generator)
        rates = {LR_PREFIX + k: torch.full_like(v, self.config.inner_lr) for k, v in network.items()}
        dim = self.backbone.embedding_dim
        rates[LR_PREFIX + "head.weight"] = torch.full((1, dim), self.config.inner_lr)
        rates[LR_PREFIX + "head.bias"] = torch.full((1,), self.config.inner_lr)
        return {**network, **rates}

    def default_test_steps(self) -> int:
        """As many steps as meta-training took: the rates are learned for exactly those, and more
        steps overshoot, most at 5 shots (models/RESULTS.md's notes give the measurement).
        ``AdaptSettings.steps`` still chooses any number."""
        return self.config.inner_steps

    def inner_lr(self, settings: AdaptSettings | None = None) -> LearningRate:
        """The learned rates. An explicit ``settings.lr`` (or another optimizer's default step size,
        ``requested_lr``) rescales them all by lr / inner_lr, so the app's learning-rate control
        still means "larger or smaller steps" without discarding what was learned."""
        scale = 1.0
        requested = self.requested_lr(settings)
        if requested is not None:
            scale = requested / self.config.inner_lr
        return {k[len(LR_PREFIX):]: v * scale for k, v in self.params.items() if k.startswith(LR_PREFIX)}

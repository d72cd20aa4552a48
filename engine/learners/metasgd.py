"""Meta-SGD (Li, Zhou, Chen & Li 2017): MAML that also meta-learns a learning rate per weight.

    phi = theta - alpha (.) grad L_support(theta)        # alpha: same shape as theta, meta-learned
    (theta, alpha) <- (theta, alpha) - beta * grad_(theta, alpha) L_query(phi)

The head is zero-initialised with N rows for any N, so its rates are shared across classes:
one rate per input feature for ``head.weight`` ([1, dim], broadcast over rows) and one for the bias.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.learners.base import About, AdaptSettings, PaperReference, register_learner
from engine.learners.gradient import META_PREFIX, GradientConfig
from engine.learners.maml import MAML
from engine.learners.metacurvature import one_step_note
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
    about = About(
        summary="MAML that also meta-learns a learning rate for every weight, so one inner step can move each "
                "weight by its own amount, even in another direction than the gradient's sign. The rates are "
                "fitted to the number of inner steps it trains with, and adaptation takes that many.",
        update_rule="φ = θ − α ⊙ ∇_θ L_support(θ),  α meta-learned, one rate per weight",
        paper=PaperReference(
            citation="Li et al. 2017", title="Meta-SGD: Learning to Learn Quickly for Few-Shot Learning",
            url="https://arxiv.org/abs/1707.09835", label="Meta-SGD (Li et al. 2017)",
            figures={(5, 1): 99.53, (5, 5): 99.93, (20, 1): 95.93, (20, 5): 98.97}),
        notes="adapts with as many steps as it was meta-trained for (1): its learned per-weight rates "
              "are fitted to exactly that. On the checkpoint trained on the plain resize without augmentation "
              "(models/RESULTS.md's checkpoints shipped before) more steps overshot: 5-way 5-shot validation "
              "tasks, 98.51% after 1 step against 93.44% after 10. On the shipped one (canonical pipeline, "
              "augmentation) they no longer do, and gain within the intervals: 5-way 5-shot 99.21% after 1 "
              "step against 99.49% after 10, 5-way 1-shot 96.74% against 97.17% (`python -m engine.evaluate "
              "--checkpoint models/metasgd/model --ways 5 --shots 5 --tasks 200 --inner-steps 10`, then "
              "without `--inner-steps`, and the same with `--shots 1`), for ten times the adaptation time, "
              "so 1 stays the default (the app's inner-loop settings can ask for more). "
              + one_step_note("metasgd", "learned rates", "scores lower in three of the four settings, 0.5 points "
                                                          "at 5-way 1-shot and 1.6 at 20-way 1-shot"))

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

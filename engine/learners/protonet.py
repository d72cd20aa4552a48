"""Prototypical Networks (Snell, Swersky & Zemel 2017).

Each class is the mean embedding (prototype) of its support examples; a query's logits are its
negative squared Euclidean distances to the prototypes. No gradient steps at test time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from engine import kernels
from engine.learners.base import (
    About, AdaptSettings, Adapted, Learner, MetaLoss, PaperReference, StepRecord, Stopwatch, accuracy,
    non_finite_warning, query_meta_loss, register_learner,
)
from engine.data.augment import augmented_support
from engine.nets import Params, embed

if TYPE_CHECKING:
    from engine.data.tasks import Task


def prototypes(support_embeddings: Tensor, support_y: Tensor, ways: int) -> Tensor:
    """Mean embedding per class, [ways, dim]."""
    one_hot = F.one_hot(support_y, ways).to(support_embeddings.dtype)
    return (one_hot.T @ support_embeddings) / one_hot.sum(dim=0).unsqueeze(1)


def prototype_logits(query_embeddings: Tensor, protos: Tensor) -> Tensor:
    """Negative squared Euclidean distances [Q, ways]."""
    return -torch.cdist(query_embeddings, protos).pow(2)


@register_learner
class ProtoNet(Learner):
    name = "protonet"
    has_inner_loop = False
    # The paper trains on more ways than it tests (60-way episodes, 5 queries per class).
    train_defaults = {"ways": 60, "queries": 5, "meta_batch": 1}
    about = About(
        summary="A metric-based learner: it meta-learns an embedding in which each class is represented by the "
                "mean embedding (prototype) of its support examples, and a query is classified by its distance "
                "to the prototypes. Adapting is one forward pass over the support set, with no gradient steps.",
        update_rule="p_c = mean_{i: y_i = c} f_θ(x_i),  logit_c(x) = −‖f_θ(x) − p_c‖²",
        paper=PaperReference(
            citation="Snell et al. 2017", title="Prototypical Networks for Few-shot Learning",
            url="https://arxiv.org/abs/1703.05175", label="Prototypical Networks (Snell et al. 2017)",
            figures={(5, 1): 98.8, (5, 5): 99.7, (20, 1): 96.0, (20, 5): 98.9}, must_match=True),
        notes="trains and ships on the paper's max-pooling Conv-4 (`--downsample maxpool` in models/train.sh), "
              "which convolves at 4x the resolution of the stride-2 Conv-4 the other algorithms use: ProtoNet "
              "adapts with one forward pass, so the app pays that only once per task (its row in "
              "docs/performance.md's tables). The stride-2 run it replaced, on the same 20k-episode schedule (2.3 h on "
              "one thread), scored 97.44 / 99.43 / 92.58 / 98.05 (`git show 5bfeb0e:models/RESULTS.md`). It is "
              "now within 1 point at 5-way 1-shot and 2 at 20-way 1-shot, but does not yet meet the paper's "
              "figures, as its target asks. Still unlike the paper: queries are normalised with the support "
              "set's statistics only, and one 1-shot-trained model serves the 5-shot settings, where the paper "
              "trains one per shot count. Neither is what holds it back: the same configuration trained and "
              "tested on the papers' character split meets or beats all four published figures (the section "
              "on the papers' split), so the shortfall here is our harder split: its unseen alphabets, not "
              "the amount of training data, since training on the 5 validation alphabets too (176 more "
              "characters) hardly helps (the section on all 30 background alphabets).")

    def episode_logits(self, params: Params, task: "Task") -> tuple[Tensor, Tensor]:
        """Support and query logits of one episode; batch-norm statistics from the support set."""
        num_support = task.support_x.shape[0]
        features = embed(params, torch.cat([task.support_x, task.query_x]), self.backbone, stats_count=num_support)
        protos = prototypes(features[:num_support], task.support_y, task.ways)
        return prototype_logits(features[:num_support], protos), prototype_logits(features[num_support:], protos)

    def meta_loss(self, tasks: Sequence["Task"]) -> MetaLoss:
        return query_meta_loss([(self.episode_logits(self.params, task)[1], task.query_y) for task in tasks])

    @torch.no_grad()
    def adapt(self, support_x: Tensor, support_y: Tensor, ways: int, settings: AdaptSettings | None = None) -> Adapted:
        watch = Stopwatch(self.device)
        if settings is not None:  # test-time augmentation: prototypes over augmented copies too
            support_x, support_y = augmented_support(support_x, support_y, settings.support_augment)
        params = self.detached_params()
        backbone = self.backbone
        stats: list[kernels.LayerStats] | None = None
        if kernels.applies(params, backbone, head=False):
            # Keeps the support set's batch-norm statistics: queries need not re-embed the support set.
            support_features, stats = kernels.support_embedding(params, support_x, backbone)
        else:
            support_features = embed(params, support_x, backbone)
        protos = prototypes(support_features, support_y, ways)
        support_logits = prototype_logits(support_features, protos)
        trace = [StepRecord(0, F.cross_entropy(support_logits, support_y).item(), accuracy(support_logits, support_y), watch.ms())]
        num_support = support_x.shape[0]

        def predict_logits(query_x: Tensor, transductive: bool) -> Tensor:
            if transductive:
                return prototype_logits(embed(params, query_x, backbone), protos)
            if stats is not None:
                return prototype_logits(kernels.embed_with_stats(params, query_x, backbone, stats), protos)
            features = embed(params, torch.cat([support_x, query_x]), backbone, stats_count=num_support)
            return prototype_logits(features[num_support:], protos)

        return Adapted(ways=ways, trace=trace, predict_logits=predict_logits, adapt_ms=watch.ms(),
                       warning=non_finite_warning(trace))

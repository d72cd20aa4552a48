"""Meta-Curvature (Park & Oliva 2019): MAML whose inner-loop gradients pass through learned,
Kronecker-factored curvature matrices.

Per conv layer the gradient tensor G (C_out x C_in x d, d = 3x3 filter positions) becomes

    MC(G) = G x3 M_f x2 M_i x1 M_o,   i.e.  vec(MC(G)) = (M_o (x) M_i (x) M_f) vec(G),

with M_f (d x d), M_i (C_in x C_in), M_o (C_out x C_out) meta-learned from identity. ``mc1`` keeps
M_o = I, ``mc2`` learns all three. Batch-norm scales and shifts get a learned diagonal. The
zero-initialised head has N output rows for any N, so it gets M_i (over its input features) and a
learned scalar for its bias; its M_o stays the identity.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from engine.learners.base import register_learner
from engine.learners.gradient import META_PREFIX, GradientTransform
from engine.learners.maml import MAML
from engine.nets import Params

MC_PREFIX = META_PREFIX + "mc."


def curvature_transform(gradient: Tensor, m_out: Tensor | None, m_in: Tensor, m_filter: Tensor) -> Tensor:
    """MC(G) = G x3 M_f x2 M_i x1 M_o for G of shape (C_out, C_in, d).

    Computed in a (d, C_out, C_in) layout where each mode product is one well-shaped matrix
    product: an inner dimension of only d = 9 (``G.reshape(-1, d) @ M_f.T``) or a batch over all
    C_out (``M_i @ G[o]`` per o) ran 2-4x slower, and this runs at every inner step."""
    c_out, c_in, d = gradient.shape
    result = (m_filter @ gradient.reshape(c_out * c_in, d).T).reshape(d * c_out, c_in)  # x3 M_f
    result = (result @ m_in.T).reshape(d, c_out, c_in)  # x2 M_i
    if m_out is not None:
        result = torch.matmul(m_out, result)  # x1 M_o, batched over the d filter positions
    return result.permute(1, 2, 0)


class MetaCurvature(MAML):
    """Shared by ``mc1`` and ``mc2``; they differ in whether M_o is learned."""

    learn_output_matrix: ClassVar[bool]

    def init_params(self, generator: torch.Generator) -> Params:
        network = super().init_params(generator)
        matrices: Params = {}
        for name, value in network.items():
            if name.startswith("conv"):
                c_out, c_in, kh, kw = value.shape
                matrices[f"{MC_PREFIX}{name}.in"] = torch.eye(c_in)
                matrices[f"{MC_PREFIX}{name}.filter"] = torch.eye(kh * kw)
                if self.learn_output_matrix:
                    matrices[f"{MC_PREFIX}{name}.out"] = torch.eye(c_out)
            else:  # batch-norm scale / shift
                matrices[f"{MC_PREFIX}{name}.diag"] = torch.ones_like(value)
        matrices[f"{MC_PREFIX}head.weight.in"] = torch.eye(self.backbone.embedding_dim)
        matrices[f"{MC_PREFIX}head.bias.diag"] = torch.ones(1)
        return {**network, **matrices}

    def default_test_steps(self) -> int:
        """As many steps as meta-training took: the curvature is learned for exactly those, and more
        steps overshoot, most at 5 shots (models/RESULTS.md's notes give the measurement)."""
        return self.config.inner_steps

    def gradient_transform(self, meta_params: Params) -> GradientTransform:
        def transform(grads: Params) -> Params:
            out: Params = {}
            for name, grad in grads.items():
                key = MC_PREFIX + name
                if key + ".diag" in meta_params:
                    out[name] = grad * meta_params[key + ".diag"]
                elif grad.dim() == 4:  # conv: (C_out, C_in, kh, kw) -> (C_out, C_in, d)
                    flat = grad.reshape(grad.shape[0], grad.shape[1], -1)
                    transformed = curvature_transform(flat, meta_params.get(key + ".out"), meta_params[key + ".in"],
                                                      meta_params[key + ".filter"])
                    out[name] = transformed.reshape(grad.shape)
                else:  # head weight (N, dim): only its input-feature matrix
                    out[name] = grad @ meta_params[key + ".in"].T
            return out

        return transform


@register_learner
class MetaCurvature1(MetaCurvature):
    name = "mc1"
    learn_output_matrix = False


@register_learner
class MetaCurvature2(MetaCurvature):
    name = "mc2"
    learn_output_matrix = True

"""What the head-curvature optimizers (newton, natgrad, kfac) share: the head's inputs and
parameters at the current fast weights."""

from __future__ import annotations

import torch
from torch import Tensor

from engine.nets import Params, embed
from engine.optim.base import InnerProblem
from engine.optim.curvature import head_matrix, with_ones


def head_inputs(params: Params, problem: InnerProblem) -> Tensor:
    """The head's inputs [n, D+1] on the support set (embeddings with a 1 appended). Outside a
    differentiable step they are computed without building a graph."""
    if problem.create_graph:
        return with_ones(embed(params, problem.inputs, problem.backbone))
    with torch.no_grad():
        return with_ones(embed(params, problem.inputs, problem.backbone))


def curvature_params(params: Params, problem: InnerProblem) -> Params:
    """``params`` as the curvature computations see them: constants outside a differentiable step."""
    return params if problem.create_graph else {name: value.detach() for name, value in params.items()}


def head_vector(params: Params, problem: InnerProblem) -> Tensor:
    """The head ``[W | b]`` flattened row by row (a constant outside a differentiable step)."""
    theta = head_matrix(params).reshape(-1)
    return theta if problem.create_graph else theta.detach()


def in_order(params: Params, updated: Params) -> Params:
    """``updated``'s entries in the order of ``params`` (every entry must be present)."""
    return {name: updated[name] for name in params}

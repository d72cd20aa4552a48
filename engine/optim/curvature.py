"""Small pure helpers shared by the curvature-aware inner optimizers (newton, natgrad, kfac).

The linear head is handled as one matrix ``[W | b]`` of shape [C, D+1] (``C`` classes, ``D``
embedding dimensions, the bias as the last column) acting on features with an appended 1, and as
a vector by flattening that matrix row by row: index ``c * (D+1) + j``. In that order the
curvature of softmax regression is a sum of Kronecker products ``Lambda_n (x) x_n x_n^T``.

Everything here is differentiable (no ``.detach()``, solves through ``torch.linalg``), so a
second-order meta-gradient can flow through a step built from these pieces.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import hessian

from engine.nets import Params
from engine.optim.base import InnerProblem

HEAD_WEIGHT = "head.weight"
HEAD_BIAS = "head.bias"
HEAD_NAMES = (HEAD_WEIGHT, HEAD_BIAS)


def head_matrix(tensors: Params) -> Tensor:
    """``[W | b]`` [C, D+1] from the head entries of ``tensors`` (parameters or their gradients)."""
    return torch.cat([tensors[HEAD_WEIGHT], tensors[HEAD_BIAS].unsqueeze(1)], dim=1)


def split_head(matrix: Tensor) -> Params:
    """Inverse of ``head_matrix``: ``{"head.weight": [C, D], "head.bias": [C]}``."""
    return {HEAD_WEIGHT: matrix[:, :-1], HEAD_BIAS: matrix[:, -1]}


def with_ones(features: Tensor) -> Tensor:
    """Features [n, D] -> [n, D+1] with a trailing 1 (the bias's input)."""
    return torch.cat([features, features.new_ones(features.shape[0], 1)], dim=1)


def softmax_covariance(probs: Tensor) -> Tensor:
    """``diag(p) - p p^T`` per row of ``probs`` [n, C] -> [n, C, C]: the covariance of the one-hot
    label under the model, i.e. the Fisher (and Hessian) of cross-entropy w.r.t. the logits."""
    return torch.diag_embed(probs) - probs.unsqueeze(2) * probs.unsqueeze(1)


def softmax_head_fisher(inputs: Tensor, probs: Tensor) -> Tensor:
    """Exact Fisher of the mean log-likelihood of softmax regression w.r.t. the flattened head:

        F = 1/n sum_n (diag(p_n) - p_n p_n^T) (x) x_n x_n^T      [C(D+1), C(D+1)]

    ``inputs`` [n, D+1] are the head's inputs (features with a 1 appended), ``probs`` [n, C] the
    model's own predictive distribution; the expectation over the model's labels is exact.
    """
    n, width = inputs.shape
    classes = probs.shape[1]
    # sum over n as one matmul of [C*C, n] by [n, (D+1)^2]; no [n, C, C, D+1, D+1] intermediate.
    outer = (inputs.unsqueeze(2) * inputs.unsqueeze(1)).reshape(n, width * width)
    fisher = softmax_covariance(probs).reshape(n, classes * classes).T @ outer / n
    return fisher.reshape(classes, classes, width, width).permute(0, 2, 1, 3).reshape(classes * width, classes * width)


HeadObjective = Callable[[Tensor], Tensor]


def head_objective(problem: InnerProblem, params: Params, inputs: Tensor) -> HeadObjective:
    """``theta -> problem.objective`` at ``params`` with the head replaced by ``theta`` (flattened
    [C*(D+1)]) and the head's ``inputs`` [n, D+1] held fixed: the inner objective as a function of
    the head alone, extra terms (e.g. iMAML's proximal penalty) included."""
    classes = params[HEAD_BIAS].shape[0]

    def objective(theta: Tensor) -> Tensor:
        matrix = theta.view(classes, -1)
        return problem.objective({**params, **split_head(matrix)}, inputs @ matrix.T)

    return objective


def has_extra_terms(problem: InnerProblem) -> bool:
    """Whether the problem's objective adds terms to the support cross-entropy."""
    return type(problem).objective is not InnerProblem.objective


def head_extra_terms(problem: InnerProblem, params: Params, inputs: Tensor) -> HeadObjective:
    """``head_objective`` minus the support cross-entropy: the objective's extra terms."""
    objective = head_objective(problem, params, inputs)
    classes = params[HEAD_BIAS].shape[0]
    return lambda theta: objective(theta) - F.cross_entropy(inputs @ theta.view(classes, -1).T, problem.labels)


def head_hessian(objective: HeadObjective, theta: Tensor) -> Tensor:
    """Exact Hessian [P, P] of ``objective`` at ``theta`` [P] by automatic differentiation
    (``torch.func.hessian``); differentiable w.r.t. ``theta`` and whatever ``objective`` captures."""
    return hessian(objective)(theta)


def damped_solve(matrix: Tensor, rhs: Tensor, damping: float) -> Tensor | None:
    """``(matrix + damping * I)^-1 rhs`` by Cholesky for a symmetric ``matrix`` [P, P] and ``rhs``
    [P] or [P, K]; ``None`` when the damped matrix is not (numerically) positive definite."""
    damped = matrix + damping * torch.eye(matrix.shape[0], dtype=matrix.dtype, device=matrix.device)
    factor, info = torch.linalg.cholesky_ex(damped)
    if int(info) != 0 or not bool(torch.isfinite(factor).all()):
        return None
    column = rhs.unsqueeze(1) if rhs.dim() == 1 else rhs
    solution = torch.cholesky_solve(column, factor)
    return solution.squeeze(1) if rhs.dim() == 1 else solution

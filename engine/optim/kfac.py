"""K-FAC (Martens & Grosse 2015; KFC for convolutions, Grosse & Martens 2016) for the inner loop.

Each conv and linear layer's Fisher block is approximated by a Kronecker product A (x) G of the
second moment of its inputs (A) and of the gradients of the log-likelihood w.r.t. its outputs
(G), with labels from the model's own predictive distribution. The step preconditions each
layer's gradient matrix from both sides, G^-1 dW A^-1, which costs two small solves per layer
(at most 576 x 576 and 64 x 64 for the 64-channel Conv-4) instead of one over all its weights.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.nets import BackboneConfig, Params, embed
from engine.optim.base import InnerOptimizer, InnerProblem, LearningRate, register_inner_optimizer, step_size
from engine.optim.curvature import (
    HEAD_NAMES,
    has_extra_terms,
    head_matrix,
    softmax_covariance,
    split_head,
    with_ones,
)
from engine.optim.head import in_order

FisherMode = Literal["exact", "sampled", "auto"]


# ------------------------------------------------------------------------------- forward pass
@dataclass(frozen=True)
class LayerTrace:
    """A forward pass of the Conv-4 + head that keeps what K-FAC needs of each layer."""

    logits: Tensor
    conv_inputs: list[Tensor]  # the input of conv{i}, [n, C_in, H, W]
    conv_outputs: list[Tensor]  # the output of conv{i} before batch norm, [n, C_out, H', W']
    features: Tensor  # the head's input (the embedding), [n, D]


def traced_forward(params: Params, x: Tensor, config: BackboneConfig) -> LayerTrace:
    """``engine.nets.classify`` (batch statistics of the whole batch), also returning each conv's
    input and pre-batch-norm output. Conv outputs are made to require grad when nothing upstream
    does, so their gradients can be taken even for constant parameters."""
    inputs: list[Tensor] = []
    outputs: list[Tensor] = []

    def record(layer: int, conv_input: Tensor, conv_output: Tensor) -> Tensor:
        if not conv_output.requires_grad:
            conv_output.requires_grad_(True)
        inputs.append(conv_input)
        outputs.append(conv_output)
        return conv_output

    features = embed(params, x, config, conv_hook=record)
    return LayerTrace(F.linear(features, params["head.weight"], params["head.bias"]), inputs, outputs, features)


# ------------------------------------------------------------------------------- Kronecker factors
def conv_input_factor(inputs: Tensor, stride: int) -> Tensor:
    """A = mean over examples and output positions of a a^T, ``a`` the unfolded 3x3 patch
    (C_in*9 entries, in the order of ``weight.reshape(C_out, -1)``)."""
    patches = F.unfold(inputs, kernel_size=3, padding=1, stride=stride)  # [n, C_in*9, T]
    flat = patches.transpose(0, 1).reshape(patches.shape[1], -1)
    return flat @ flat.T / flat.shape[1]


def linear_input_factor(inputs: Tensor) -> Tensor:
    """A = mean over examples of a a^T for a linear layer's inputs [n, D] (append a 1 for a bias)."""
    return inputs.T @ inputs / inputs.shape[0]


def output_factor(output_grads: Tensor) -> Tensor:
    """G = 1/n sum_s sum_n sum_t g g^T from log-likelihood gradients w.r.t. a layer's outputs,
    [S, n, C] (linear) or [S, n, C, H, W] (conv): summed over the S label draws (already weighted
    so that the sum is the expectation) and over spatial positions, averaged over examples."""
    samples, n, channels = output_grads.shape[:3]
    flat = output_grads.reshape(samples, n, channels, -1).permute(2, 0, 1, 3).reshape(channels, -1)
    return flat @ flat.T / n


def label_cotangents(probs: Tensor, mode: FisherMode, generator: torch.Generator | None = None,
                     samples: int = 1) -> Tensor:
    """Gradients of the log-likelihood w.r.t. the logits, [S, n, C], for labels drawn from the
    model, weighted so that sum_s v_s v_s^T is the expectation over the model's labels of
    (p - e_y)(p - e_y)^T, which is diag(p) - p p^T:

    * ``exact``: S = C, v_c = sqrt(p_c) (p - e_c), every label with its probability;
    * ``sampled``: S = ``samples`` draws y ~ p, v_s = (p - e_y) / sqrt(S) (Monte Carlo)."""
    classes = probs.shape[1]
    eye = torch.eye(classes, dtype=probs.dtype, device=probs.device)
    if mode == "exact":
        weights = probs.clamp_min(torch.finfo(probs.dtype).tiny).sqrt().T.unsqueeze(2)  # [C, n, 1]
        return weights * (probs.unsqueeze(0) - eye.unsqueeze(1))
    draws = torch.multinomial(probs.detach().cpu().double(), samples, replacement=True, generator=generator)
    onehot = eye[draws.T.to(probs.device)]  # [S, n, C]
    return (probs.unsqueeze(0) - onehot) / math.sqrt(samples)


# ------------------------------------------------------------------------------- the solve
def pi_damped(a: Tensor, g: Tensor, damping: float) -> tuple[Tensor, Tensor] | None:
    """Factored Tikhonov damping with Martens & Grosse's pi correction:

        A + pi sqrt(lambda) I,  G + sqrt(lambda) / pi I,  pi = sqrt((tr A / dim A) / (tr G / dim G)),

    whose Kronecker product is A (x) G + lambda I plus cross terms balanced between the factors.
    ``None`` when a factor is zero (the layer has no curvature information yet, e.g. every conv
    while the head is still zero)."""
    mean_a = torch.diagonal(a).mean()
    mean_g = torch.diagonal(g).mean()
    if not (bool(mean_a > 0) and bool(mean_g > 0)):
        return None
    pi = torch.sqrt(mean_a / mean_g)
    root = math.sqrt(damping)
    eye_a = torch.eye(a.shape[0], dtype=a.dtype, device=a.device)
    eye_g = torch.eye(g.shape[0], dtype=g.dtype, device=g.device)
    return a + (pi * root) * eye_a, g + (root / pi) * eye_g


def kronecker_solve(grad: Tensor, a: Tensor, g: Tensor) -> Tensor | None:
    """G^-1 dW A^-1 for dW [C_out, C_in'] and symmetric positive definite A, G (Cholesky);
    ``None`` when either is not positive definite."""
    factor_a, info_a = torch.linalg.cholesky_ex(a)
    factor_g, info_g = torch.linalg.cholesky_ex(g)
    if int(info_a) != 0 or int(info_g) != 0:
        return None
    left = torch.cholesky_solve(grad, factor_g)  # G^-1 dW
    return torch.cholesky_solve(left.T, factor_a).T  # (A^-1 (G^-1 dW)^T)^T = G^-1 dW A^-1


def extra_curvature(problem: InnerProblem, params: Params, layers: dict[str, list[str]]) -> dict[str, float]:
    """Mean curvature of the problem's extra objective terms (beyond the cross-entropy) per layer:
    v . Hv / |v|^2 over the layer's entries, v = 1 everywhere, from one Hessian-vector product.
    Exact for an isotropic penalty such as iMAML's proximal term lambda/2 ||phi - theta||^2
    (Hessian lambda I); 0 for every layer when the objective has no extra terms."""
    if not has_extra_terms(problem):
        return {layer: 0.0 for layer in layers}
    with torch.enable_grad():
        leaves = {name: value.detach().requires_grad_(True) for name, value in params.items()}
        logits = torch.zeros(problem.labels.shape[0], params["head.bias"].shape[0], dtype=params["head.bias"].dtype,
                             device=params["head.bias"].device)
        extra = problem.objective(leaves, logits) - F.cross_entropy(logits, problem.labels)
        grads = torch.autograd.grad(extra, list(leaves.values()), create_graph=True, allow_unused=True)
        total = sum(g.sum() for g in grads if g is not None and g.requires_grad)
        hv = (torch.autograd.grad(total, list(leaves.values()), allow_unused=True)
              if isinstance(total, Tensor) else [None] * len(leaves))
    products = {name: (0.0 if h is None else float(h.sum())) for name, h in zip(leaves, hv)}
    return {layer: max(0.0, sum(products[n] for n in names) / sum(params[n].numel() for n in names))
            for layer, names in layers.items()}


# ------------------------------------------------------------------------------- the optimizer
@register_inner_optimizer
class KFAC(InnerOptimizer):
    """K-FAC for every conv and the linear head, gradient descent for batch norm:

        W_l <- W_l - lr * (G_l + sqrt(lambda)/pi_l I)^-1 dW_l (A_l + pi_l sqrt(lambda) I)^-1
        A_l = E[a a^T]   layer inputs (conv: unfolded 3x3 patches, mean over examples and positions;
                         head: [f;1])
        G_l = E[g g^T]   log-likelihood gradients w.r.t. the layer's outputs (conv: before batch
                         norm, summed over positions), labels from the model's softmax
        BN scale/shift <- - lr * g

    The head's G is the exact expectation, mean_n diag(p_n) - p_n p_n^T. For the convs,
    ``fisher="exact"`` takes the expectation over the model's labels exactly with one (batched)
    backward pass per class, each giving every example the same label (batch norm couples the
    examples; the cross-example terms this creates are ignored, as in standard K-FAC);
    ``"sampled"`` draws ``samples`` labels per example (generator seeded with ``seed``, so runs
    repeat) at one backward pass per draw; ``"auto"`` (default) is exact while classes x support
    examples <= ``exact_budget`` (200: 5-way up to 8-shot, 10-way 2-shot, 14-way 1-shot) and
    sampled otherwise, which keeps 20-way 5-shot to one extra backward pass per step.
    Damping is Tikhonov with the pi correction, ``lambda`` = ``damping`` (default 0.1), fixed for
    the whole inner loop. It bounds the step in flat directions at lr / lambda times the gradient:
    on a meta-trained Conv-4 the convs' Fisher blocks are tiny (mean eigenvalue ~1e-5), so their
    steps are mostly that; lambda = 0.01 (100x the SGD step there) wrecked the meta-learned
    features (5-way 1-shot query accuracy 0.54 vs 0.78 with SGD), 0.1 fits the support faster
    than SGD at a small cost in query accuracy, 1 behaves like a slower SGD. A layer whose
    factors carry no curvature (every conv while the head is still zero) or fail Cholesky takes
    the gradient step (the latter with a message in ``messages``). Extra terms of the problem's
    objective (iMAML's proximal penalty lambda/2 ||phi - theta||^2) add their mean curvature per
    layer to the damping, exact for such isotropic penalties (without it the preconditioned
    proximal gradient overshoots by lr * lambda / damping and the inner loop diverges).
    """

    name = "kfac"

    def __init__(self, damping: float = 0.1, fisher: FisherMode = "auto", samples: int = 1,
                 exact_budget: int = 200, seed: int = 0) -> None:
        super().__init__()
        self.damping = damping
        self.fisher = fisher
        self.samples = samples
        self.exact_budget = exact_budget
        self.generator = torch.Generator().manual_seed(seed)

    def label_mode(self, classes: int, examples: int) -> FisherMode:
        """``exact`` costs one backward pass over the support set per class, ``sampled`` one per
        draw; ``auto`` is exact while classes x examples <= ``exact_budget``."""
        if self.fisher != "auto":
            return self.fisher
        return "exact" if classes * examples <= self.exact_budget else "sampled"

    def step(self, params: Params, grads: Params, loss: Tensor, lr: LearningRate, problem: InnerProblem) -> Params:
        config = problem.backbone
        source = params if problem.create_graph else {name: value.detach() for name, value in params.items()}
        trace = traced_forward(source, problem.inputs, config)
        probs = torch.softmax(trace.logits, dim=1)
        probs = probs if problem.create_graph else probs.detach()
        mode = self.label_mode(probs.shape[1], probs.shape[0])
        output_grads = self.output_gradients(trace, label_cotangents(probs, mode, self.generator, self.samples),
                                             problem.create_graph)

        layers = {f"conv{layer}.weight": [f"conv{layer}.weight"] for layer in range(config.layers)}
        extra = extra_curvature(problem, params, layers | {"head": list(HEAD_NAMES)})
        directions: Params = {}
        with contextlib.nullcontext() if problem.create_graph else torch.no_grad():
            for layer, name in enumerate(layers):
                a = conv_input_factor(trace.conv_inputs[layer], config.conv_stride)
                direction = self.layer_direction(name, grads[name].reshape(grads[name].shape[0], -1),
                                                 a, output_factor(output_grads[layer]), extra[name])
                directions[name] = grads[name] if direction is None else direction.view_as(grads[name])
            a = linear_input_factor(with_ones(trace.features))
            g = softmax_covariance(probs).mean(dim=0)  # exact E over the model's labels, any mode
            direction = self.layer_direction("head", head_matrix(grads), a, g, extra["head"])
            head = {name: grads[name] for name in HEAD_NAMES} if direction is None else split_head(direction)
            directions.update(head)
        updated = {name: params[name] - step_size(lr, name) * direction for name, direction in directions.items()}

        updated.update({name: value - step_size(lr, name) * grads[name]
                        for name, value in params.items() if name not in updated})
        return in_order(params, updated)

    def layer_direction(self, layer: str, grad: Tensor, a: Tensor, g: Tensor, extra: float = 0.0) -> Tensor | None:
        """The layer's damped K-FAC direction, the extra terms' curvature ``extra`` added to the
        damping; ``None`` (take the gradient step) when its factors carry no curvature yet, or,
        with a message, when a damped factor fails Cholesky."""
        damped = pi_damped(a, g, self.damping + extra)
        if damped is None:
            return None
        direction = kronecker_solve(grad, *damped)
        if direction is None or not bool(torch.isfinite(direction).all()):
            self.note(f"kfac: a damped Kronecker factor of {layer} was not positive definite (damping "
                      f"{self.damping:g}), so that layer took a plain gradient step instead.")
            return None
        return direction

    @staticmethod
    def output_gradients(trace: LayerTrace, cotangents: Tensor, create_graph: bool) -> list[Tensor]:
        """d(v . logits)/d(conv output) for every row v of ``cotangents`` [S, n, C]: [S, n, C, H, W]
        per conv layer, in one batched backward pass."""
        if not trace.conv_outputs:
            return []
        return list(torch.autograd.grad(trace.logits, trace.conv_outputs, grad_outputs=cotangents,
                                        is_grads_batched=True, create_graph=create_graph))

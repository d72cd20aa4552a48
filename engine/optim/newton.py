"""Damped Newton on the linear head (exact Hessian), gradient descent on the backbone, with a
backtracking line search on the joint step."""

from __future__ import annotations

from torch import Tensor

from engine.nets import Params
from engine.optim.base import InnerOptimizer, InnerProblem, LearningRate, register_inner_optimizer, step_size
from engine.optim.curvature import HEAD_NAMES, damped_solve, head_hessian, head_matrix, head_objective, split_head
from engine.optim.head import curvature_params, head_inputs, head_vector
from engine.optim.linesearch import searched_step


@register_inner_optimizer
class Newton(InnerOptimizer):
    """Damped Newton step on the head, gradient step on the backbone, one line search for both:

        d_head = eta * (H + lambda I)^-1 g_head    H: exact Hessian of the inner objective (support
        d_rest = lr * g_rest                          cross-entropy plus any extra terms of the
                                                      problem) w.r.t. the head [W|b] jointly
        theta <- theta - t * d                     t: 1, 1/2, 1/4, ... (backtracking, Armijo)

    ``eta`` (``step_size``, default 1: the full Newton step) does not use ``lr``, whose scale is
    tuned for gradient descent; ``lambda`` = ``damping`` (default 1e-3). For a per-parameter
    ``lr`` (Meta-SGD) the backbone uses its own rates and the head still takes the Newton step.

    Why the line search (``line_search=True``, up to ``max_halvings`` = 10 halvings): the Newton
    step fits the head to the current features at once, and its large weights then scale up the
    backbone's gradient, so the fixed-lr backbone step can overshoot (on a random backbone the
    loss diverged within 5 steps without it). d is a descent direction, so some t > 0 always
    decreases the loss; at t = 1 this costs one extra forward pass per step.

    The head's loss is convex, so H + lambda I is positive definite for lambda > 0; when Cholesky
    fails anyway (lambda <= 0: H is always singular, since adding one vector to every class's
    weights changes nothing; non-finite values) the head takes the gradient step -lr * g_head and
    a message is recorded in ``messages``.
    """

    name = "newton"

    def __init__(self, damping: float = 1e-3, step_size: float = 1.0, line_search: bool = True,
                 max_halvings: int = 10) -> None:
        super().__init__()
        self.damping = damping
        self.step_size = step_size
        self.line_search = line_search
        self.max_halvings = max_halvings

    def step(self, params: Params, grads: Params, loss: Tensor, lr: LearningRate, problem: InnerProblem) -> Params:
        theta = head_vector(params, problem)
        hessian = head_hessian(head_objective(problem, curvature_params(params, problem), head_inputs(params, problem)),
                               theta)
        direction = damped_solve(hessian, head_matrix(grads).reshape(-1), self.damping)
        if direction is None:
            self.note(f"newton: the damped head Hessian (damping {self.damping:g}) was not positive definite, "
                      "so the head took a plain gradient step instead.")
            directions = {name: step_size(lr, name) * grads[name] for name in params}
        else:
            head = split_head(self.step_size * direction.view(params["head.bias"].shape[0], -1))
            directions = {name: step_size(lr, name) * grads[name] for name in params if name not in HEAD_NAMES} | head
        return searched_step(self, params, grads, directions, loss, problem, self.line_search, self.max_halvings)

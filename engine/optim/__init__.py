"""Inner-loop optimizers behind one small interface, registered by name (in the spirit of `higher`).

Any gradient-based learner can run its inner loop with any of them:
``make_inner_optimizer("sgd").step(params, grads, loss, lr, problem)``.
"""

from engine.optim.base import (
    INNER_OPTIMIZERS,
    InnerOptimizer,
    InnerProblem,
    LearningRate,
    make_inner_optimizer,
    register_inner_optimizer,
)

# Registry entries: importing a module registers its optimizers.
from engine.optim import adam, armijo, bounded, kfac, natgrad, newton, sgd  # noqa: E402,F401

__all__ = [
    "INNER_OPTIMIZERS",
    "InnerOptimizer",
    "InnerProblem",
    "LearningRate",
    "make_inner_optimizer",
    "register_inner_optimizer",
]

"""All meta-learning algorithms, registered by short name.

Adding an algorithm = one module defining a ``@register_learner`` class + one import line below;
it then appears in ``engine.train``, ``engine.evaluate``, the benchmarks and the app.
"""

from engine.learners.base import (
    LEARNERS,
    About,
    AdaptSettings,
    Adapted,
    Learner,
    LearnerConfig,
    MetaLoss,
    PaperReference,
    ResolvedSettings,
    StepRecord,
    get_learner_class,
    register_learner,
)

# Registry entries.
from engine.learners import (  # noqa: E402,F401
    blackbox, imaml, maml, metacurvature, metasgd, pretrain, protonet, reptile,
)

__all__ = [
    "LEARNERS", "About", "AdaptSettings", "Adapted", "Learner", "LearnerConfig", "MetaLoss", "PaperReference",
    "ResolvedSettings", "StepRecord", "get_learner_class", "register_learner",
]

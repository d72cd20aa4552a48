"""The benchmark's baselines: the same adaptation and MAML meta-step written the usual ways.

* ``naive``: a deep-copied ``nn.Module`` stepped with ``torch.autograd.grad`` (adaptation), and
  ``torch.func.functional_call`` with ``create_graph=True`` (the meta-step): plain PyTorch, always
  available.
* ``learn2learn`` (0.2.0): ``l2l.algorithms.MAML``'s ``clone()`` / ``adapt()``.
* ``higher`` (0.2.1): ``higher.innerloop_ctx`` with a differentiable SGD.

They run on :class:`Conv4`, an ``nn.Module`` with the very weights of a learner's Conv-4
(``module_from_params``). Its ``nn.BatchNorm2d`` (no running statistics) normalises every batch
with its own statistics, as these libraries' MAML examples do: adaptation (support batch) is then
the same function as ours, so the adapted weights agree (the benchmark checks this on the
predictions, compared with our ``predict_proba(..., transductive=True)``). The peers predict
queries with the query batch's statistics, ours with the support set's: both push the 20 queries
through the network once. In the meta-step the peers' query pass sees only the queries (ours
also runs the support set, whose statistics normalise the queries: more work for ours), and the
peers meta-learn the zero-initialised head too.

learn2learn and higher are optional (``bash benchmarks/bench_peers.sh`` installs them into
``.venv-bench``); :func:`available_peers` says why one is missing. learn2learn's own
``__init__`` imports torchvision, which fails beside torch 2.13, so only
``learn2learn.algorithms.maml`` (and the ``learn2learn.utils`` it uses) are loaded, under stub
parent packages.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import sys
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.nets import BN_EPS, BackboneConfig, Params

if TYPE_CHECKING:
    from engine.data.tasks import Task

# (module, support x, support y, query x, steps, lr) -> query probabilities
AdaptFn = Callable[[nn.Module, Tensor, Tensor, Tensor, int, float], Tensor]
# (module, tasks, inner steps, inner lr) -> meta-loss, after its backward (gradients in .grad)
MetaStepFn = Callable[[nn.Module, Sequence["Task"], int, float], Tensor]


class Conv4(nn.Module):
    """``engine.nets``' Conv-4 + linear head as an ``nn.Module`` (batch statistics always)."""

    def __init__(self, backbone: BackboneConfig, ways: int) -> None:
        super().__init__()
        self.backbone = backbone
        channels = [1] + [backbone.channels] * backbone.layers
        self.convs = nn.ModuleList(nn.Conv2d(channels[i], channels[i + 1], 3, stride=backbone.conv_stride, padding=1,
                                             bias=False) for i in range(backbone.layers))
        self.norms = nn.ModuleList(nn.BatchNorm2d(backbone.channels, eps=BN_EPS, track_running_stats=False)
                                   for _ in range(backbone.layers))
        self.head = nn.Linear(backbone.embedding_dim, ways)

    def forward(self, x: Tensor) -> Tensor:
        for conv, norm in zip(self.convs, self.norms):
            x = F.relu(norm(conv(x)))
            if self.backbone.downsample == "maxpool":
                x = F.max_pool2d(x, 2)
        return self.head(x.mean(dim=(2, 3)))


def module_from_params(params: Params, backbone: BackboneConfig, ways: int) -> Conv4:
    """A :class:`Conv4` holding ``params``' backbone weights and a zero head of ``ways`` outputs."""
    module = Conv4(backbone, ways).to(next(iter(params.values())).device)
    with torch.no_grad():
        for layer in range(backbone.layers):
            module.convs[layer].weight.copy_(params[f"conv{layer}.weight"])
            module.norms[layer].weight.copy_(params[f"bn{layer}.weight"])
            module.norms[layer].bias.copy_(params[f"bn{layer}.bias"])
        module.head.weight.zero_()
        module.head.bias.zero_()
    return module


# -- naive reference -----------------------------------------------------------------------------

def naive_adapt(module: nn.Module, support_x: Tensor, support_y: Tensor, query_x: Tensor, steps: int,
                lr: float) -> Tensor:
    """Deep copy, ``steps`` SGD steps by ``torch.autograd.grad``, then predict the queries."""
    model = copy.deepcopy(module)
    params = list(model.parameters())
    for _ in range(steps):
        grads = torch.autograd.grad(F.cross_entropy(model(support_x), support_y), params)
        with torch.no_grad():
            for param, grad in zip(params, grads):
                param.sub_(lr * grad)
    with torch.no_grad():
        return torch.softmax(model(query_x), dim=1)


def naive_meta_step(module: nn.Module, tasks: Sequence["Task"], steps: int, lr: float) -> Tensor:
    """Second-order MAML by ``functional_call`` and ``autograd.grad(create_graph=True)``."""
    meta = dict(module.named_parameters())
    losses = []
    for task in tasks:
        fast = meta
        for _ in range(steps):
            loss = F.cross_entropy(torch.func.functional_call(module, fast, (task.support_x,)), task.support_y)
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=True)
            fast = {name: value - lr * grad for (name, value), grad in zip(fast.items(), grads)}
        losses.append(F.cross_entropy(torch.func.functional_call(module, fast, (task.query_x,)), task.query_y))
    loss = torch.stack(losses).mean()
    loss.backward()
    return loss.detach()


# -- learn2learn -----------------------------------------------------------------------------------

def load_learn2learn_maml() -> types.ModuleType:
    """``learn2learn.algorithms.maml`` without running ``learn2learn/__init__.py`` (torchvision)."""
    spec = importlib.util.find_spec("learn2learn")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("learn2learn is not installed (bash benchmarks/bench_peers.sh installs it into .venv-bench)")
    root = list(spec.submodule_search_locations)[0]
    for name, path in (("learn2learn", root), ("learn2learn.algorithms", f"{root}/algorithms")):
        if name not in sys.modules:
            stub = types.ModuleType(name)
            stub.__path__ = [path]
            sys.modules[name] = stub
    return importlib.import_module("learn2learn.algorithms.maml")


def learn2learn_fns(maml_module: types.ModuleType) -> tuple[AdaptFn, MetaStepFn]:
    MAML = maml_module.MAML

    def adapt(module: nn.Module, support_x: Tensor, support_y: Tensor, query_x: Tensor, steps: int,
              lr: float) -> Tensor:
        # first_order at test time: no meta-graph is needed (the fairest setting for the peer).
        learner = MAML(module, lr=lr, first_order=True).clone()
        for _ in range(steps):
            learner.adapt(F.cross_entropy(learner(support_x), support_y))
        with torch.no_grad():
            return torch.softmax(learner(query_x), dim=1)

    def meta_step(module: nn.Module, tasks: Sequence["Task"], steps: int, lr: float) -> Tensor:
        maml = MAML(module, lr=lr, first_order=False)
        losses = []
        for task in tasks:
            learner = maml.clone()
            for _ in range(steps):
                learner.adapt(F.cross_entropy(learner(task.support_x), task.support_y))
            losses.append(F.cross_entropy(learner(task.query_x), task.query_y))
        loss = torch.stack(losses).mean()
        loss.backward()
        return loss.detach()

    return adapt, meta_step


# -- higher ----------------------------------------------------------------------------------------

def higher_fns(higher: Any) -> tuple[AdaptFn, MetaStepFn]:
    def adapt(module: nn.Module, support_x: Tensor, support_y: Tensor, query_x: Tensor, steps: int,
              lr: float) -> Tensor:
        optimizer = torch.optim.SGD(module.parameters(), lr=lr)
        with higher.innerloop_ctx(module, optimizer, copy_initial_weights=True,
                                  track_higher_grads=False) as (fmodel, diffopt):
            for _ in range(steps):
                diffopt.step(F.cross_entropy(fmodel(support_x), support_y))
            with torch.no_grad():
                return torch.softmax(fmodel(query_x), dim=1)

    def meta_step(module: nn.Module, tasks: Sequence["Task"], steps: int, lr: float) -> Tensor:
        optimizer = torch.optim.SGD(module.parameters(), lr=lr)
        total = torch.zeros(())
        for task in tasks:  # as higher's MAML example: backward per task, gradients accumulate
            with higher.innerloop_ctx(module, optimizer, copy_initial_weights=False) as (fmodel, diffopt):
                for _ in range(steps):
                    diffopt.step(F.cross_entropy(fmodel(task.support_x), task.support_y))
                loss = F.cross_entropy(fmodel(task.query_x), task.query_y) / len(tasks)
                loss.backward()
                total = total + loss.detach()
        return total

    return adapt, meta_step


# -- registry ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Peer:
    """One baseline implementation, or why it cannot run here."""

    name: str
    version: str | None
    adapt: AdaptFn | None
    meta_step: MetaStepFn | None
    unavailable: str | None = None


def _version(distribution: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def available_peers() -> list[Peer]:
    """The naive reference (always), then learn2learn and higher (each may be unavailable)."""
    peers = [Peer("naive", f"torch {torch.__version__}", naive_adapt, naive_meta_step)]
    try:
        adapt, meta_step = learn2learn_fns(load_learn2learn_maml())
        peers.append(Peer("learn2learn", _version("learn2learn"), adapt, meta_step))
    except Exception as error:  # noqa: BLE001 - an optional peer only reports why it is missing
        peers.append(Peer("learn2learn", _version("learn2learn"), None, None, f"{type(error).__name__}: {error}"))
    try:
        higher = importlib.import_module("higher")
        adapt, meta_step = higher_fns(higher)
        peers.append(Peer("higher", _version("higher"), adapt, meta_step))
    except Exception as error:  # noqa: BLE001
        reason = f"{type(error).__name__}: {error}"
        if isinstance(error, ModuleNotFoundError):
            reason = "higher is not installed (bash benchmarks/bench_peers.sh installs it into .venv-bench)"
        peers.append(Peer("higher", _version("higher"), None, None, reason))
    return peers


__all__ = ["AdaptFn", "Conv4", "MetaStepFn", "Peer", "available_peers", "higher_fns", "learn2learn_fns",
           "load_learn2learn_maml", "module_from_params", "naive_adapt", "naive_meta_step"]

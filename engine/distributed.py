"""Meta-training over several processes and machines with ``torch.distributed``, as ``torchrun`` starts it.

    torchrun --nproc_per_node 2 -m engine.train --algorithm maml --out runs/maml ...

Every process holds the whole learner and draws its own slice of each step's batch of tasks
(``engine.data.loader``); its ``meta_loss`` is the mean over its ``n_r`` tasks of the ``N`` in the batch, so
the trainer back-propagates it scaled by ``n_r / N`` and the gradients summed over processes are the whole
batch's mean, as one process computes it (uneven slices included). One all-reduce a step carries every
gradient and the batch's metrics. This works for every learner because each one's meta-loss is a mean of
independent per-task terms: a query loss (MAML and its kin, ProtoNet, the black box), an implicit gradient
(iMAML), a distance to each task's adapted weights (Reptile), a labelled batch's loss (pretrain).

The learners are functions of explicit parameter dicts, not ``nn.Module``s, so this uses collectives rather
than ``DistributedDataParallel``. Backends: gloo on the CPU, NCCL on CUDA (one GPU per process,
``LOCAL_RANK``). Rank 0 alone validates, logs and writes checkpoints; a resumed run reads its state on rank
0 and broadcasts it, so other machines need no copy of ``--out``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from engine.device import resolve_device

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    """This process's place among the run's processes (one process: rank 0 of 1, no process group)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")  # where this process's collectives' tensors live

    @property
    def is_main(self) -> bool:
        """Whether this process validates, logs and writes the run's files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def sum_gradients(self, params: Sequence[torch.Tensor], metrics: Sequence[float]) -> list[float]:
        """Replace each parameter's gradient with its sum over processes and return ``metrics`` summed
        likewise, in one all-reduce. A parameter that no process gave a gradient keeps none (the
        optimizer skips it, as it would in one process); one that some did gets the sum."""
        if not self.distributed:
            return list(metrics)
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
        dtype = grads[0].dtype
        present = torch.tensor([p.grad is not None for p in params], dtype=dtype, device=self.device)
        flat = torch.cat([g.reshape(-1) for g in grads]
                         + [present, torch.tensor(list(metrics), dtype=dtype, device=self.device)])
        dist.all_reduce(flat)
        offset = 0
        for param, grad in zip(params, grads, strict=True):
            param.grad = flat[offset:offset + grad.numel()].view_as(grad).clone()
            offset += grad.numel()
        for param, count in zip(params, flat[offset:offset + len(params)].tolist(), strict=True):
            if count == 0:
                param.grad = None
        return flat[offset + len(params):].tolist()

    def broadcast(self, value: T) -> T:
        """Rank 0's ``value``, on every process (any picklable object; tensors best on the CPU)."""
        if not self.distributed:
            return value
        box: list[object] = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0, device=self.device)
        return box[0]  # type: ignore[return-value]

    def agree(self, decision: bool) -> bool:
        """Rank 0's ``decision`` on every process (e.g. to stop: all must leave the loop at the same step)."""
        if not self.distributed:
            return decision
        flag = torch.tensor([1.0 if decision else 0.0], device=self.device)
        dist.broadcast(flag, src=0)
        return bool(flag.item())


def start(device_name: str = "auto") -> Ranks:
    """Join the process group that ``torchrun`` describes in the environment (``WORLD_SIZE``, ``RANK``,
    ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``); without one (a plain ``python -m``), a single process.
    CUDA processes take GPU ``LOCAL_RANK`` of their machine and talk over NCCL, CPU ones over gloo."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_name)
    if world_size == 1:
        return Ranks(device=device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world_size)
    return Ranks(rank=rank, world_size=world_size, device=device)


def stop(ranks: Ranks) -> None:
    """Leave the process group (every process, at the end of the run)."""
    if ranks.distributed and dist.is_initialized():
        dist.destroy_process_group()


def cpu_copy(value: T) -> T:
    """``value`` with every tensor in it (nested in dicts, lists, tuples) moved to the CPU, for ``broadcast``:
    a pickled CUDA tensor would unpickle onto its sender's GPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()  # type: ignore[return-value]
    if isinstance(value, dict):
        return {key: cpu_copy(item) for key, item in value.items()}  # type: ignore[return-value]
    if isinstance(value, (list, tuple)):
        return type(value)(cpu_copy(item) for item in value)  # type: ignore[return-value]
    return value

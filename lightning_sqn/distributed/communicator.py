"""How an optimizer agrees with the other ranks: a small communicator object injected into it.

Closure optimizers decide accept/reject, the radius and line-search branches from the loss. Under data
parallelism every rank sees only its shard's loss, so unless the losses are averaged the ranks take
different branches, call the closure a different number of times and hang or drift apart (the failure
of ``torch.optim.LBFGS`` under DDP, pytorch#30439). Gradients are already averaged by DDP's backward;
the loss is not. An optimizer with a communicator replaces every loss its closure returns by the mean
over ranks, so all ranks take identical decisions.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.distributed as dist
from torch import Tensor

DDP_SQN_HINT = (
    "Use Trainer(strategy='ddp_sqn') in Lightning; in plain PyTorch set "
    "`optimizer.communicator = lightning_sqn.distributed.TorchDistributedCommunicator()` after "
    "init_process_group."
)


class Communicator(Protocol):
    """What an optimizer needs from the process group."""

    world_size: int

    def all_reduce_mean(self, tensor: Tensor) -> Tensor:
        """The mean of ``tensor`` over all ranks (a new tensor; the input is left alone)."""
        ...


class TorchDistributedCommunicator:
    """:class:`Communicator` over ``torch.distributed`` (gloo or NCCL).

    Args:
        group: the process group (default: the world).
    """

    def __init__(self, group: dist.ProcessGroup | None = None) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                "TorchDistributedCommunicator needs torch.distributed.init_process_group() first"
            )
        self.group = group
        self.world_size = dist.get_world_size(group)

    def all_reduce_mean(self, tensor: Tensor) -> Tensor:
        out = tensor.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=self.group)
        return out.div_(self.world_size)


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def check_communicator(optimizer: torch.optim.Optimizer, communicator: Communicator | None) -> None:
    """Refuse to step under multi-process training without a communicator.

    Raises:
        MisconfigurationException: more than one process and no communicator (e.g. Lightning's plain
            ``ddp`` or ``fsdp`` strategy): each rank would decide from its own loss and diverge.
    """
    if communicator is None and _world_size() > 1:
        from lightning.fabric.utilities.exceptions import MisconfigurationException

        raise MisconfigurationException(
            f"{type(optimizer).__name__} is running in {_world_size()} processes without a communicator: "
            "each rank would accept or reject steps (and run its line search) from its own shard's loss, "
            "so the ranks would call the closure a different number of times and their parameters would "
            "diverge. " + DDP_SQN_HINT
        )

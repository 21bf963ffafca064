"""Helpers shared by the callbacks: finding the optimizers that publish statistics, naming and logging."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.core.optimizer import LightningOptimizer

if TYPE_CHECKING:
    import lightning.pytorch as pl
    import torch

_PUBLISHING = "lightning_sqn.LSR1, LBFGS, BFGS and SR1 (any lightning_sqn.optim.base.QuasiNewtonOptimizer)"


def _unwrap(opt: Any) -> Any:
    return opt.optimizer if isinstance(opt, LightningOptimizer) else opt


def publishing_optimizers(
    trainer: pl.Trainer, attribute: str, callback: str
) -> list[tuple[int, torch.optim.Optimizer]]:
    """``(index in trainer.optimizers, optimizer)`` for the optimizers that have ``attribute``.

    Raises:
        MisconfigurationException: if none of them has it.
    """
    optimizers = [_unwrap(o) for o in trainer.optimizers]
    found = [(i, o) for i, o in enumerate(optimizers) if hasattr(o, attribute)]
    if not found:
        names = ", ".join(type(o).__name__ for o in optimizers) or "no optimizer"
        raise MisconfigurationException(
            f"{callback} reads `optimizer.{attribute}`, which none of the Trainer's optimizers has "
            f"(found: {names}). It is published by {_PUBLISHING}; remove the callback or use one of them."
        )
    return found


def metric_name(prefix: str, name: str, index: int, num_monitored: int) -> str:
    """``prefix + name``; with several monitored optimizers ``prefix + "opt{index}/" + name``."""
    return f"{prefix}{name}" if num_monitored == 1 else f"{prefix}opt{index}/{name}"


def logging_step(trainer: pl.Trainer) -> int:
    """The step at which ``self.log`` would write now (Lightning's x-axis; what LearningRateMonitor uses)."""
    return int(getattr(trainer.fit_loop.epoch_loop, "_batches_that_stepped", trainer.global_step))


def log_to_loggers(trainer: pl.Trainer, metrics: dict[str, float]) -> None:
    """Write ``metrics`` to every logger at :func:`logging_step` (the loggers write on rank 0 only)."""
    if not metrics:
        return
    step = logging_step(trainer)
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=step)

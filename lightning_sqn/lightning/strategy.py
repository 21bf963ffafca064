"""``strategy="ddp_sqn"`` (DDP, every loss averaged over ranks) and ``strategy="sqn"`` (one device).

DDP already averages gradients in ``backward``. :class:`SQNDDPStrategy` additionally injects a
:class:`~lightning_sqn.distributed.TorchDistributedCommunicator` into every optimizer of this package,
so each closure evaluation returns the global mean loss and all accept/reject, radius and line-search
decisions are identical on all ranks (and all ranks call the closure equally often). Optimizers of this
package under Lightning's plain ``ddp``/``fsdp`` refuse to step with a ``MisconfigurationException``
(see :func:`~lightning_sqn.distributed.check_communicator`).

Both strategies run :func:`~lightning_sqn.lightning.guards.check_trainer` once the optimizers exist, so
Trainer settings that drop or distort closure evaluations (16-mixed, DeepSpeed, gradient clipping,
gradient accumulation) fail before the first step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy, StrategyRegistry
from lightning.pytorch.trainer.states import TrainerFn

from lightning_sqn.distributed.communicator import TorchDistributedCommunicator
from lightning_sqn.lightning.guards import check_trainer
from lightning_sqn.optim.base import QuasiNewtonOptimizer

if TYPE_CHECKING:
    import lightning.pytorch as pl


def _prepare_fit(trainer: pl.Trainer, distributed: bool) -> None:
    """At fit start, once the optimizers exist: refuse closure-hostile settings, then give each of our
    optimizers the LightningModule's BatchNorm statistics to advance once per step and, under DDP, the
    communicator that averages its losses over ranks."""
    if trainer.state.fn != TrainerFn.FITTING:
        return
    check_trainer(trainer)
    for opt in trainer.strategy.optimizers:
        if isinstance(opt, QuasiNewtonOptimizer):
            opt.track_running_stats(trainer.lightning_module)
            if distributed:
                opt.communicator = TorchDistributedCommunicator()


class SQNDDPStrategy(DDPStrategy):
    """DDP for closure-driven quasi-Newton optimizers (also on CPU with gloo).

    Accepts every argument of :class:`lightning.pytorch.strategies.DDPStrategy`.
    """

    strategy_name = "ddp_sqn"

    def setup(self, trainer: pl.Trainer) -> None:
        super().setup(trainer)
        _prepare_fit(trainer, distributed=True)


class SQNSingleDeviceStrategy(SingleDeviceStrategy):
    """One device for closure-driven quasi-Newton optimizers: ``Trainer(strategy="sqn")``.

    For now it is Lightning's single-device strategy plus the checks of
    :func:`~lightning_sqn.lightning.guards.check_trainer` at fit start. Unlike a registry-built
    ``single_device`` (always ``cpu``), ``strategy="sqn"`` runs on the device the Trainer's
    ``accelerator``/``devices`` select.

    Args:
        device: the device; ``None`` (the default) takes it from the Trainer's ``accelerator``/``devices``.
        **kwargs: the other arguments of :class:`lightning.pytorch.strategies.SingleDeviceStrategy`.
    """

    strategy_name = "sqn"

    def __init__(self, device: torch.device | str | int | None = None, **kwargs: Any) -> None:
        super().__init__(device="cpu" if device is None else device, **kwargs)
        self._device_given = device is not None

    @property
    def parallel_devices(self) -> list[torch.device] | None:
        # Lightning's accelerator connector fills an empty ``parallel_devices`` from accelerator/devices.
        return [self.root_device] if self._device_given else None

    @parallel_devices.setter
    def parallel_devices(self, devices: list[torch.device]) -> None:
        if len(devices) != 1:
            raise MisconfigurationException(
                f"strategy='sqn' runs on one device but the Trainer selected {len(devices)} ({devices}). "
                "Pass devices=1, or use strategy='ddp_sqn' for several devices."
            )
        self._root_device = devices[0] if isinstance(devices[0], torch.device) else torch.device(devices[0])
        self._device_given = True

    def setup(self, trainer: pl.Trainer) -> None:
        super().setup(trainer)
        _prepare_fit(trainer, distributed=False)


def register() -> None:
    """Register ``sqn`` (one device), ``ddp_sqn`` (subprocess launcher, like ``ddp``), ``ddp_sqn_spawn``."""
    if SQNSingleDeviceStrategy.strategy_name not in StrategyRegistry:
        StrategyRegistry.register(
            SQNSingleDeviceStrategy.strategy_name,
            SQNSingleDeviceStrategy,
            description="One device for lightning_sqn optimizers (refuses closure-hostile Trainer settings)",
        )
    for name, start_method in (("ddp_sqn", "popen"), ("ddp_sqn_spawn", "spawn")):
        if name not in StrategyRegistry:
            StrategyRegistry.register(
                name,
                SQNDDPStrategy,
                description="DDP for lightning_sqn optimizers (loss averaged over ranks), "
                f"start_method '{start_method}'",
                start_method=start_method,
            )


register()

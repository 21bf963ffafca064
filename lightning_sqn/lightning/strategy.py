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
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from torch.optim import Optimizer

from lightning_sqn.distributed.communicator import TorchDistributedCommunicator
from lightning_sqn.lightning.guards import check_full_batch, check_trainer
from lightning_sqn.optim.base import QuasiNewtonOptimizer

if TYPE_CHECKING:
    import lightning.pytorch as pl


class _GraphBackward:
    """Backward that keeps the autograd graph when one of our optimizers asks for it, and skips it when
    one asks for the loss alone (``gradient_requested`` False, see
    :meth:`~lightning_sqn.optim.evaluation.Evaluation.loss_only`).

    An optimizer that needs Hessian-vector products sets ``graph_requested`` while its closure runs;
    :meth:`backward` then calls the optimizer's
    :meth:`~lightning_sqn.optim.base.QuasiNewtonOptimizer.keep_graph` (``torch.autograd.grad`` with
    ``create_graph=True``) in place of ``loss.backward()``. Lightning's ``on_before_backward`` and
    ``on_after_backward`` hooks still run, and ``p.grad`` holds the (detached) gradient as usual.
    """

    optimizers: list[Optimizer]

    def _graph_optimizer(self) -> QuasiNewtonOptimizer | None:
        for opt in self.optimizers:
            if isinstance(opt, QuasiNewtonOptimizer) and opt.graph_requested:
                return opt
        return None

    def on_train_start(self) -> None:
        super().on_train_start()  # type: ignore[misc]
        check_full_batch(self.lightning_module.trainer)  # type: ignore[attr-defined]

    def _loss_only(self) -> bool:
        return any(isinstance(o, QuasiNewtonOptimizer) and not o.gradient_requested for o in self.optimizers)

    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        if self._loss_only():  # Lightning's closure enables autograd; a loss-only evaluation needs no graph
            with torch.no_grad():
                return super().training_step(*args, **kwargs)  # type: ignore[misc]
        return super().training_step(*args, **kwargs)  # type: ignore[misc]

    def backward(
        self, closure_loss: Tensor, optimizer: Optimizer | None, *args: Any, **kwargs: Any
    ) -> Tensor:
        if self._loss_only():
            return closure_loss  # a loss-only evaluation (trust-region trial point): no backward pass
        opt = self._graph_optimizer()
        if opt is None:
            return super().backward(closure_loss, optimizer, *args, **kwargs)  # type: ignore[misc]
        module = self.lightning_module  # type: ignore[attr-defined]
        precision = self.precision_plugin  # type: ignore[attr-defined]
        # The strategy's own pre/post_backward only prepare DDP's reducer, which this backward bypasses.
        closure_loss = precision.pre_backward(closure_loss, module)
        opt.keep_graph(closure_loss)
        return precision.post_backward(closure_loss, module)


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
            opt.graph_from_strategy = True
            watch = getattr(opt, "watch_module", None)
            if watch is not None and getattr(opt, "watched_module", None) is None:
                watch(trainer.lightning_module)  # network outputs for GGN products (Hessian-free)
            if distributed:
                opt.communicator = TorchDistributedCommunicator()


class SQNDDPStrategy(_GraphBackward, DDPStrategy):
    """DDP for closure-driven quasi-Newton optimizers (also on CPU with gloo).

    An evaluation whose gradient must keep its graph (Hessian-vector products) runs its forward under
    DDP's ``no_sync``: the gradient and the graph are the local shard's, and the optimizer averages the
    gradient and each block of products over ranks itself (DDP cannot average a gradient that keeps
    its graph).

    Accepts every argument of :class:`lightning.pytorch.strategies.DDPStrategy`.
    """

    strategy_name = "ddp_sqn"

    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        if self._graph_optimizer() is not None and isinstance(self.model, DistributedDataParallel):
            with self.model.no_sync():
                return super().training_step(*args, **kwargs)
        return super().training_step(*args, **kwargs)

    def setup(self, trainer: pl.Trainer) -> None:
        super().setup(trainer)
        _prepare_fit(trainer, distributed=True)


class SQNSingleDeviceStrategy(_GraphBackward, SingleDeviceStrategy):
    """One device for closure-driven quasi-Newton optimizers: ``Trainer(strategy="sqn")``.

    Lightning's single-device strategy plus the checks of
    :func:`~lightning_sqn.lightning.guards.check_trainer` at fit start, and a backward that keeps the
    autograd graph when an optimizer asks for Hessian-vector products. Unlike a registry-built
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

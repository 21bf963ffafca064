"""``strategy="ddp_sqn"``: Lightning's DDP with every loss our optimizers see averaged over ranks.

DDP already averages gradients in ``backward``. :class:`SQNDDPStrategy` additionally injects a
:class:`~lightning_sqn.distributed.TorchDistributedCommunicator` into every optimizer of this package,
so each closure evaluation returns the global mean loss and all accept/reject, radius and line-search
decisions are identical on all ranks (and all ranks call the closure equally often). Optimizers of this
package under Lightning's plain ``ddp``/``fsdp`` refuse to step with a ``MisconfigurationException``
(see :func:`~lightning_sqn.distributed.check_communicator`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry

from lightning_sqn.distributed.communicator import TorchDistributedCommunicator
from lightning_sqn.optim.base import QuasiNewtonOptimizer

if TYPE_CHECKING:
    import lightning.pytorch as pl


class SQNDDPStrategy(DDPStrategy):
    """DDP for closure-driven quasi-Newton optimizers (also on CPU with gloo).

    Accepts every argument of :class:`lightning.pytorch.strategies.DDPStrategy`.
    """

    strategy_name = "ddp_sqn"

    def setup_optimizers(self, trainer: pl.Trainer) -> None:
        super().setup_optimizers(trainer)
        for opt in self.optimizers:
            if isinstance(opt, QuasiNewtonOptimizer):
                opt.communicator = TorchDistributedCommunicator()


def register() -> None:
    """Register ``ddp_sqn`` (subprocess launcher, like ``ddp``) and ``ddp_sqn_spawn`` with Lightning."""
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

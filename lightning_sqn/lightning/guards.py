"""Trainer settings that silently break closure-driven optimizers, refused before the first step.

Every optimizer of this package evaluates the closure several times per step (f(x_k) and a trial point
for the trust region, more for a line search). Four Lightning settings break that contract without an
error of their own:

* fp16 mixed precision with a ``GradScaler`` (``precision="16-mixed"``) and DeepSpeed: the precision
  plugin evaluates the closure once and then calls ``optimizer.step()`` without it, so the trust region
  or line search never runs. This holds in manual optimization too (``opt.step(closure)`` goes through
  the same plugin).
* ``gradient_clip_val``: Lightning clips after *every* closure evaluation, so f(x_k) and the trial point
  get gradients clipped by different factors and y_k = g_{k+1} - g_k is no gradient difference.
* ``accumulate_grad_batches > 1``: the closure sees one micro-batch and Lightning skips the step on the
  accumulating batches, so the loss of a trial point is measured on a fraction of the batch.

The last two apply to automatic optimization only (Lightning itself refuses them in manual
optimization). ``precision="bf16-mixed"`` passes the closure normally and is allowed.

:func:`check_trainer` raises for these; the ``sqn`` and ``ddp_sqn`` strategies call it once the
optimizers exist, and :class:`GuardCallback` does the same for any other strategy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Callback
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.plugins.precision import MixedPrecision

from lightning_sqn.optim.base import QuasiNewtonOptimizer

if TYPE_CHECKING:
    import lightning.pytorch as pl

try:  # both import without the deepspeed package installed; guarded in case a release moves them
    from lightning.pytorch.plugins.precision import DeepSpeedPrecision
    from lightning.pytorch.strategies import DeepSpeedStrategy

    _DEEPSPEED_TYPES: tuple[type, ...] = (DeepSpeedStrategy, DeepSpeedPrecision)
except ImportError:  # pragma: no cover
    _DEEPSPEED_TYPES = ()


def _quasi_newton_optimizers(trainer: pl.Trainer) -> list[QuasiNewtonOptimizer]:
    found: list[QuasiNewtonOptimizer] = []
    for opt in [*getattr(trainer, "optimizers", []), *getattr(trainer.strategy, "optimizers", [])]:
        if isinstance(opt, LightningOptimizer):
            opt = opt.optimizer
        if isinstance(opt, QuasiNewtonOptimizer) and all(opt is not o for o in found):
            found.append(opt)
    return found


def _is_deepspeed(obj: Any) -> bool:
    return isinstance(obj, _DEEPSPEED_TYPES) or "deepspeed" in type(obj).__name__.lower()


def _uses_grad_scaler(plugin: Any) -> bool:
    # MixedPrecision("16-mixed") always has a scaler; FSDPPrecision("16-mixed") has a ShardedGradScaler.
    is_fp16_amp = isinstance(plugin, MixedPrecision) and plugin.precision == "16-mixed"
    return is_fp16_amp or getattr(plugin, "scaler", None) is not None


def _automatic_optimization(trainer: pl.Trainer) -> bool:
    module = getattr(trainer, "lightning_module", None)
    return bool(getattr(module, "automatic_optimization", True))


def check_trainer(trainer: pl.Trainer) -> None:
    """Refuse Trainer settings under which an optimizer of this package cannot evaluate its closure.

    Does nothing when no optimizer of the trainer is a
    :class:`~lightning_sqn.optim.base.QuasiNewtonOptimizer`. Call it once the optimizers exist (after
    ``strategy.setup``); the ``sqn``/``ddp_sqn`` strategies and :class:`GuardCallback` do.

    Args:
        trainer: the Trainer (only ``strategy``, ``optimizers``, ``precision_plugin``,
            ``gradient_clip_val``, ``accumulate_grad_batches`` and ``lightning_module`` are read).

    Raises:
        MisconfigurationException: listing every offending setting and what to use instead.
    """
    optimizers = _quasi_newton_optimizers(trainer)
    if not optimizers:
        return
    strategy = trainer.strategy
    plugin = getattr(trainer, "precision_plugin", None) or getattr(strategy, "precision_plugin", None)
    problems: list[str] = []
    if _is_deepspeed(strategy) or _is_deepspeed(plugin):
        problems.append(
            f"DeepSpeed (strategy {type(strategy).__name__}, precision plugin {type(plugin).__name__}) "
            "evaluates the closure once and then steps without it, so the trust region or line search "
            "never runs. Use strategy='ddp_sqn' for several devices or strategy='sqn' for one."
        )
    elif _uses_grad_scaler(plugin):
        problems.append(
            f"precision='16-mixed' ({type(plugin).__name__} with a GradScaler) evaluates the closure once "
            "and then calls scaler.step(optimizer) without it, so the trust region or line search never "
            "runs. Use precision='bf16-mixed', '32-true' or '64-true'."
        )
    if _automatic_optimization(trainer):
        clip = trainer.gradient_clip_val
        if clip is not None and clip != 0:
            problems.append(
                f"gradient_clip_val={clip!r}: Lightning clips the gradient after every closure evaluation, "
                "so the two gradients of a curvature pair are clipped differently and y_k is no gradient "
                "difference. Remove gradient_clip_val (leave it None); the trust region or line search "
                "already bounds the step."
            )
        accumulate = trainer.accumulate_grad_batches
        if accumulate > 1:
            problems.append(
                f"accumulate_grad_batches={accumulate}: the closure would see 1/{accumulate} of the batch "
                "and Lightning skips the step on accumulating batches. Use accumulate_grad_batches=1 and "
                f"a {accumulate}x larger batch_size in the DataLoader instead."
            )
    if problems:
        names = ", ".join(sorted({type(o).__name__ for o in optimizers}))
        raise MisconfigurationException(
            f"{names} (lightning_sqn) evaluate the closure several times per step, which this Trainer "
            "configuration does not allow:\n" + "\n".join(f"- {p}" for p in problems)
        )


def check_full_batch(trainer: pl.Trainer) -> None:
    """Refuse ``full_batch=True`` unless every training step sees the same single batch.

    ``full_batch`` reuses f and g at the point a step ends on as the next step's f(x_k), g(x_k); with
    more than one batch per epoch the next step's batch differs and the reused values would be wrong.
    Call it once the training batches are counted (``on_train_start``).

    Raises:
        MisconfigurationException: naming the optimizer and the number of batches.
    """
    flagged = [o for o in _quasi_newton_optimizers(trainer) if getattr(o, "full_batch", False)]
    if not flagged:
        return
    batches = trainer.num_training_batches
    if batches != 1:
        names = ", ".join(sorted({type(o).__name__ for o in flagged}))
        raise MisconfigurationException(
            f"{names} was built with full_batch=True, which reuses f and g at the accepted point as the "
            f"next step's values, but the training loop has {batches} batches per epoch, so the next step "
            "sees another batch. Use one batch per epoch (DataLoader batch_size = the data set size, "
            "deterministic, no augmentation) or build the optimizer with full_batch=False."
        )


class GuardCallback(Callback):
    """Runs :func:`check_trainer` at fit start, for strategies other than ``sqn``/``ddp_sqn``.

    ``on_fit_start`` is the first hook after ``strategy.setup`` (where ``configure_optimizers`` runs)
    and before the first training batch; the ``setup`` hook runs before the optimizers exist.

    Example::

        trainer = Trainer(callbacks=[GuardCallback()])  # Lightning's default strategy
    """

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        check_trainer(trainer)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        check_full_batch(trainer)

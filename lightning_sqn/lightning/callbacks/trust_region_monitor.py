"""Log what every quasi-Newton step did: trust-region radius, rho, acceptance and the spectrum of B_k.

Every optimizer of this package publishes ``optimizer.last_step``
(:class:`~lightning_sqn.optim.base.StepStats`) after each step. :class:`TrustRegionMonitor` sends those
numbers to the Trainer's loggers, per step or aggregated per epoch, so the trust-region radius
Delta_k, the ratio rho_k = ared_k / pred_k and the curvature seen by the subproblem solver can be read
next to the loss in TensorBoard.

How it logs: straight to ``trainer.loggers`` (``logger.log_metrics``), like Lightning's
``LearningRateMonitor``, at Lightning's logging step (the x-axis of ``self.log``), so the curves line
up with the training loss. The built-in loggers write on global rank 0 only and nothing here is a
collective, so under DDP every rank may call it; under ``strategy="ddp_sqn"`` all ranks hold the same
numbers (the loss is averaged over ranks before the step is decided), so rank 0's values are the
global ones and no ``sync_dist`` reduction is needed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Callback
from lightning.pytorch.loggers import TensorBoardLogger

from lightning_sqn.lightning.callbacks._utils import (
    log_to_loggers,
    logging_step,
    metric_name,
    publishing_optimizers,
)

if TYPE_CHECKING:
    import lightning.pytorch as pl

    from lightning_sqn.optim.stats import StepStats

#: the StepStats scalars logged per step (those that are ``None`` for a method are left out)
STEP_FIELDS: tuple[str, ...] = (
    "radius",
    "next_radius",
    "rho",
    "accepted",
    "step_norm",
    "predicted_reduction",
    "actual_reduction",
    "closure_evals",
    "step_length",
    "eig_min",
    "eig_max",
    "num_negative_eigs",
    "subproblem_status",
    "gamma",
    "pairs_in_memory",
    "restarted",
    # sampled quasi-Newton, Hessian-free and trust-region Newton
    "pairs_sampled",
    "pairs_kept",
    "hessian_products",
    "curvature_products",
    "damping",
    "cg_iterations",
    "cg_reason",
    "backtrack_index",
    "warmup",
)

#: counts that the epoch aggregation sums instead of averaging
SUMMED_FIELDS: frozenset[str] = frozenset(
    {"closure_evals", "hessian_products", "curvature_products", "restarted"}
)
#: codes (not quantities): logged per step, left out of the epoch means
CATEGORICAL_FIELDS: frozenset[str] = frozenset({"cg_reason", "subproblem_status"})


class TrustRegionMonitor(Callback):
    r"""Log the trust-region and curvature quantities of every quasi-Newton step.

    Reads ``optimizer.last_step`` (:class:`~lightning_sqn.optim.base.StepStats`) after each optimizer
    step and logs, under ``prefix``:

    * ``radius`` (:math:`\Delta_k`, the radius used), ``next_radius`` (:math:`\Delta_{k+1}`), ``rho``
      (:math:`\rho_k = \mathrm{ared}_k / \mathrm{pred}_k`), ``accepted`` (0 or 1), ``step_norm``
      (:math:`\|s_k\|`), ``predicted_reduction``, ``actual_reduction``, ``closure_evals`` (evaluations
      in the step) and, for a line search, ``step_length`` (:math:`\alpha_k`);
    * the spectrum of :math:`B_k` known to the solver: ``eig_min``, ``eig_max``, ``num_negative_eigs``;
      ``gamma`` (:math:`B_0 = \gamma I`) and ``pairs_in_memory``;
    * for sampled quasi-Newton: ``pairs_sampled``, ``pairs_kept``, ``hessian_products``; for
      Hessian-free and trust-region Newton: ``curvature_products``, ``damping`` (lambda),
      ``cg_iterations``, ``cg_reason`` (a :class:`~lightning_sqn.subproblem.result.SolverStatus` code),
      ``backtrack_index`` (the CG iterate chosen), ``warmup`` (1 on first-order warm-up steps).

    Quantities a method does not have (the radius of a line-search method, the spectrum of L-BFGS)
    are left out, not logged as NaN. With several optimizers that publish ``last_step`` the names
    become ``prefix + "opt{i}/" + name`` (``i``: index in ``trainer.optimizers``).

    With ``logging_interval="step"`` the values of a step are logged when Lightning logs
    (every ``log_every_n_steps``). With ``"epoch"`` the callback aggregates over the epoch and logs at its
    end: the mean of each quantity over the steps that had it, ``acceptance_rate`` (the mean of
    ``accepted``) instead of ``accepted``, ``closure_evals`` and the product counts as the epoch's
    totals, ``steps``, and no ``cg_reason`` (a code, not a quantity).

    Args:
        logging_interval: ``"step"`` or ``"epoch"``.
        log_histogram: also write a histogram of the eigenvalues of :math:`B_k` the subproblem solver
            knows (``last_step.eigenvalues``; with ``"epoch"``, those of the epoch's last step) to every
            :class:`~lightning.pytorch.loggers.TensorBoardLogger`.
        prefix: prepended to every metric name.

    Raises:
        MisconfigurationException: if ``logging_interval`` is not ``"step"`` or ``"epoch"``; at the start
            of fitting, if no optimizer publishes ``last_step`` (e.g. ``torch.optim.SGD``), or if
            ``log_histogram=True`` and no logger is a ``TensorBoardLogger``.

    Example::

        >>> import lightning
        >>> from lightning_sqn.lightning.callbacks import TrustRegionMonitor
        >>> monitor = TrustRegionMonitor(logging_interval="step", log_histogram=True)
        >>> trainer = lightning.Trainer(callbacks=[monitor], log_every_n_steps=1)  # doctest: +SKIP
    """

    def __init__(
        self,
        logging_interval: Literal["step", "epoch"] = "step",
        log_histogram: bool = False,
        prefix: str = "sqn/",
    ) -> None:
        if logging_interval not in ("step", "epoch"):
            raise MisconfigurationException(
                "TrustRegionMonitor(logging_interval=...) must be 'step' or 'epoch', "
                f"got {logging_interval!r}"
            )
        self.logging_interval = logging_interval
        self.log_histogram = bool(log_histogram)
        self.prefix = prefix
        self._monitored: list[tuple[int, torch.optim.Optimizer]] = []
        self._seen: dict[int, StepStats] = {}  # the last StepStats handled, per optimizer index
        #: epoch accumulators per optimizer index: sums and counts of each field, and steps
        self._sums: dict[int, dict[str, float]] = {}
        self._counts: dict[int, dict[str, int]] = {}
        self._steps: dict[int, int] = {}

    @property
    def state_key(self) -> str:
        return self._generate_state_key(logging_interval=self.logging_interval, prefix=self.prefix)

    # ------------------------------------------------------------ hooks
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._monitored = publishing_optimizers(trainer, "last_step", type(self).__name__)
        if self.log_histogram and not self._tensorboard_loggers(trainer):
            names = ", ".join(type(lg).__name__ for lg in trainer.loggers) or "no logger"
            raise MisconfigurationException(
                "TrustRegionMonitor(log_histogram=True) writes histograms with TensorBoard, but the Trainer "
                f"has {names}. Add a lightning.pytorch.loggers.TensorBoardLogger or set log_histogram=False."
            )

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        new = self._new_steps()
        if not new:
            return
        if self.logging_interval == "epoch":
            for index, stats in new:
                self._accumulate(index, stats)
            return
        if not trainer._logger_connector.should_update_logs:
            return
        metrics: dict[str, float] = {}
        for index, stats in new:
            values = stats.as_dict()
            for name in STEP_FIELDS:
                if name in values:
                    metrics[self._name(index, name)] = float(values[name])
            self._histogram(trainer, index, stats)
        log_to_loggers(trainer, metrics)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.logging_interval != "epoch":
            return
        metrics: dict[str, float] = {}
        for index, _ in self._monitored:
            steps = self._steps.get(index, 0)
            if steps == 0:
                continue
            sums, counts = self._sums[index], self._counts[index]
            for name, total in sums.items():
                if name in SUMMED_FIELDS:
                    metrics[self._name(index, name)] = total
                elif name == "accepted":
                    metrics[self._name(index, "acceptance_rate")] = total / counts[name]
                else:
                    metrics[self._name(index, name)] = total / counts[name]
            metrics[self._name(index, "steps")] = float(steps)
            if index in self._seen:
                self._histogram(trainer, index, self._seen[index])
        log_to_loggers(trainer, metrics)
        # Reset here rather than at epoch start: a run resumed from a mid-epoch checkpoint keeps the
        # restored sums of the steps already taken in that epoch.
        self._sums, self._counts, self._steps = {}, {}, {}

    # ------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "sums": {i: dict(s) for i, s in self._sums.items()},
            "counts": {i: dict(c) for i, c in self._counts.items()},
            "steps": dict(self._steps),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._sums = {int(i): dict(s) for i, s in state_dict["sums"].items()}
        self._counts = {int(i): dict(c) for i, c in state_dict["counts"].items()}
        self._steps = {int(i): int(n) for i, n in state_dict["steps"].items()}

    # ------------------------------------------------------------ helpers
    def _name(self, index: int, name: str) -> str:
        return metric_name(self.prefix, name, index, len(self._monitored))

    def _new_steps(self) -> list[tuple[int, StepStats]]:
        """The optimizers that stepped since the last call, with their ``last_step``.

        Every step publishes a new StepStats object, so identity tells whether one happened (nothing is
        logged for batches on which an optimizer did not step, e.g. in manual optimization).
        """
        new = []
        for index, opt in self._monitored:
            stats = getattr(opt, "last_step", None)
            if stats is not None and stats is not self._seen.get(index):
                self._seen[index] = stats
                new.append((index, stats))
        return new

    def _accumulate(self, index: int, stats: StepStats) -> None:
        values = stats.as_dict()  # one host sync per step
        sums = self._sums.setdefault(index, {})
        counts = self._counts.setdefault(index, {})
        for name in STEP_FIELDS:
            if name in values and name not in CATEGORICAL_FIELDS:
                sums[name] = sums.get(name, 0.0) + float(values[name])
                counts[name] = counts.get(name, 0) + 1
        self._steps[index] = self._steps.get(index, 0) + 1

    @staticmethod
    def _tensorboard_loggers(trainer: pl.Trainer) -> list[TensorBoardLogger]:
        return [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]

    def _histogram(self, trainer: pl.Trainer, index: int, stats: StepStats) -> None:
        if not self.log_histogram or stats.eigenvalues is None:
            return
        eig = stats.eigenvalues
        eigenvalues = (torch.from_numpy(eig) if isinstance(eig, np.ndarray) else eig.detach()).float().cpu()
        eigenvalues = eigenvalues[eigenvalues.isfinite()]
        if eigenvalues.numel() == 0:
            return
        step = logging_step(trainer)
        for logger in self._tensorboard_loggers(trainer):
            # ``experiment`` is a no-op stand-in on ranks other than 0
            logger.experiment.add_histogram(self._name(index, "eigenvalues"), eigenvalues, global_step=step)


__all__ = ["STEP_FIELDS", "TrustRegionMonitor"]

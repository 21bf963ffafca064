r"""Count the curvature pairs the quasi-Newton update refused: the "% skipped updates" of the L-SR1 papers.

An SR1 update is skipped when :math:`|s_k^T (y_k - B_k s_k)| < r \|s_k\| \|y_k - B_k s_k\|` (and a
BFGS update when :math:`s_k^T y_k` is not positive enough): the pair :math:`(s_k, y_k)` is offered to the
memory but not stored. The optimizers count both in ``optimizer.counters`` (``stored_pairs``,
``skipped_pairs``, cumulative); :class:`SkippedUpdateCounter` turns them into per-epoch and cumulative
percentages. It logs the same way as
:class:`~lightning_sqn.lightning.callbacks.trust_region_monitor.TrustRegionMonitor`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lightning.pytorch import Callback

from lightning_sqn.lightning.callbacks._utils import (
    log_to_loggers,
    metric_name,
    publishing_optimizers,
)

if TYPE_CHECKING:
    import lightning.pytorch as pl
    import torch


def _pair_counts(opt: torch.optim.Optimizer) -> tuple[int, int]:
    counters = opt.counters.as_dict()  # type: ignore[attr-defined]
    return int(counters["stored_pairs"]), int(counters["skipped_pairs"])


def _percent(part: int, whole: int) -> float:
    return 100.0 * part / whole


class SkippedUpdateCounter(Callback):
    r"""Log, per epoch, how many curvature pairs the quasi-Newton update skipped.

    With :math:`S` the skipped and :math:`T` the stored pairs (``optimizer.counters``), an offered pair is
    one of the two, and at the end of every training epoch the callback logs under ``prefix``:

    * ``skipped_updates``: :math:`\Delta S`, pairs skipped in this epoch;
    * ``skipped_updates_pct``: :math:`100\, \Delta S / (\Delta S + \Delta T)`, the percentage of this
      epoch's offered pairs that were skipped (left out in an epoch that offered none);
    * ``skipped_updates_total`` and ``skipped_updates_total_pct``: the same since the optimizer was built
      (``optimizer.counters`` is part of the optimizer's state, so it survives checkpoint resume).

    The counter values at the start of the epoch are this callback's state, so an epoch resumed from a
    mid-epoch checkpoint is still counted from its true start. With several optimizers that have
    ``counters`` the names become ``prefix + "opt{i}/" + name``.

    Args:
        prefix: prepended to every metric name.

    Raises:
        MisconfigurationException: at the start of fitting, if no optimizer has ``counters``
            (e.g. ``torch.optim.SGD``).

    Example::

        >>> import lightning
        >>> from lightning_sqn.lightning.callbacks import SkippedUpdateCounter
        >>> trainer = lightning.Trainer(callbacks=[SkippedUpdateCounter()])  # doctest: +SKIP
    """

    def __init__(self, prefix: str = "sqn/") -> None:
        self.prefix = prefix
        self._monitored: list[tuple[int, torch.optim.Optimizer]] = []
        #: (stored_pairs, skipped_pairs) of each optimizer index at the start of the current epoch
        self._epoch_start: dict[int, tuple[int, int]] = {}

    @property
    def state_key(self) -> str:
        return self._generate_state_key(prefix=self.prefix)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._monitored = publishing_optimizers(trainer, "counters", type(self).__name__)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for index, opt in self._monitored:
            # kept when restored from a mid-epoch checkpoint: the epoch started before the save
            self._epoch_start.setdefault(index, _pair_counts(opt))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics: dict[str, float] = {}
        for index, opt in self._monitored:
            stored, skipped = _pair_counts(opt)
            stored0, skipped0 = self._epoch_start.get(index, (stored, skipped))
            d_stored, d_skipped = stored - stored0, skipped - skipped0
            metrics[self._name(index, "skipped_updates")] = float(d_skipped)
            if d_stored + d_skipped > 0:
                metrics[self._name(index, "skipped_updates_pct")] = _percent(d_skipped, d_stored + d_skipped)
            metrics[self._name(index, "skipped_updates_total")] = float(skipped)
            if stored + skipped > 0:
                metrics[self._name(index, "skipped_updates_total_pct")] = _percent(skipped, stored + skipped)
        log_to_loggers(trainer, metrics)
        self._epoch_start = {}

    def _name(self, index: int, name: str) -> str:
        return metric_name(self.prefix, name, index, len(self._monitored))

    def state_dict(self) -> dict[str, Any]:
        return {"epoch_start": {i: list(v) for i, v in self._epoch_start.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._epoch_start = {int(i): (int(v[0]), int(v[1])) for i, v in state_dict["epoch_start"].items()}


__all__ = ["SkippedUpdateCounter"]

"""Running statistics (BatchNorm) advanced once per optimizer step, from the accepted point.

A closure optimizer evaluates the model several times per step (a trust-region step twice: at x_k and
at the trial point x_k + s_k). In training mode every forward pass moves BatchNorm's running mean and
variance and increments ``num_batches_tracked``, so without care the statistics advance once per
*evaluation*, and partly from points the optimizer then rejects. :class:`RunningStats` restores the
buffers to their values at the start of the step before every evaluation, keeps what each evaluation
produced, and at the end of the step installs the result of the evaluation at the point the optimizer
moved to: x_k + s_k if the step was accepted, x_k otherwise. The statistics therefore advance exactly
once per step, as in first-order training, from the mini-batch at the accepted parameters.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm


def running_stat_buffers(module: nn.Module) -> list[Tensor]:
    """The running buffers of every BatchNorm (incl. SyncBatchNorm) layer in ``module``."""
    out: list[Tensor] = []
    for m in module.modules():
        if isinstance(m, _BatchNorm) and m.track_running_stats:
            out += [b for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]
    return out


class RunningStats:
    """Snapshot / restore / select for a fixed list of buffers (see the module docstring)."""

    def __init__(self, buffers: Iterable[Tensor]) -> None:
        self.buffers = list(buffers)
        self._start: list[Tensor] = []
        self._after: list[list[Tensor]] = []

    def begin_step(self) -> None:
        self._start = [b.detach().clone() for b in self.buffers]
        self._after = []

    def before_evaluation(self) -> None:
        """Every evaluation starts from the statistics at the start of the step."""
        if self._after:
            torch._foreach_copy_(self.buffers, self._start)

    def after_evaluation(self) -> None:
        self._after.append([b.detach().clone() for b in self.buffers])

    def commit(self, accepted: Tensor | bool, if_accepted: int | None, if_rejected: int | None) -> None:
        """Install the buffers of evaluation ``if_accepted`` if ``accepted`` else of ``if_rejected``
        (0-based indices into this step's evaluations; ``None``: the statistics at the start of the
        step, for a step that made no evaluation at the point it ends on, e.g. full-batch reuse).
        """
        index = if_accepted if bool(accepted) else if_rejected
        chosen = self._start if index is None else self._after[index]
        if chosen:
            torch._foreach_copy_(self.buffers, chosen)
        self._after = []

    def abort(self) -> None:
        """Undo the step's evaluations (e.g. the loss at x_k was not finite)."""
        if self._start:
            torch._foreach_copy_(self.buffers, self._start)
        self._after = []

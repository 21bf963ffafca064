"""The line-search globalization as a closure-driven step procedure (see :mod:`.steppers`)."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from lightning_sqn._device import to_host
from lightning_sqn.globalization.linesearch import LineSearch
from lightning_sqn.optim.base import QuasiNewtonOptimizer
from lightning_sqn.optim.evaluation import Closure
from lightning_sqn.optim.stats import StepStats
from lightning_sqn.optim.steppers import CurvatureRefresh, StepModel, Stepper


class LineSearchStepper(Stepper):
    """Alg. 2 lines 3-33 (and L-BFGS / BFGS) around a :class:`StepModel`.

    Args:
        opt: the optimizer.
        model: the curvature model (gives d = -H g and takes pairs).
        line_search: a line-search object, or ``None`` for a fixed step alpha = lr.
        initial_step: rule for the first trial alpha_0 when the memory holds pairs: ``"unit"``
            (alpha_0 = lr, the quasi-Newton step) or ``"doubling"`` (alpha_0 = min(lr, 2 alpha_{k-1}),
            Alg. 2 line 10). With an empty memory the trial step is scaled to length lr
            (alpha_0 = lr min(1, 1/||d||)), because d = -g/gamma_init has no natural scale.

    lr is read at every step from the optimizer's parameter groups when it has a learning rate
    (``"lr"`` in its ``group_options``, so schedulers act on it), else it is 1 (the unit
    quasi-Newton step).

    State: alpha_{k-1} (``prev_alpha``).
        refresh: rebuilds the pairs at every x_k (sampled L-BFGS, Berahas et al. Alg. 2 line 2); the
            step's own pair is then not offered.
    """

    def __init__(
        self,
        opt: QuasiNewtonOptimizer,
        model: StepModel,
        line_search: LineSearch | None,
        initial_step: str = "unit",
        refresh: CurvatureRefresh | None = None,
    ) -> None:
        if initial_step not in ("unit", "doubling"):
            raise ValueError(f"initial_step must be 'unit' or 'doubling', got {initial_step!r}")
        self.prev_alpha = 1.0
        super().__init__(opt, model, refresh)
        self.line_search = line_search
        self.initial_step = initial_step
        self.last_alpha = 0.0
        self.x_trial = self.ev.flat.new_zeros()

    _saved: ClassVar[dict[str, str]] = {"prev_alpha": "prev_alpha"}

    def _lr(self) -> float:
        return self.opt.learning_rate() if "lr" in self.opt.group_options else 1.0

    def step(self, closure: Closure, forget: bool = False) -> StepStats:
        """One step; ``forget`` clears the memory first (L-BFGS forgetting), once f(x_k) is known to be
        finite, so a step refused with NonFiniteLossError leaves the memory unchanged."""
        ev, flat, model, refresh = self.ev, self.ev.flat, self.model, self.refresh
        lr = self._lr()
        f0, f0_host, _, stored, dropped = self._begin(closure)
        if forget:
            model.reset()
        if refresh is not None:
            refresh.refresh(closure, self.x, model.g)
        pairs = model.pairs()
        dphi0, dnorm = model.direction()
        fallback = not (dphi0 < 0.0)
        if fallback:
            # -H g is not a descent direction (SR1's H may be indefinite): take the scaled
            # steepest-descent direction -g / gamma for this step. The memory is kept: the pair from
            # this step may repair the indefiniteness (clearing it here measured slower on Rosenbrock).
            dphi0, dnorm = model.gradient_direction()
        self.last_alpha = 0.0
        base = dict(loss=f0, pair_stored=stored, pairs_dropped=dropped, fallback=fallback)
        if not dnorm > 0.0:  # g = 0: stationary point, nothing to do
            ev.commit_running_stats(False, if_accepted=self.start_eval, if_rejected=self.start_eval)
            self._end(f0, None)
            return self._finish(self._stats(f0_host, False, 0.0, None, **base))
        if pairs == 0:
            alpha0 = lr * min(1.0, 1.0 / dnorm)
        elif self.initial_step == "doubling":
            alpha0 = min(lr, 2.0 * self.prev_alpha)
        else:
            alpha0 = lr
        d = model.s
        evaluated: dict[str, Any] = {"alpha": None, "f": None}
        slope = self.line_search is not None and self.line_search.uses_slope

        def phi(alpha: float) -> tuple[float, float]:
            if evaluated["alpha"] is None:  # the parameters hold x: x + alpha d in place, one pass
                flat.step_params(d, alpha)
            else:
                flat.set_params(torch.add(self.x, d, alpha=alpha, out=self.x_trial))
            f = ev(closure, self.g_trial)
            evaluated["alpha"], evaluated["f"] = alpha, f
            if not slope:  # the search reads phi(alpha) only: no pass for g(x + alpha d)^T d
                return float(to_host(f)[0]), math.nan
            f_alpha, dphi = to_host(f, self.g_trial @ d).tolist()
            return f_alpha, dphi

        if self.line_search is None:
            f_trial, _ = phi(alpha0)
            alpha, ls = alpha0, None
            ok = math.isfinite(f_trial)  # a fixed-step method has no test: any finite trial is taken
        else:
            ls = self.line_search.search(phi, f0_host, dphi0, alpha0)
            alpha = ls.step_length
            ok = alpha > 0.0 and ls.f < f0_host
            f_trial = ls.f
        if ok and evaluated["alpha"] != alpha:
            phi(alpha)  # gradient at the chosen point is needed for y_k
        self.last_alpha = alpha if ok else 0.0
        if not ok:
            # No decrease along d: x stays, and the memory that produced d is forgotten, so the next
            # step restarts from the scaled steepest-descent direction (Nocedal & Wright Sec. 7.2).
            flat.set_params(self.x)
            ev.commit_running_stats(False, if_accepted=self.start_eval, if_rejected=self.start_eval)
            restarted = model.pairs() > 0
            model.reset()
            self._end(f0, None)
            return self._finish(self._stats(f_trial, False, 0.0, ls, restarted=restarted, **base))
        # The parameters hold x + alpha d: the last evaluation was at the chosen step length
        # (re-evaluated above if needed), which is also where g_trial was taken.
        ev.commit_running_stats(True, if_accepted=ev.count - 1, if_rejected=self.start_eval)
        if refresh is None:  # the pair (s, y) is offered at the start of the next step
            model.stage_line_search(self.g_trial, alpha)
        self.prev_alpha = alpha
        self._end(evaluated["f"], self.g_trial)
        return self._finish(self._stats(f_trial, True, alpha * dnorm, ls, **base))

    def _finish(self, stats: StepStats) -> StepStats:
        if self.refresh is not None:
            self.refresh.annotate(stats)
        return stats

    def _stats(
        self,
        f1: float,
        accepted: bool,
        step_norm: float,
        ls: Any,
        *,
        loss: Tensor,
        pair_stored: bool | None,
        pairs_dropped: int,
        fallback: bool,
        restarted: bool = False,
    ) -> StepStats:
        return StepStats(
            loss=loss,
            closure_evals=self.ev.count,
            accepted=accepted,
            step_norm=step_norm,
            pair_stored=pair_stored,
            pairs_in_memory=self.model.pairs(),
            pairs_dropped=pairs_dropped,
            trial_loss=f1,
            gamma=self.model.gamma(),
            step_length=self.last_alpha,
            line_search_success=None if ls is None else ls.success,
            line_search_reason=None if ls is None else ls.reason,
            fallback_to_gradient=fallback,
            restarted=restarted,
        )


__all__ = ["LineSearchStepper"]

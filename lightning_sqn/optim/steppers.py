"""The two globalizations as closure-driven step procedures, shared by all optimizers.

* :class:`TrustRegionStepper`: Alg. 1 of Ramamurthy & Duffy (L-SR1 with trust region), for any
  curvature model that solves its own trust-region subproblem. Exactly two closure evaluations per step
  (f, g at x_k and at x_k + s_k, on the same mini-batch) and two reads of host values: after the first
  evaluation (f(x_k) and the model's projections, one transfer) and after the trial (f(x_k + s_k)).
  Everything in between that is not O(n) (subproblem, rho, acceptance, radius, skip rule, rank repair)
  is host float64 arithmetic.
* :class:`~lightning_sqn.optim.line_search_stepper.LineSearchStepper`: Alg. 2 (L-SR1 with line
  search), also L-BFGS and dense BFGS: direction d = -H g, a line-search object along d, then the pair
  (s, y). One read after the first evaluation, one per trial point.

Both offer the step's pair (s_k, y_k) to the model at the start of the next step (see
:mod:`~lightning_sqn.optim.models`), so ``last_step.pair_stored`` reports on the previous step's pair.

With ``full_batch`` (the closure computes the same function at every call) f and g at the point a
step ends on are reused as the next step's f(x_k), g(x_k): one evaluation per iteration.

A curvature model is anything implementing :class:`StepModel`.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Protocol

import numpy as np
from torch import Tensor

from lightning_sqn._device import to_host
from lightning_sqn._state import AttributePart, AttributeState
from lightning_sqn.globalization.trust_region import TrustRegionPolicy
from lightning_sqn.optim.base import QuasiNewtonOptimizer
from lightning_sqn.optim.evaluation import Closure
from lightning_sqn.optim.stats import StepStats
from lightning_sqn.subproblem.result import HostTrustRegionStep


class StepModel(Protocol):
    """Curvature model of a stepper (see :mod:`~lightning_sqn.optim.models` for the phases)."""

    g: Tensor  #: where the stepper evaluates g(x_k)
    needs_graph: bool  #: the evaluation at x_k must keep its graph (Hessian-vector products)
    needs_trial_gradient: bool  #: the trust-region trial point needs its gradient, not only its loss
    s: Tensor  #: where the model writes the step or direction
    g_trial: Tensor  #: where the stepper evaluates the gradient at a trial point

    def gather(self, f: Tensor) -> Tensor:
        """f(x_k) and what the model needs from the device, as one flat tensor (one read)."""
        ...

    def peek_gg(self, values: np.ndarray) -> float:
        """g^T g from the values of :meth:`gather` (checked before anything changes)."""
        ...

    def absorb(self, values: np.ndarray) -> tuple[bool | None, int]: ...

    def solve(self, radius: float) -> HostTrustRegionStep: ...

    def direction(self) -> tuple[float, float]: ...

    def gradient_direction(self) -> tuple[float, float]: ...

    def stage_trust_region(self, g_trial: Tensor, sigma: float | None) -> None:
        """Stage the step's pair (the last device write of a step: nothing after it may fail)."""
        ...

    def conclude(self, accepted: bool) -> None:
        """The trust-region step's decision (after the trial)."""
        ...

    def stage_line_search(self, g_trial: Tensor, alpha: float) -> None: ...

    def pairs(self) -> int: ...

    def gamma(self) -> float | None: ...

    def reset(self) -> None: ...


class CurvatureRefresh(Protocol):
    """Rebuilds the model's pairs at x_k before the step (sampled quasi-Newton, Berahas et al. Alg. 1)."""

    #: the evaluation at x_k must keep its graph (Hessian-vector products)
    needs_graph: bool

    def refresh(self, closure: Closure, x: Tensor, g: Tensor) -> None:
        """Replace the model's pairs by pairs sampled at x (the parameters hold x before and after)."""
        ...

    def annotate(self, stats: StepStats) -> None:
        """Add what the refresh did (pairs sampled and kept, products used) to the step's record."""
        ...


def spectrum_stats(eigenvalues: np.ndarray | None) -> tuple[float | None, float | None, int | None]:
    """(min, max, number of negative entries) of the eigenvalues of B that a solver reports."""
    if eigenvalues is None:
        return None, None, None
    values = eigenvalues.tolist()  # a dozen numbers: Python builtins, no NumPy reductions
    negative = sum(v < 0.0 for v in values)
    if any(math.isnan(v) for v in values):  # as NumPy's min / max would report
        return math.nan, math.nan, negative
    return float(min(values)), float(max(values)), negative


class Stepper(AttributePart):
    """What both steppers share: the first evaluation with its one read, the full-batch cache, and the
    stepper's state as a :class:`~lightning_sqn._state.Part` (``state_dict``, checks, transactions)."""

    #: {state key: attribute} of the stepper's saved state
    _saved: ClassVar[dict[str, str]] = {}

    def __init__(self, opt: QuasiNewtonOptimizer, model: StepModel, refresh: CurvatureRefresh | None) -> None:
        self.opt = opt
        self.ev = opt.evaluation
        self.model = model
        self.refresh = refresh
        self.x = self.ev.x  # x_k, gathered when the step begins
        #: full batch: f at the point the last step ended on (its gradient is in model.g), else None
        self._cached_f: Tensor | None = None
        self._state = AttributeState(self, self._saved, "stepper")

    @property
    def g_trial(self) -> Tensor:
        """The gradient at a trial point (the model's row; a property, so pickling keeps it shared)."""
        return self.model.g_trial

    def _begin(self, closure: Closure) -> tuple[Tensor, float, float, bool | None, int]:
        """f, g at x_k (evaluated, or reused in full-batch mode); the step's first read; the staged
        pair offered. Returns (f0, f0 on the host, g^T g, stored, dropped)."""
        opt, model, refresh = self.opt, self.model, self.refresh
        needs_graph = model.needs_graph or (refresh is not None and refresh.needs_graph)
        f0 = self._cached_f if opt.full_batch and not needs_graph else None
        self._cached_f = None
        #: index of the evaluation at x_k in this step (None when it was reused from the last step)
        self.start_eval: int | None = None
        if f0 is None:
            f0 = self.ev(closure, model.g, create_graph=needs_graph)
            self.start_eval = 0
        values = to_host(model.gather(f0))  # f0 first, then what the model needs
        f0_host = float(values[0])
        gg = model.peek_gg(values)
        self.ev.check_finite(f0_host, gg)
        stored, dropped = model.absorb(values)
        return f0, f0_host, gg, stored, dropped

    def _end(self, f_next: Tensor, g_next: Tensor | None) -> None:
        """Full batch: keep f (and g, copied into model.g when it is not there) for the next step."""
        if self.opt.full_batch:
            if g_next is not None:
                self.model.g.copy_(g_next)
            self._cached_f = f_next

    # ------------------------------------------------------------ state (a Part; the full-batch cache
    # is not saved, and a rollback restores it)
    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._cached_f = None

    def begin(self) -> tuple[Any, Tensor | None]:
        return super().begin(), self._cached_f

    def rollback(self, token: tuple[Any, Tensor | None]) -> None:
        saved, self._cached_f = token
        super().rollback(saved)


class TrustRegionStepper(Stepper):
    """Alg. 1 lines 3-25 around a :class:`StepModel`.

    State: the radius (``-1`` until the first step sets Delta_0 = ||g_0||).

    Restart (not in the paper): a rejected trial point with f(x_k + s_k) = f(x_k) exactly means the
    model's step lies below what f resolves; the radius rule alone cannot recover from that (the step
    need not be limited by the radius, and pairs of rounding-sized steps are refused), so the curvature
    memory is discarded and the next step starts from B_0 (``StepStats.restarted``), as L-BFGS-B (Byrd,
    Lu, Nocedal & Zhu 1995) discards its memory when its line search fails. Measured need: dense SR1
    with Delta_0 = ||g_0|| on Moré-Garbow-Hillstrom problems 3 and 12, where one far trial point fixed
    the scale of B_0 (``docs/benchmarks.md``). Not with a sampled refresh (its pairs are rebuilt at
    every x_k anyway).

    Args:
        opt: the optimizer (flat parameters, closure evaluation).
        model: the curvature model.
        policy: acceptance and radius rules.
        initial_radius: Delta_0; ``None`` means ||g(x_0)|| (Alg. 1 "Require").
        refresh: rebuilds the pairs at every x_k (sampled L-SR1, Berahas et al. Alg. 3 line 2); the
            step's own pair (s_k, y_k) is then not offered.
    """

    def __init__(
        self,
        opt: QuasiNewtonOptimizer,
        model: StepModel,
        policy: TrustRegionPolicy,
        initial_radius: float | None,
        refresh: CurvatureRefresh | None = None,
    ) -> None:
        self.radius = -1.0 if initial_radius is None else float(initial_radius)
        super().__init__(opt, model, refresh)
        self.policy = policy

    _saved: ClassVar[dict[str, str]] = {"radius": "radius"}

    def step(self, closure: Closure) -> StepStats:
        ev, flat, policy, model, refresh = self.ev, self.ev.flat, self.policy, self.model, self.refresh
        f0, f0_host, gg, stored, dropped = self._begin(closure)
        if refresh is not None:
            refresh.refresh(closure, self.x, model.g)
        gnorm = math.sqrt(gg)
        # Delta_0 = ||g_0|| on the first step (a positive fallback if g_0 = 0).
        radius = self.radius if self.radius > 0 else (gnorm if gnorm > 0 else 1.0)
        res = model.solve(radius)
        flat.step_params(model.s)  # the parameters hold x_k (evaluations and refreshes leave them there)
        trial_gradient = refresh is not None or model.needs_trial_gradient
        f1 = ev(closure, self.g_trial) if trial_gradient else ev.loss_only(closure, self.g_trial)
        f1_host = float(to_host(f1)[0])
        ared = f0_host - f1_host
        rho = policy.rho(ared, res.predicted_reduction)
        accepted = policy.accept_step(rho, ared)
        next_radius = float(policy.update_radius(radius, rho, res.step_norm, dtype=flat.dtype))
        self.radius = next_radius
        model.conclude(accepted)
        if not accepted:
            flat.set_params(self.x)
        # the trial point is the latest evaluation (sampling may have evaluated in between)
        trial_index = ev.count - 1
        ev.commit_running_stats(accepted, if_accepted=trial_index, if_rejected=self.start_eval)
        # the restart of the class docstring (the trial's pair is then not staged)
        restarted = not accepted and ared == 0.0 and refresh is None and model.pairs() > 0
        if restarted:
            model.reset()
        elif refresh is None:  # y_k for accepted and rejected steps alike (Alg. 1 line 12)
            model.stage_trust_region(self.g_trial, res.sigma)
        if accepted:
            self._end(f1, self.g_trial if trial_gradient else None)
        else:
            self._end(f0, None)
        eig_min, eig_max, negative = spectrum_stats(res.eigenvalues)
        stats = StepStats(
            loss=f0,
            closure_evals=ev.count,
            loss_only_evals=ev.loss_only_count,
            accepted=accepted,
            step_norm=res.step_norm,
            pair_stored=stored,
            pairs_in_memory=model.pairs(),
            trial_loss=f1_host,
            radius=radius,
            next_radius=next_radius,
            rho=rho,
            predicted_reduction=res.predicted_reduction,
            actual_reduction=ared,
            sigma=res.sigma,
            subproblem_status=res.status,
            eig_min=eig_min,
            eig_max=eig_max,
            num_negative_eigs=negative,
            eigenvalues=res.eigenvalues,
            pairs_dropped=dropped,
            gamma=model.gamma(),
            restarted=restarted,
            **res.extra,
        )
        if refresh is not None:
            refresh.annotate(stats)
        return stats

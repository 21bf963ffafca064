"""The two globalizations as closure-driven step procedures, shared by all optimizers.

* :class:`TrustRegionStepper`: Alg. 1 of Ramamurthy & Duffy (L-SR1 with trust region), for any
  curvature model that solves its own trust-region subproblem. Exactly two closure evaluations per step
  (f, g at x_k and at x_k + s_k, on the same mini-batch); accept/reject and the radius are device-side
  ``torch.where`` decisions, so the step reads the host once itself (the finiteness check of f(x_k));
  on CUDA the model's small eigendecompositions add one status read each (torch has no ``eigh_ex``).
* :class:`LineSearchStepper`: Alg. 2 (L-SR1 with line search), also L-BFGS and dense BFGS: direction
  d = -H g, a line-search object along d, then the pair (s, y). Line searches decide on the host: one
  read for f(x_k) and the finiteness check, one for g^T d, ||d|| and the pair count, one per trial point.

Which form a decision takes (host branch or device select) is chosen by
:func:`lightning_sqn._device.host_reads_are_free`; ``tests/optim/test_host_reads.py`` counts the reads.

A curvature model is anything implementing :class:`TrustRegionModel` or :class:`LineSearchModel`.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import torch
from torch import Tensor

from lightning_sqn._device import device_scalar, read_to_host
from lightning_sqn.globalization.linesearch import LineSearch
from lightning_sqn.globalization.trust_region import TrustRegionPolicy
from lightning_sqn.optim.base import Closure, QuasiNewtonOptimizer, StepStats
from lightning_sqn.subproblem.result import TrustRegionResult


class TrustRegionModel(Protocol):
    """Curvature model of a trust-region method."""

    def solve(self, g: Tensor, radius: Tensor, g_norm_sq: Tensor, out: Tensor) -> TrustRegionResult:
        """Solve the subproblem; the step may be written into ``out``."""
        ...

    def offer(self, s: Tensor, y: Tensor, residual: Tensor) -> tuple[Tensor, Tensor]:
        """Offer (s, y) with residual = y - B s; return (stored, pairs dropped)."""
        ...

    def pairs(self) -> Tensor: ...

    def gamma(self) -> Tensor: ...


class LineSearchModel(Protocol):
    """Curvature model of a line-search method."""

    def direction(self, g: Tensor) -> Tensor:
        """d = -H g."""
        ...

    def offer(
        self, s: Tensor, y: Tensor, residual: None = None, scale: float | None = None
    ) -> tuple[Tensor, Tensor]:
        """Offer (s, y); ``scale``: s = scale x the last direction (lets the model skip a pass), or None."""
        ...

    def pairs(self) -> Tensor: ...

    def gamma(self) -> Tensor: ...


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


def spectrum_stats(eigenvalues: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(min, max, number of negative entries) of the eigenvalues of B that a solver reports."""
    return eigenvalues.amin(), eigenvalues.amax(), (eigenvalues < 0).sum()


class TrustRegionStepper:
    """Alg. 1 lines 3-25 around a :class:`TrustRegionModel`.

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
        model: TrustRegionModel,
        policy: TrustRegionPolicy,
        initial_radius: float | None,
        refresh: CurvatureRefresh | None = None,
    ) -> None:
        self.opt = opt
        self.model = model
        self.policy = policy
        self.refresh = refresh
        flat = opt._flat
        # Preallocated n-vectors: a fresh 4 MB temporary costs page faults comparable to the arithmetic.
        self.x, self.x_trial = flat.new_zeros(), flat.new_zeros()
        self.g, self.g_trial = flat.new_zeros(), flat.new_zeros()
        self.s, self.y, self.r = flat.new_zeros(), flat.new_zeros(), flat.new_zeros()
        init = -1.0 if initial_radius is None else float(initial_radius)
        self.radius = torch.tensor(init, dtype=flat.dtype, device=flat.device)

    def step(self, closure: Closure) -> tuple[StepStats, Tensor | bool]:
        opt, flat, policy = self.opt, self.opt._flat, self.policy
        x = flat.gather_params(self.x)
        refresh = self.refresh
        f0 = opt._evaluate(closure, self.g, create_graph=refresh is not None and refresh.needs_graph)
        gg, _ = opt._check_finite_start(f0, self.g)
        g = self.g
        if refresh is not None:
            refresh.refresh(closure, x, g)
        gnorm = gg.sqrt()
        # Delta_0 = ||g_0|| on the first step (a positive fallback if g_0 = 0).
        radius = torch.where(
            self.radius > 0, self.radius, torch.where(gnorm > 0, gnorm, torch.ones_like(gnorm))
        )
        res = self.model.solve(g, radius, gg, out=self.s)
        s = res.step
        torch.add(x, s, out=self.x_trial)
        flat.set_params(self.x_trial)
        f1 = opt._evaluate(closure, self.g_trial)
        ared = f0 - f1
        rho = policy.rho(ared, res.predicted_reduction)
        accepted = policy.accept(rho)
        if refresh is None:
            # y_k = g(x_k + s_k) - g(x_k) on the same mini-batch, also for rejected steps (Alg. 1 line 12).
            y = torch.sub(self.g_trial, g, out=self.y)
            # y - B s = g(x + s) + sigma s, because (B + sigma I) s = -g at the subproblem solution.
            residual = torch.mul(s, res.sigma, out=self.r).add_(self.g_trial)
            stored, dropped = self.model.offer(s, y, residual)
        else:  # the pairs are sampled afresh at the next iterate
            stored = torch.zeros((), dtype=torch.bool, device=flat.device)
            dropped = torch.zeros((), dtype=torch.long, device=flat.device)
        next_radius = policy.update_radius(radius, rho, res.step_norm)
        self.radius.copy_(next_radius)
        flat.keep_if(accepted, x, self.x_trial, out=self.x)  # the parameters hold x_k + s_k
        # the trial point is the latest evaluation (sampling may have evaluated in between)
        opt._commit_running_stats(accepted, if_accepted=opt._evals_this_step - 1, if_rejected=0)
        eig_min, eig_max, negative = (
            (None, None, None) if res.eigenvalues is None else spectrum_stats(res.eigenvalues)
        )
        stats = StepStats(
            loss=f0,
            closure_evals=opt._evals_this_step,
            accepted=accepted,
            step_norm=res.step_norm,
            pair_stored=stored,
            pairs_in_memory=self.model.pairs(),
            trial_loss=f1,
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
            gamma=self.model.gamma(),
        )
        if refresh is not None:
            refresh.annotate(stats)
        return stats, refresh is None

    def state_dict(self) -> dict[str, Any]:
        return {"radius": self.radius}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.radius.copy_(state["radius"].to(self.radius))


class LineSearchStepper:
    """Alg. 2 lines 3-33 (and L-BFGS / BFGS) around a :class:`LineSearchModel`.

    Args:
        opt: the optimizer.
        model: the curvature model (gives d = -H g and takes pairs).
        line_search: a line-search object, or ``None`` for a fixed step alpha = ``lr``.
        lr: scale of the initial trial step (and the fixed step when ``line_search`` is None).
        initial_step: rule for the first trial alpha_0 when the memory holds pairs: ``"unit"``
            (alpha_0 = lr, the quasi-Newton step) or ``"doubling"`` (alpha_0 = min(lr, 2 alpha_{k-1}),
            Alg. 2 line 10). With an empty memory the trial step is scaled to length lr
            (alpha_0 = lr min(1, 1/||d||)), because d = -g/gamma_init has no natural scale.
        refresh: rebuilds the pairs at every x_k (sampled L-BFGS, Berahas et al. Alg. 2 line 2); the
            step's own pair is then not offered.
    """

    def __init__(
        self,
        opt: QuasiNewtonOptimizer,
        model: LineSearchModel,
        line_search: LineSearch | None,
        lr: float,
        initial_step: str = "unit",
        refresh: CurvatureRefresh | None = None,
    ) -> None:
        if initial_step not in ("unit", "doubling"):
            raise ValueError(f"initial_step must be 'unit' or 'doubling', got {initial_step!r}")
        self.opt = opt
        self.model = model
        self.line_search = line_search
        self.lr = lr
        self.initial_step = initial_step
        self.refresh = refresh
        flat = opt._flat
        self.x, self.g, self.g_trial = flat.new_zeros(), flat.new_zeros(), flat.new_zeros()
        self.prev_alpha = 1.0
        self.last_alpha = 0.0

    def step(self, closure: Closure, forget: bool = False) -> tuple[StepStats, Tensor | bool]:
        """One step; ``forget`` clears the memory first (L-BFGS forgetting), once f(x_k) is known to be
        finite, so a step refused with NonFiniteLossError leaves the memory unchanged."""
        opt, flat = self.opt, self.opt._flat
        x = flat.gather_params(self.x)
        refresh = self.refresh
        f0 = opt._evaluate(closure, self.g, create_graph=refresh is not None and refresh.needs_graph)
        _, f0_host = opt._check_finite_start(f0, self.g)
        if forget:
            self.model.reset()
        g = self.g
        if refresh is not None:
            refresh.refresh(closure, x, g)
        d = self.model.direction(g)
        # One host read for the three values the host decisions below need.
        dphi0, dnorm, pairs = read_to_host(g @ d, torch.linalg.vector_norm(d), self.model.pairs())
        fallback = not (dphi0 < 0.0)
        if fallback:
            # -H g is not a descent direction (SR1's H may be indefinite): take the scaled
            # steepest-descent direction -g / gamma for this step. The memory is kept: the pair from
            # this step may repair the indefiniteness (clearing it here measured slower on Rosenbrock).
            d = -g / self.model.gamma()
            dphi0, dnorm = read_to_host(g @ d, torch.linalg.vector_norm(d))
        device = flat.device
        false = torch.zeros((), dtype=torch.bool, device=device)
        self.last_alpha = 0.0
        if not dnorm > 0.0:  # g = 0: stationary point, nothing to do
            opt._commit_running_stats(False, if_accepted=0, if_rejected=0)
            return self._finish(self._stats(f0, f0_host, false, 0.0, false, None, fallback)), False
        if pairs == 0:
            alpha0 = self.lr * min(1.0, 1.0 / dnorm)
        elif self.initial_step == "doubling":
            alpha0 = min(self.lr, 2.0 * self.prev_alpha)
        else:
            alpha0 = self.lr

        evaluated = {"alpha": None}

        def phi(alpha: float) -> tuple[float, float]:
            flat.set_params(torch.add(x, d, alpha=alpha))
            f = opt._evaluate(closure, self.g_trial)
            evaluated["alpha"] = alpha
            f_alpha, dphi = read_to_host(f, self.g_trial @ d)
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
            flat.set_params(x)
            opt._commit_running_stats(False, if_accepted=0, if_rejected=0)
            self.model.reset()
            stats = self._stats(f0, f_trial, false, 0.0, false, ls, fallback)
            return self._finish(stats), False
        # The parameters hold x + alpha d: the last evaluation was at the chosen step length
        # (re-evaluated above if needed), which is also where g_trial was taken.
        s = alpha * d
        opt._commit_running_stats(True, if_accepted=opt._evals_this_step - 1)
        if refresh is None:
            y = self.g_trial - g
            stored, dropped = self.model.offer(s, y, scale=None if fallback else alpha)
        else:  # the pairs are sampled afresh at the next iterate
            stored, dropped = false, torch.zeros((), dtype=torch.long, device=device)
        self.prev_alpha = alpha
        true = torch.ones((), dtype=torch.bool, device=device)
        stats = self._stats(f0, f_trial, true, alpha * dnorm, stored, ls, fallback)
        stats.pairs_dropped = dropped
        return self._finish(stats), refresh is None

    def _finish(self, stats: StepStats) -> StepStats:
        if self.refresh is not None:
            self.refresh.annotate(stats)
        return stats

    def _stats(
        self,
        f0: Tensor,
        f1: float,
        accepted: Tensor,
        step_norm: float,
        stored: Tensor,
        ls: Any,
        fallback: bool,
    ) -> StepStats:
        flat = self.opt._flat
        return StepStats(
            loss=f0,
            closure_evals=self.opt._evals_this_step,
            accepted=accepted,
            step_norm=device_scalar(step_norm, dtype=flat.dtype, device=flat.device),
            pair_stored=stored,
            pairs_in_memory=self.model.pairs(),
            trial_loss=device_scalar(f1, dtype=flat.dtype, device=flat.device),
            gamma=self.model.gamma(),
            step_length=self.last_alpha,
            line_search_success=None if ls is None else ls.success,
            line_search_reason=None if ls is None else ls.reason,
            fallback_to_gradient=fallback,
        )

    def state_dict(self) -> dict[str, Any]:
        return {"prev_alpha": self.prev_alpha}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.prev_alpha = float(state["prev_alpha"])

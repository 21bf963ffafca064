"""L-SR1 (Ramamurthy & Duffy 2017): Alg. 1 (trust region, OBS subproblem) and Alg. 2 (line search)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from torch import Tensor

from lightning_sqn import _checks as checks
from lightning_sqn.globalization.linesearch import ArmijoBacktracking, LineSearch, resolve_line_search
from lightning_sqn.globalization.trust_region import DEFAULT_POLICY, TrustRegionPolicy, check_policy
from lightning_sqn.optim.base import QuasiNewtonOptimizer
from lightning_sqn.optim.line_search_stepper import LineSearchStepper
from lightning_sqn.optim.models import LimitedMemoryModel
from lightning_sqn.optim.steppers import TrustRegionStepper
from lightning_sqn.qn.lsr1 import GammaChoice, LSR1Matrix
from lightning_sqn.subproblem.obs import NEWTON_ITERS


class LSR1(QuasiNewtonOptimizer):
    """Limited-memory SR1 with a trust region (Alg. 1) or a line search (Alg. 2).

    ``method="trust_region"``: each step evaluates f and g at x_k and at x_k + s_k on the same
    mini-batch (exactly two closure calls), with s_k the exact solution of the L-SR1 trust-region
    subproblem by the OBS method; the step is accepted if rho = ared/pred > eta and the radius follows
    :class:`~lightning_sqn.globalization.trust_region.TrustRegionPolicy` (Delta_0 = ||g_0||). The pair
    (s_k, y_k) is offered to the memory for accepted and rejected steps alike (Alg. 1 lines 12, 26), at
    the start of the next step. A rejected trial point with f(x_k + s_k) = f(x_k) exactly discards the
    memory instead (``last_step.restarted``; see
    :class:`~lightning_sqn.optim.steppers.TrustRegionStepper`). Everything m x m is host float64
    arithmetic; the device does two passes over the pair buffer per step.

    ``method="line_search"``: d_k = -H_k g_k from the inverse compact form (steepest descent when d_k is
    not a descent direction, which SR1 allows), a line search from alpha_0 = min(1, 2 alpha_{k-1})
    (Alg. 2 line 10), and the dual skip rule on y^T (s - H y).

    Args:
        params: parameters or groups (one flat vector; groups must not set different options).
        memory: m, curvature pairs kept (paper default 5).
        method: ``"trust_region"`` (Alg. 1) or ``"line_search"`` (Alg. 2).
        gamma: choice of B_0 = gamma I, see :class:`~lightning_sqn.qn.lsr1.LSR1Matrix`
            (``"scaled"``, ``"eigen"`` or a float > 0).
        gamma_init: gamma until the first pair is stored.
        skip_tol: r of the SR1 skip rule (Alg. 1 line 26).
        rank_tol: rank threshold of the repair loop (Alg. 1 lines 31-39) and of OBS.
        trust_region: acceptance and radius parameters (paper defaults).
        initial_radius: Delta_0; ``None`` for ||g(x_0)||.
        line_search: for ``method="line_search"``: ``"default"`` (Armijo backtracking), a line-search
            object, or ``None`` for the fixed unit step.
        newton_iters: cap on the Newton iterations on the OBS secular equation (default
            :data:`~lightning_sqn.subproblem.obs.NEWTON_ITERS` = 12).
        full_batch: the closure computes the same function at every call (deterministic full-batch
            training, the usual scientific-computing use): f and g at the point a step ends on are
            reused as the next step's f(x_k), g(x_k), so an iteration costs one evaluation fewer.
            Default False, the mini-batch setting of the papers, where each step sees a new batch.
    """

    group_options = ()

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        *,
        memory: int = 5,
        method: Literal["trust_region", "line_search"] = "trust_region",
        gamma: GammaChoice | float = "scaled",
        gamma_init: float = 1.0,
        skip_tol: float = 1e-8,
        rank_tol: float | None = None,
        trust_region: TrustRegionPolicy = DEFAULT_POLICY,
        initial_radius: float | None = None,
        line_search: LineSearch | Literal["default"] | None = "default",
        newton_iters: int = NEWTON_ITERS,
        full_batch: bool = False,
    ) -> None:
        method = checks.choice("method", method, ("trust_region", "line_search"))
        memory = checks.integer("memory", memory, 1, allowed="an integer >= 1 (the paper uses 5)")
        checks.real("skip_tol", skip_tol, lambda v: v >= 0, "a finite number >= 0")
        rank_tol = checks.positive("rank_tol", rank_tol, none=True)
        trust_region = check_policy(trust_region)
        initial_radius = checks.positive(
            "initial_radius", initial_radius, none=True, allowed="a finite number > 0 or None (for ||g_0||)"
        )
        newton_iters = checks.integer("newton_iters", newton_iters, 1)
        full_batch = checks.flag("full_batch", full_batch)
        if method == "trust_region" and line_search != "default":
            raise ValueError("line_search is used only with method='line_search'")
        if method == "line_search" and (trust_region != DEFAULT_POLICY or initial_radius is not None):
            raise ValueError("trust_region and initial_radius are used only with method='trust_region'")
        search = resolve_line_search(line_search, ArmijoBacktracking)
        defaults = dict(memory=memory, method=method, gamma=gamma, gamma_init=gamma_init, skip_tol=skip_tol)
        if method == "line_search":
            self.step_sizing = "line search from the unit quasi-Newton step"
        super().__init__(params, defaults)
        matrix = LSR1Matrix.for_params(
            memory,
            self._flat,
            form="B" if method == "trust_region" else "H",
            gamma=gamma,
            gamma_init=gamma_init,
            skip_tol=skip_tol,
            rank_tol=rank_tol,
        )
        self.matrix = matrix
        self.full_batch = full_batch
        self._model = LimitedMemoryModel(matrix, newton_iters)
        if method == "trust_region":
            self._stepper: TrustRegionStepper | LineSearchStepper = TrustRegionStepper(
                self, self._model, trust_region, initial_radius
            )
        else:
            self._stepper = LineSearchStepper(self, self._model, search, initial_step="doubling")

"""L-SR1 (Ramamurthy & Duffy 2017): Alg. 1 (trust region, OBS subproblem) and Alg. 2 (line search)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from torch import Tensor

from lightning_sqn.globalization.linesearch import ArmijoBacktracking, LineSearch
from lightning_sqn.globalization.trust_region import TrustRegionPolicy
from lightning_sqn.optim.base import Closure, QuasiNewtonOptimizer, StepStats
from lightning_sqn.optim.models import LimitedMemoryModel
from lightning_sqn.optim.steppers import LineSearchStepper, TrustRegionStepper
from lightning_sqn.qn.lsr1 import GammaChoice, LSR1Matrix
from lightning_sqn.subproblem.obs import NEWTON_ITERS


class LSR1(QuasiNewtonOptimizer):
    """Limited-memory SR1 with a trust region (Alg. 1) or a line search (Alg. 2).

    ``method="trust_region"``: each step evaluates f and g at x_k and at x_k + s_k on the same
    mini-batch (exactly two closure calls), with s_k the exact solution of the L-SR1 trust-region
    subproblem by the OBS method; the step is accepted if rho = ared/pred > eta and the radius follows
    :class:`~lightning_sqn.globalization.trust_region.TrustRegionPolicy` (Delta_0 = ||g_0||). The pair
    (s_k, y_k) is offered to the memory for accepted and rejected steps alike (Alg. 1 lines 12, 26), at
    the start of the next step. Everything m x m is host float64 arithmetic; the device does two
    passes over the pair buffer per step.

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
        line_search: line-search object for ``method="line_search"`` (default Armijo backtracking).
        newton_iters: cap on the Newton iterations on the OBS secular equation (default
            :data:`~lightning_sqn.subproblem.obs.NEWTON_ITERS` = 12).
        full_batch: the closure computes the same function at every call (deterministic full-batch
            training, the usual scientific-computing use): f and g at the point a step ends on are
            reused as the next step's f(x_k), g(x_k), so an iteration costs one evaluation fewer.
            Default False, the mini-batch setting of the papers, where each step sees a new batch.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        memory: int = 5,
        method: Literal["trust_region", "line_search"] = "trust_region",
        *,
        gamma: GammaChoice | float = "scaled",
        gamma_init: float = 1.0,
        skip_tol: float = 1e-8,
        rank_tol: float | None = None,
        trust_region: TrustRegionPolicy | None = None,
        initial_radius: float | None = None,
        line_search: LineSearch | None = None,
        newton_iters: int = NEWTON_ITERS,
        full_batch: bool = False,
    ) -> None:
        if method not in ("trust_region", "line_search"):
            raise ValueError(
                f"method must be 'trust_region' (Alg. 1) or 'line_search' (Alg. 2), got {method!r}"
            )
        if not isinstance(memory, int) or isinstance(memory, bool) or memory < 1:
            raise ValueError(f"memory must be an integer >= 1 (the paper uses 5), got {memory!r}")
        if initial_radius is not None and not initial_radius > 0:
            raise ValueError(f"initial_radius must be > 0 or None (for ||g_0||), got {initial_radius!r}")
        if not isinstance(newton_iters, int) or newton_iters < 1:
            raise ValueError(f"newton_iters must be an integer >= 1, got {newton_iters!r}")
        if not isinstance(full_batch, bool):
            raise ValueError(f"full_batch must be True or False, got {full_batch!r}")
        if method == "trust_region" and line_search is not None:
            raise ValueError("line_search is used only with method='line_search'")
        if method == "line_search" and (trust_region is not None or initial_radius is not None):
            raise ValueError("trust_region and initial_radius are used only with method='trust_region'")
        defaults = dict(memory=memory, method=method, gamma=gamma, gamma_init=gamma_init, skip_tol=skip_tol)
        super().__init__(params, defaults)
        flat = self._flat
        matrix = LSR1Matrix(
            memory,
            flat.numel,
            dtype=flat.dtype,
            device=flat.device,
            form="B" if method == "trust_region" else "H",
            gamma=gamma,
            gamma_init=gamma_init,
            skip_tol=skip_tol,
            rank_tol=rank_tol,
            work_rows=4 if method == "trust_region" else 3,
        )
        self.matrix = matrix
        self.full_batch = full_batch
        self._model = LimitedMemoryModel(matrix, newton_iters)
        if method == "trust_region":
            self._stepper: TrustRegionStepper | LineSearchStepper = TrustRegionStepper(
                self, self._model, trust_region or TrustRegionPolicy(), initial_radius
            )
        else:
            self._stepper = LineSearchStepper(
                self, self._model, line_search or ArmijoBacktracking(), lr=1.0, initial_step="doubling"
            )

    def _step(self, closure: Closure) -> StepStats:
        return self._stepper.step(closure)

    def _extra_state(self) -> dict[str, Any]:
        return {"matrix": self._model.state_dict(), "stepper": self._stepper.state_dict()}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self._model.load_state_dict(state["matrix"])
        self._stepper.load_state_dict(state["stepper"])

"""Dense BFGS and SR1 for tiny models (the full-matrix baselines of the sampled quasi-Newton paper),
and :class:`DenseModel`, their curvature model for the shared steppers."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from lightning_sqn import _checks as checks
from lightning_sqn._device import to_host
from lightning_sqn.globalization.linesearch import (
    ArmijoBacktracking,
    LineSearch,
    StrongWolfe,
    resolve_line_search,
)
from lightning_sqn.globalization.trust_region import DEFAULT_POLICY, TrustRegionPolicy, check_policy
from lightning_sqn.optim.base import QuasiNewtonOptimizer
from lightning_sqn.optim.line_search_stepper import LineSearchStepper
from lightning_sqn.optim.models import gradient_direction
from lightning_sqn.optim.steppers import TrustRegionStepper
from lightning_sqn.qn.dense import MAX_DENSE_DIM, DenseBFGS, DenseQuasiNewton, DenseSR1
from lightning_sqn.subproblem.exact import solve_exact
from lightning_sqn.subproblem.result import HostTrustRegionStep

ROW_G, ROW_Y, ROW_S, ROW_TRIAL = 0, 1, 2, 3  # the work rows of DenseModel


class DenseModel:
    """A dense :class:`DenseSR1` / :class:`DenseBFGS` matrix; the subproblem is solved exactly (eigh).

    For tiny models only: it decides on the host after reading what it needs, and offers the staged
    pair (its own rows g, y, s) at the start of the next step like the limited-memory model.
    """

    needs_graph = False  #: quasi-Newton models need no Hessian-vector products
    needs_trial_gradient = True  #: y = g(x_k + s) - g(x_k) needs the gradient at the trial point

    def __init__(self, matrix: DenseQuasiNewton, device: torch.device, dtype: torch.dtype) -> None:
        self.matrix = matrix
        self.work = torch.zeros(4, matrix.n, dtype=dtype, device=device)  # g, y, s, g_trial
        self.staged = False  #: a pair (s, y) waits in the work rows to be offered
        self._gg = 0.0

    @property
    def g(self) -> Tensor:
        return self.work[ROW_G]

    @property
    def s(self) -> Tensor:
        return self.work[ROW_S]

    @property
    def g_trial(self) -> Tensor:
        return self.work[ROW_TRIAL]

    def conclude(self, accepted: bool) -> None:
        """The trust-region step's decision: nothing to do (the pair is staged either way)."""

    def gradient_direction(self) -> tuple[float, float]:
        """d = -g / gamma into :attr:`s` (the fallback when -H g is not a descent direction)."""
        return gradient_direction(self.g, self.s, self._gg, self.gamma())

    def stage_line_search(self, g_trial: Tensor, alpha: float) -> None:
        """s = alpha d (d is in the s row), y = g(x + s) - g(x)."""
        self.s.mul_(alpha)
        torch.sub(g_trial, self.g, out=self.work[ROW_Y])
        self.staged = True

    def commit(self) -> None:
        self.matrix.commit()

    def _staged_state(self) -> dict:
        """The staged pair: the y and s rows (g and g_trial are scratch)."""
        rows = self.work[ROW_Y : ROW_S + 1]
        # without a staged pair the rows are scratch: saved as zeros, so equal states compare equal
        return {"staged": self.staged, "staged_rows": rows if self.staged else torch.zeros_like(rows)}

    def _check_staged_state(self, state: dict) -> None:
        rows = state.get("staged_rows") if isinstance(state, dict) else None
        shape = self.work[ROW_Y : ROW_S + 1].shape
        if "staged" not in state or not isinstance(rows, Tensor) or rows.shape != shape:
            raise ValueError(
                "the staged-pair rows in this state do not fit this optimizer (expected 'staged_rows' of "
                f"shape {tuple(shape)})"
            )

    def _load_staged_state(self, state: dict) -> None:
        self.work[ROW_Y : ROW_S + 1].copy_(state["staged_rows"].to(self.work))
        self.staged = bool(state["staged"])

    def gather(self, f: Tensor) -> Tensor:
        return torch.stack((f, self.g @ self.g))

    def peek_gg(self, values: np.ndarray) -> float:
        return float(values[1])

    def absorb(self, values: np.ndarray) -> tuple[bool | None, int]:
        self._gg = float(values[1])
        if not self.staged:
            return None, 0
        self.staged = False
        return bool(self.matrix.update(self.s, self.work[ROW_Y])), 0

    def solve(self, radius: float) -> HostTrustRegionStep:
        res = solve_exact(self.matrix.to_dense(), self.g, radius)
        self.s.copy_(res.step)
        sigma, pred, norm, status = to_host(res.sigma, res.predicted_reduction, res.step_norm, res.status)
        eig = None if res.eigenvalues is None else res.eigenvalues.numpy(force=True).astype(np.float64)
        return HostTrustRegionStep(
            sigma=float(sigma),
            predicted_reduction=float(pred),
            step_norm=float(norm),
            status=int(status),
            eigenvalues=eig,
        )

    def direction(self) -> tuple[float, float]:
        torch.neg(self.matrix.inv_mv(self.g), out=self.s)
        gd, dd = to_host(self.g @ self.s, self.s @ self.s)
        return float(gd), math.sqrt(max(float(dd), 0.0))

    def stage_trust_region(self, g_trial: Tensor, sigma: float | None) -> None:
        del sigma  # the dense update forms y - B s itself
        torch.sub(g_trial, self.g, out=self.work[ROW_Y])
        self.staged = True

    def pairs(self) -> int:
        return int(self.matrix.num_updates)

    def gamma(self) -> float:
        return float(self.matrix.gamma)

    def reset(self) -> None:
        self.matrix.reset()
        self.staged = False

    def state_dict(self) -> dict:
        return {**self.matrix.state_dict(), **self._staged_state()}

    def check_state(self, state: dict) -> None:
        self._check_staged_state(state)
        self.matrix.check_state(self._matrix_state(state))

    @staticmethod
    def _matrix_state(state: dict) -> dict:
        return {k: v for k, v in state.items() if k not in ("staged", "staged_rows")}

    def load_state_dict(self, state: dict) -> None:
        self.check_state(state)
        self.matrix.load_state_dict(self._matrix_state(state))
        self._load_staged_state(state)

    def begin(self) -> tuple:
        """The matrix by reference, the staged flag and a copy of the (tiny) work rows."""
        return self.matrix.begin(), self.staged, self.work.clone()

    def rollback(self, token: tuple) -> None:
        matrix, self.staged, work = token
        self.work.copy_(work)
        self.matrix.rollback(matrix)


class _DenseOptimizer(QuasiNewtonOptimizer):
    def _setup(self, matrix: DenseQuasiNewton, full_batch: bool) -> DenseModel:
        self.full_batch = checks.flag("full_batch", full_batch)
        self.matrix = matrix
        self._model = DenseModel(matrix, self._flat.device, self._flat.dtype)
        return self._model


def _check_size(name: str, n: int) -> None:
    if n > MAX_DENSE_DIM:
        raise ValueError(
            f"{name} keeps dense n x n matrices and accepts at most {MAX_DENSE_DIM} parameters; "
            f"this model has "
            f"{n}. Use lightning_sqn.LBFGS or lightning_sqn.LSR1 (limited memory) instead."
        )


class BFGS(_DenseOptimizer):
    """Dense BFGS (N&W eq. 6.17/6.19) with a line search (strong Wolfe by default).

    For models with at most ``MAX_DENSE_DIM`` parameters. gamma ``"auto"`` scales H_0 from the first pair.
    ``lr`` (the initial trial step) is read from the parameter groups at every step (schedulers act on
    it). ``full_batch``: reuse f and g at the accepted point (see :class:`~lightning_sqn.LBFGS`).
    """

    group_options = ("lr",)

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        *,
        line_search: LineSearch | Literal["default"] | None = "default",
        lr: float = 1.0,
        gamma: Literal["auto"] | float = "auto",
        curvature_eps: float = 1e-8,
        full_batch: bool = False,
    ) -> None:
        lr = checks.positive("lr", lr)
        checks.real("curvature_eps", curvature_eps, lambda v: v >= 0, "a finite number >= 0")
        search = resolve_line_search(line_search, StrongWolfe)
        super().__init__(params, dict(lr=lr, gamma=gamma, curvature_eps=curvature_eps))
        flat = self._flat
        _check_size("BFGS", flat.numel)
        model = self._setup(
            DenseBFGS(
                flat.numel, dtype=flat.dtype, device=flat.device, gamma=gamma, curvature_eps=curvature_eps
            ),
            full_batch,
        )
        self._stepper = LineSearchStepper(self, model, search)


class SR1(_DenseOptimizer):
    """Dense SR1 (N&W eq. 6.24, skip rule 6.26) with a trust region solved exactly, or a line search.

    ``method="trust_region"`` uses the same acceptance and radius rules as :class:`~lightning_sqn.LSR1`
    with the dense Moré-Sorensen solution of the subproblem. ``full_batch``: reuse f and g at the
    accepted point (see :class:`~lightning_sqn.LSR1`).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        *,
        method: Literal["trust_region", "line_search"] = "trust_region",
        gamma: Literal["auto"] | float = "auto",
        skip_tol: float = 1e-8,
        trust_region: TrustRegionPolicy = DEFAULT_POLICY,
        initial_radius: float | None = None,
        line_search: LineSearch | Literal["default"] | None = "default",
        full_batch: bool = False,
    ) -> None:
        method = checks.choice("method", method, ("trust_region", "line_search"))
        checks.real("skip_tol", skip_tol, lambda v: v >= 0, "a finite number >= 0")
        trust_region = check_policy(trust_region)
        initial_radius = checks.positive(
            "initial_radius", initial_radius, none=True, allowed="a finite number > 0 or None (for ||g_0||)"
        )
        search = resolve_line_search(line_search, ArmijoBacktracking)
        if method == "trust_region" and line_search != "default":
            raise ValueError("line_search is used only with method='line_search'")
        if method == "line_search" and (trust_region != DEFAULT_POLICY or initial_radius is not None):
            raise ValueError("trust_region and initial_radius are used only with method='trust_region'")
        if method == "line_search":
            self.step_sizing = "line search from the unit quasi-Newton step"
        super().__init__(params, dict(method=method, gamma=gamma, skip_tol=skip_tol))
        flat = self._flat
        _check_size("SR1", flat.numel)
        model = self._setup(
            DenseSR1(flat.numel, dtype=flat.dtype, device=flat.device, gamma=gamma, skip_tol=skip_tol),
            full_batch,
        )
        if method == "trust_region":
            self._stepper: TrustRegionStepper | LineSearchStepper = TrustRegionStepper(
                self, model, trust_region, initial_radius
            )
        else:
            self._stepper = LineSearchStepper(self, model, search, initial_step="doubling")

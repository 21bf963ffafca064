"""Dense BFGS and SR1 for tiny models (the full-matrix baselines of the sampled quasi-Newton paper)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from torch import Tensor

from lightning_sqn.globalization.linesearch import LineSearch, StrongWolfe
from lightning_sqn.globalization.trust_region import TrustRegionPolicy
from lightning_sqn.optim.base import Closure, QuasiNewtonOptimizer, StepStats
from lightning_sqn.optim.models import DenseModel
from lightning_sqn.optim.steppers import LineSearchStepper, TrustRegionStepper
from lightning_sqn.qn.dense import MAX_DENSE_DIM, DenseBFGS, DenseQuasiNewton, DenseSR1

_DEFAULT = object()


class _DenseOptimizer(QuasiNewtonOptimizer):
    def _setup(self, matrix: DenseQuasiNewton) -> DenseModel:
        self.matrix = matrix
        self._model = DenseModel(matrix, self._flat.device, self._flat.dtype)
        return self._model

    def _step(self, closure: Closure) -> StepStats:
        return self._stepper.step(closure)

    def _extra_state(self) -> dict[str, Any]:
        return {"matrix": self._model.state_dict(), "stepper": self._stepper.state_dict()}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self._model.load_state_dict(state["matrix"])
        self._stepper.load_state_dict(state["stepper"])


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
    ``full_batch``: reuse f and g at the accepted point (see :class:`~lightning_sqn.LBFGS`).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        *,
        line_search: LineSearch | object | None = _DEFAULT,
        lr: float = 1.0,
        gamma: Literal["auto"] | float = "auto",
        curvature_eps: float = 1e-8,
        full_batch: bool = False,
    ) -> None:
        if not isinstance(full_batch, bool):
            raise ValueError(f"full_batch must be True or False, got {full_batch!r}")
        super().__init__(params, dict(lr=lr, gamma=gamma, curvature_eps=curvature_eps))
        self.full_batch = full_batch
        flat = self._flat
        _check_size("BFGS", flat.numel)
        model = self._setup(
            DenseBFGS(
                flat.numel, dtype=flat.dtype, device=flat.device, gamma=gamma, curvature_eps=curvature_eps
            )
        )
        search = StrongWolfe() if line_search is _DEFAULT else line_search
        self._stepper = LineSearchStepper(self, model, search, lr=lr)  # type: ignore[arg-type]


class SR1(_DenseOptimizer):
    """Dense SR1 (N&W eq. 6.24, skip rule 6.26) with a trust region solved exactly, or a line search.

    ``method="trust_region"`` uses the same acceptance and radius rules as :class:`~lightning_sqn.LSR1`
    with the dense Moré-Sorensen solution of the subproblem. ``full_batch``: reuse f and g at the
    accepted point (see :class:`~lightning_sqn.LSR1`).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        method: Literal["trust_region", "line_search"] = "trust_region",
        *,
        gamma: Literal["auto"] | float = "auto",
        skip_tol: float = 1e-8,
        trust_region: TrustRegionPolicy | None = None,
        initial_radius: float | None = None,
        line_search: LineSearch | object | None = _DEFAULT,
        full_batch: bool = False,
    ) -> None:
        if not isinstance(full_batch, bool):
            raise ValueError(f"full_batch must be True or False, got {full_batch!r}")
        if method not in ("trust_region", "line_search"):
            raise ValueError(f"method must be 'trust_region' or 'line_search', got {method!r}")
        super().__init__(params, dict(method=method, gamma=gamma, skip_tol=skip_tol))
        self.full_batch = full_batch
        flat = self._flat
        _check_size("SR1", flat.numel)
        model = self._setup(
            DenseSR1(flat.numel, dtype=flat.dtype, device=flat.device, gamma=gamma, skip_tol=skip_tol)
        )
        if method == "trust_region":
            self._stepper = TrustRegionStepper(
                self, model, trust_region or TrustRegionPolicy(), initial_radius
            )
        else:
            from lightning_sqn.globalization.linesearch import ArmijoBacktracking

            search = ArmijoBacktracking() if line_search is _DEFAULT else line_search
            self._stepper = LineSearchStepper(self, model, search, lr=1.0, initial_step="doubling")  # type: ignore[arg-type]

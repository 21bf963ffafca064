"""The result record every trust-region subproblem solver returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np
from torch import Tensor


class SolverStatus(IntEnum):
    """Why a subproblem or Krylov solver stopped: the one status enum of the package.

    Trust-region subproblems (min_p g^T p + 1/2 p^T B p, ||p|| <= radius; published as
    ``last_step.subproblem_status``) end with one of the first six; the inner CG of Hessian-free
    (published as ``last_step.cg_reason``) with ``CONVERGED``, ``PROGRESS``, ``CAP`` or
    ``NEGATIVE_CURVATURE``. An integer tensor in the device solvers' :class:`TrustRegionResult`, a
    Python int in the host records. ``SolverStatus(code).name`` gives the name.
    """

    INTERIOR = 0  #: the solution lies inside the region (exact: sigma = 0; truncated CG: its stopping rule)
    BOUNDARY = 1  #: ||p|| = radius (exact: sigma > 0 from the secular equation; CG: the iterate left it)
    HARD_CASE = 2  #: g has no component on the eigenspace of lambda_min < 0; eigen-direction added
    ZERO_GRADIENT = 3  #: g = 0 and B positive semidefinite: p = 0
    NEGATIVE_CURVATURE = 4  #: CG met p^T B p <= 0 (truncated CG went to the boundary along p)
    CAP = 5  #: CG stopped at its iteration cap
    CONVERGED = 6  #: CG's residual test was met (Hessian-free ``cg_tol``)
    PROGRESS = 7  #: Martens' relative-progress rule stopped CG (Hessian-free)

    @classmethod
    def of(cls, reason: str) -> SolverStatus:
        """The code of a CG run's reason string (``"converged"``, ``"progress"``, ``"cap"``, ...)."""
        return cls[reason.upper()]


@dataclass
class TrustRegionResult:
    """Solution of min_p m(p) = g^T p + 1/2 p^T B p subject to ||p||_2 <= radius.

    The dense and truncated-CG solvers fill it with tensors on the problem's device (0-dim unless
    stated), so building the result needs no host synchronisation;
    :func:`~lightning_sqn.subproblem.obs.solve_obs`, whose algebra runs on the host, with Python
    numbers (``step`` is always a device tensor).

    Attributes:
        step: p, shape (n,).
        sigma: Lagrange multiplier sigma >= 0 with (B + sigma I) p = -g.
        hit_boundary: bool, ||p|| = radius (up to the solver's tolerance).
        predicted_reduction: pred = -m(p) = -(g^T p + 1/2 p^T B p) >= 0.
        status: :class:`SolverStatus` value as an int64 tensor.
        eigenvalues: the eigenvalues of B that the solver knows, ascending (for L-SR1 the distinct
            eigenvalues lambda_1..lambda_r of the parallel space followed by gamma, of multiplicity
            n - r; for dense solvers all n eigenvalues; ``None`` for truncated CG, which does not
            know them). Callers log min/max/negative count.
        step_norm: ||p||_2.
    """

    step: Tensor
    sigma: Tensor | float
    hit_boundary: Tensor | bool
    predicted_reduction: Tensor | float
    status: Tensor | int
    eigenvalues: Tensor | None
    step_norm: Tensor | float
    #: (c_g, c) with step = c_g g + [S Y] c, for solvers working on a pair memory (else None)
    coefficients: tuple[float, np.ndarray] | None = None


@dataclass
class HostTrustRegionStep:
    """What a trust-region stepper needs of a subproblem solution, as host numbers.

    The step itself stays on the device (in the model's step row); these decide rho, acceptance and
    the radius on the host.

    Attributes:
        sigma: the multiplier of (B + sigma I) s = -g (``None`` for truncated CG, which has none).
        predicted_reduction: pred = -m(s).
        step_norm: ||s|| (in the region's norm).
        status: :class:`SolverStatus` value.
        eigenvalues: the eigenvalues of B the solver knows, ascending (``None`` for truncated CG).
        extra: solver-specific fields of the step's :class:`~lightning_sqn.optim.stats.StepStats`
            (e.g. ``cg_iterations``).
    """

    sigma: float | None
    predicted_reduction: float
    step_norm: float
    status: int
    eigenvalues: np.ndarray | None = None
    extra: dict = field(default_factory=dict)

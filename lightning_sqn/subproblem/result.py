"""The result record every trust-region subproblem solver returns."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np
from torch import Tensor


class SubproblemStatus(IntEnum):
    """How a trust-region subproblem min_p g^T p + 1/2 p^T B p, ||p|| <= radius was solved.

    Stored as an integer tensor in :class:`TrustRegionResult` so solvers never sync with the host.
    """

    INTERIOR = 0  #: B positive definite and the Newton step -B^{-1} g lies inside the region (sigma = 0)
    BOUNDARY = 1  #: ||p|| = radius with sigma > 0 from the secular equation
    HARD_CASE = 2  #: g has no component on the eigenspace of lambda_min < 0; eigen-direction added
    ZERO_GRADIENT = 3  #: g = 0 and B positive semidefinite: p = 0
    NEGATIVE_CURVATURE = 4  #: truncated CG met p^T B p <= 0 and went to the boundary along p
    CAP = 5  #: truncated CG stopped at its iteration cap inside the region


@dataclass
class TrustRegionResult:
    """Solution of min_p m(p) = g^T p + 1/2 p^T B p subject to ||p||_2 <= radius.

    All fields are tensors on the problem's device (0-dim unless stated), so building the result needs
    no host synchronisation.

    Attributes:
        step: p, shape (n,).
        sigma: Lagrange multiplier sigma >= 0 with (B + sigma I) p = -g.
        hit_boundary: bool, ||p|| = radius (up to the solver's tolerance).
        predicted_reduction: pred = -m(p) = -(g^T p + 1/2 p^T B p) >= 0.
        status: :class:`SubproblemStatus` value as an int64 tensor.
        eigenvalues: the eigenvalues of B that the solver knows, ascending (for L-SR1 the distinct
            eigenvalues lambda_1..lambda_r of the parallel space followed by gamma, of multiplicity
            n - r; for dense solvers all n eigenvalues; ``None`` for truncated CG, which does not
            know them). Callers log min/max/negative count.
        step_norm: ||p||_2.
    """

    step: Tensor
    sigma: Tensor
    hit_boundary: Tensor
    predicted_reduction: Tensor
    status: Tensor
    eigenvalues: Tensor | None
    step_norm: Tensor
    #: (c_g, c) with step = c_g g + [S Y] c, for solvers working on a pair memory (else None)
    coefficients: tuple[Tensor, Tensor] | None = None


@dataclass
class HostTrustRegionStep:
    """What a trust-region stepper needs of a subproblem solution, as host numbers.

    The step itself stays on the device (in the model's step row); these decide rho, acceptance and
    the radius on the host.

    Attributes:
        sigma: the multiplier of (B + sigma I) s = -g (0 for truncated CG).
        predicted_reduction: pred = -m(s).
        step_norm: ||s||.
        status: :class:`SubproblemStatus` value.
        eigenvalues: the eigenvalues of B the solver knows, ascending (``None`` for truncated CG).
    """

    sigma: float
    predicted_reduction: float
    step_norm: float
    status: int
    eigenvalues: np.ndarray | None = None

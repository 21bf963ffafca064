"""Adapters that present each curvature representation to a stepper (:mod:`~lightning_sqn.optim.steppers`).

Only composition lives here: the algebra is in :mod:`~lightning_sqn.qn` and :mod:`~lightning_sqn.subproblem`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_sqn._device import device_scalar
from lightning_sqn.qn.base import LimitedMemoryMatrix
from lightning_sqn.qn.dense import DenseQuasiNewton
from lightning_sqn.qn.lbfgs import LBFGSMatrix
from lightning_sqn.qn.lsr1 import LSR1Matrix
from lightning_sqn.subproblem.exact import solve_exact
from lightning_sqn.subproblem.obs import NEWTON_ITERS, solve_obs
from lightning_sqn.subproblem.result import SubproblemStatus, TrustRegionResult
from lightning_sqn.subproblem.steihaug import solve_steihaug


class LimitedMemoryModel:
    """An :class:`LSR1Matrix` or :class:`LBFGSMatrix` as trust-region or line-search model."""

    def __init__(self, matrix: LimitedMemoryMatrix, newton_iters: int = NEWTON_ITERS) -> None:
        self.matrix = matrix
        self.newton_iters = newton_iters
        self._last_solve: tuple[Tensor, Tensor, Tensor] | None = None

    def solve(
        self, g: Tensor, radius: Tensor, g_norm_sq: Tensor | None = None, out: Tensor | None = None
    ) -> TrustRegionResult:
        if not isinstance(self.matrix, LSR1Matrix):
            raise TypeError("the trust-region subproblem is solved by OBS, which needs an LSR1Matrix")
        proj_g = self.matrix.memory.project(g)
        res = solve_obs(
            self.matrix,
            g,
            radius,
            proj_g=proj_g,
            g_norm_sq=g_norm_sq,
            out=out,
            newton_iters=self.newton_iters,
        )
        assert res.coefficients is not None
        self._last_solve = (proj_g, *res.coefficients)
        return res

    def _step_products(self, y: Tensor, scale: float | Tensor | None) -> Tensor | None:
        """[S Y]^T [s y] for s = scale * v, v the step or direction of the last solve/direction call.

        v = c_g g + [S Y] c, so [S Y]^T s = scale (c_g [S Y]^T g + ([S Y]^T [S Y]) c) comes from the
        stored Gram matrices; only [S Y]^T y needs a pass over the buffer. ``scale=None``: s is not
        such a multiple (e.g. a steepest-descent fallback), so the products are computed directly.
        """
        last, self._last_solve = self._last_solve, None
        if last is None or scale is None:
            return None
        proj_g, coef_g, coef = last
        mem = self.matrix.memory
        return torch.stack((scale * (coef_g * proj_g + mem.gram() @ coef), mem.project(y)), dim=1)

    def direction(self, g: Tensor) -> Tensor:
        """d = -H g = -(b0 g + [S Y] c)."""
        proj_g, b0, c = self.matrix.inv_mv_coefficients(g)
        self._last_solve = (proj_g, -b0, -c)
        return self.matrix.memory.combine(-c, v=-b0 * g)

    def offer(
        self, s: Tensor, y: Tensor, residual: Tensor | None = None, scale: float | Tensor | None = 1.0
    ) -> tuple[Tensor, Tensor]:
        """Offer the pair; ``scale``: s = scale x (the last step or direction), or None if it is not."""
        products = self._step_products(y, scale)
        if isinstance(self.matrix, LSR1Matrix):
            return self.matrix.update(s, y, residual=residual, products=products)
        assert isinstance(self.matrix, LBFGSMatrix)
        stored = self.matrix.update(s, y, products=products)
        return stored, torch.zeros((), dtype=torch.long, device=stored.device)

    def load_pairs(self, S: Tensor, Y: Tensor) -> Tensor:
        """Forget the memory, then offer the pairs (rows of S, Y) in order; return how many were kept.

        Each pair meets the matrix's own test (SR1 skip rule with rank repair, or the BFGS curvature
        condition) against the pairs kept before it, as in a sequence of classical updates.
        """
        self.reset()
        for s, y in zip(S, Y, strict=True):
            self.offer(s, y, scale=None)
        return self.pairs()

    def pairs(self) -> Tensor:
        return self.matrix.memory.count()

    def gamma(self) -> Tensor:
        return self.matrix.gamma

    def reset(self) -> None:
        self.matrix.reset()
        self._last_solve = None

    def state_dict(self) -> dict:
        return self.matrix.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.matrix.load_state_dict(state)


class SteihaugModel(LimitedMemoryModel):
    """An :class:`LSR1Matrix` whose trust-region subproblem is solved by Steihaug-Toint truncated CG.

    Products B v come from the compact form (two passes over the pair buffer each). B = gamma I plus
    a rank-<= m term has at most m + 1 distinct eigenvalues, so CG ends within m + 1 iterations in
    exact arithmetic; the cap defaults to 2 (m + 1). The result carries sigma = 0 and no eigenvalues
    (CG does not know them); the truncated step does not satisfy (B + sigma I) s = -g, so this model
    serves only methods that do not offer the step's own pair (sampled L-SR1).
    """

    def __init__(
        self, matrix: LSR1Matrix, kappa: float = 0.1, theta: float = 0.5, max_iters: int | None = None
    ) -> None:
        super().__init__(matrix)
        self.kappa, self.theta = kappa, theta
        self.max_iters = 2 * (matrix.m + 1) if max_iters is None else max_iters

    def solve(
        self, g: Tensor, radius: Tensor, g_norm_sq: Tensor | None = None, out: Tensor | None = None
    ) -> TrustRegionResult:
        del g_norm_sq, out
        res = solve_steihaug(
            self.matrix.mv, g, radius, kappa=self.kappa, theta=self.theta, max_iters=self.max_iters
        )
        self.last_iterations = res.iterations
        status = {
            "converged": SubproblemStatus.INTERIOR,
            "boundary": SubproblemStatus.BOUNDARY,
            "negative_curvature": SubproblemStatus.NEGATIVE_CURVATURE,
            "cap": SubproblemStatus.CAP,
        }[res.reason]
        device = g.device
        return TrustRegionResult(
            step=res.step,
            sigma=torch.zeros((), dtype=g.dtype, device=device),
            hit_boundary=device_scalar(res.hit_boundary, dtype=torch.bool, device=device),
            predicted_reduction=res.predicted_reduction,
            status=device_scalar(int(status), dtype=torch.long, device=device),
            eigenvalues=None,
            step_norm=res.step_norm,
        )


class DenseModel:
    """A dense :class:`DenseSR1` / :class:`DenseBFGS` matrix; the subproblem is solved exactly (eigh)."""

    def __init__(self, matrix: DenseQuasiNewton, device: torch.device, dtype: torch.dtype) -> None:
        self.matrix = matrix
        self.device = device
        self.dtype = dtype

    def solve(
        self, g: Tensor, radius: Tensor, g_norm_sq: Tensor | None = None, out: Tensor | None = None
    ) -> TrustRegionResult:
        del g_norm_sq, out
        return solve_exact(self.matrix.to_dense(), g, radius)

    def direction(self, g: Tensor) -> Tensor:
        return -self.matrix.inv_mv(g)

    def offer(
        self, s: Tensor, y: Tensor, residual: Tensor | None = None, scale: float | Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        del residual, scale  # the dense update forms y - B s itself
        stored = self.matrix.update(s, y)
        return stored, torch.zeros((), dtype=torch.long, device=self.device)

    def pairs(self) -> Tensor:
        return torch.tensor(self.matrix.num_updates, device=self.device)

    def gamma(self) -> Tensor:
        return torch.tensor(self.matrix.gamma, dtype=self.dtype, device=self.device)

    def reset(self) -> None:
        self.matrix.reset()

    def state_dict(self) -> dict:
        return self.matrix.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.matrix.load_state_dict(state)


__all__ = ["DenseModel", "LimitedMemoryModel", "SteihaugModel"]

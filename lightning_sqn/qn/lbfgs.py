r"""Limited-memory BFGS in compact form (Byrd, Nocedal & Schnabel 1994, Thm. 2.2 and 2.3).

With S, Y the active pairs in time order, D = diag(s_i^T y_i), L the strictly lower and R the upper
triangle (diagonal included) of S^T Y, B_0 = gamma I and H_0 = delta I, delta = 1/gamma:

.. math::

    H = \delta I + [S \; \delta Y]
        \begin{bmatrix} R^{-T}(D + \delta Y^T Y) R^{-1} & -R^{-T} \\ -R^{-1} & 0 \end{bmatrix}
        \begin{bmatrix} S^T \\ \delta Y^T \end{bmatrix},
    \qquad
    B = \gamma I - [\gamma S \; Y]
        \begin{bmatrix} \gamma S^T S & L \\ L^T & -D \end{bmatrix}^{-1}
        \begin{bmatrix} \gamma S^T \\ Y^T \end{bmatrix}.

A pair is stored only if it satisfies the curvature condition s^T y > eps ||s|| ||y||, which keeps B
and H positive definite. gamma = y^T y / s^T y of the newest pair (Nocedal & Wright eq. 7.20) unless a
constant is given. H v costs two passes over the (2m, n) pair buffer instead of the 4m dependent
vector operations of the two-loop recursion.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from lightning_sqn.qn.base import LimitedMemoryMatrix, check_gamma


class LBFGSMatrix(LimitedMemoryMatrix):
    """The L-BFGS approximation B and its inverse H held as m curvature pairs.

    Args:
        memory: m, pairs kept.
        n: problem dimension.
        dtype, device: of the pair buffers.
        gamma: ``"scaled"`` (y^T y / s^T y of the newest stored pair) or a constant float > 0.
        gamma_init: gamma before the first pair is stored.
        curvature_eps: eps of the curvature condition s^T y > eps ||s|| ||y||, in [0, 1).
    """

    def __init__(
        self,
        memory: int,
        n: int,
        *,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str = "cpu",
        gamma: Literal["scaled"] | float = "scaled",
        gamma_init: float = 1.0,
        curvature_eps: float = 1e-8,
    ) -> None:
        check_gamma(gamma, ("scaled",))
        if not (math.isfinite(curvature_eps) and 0.0 <= curvature_eps < 1.0):
            raise ValueError(f"curvature_eps must lie in [0, 1), got {curvature_eps!r}")
        init = float(gamma) if not isinstance(gamma, str) else gamma_init
        super().__init__(memory, n, dtype=dtype, device=device, gamma_init=init)
        self.gamma_choice = gamma
        self.curvature_eps = curvature_eps

    def _blocks(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """(mask, SY masked, order, D, R^{-1} with identity on inactive slots)."""
        mem = self.memory
        mask = mem.active
        mm = mask[:, None] & mask[None, :]
        zero = torch.zeros((), dtype=mem.dtype, device=mem.device)
        SY = torch.where(mm, mem.SY, zero)
        later = mem.serial[:, None] > mem.serial[None, :]
        R = torch.where(later, zero, SY) + torch.diag_embed((~mask).to(SY.dtype))
        Rinv, _ = torch.linalg.inv_ex(R)
        D = torch.diag_embed(torch.diagonal(SY))
        return mask, SY, later, D, Rinv

    def inv_mv_coefficients(self, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """H v = delta v + [S Y] c (Thm. 2.2); returns ([S Y]^T v, delta, c). v: (n,) or (n, k)."""
        mem = self.memory
        mask, _, _, D, W = self._blocks()
        m_ = mask if v.ndim == 1 else mask[:, None]
        delta = 1.0 / self.gamma
        zero = torch.zeros((), dtype=mem.dtype, device=mem.device)
        YY = torch.where(mask[:, None] & mask[None, :], mem.YY, zero)
        p = mem.project(v)
        a = p[: self.m] * m_
        b = delta * p[self.m :] * m_
        T = W.t() @ (D + delta * YY) @ W
        z1 = T @ a - W.t() @ b
        z2 = -(W @ a)
        c = torch.cat((z1 * m_, delta * z2 * m_))
        return p, delta, c

    def mv(self, v: Tensor) -> Tensor:
        """B v (Thm. 2.3) for v of shape (n,) or (n, k)."""
        mem = self.memory
        mask, SY, later, D, _ = self._blocks()
        m_ = mask if v.ndim == 1 else mask[:, None]
        gamma = self.gamma
        zero = torch.zeros((), dtype=mem.dtype, device=mem.device)
        SS = torch.where(mask[:, None] & mask[None, :], mem.SS, zero)
        L = torch.where(later, SY, zero)
        fill = torch.diag_embed((~mask).to(SY.dtype))
        K = torch.cat((torch.cat((gamma * SS + fill, L), 1), torch.cat((L.t(), -D + fill), 1)), 0)
        p = mem.project(v)
        rhs = torch.cat((gamma * p[: self.m] * m_, p[self.m :] * m_))
        z = torch.linalg.solve_ex(K, rhs)[0]
        c = torch.cat((-gamma * z[: self.m] * m_, -z[self.m :] * m_))
        return mem.combine(c, v=gamma * v)

    def update(self, s: Tensor, y: Tensor, *, products: Tensor | None = None) -> Tensor:
        """Store (s, y) if s^T y > eps ||s|| ||y|| and both are finite; return that decision (0-dim bool).

        ``products``: [S Y]^T [s y] (2m, 2) if the caller knows it (saves two passes over the buffer).
        """
        ss, sy, yy = s @ s, s @ y, y @ y
        # s^T s and y^T y are finite exactly when s and y are (barring overflow, also refused).
        # s^T y must also be a comfortably normal number (the compact form divides by it)
        tiny = torch.finfo(sy.dtype).tiny / torch.finfo(sy.dtype).eps
        stored = (
            (sy > self.curvature_eps * (ss * yy).clamp_min(0).sqrt())
            & (sy > tiny)
            & (ss + yy + sy).isfinite()
        )
        # The masked writes select, never compute with, a refused pair, so it cannot poison the buffer.
        self.memory.push(s, y, stored, products=products, dots=(ss, sy, yy))
        if isinstance(self.gamma_choice, str):
            new = yy / sy.clamp_min(torch.finfo(sy.dtype).tiny)
            self.gamma.copy_(torch.where(stored & new.isfinite() & (new > 0), new, self.gamma))
        return stored


__all__ = ["LBFGSMatrix"]

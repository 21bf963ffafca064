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
vector operations of the two-loop recursion; the 2m x 2m algebra between them is host NumPy float64.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import scipy.linalg
import torch
from torch import Tensor

from lightning_sqn.qn.base import LimitedMemoryMatrix, check_gamma


class LBFGSMatrix(LimitedMemoryMatrix):
    """The L-BFGS approximation B and its inverse H held as m curvature pairs.

    Args:
        memory: m, pairs kept.
        n: problem dimension.
        dtype, device: of the pair buffer.
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
        if not (
            isinstance(curvature_eps, int | float)
            and math.isfinite(curvature_eps)
            and 0.0 <= curvature_eps < 1.0
        ):
            raise ValueError(f"curvature_eps must lie in [0, 1), got {curvature_eps!r}")
        init = float(gamma) if not isinstance(gamma, str) else gamma_init
        super().__init__(memory, n, dtype=dtype, device=device, gamma_init=init)
        self.gamma_choice = gamma
        self.curvature_eps = curvature_eps
        finfo = torch.finfo(dtype)
        # s^T y must be a comfortably normal number of the buffer dtype (the compact form divides by it)
        self._tiny = finfo.tiny / finfo.eps

    def _active(self) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """Active slots in time order (R below is then upper triangular), and their index grid."""
        mem = self.memory
        idx = mem.active.nonzero()[0]
        idx = idx[mem.serial[idx].argsort(kind="stable")]
        return idx, (idx[:, None], idx)

    def inv_mv_coefficients(self, proj: np.ndarray) -> tuple[float, np.ndarray]:
        """H v = delta v + [S Y] c (Thm. 2.2) from proj = [S Y]^T v, (2(m+1),) or (2(m+1), k)."""
        mem, m = self.memory, self.memory.slots
        delta = 1.0 / self.gamma
        c = np.zeros_like(proj)
        idx, ix = self._active()
        if idx.size == 0:
            return delta, c
        SY = mem.SY[ix]
        # R: upper triangle (diagonal included) of S^T Y in time order
        earlier_or_same = mem.serial[idx][:, None] <= mem.serial[idx][None, :]
        R = np.where(earlier_or_same, SY, 0.0)
        D = np.diag(SY.diagonal())
        a = proj[idx]
        b = delta * proj[m + idx]
        Rinv_a = scipy.linalg.solve_triangular(R, a, lower=False, check_finite=False)
        # z1 = R^{-T} (D + delta Y^T Y) R^{-1} a - R^{-T} b, z2 = -R^{-1} a
        z1 = scipy.linalg.solve_triangular(
            R, (D + delta * mem.YY[ix]) @ Rinv_a - b, trans="T", lower=False, check_finite=False
        )
        c[idx] = z1
        c[m + idx] = -delta * Rinv_a
        return delta, c

    def mv_coefficients(self, proj: np.ndarray) -> tuple[float, np.ndarray]:
        """B v = gamma v + [S Y] c (Thm. 2.3) from proj = [S Y]^T v, (2(m+1),) or (2(m+1), k)."""
        mem, m = self.memory, self.memory.slots
        gamma = self.gamma
        c = np.zeros_like(proj)
        idx, ix = self._active()
        if idx.size == 0:
            return gamma, c
        SY = mem.SY[ix]
        later = mem.serial[idx][:, None] > mem.serial[idx][None, :]
        L = np.where(later, SY, 0.0)
        D = np.diag(SY.diagonal())
        K = np.block([[gamma * mem.SS[ix], L], [L.T, -D]])
        z = np.linalg.solve(K, np.concatenate((gamma * proj[idx], proj[m + idx])))
        k = idx.size
        c[idx] = -gamma * z[:k]
        c[m + idx] = -z[k:]
        return gamma, c

    def offer(
        self,
        Ps: np.ndarray,
        Py: np.ndarray,
        dots: tuple[float, float, float],
        *,
        residual: tuple[float, float] | None = None,
    ) -> tuple[bool, int]:
        """Store the pair in the memory's spare slot if s^T y > eps ||s|| ||y|| and everything is finite;
        return (stored, 0).

        ``residual`` is not used (the BFGS test needs none); it is accepted so that both matrices take
        the same arguments.
        """
        del residual
        ss, sy, yy = dots
        if not self.finite_pair(Ps, Py, dots):
            return False, 0
        if not (sy > self.curvature_eps * math.sqrt(max(ss * yy, 0.0)) and sy > self._tiny):
            return False, 0
        self.memory.push(Ps, Py, ss, sy, yy)
        if isinstance(self.gamma_choice, str):
            new = yy / sy
            if math.isfinite(new) and new > 0:
                self.gamma = new
        return True, 0

    def update(self, s: Tensor, y: Tensor) -> bool:
        """Offer (s, y), written into the spare slot, with its products formed here (one pass, one read);
        return whether it was stored."""
        self.memory.write_spare(s, y)
        Ps, Py, dots = self.memory.pair_products(s, y)
        return self.offer(Ps, Py, dots)[0]


__all__ = ["LBFGSMatrix"]

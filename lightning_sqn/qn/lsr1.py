r"""Limited-memory SR1 in compact form (Byrd, Nocedal & Schnabel 1994, Thm. 5.1).

With B_0 = gamma I and the k active pairs as columns of S, Y (time order):

.. math::

    B = \gamma I + \Psi M \Psi^T, \qquad \Psi = Y - \gamma S, \qquad
    M^{-1} = D + L + L^T - \gamma S^T S,

D = diag(s_i^T y_i), L the strictly lower triangle of S^T Y. SR1 is self-dual, so the inverse is the same
formula with (B, S, Y, gamma) -> (H, Y, S, 1/gamma) (Alg. 2 of Ramamurthy & Duffy):

.. math::

    H = \delta I + \Phi N \Phi^T, \qquad \Phi = S - \delta Y, \qquad
    N^{-1} = D + L' + L'^T - \delta Y^T Y, \qquad \delta = 1/\gamma,

L' the strictly lower triangle of Y^T S. With both middle matrices nonsingular, H = B^{-1}.

Products cost two passes over the (2m, n) pair buffer; everything m x m (the middle matrices, the skip
rule, rank repair, the choice of gamma) is host NumPy float64 on the Gram matrices of
:mod:`~lightning_sqn.qn.memory`. No n x n matrix is formed except by :meth:`LSR1Matrix.to_dense`
(tests).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from lightning_sqn._device import to_host
from lightning_sqn.qn.base import LimitedMemoryMatrix, check_gamma

GammaChoice = Literal["scaled", "eigen"]


@dataclass
class CompactFactors:
    """The pieces of B = b0 I + Psi M Psi^T (or H = b0 I + Phi N Phi^T) that solvers need (host float64).

    Attributes:
        b0: gamma (B form) or delta = 1/gamma (H form).
        mask: (m + 1,) bool, active slots of the pair memory.
        gram: Psi^T Psi (m + 1, m + 1), zero on inactive rows/columns.
        middle: M (m + 1, m + 1), zero on inactive rows/columns.
        primal: True for the B form (Psi = Y - gamma S), False for the H form (Phi = S - delta Y).
    """

    b0: float
    mask: np.ndarray
    gram: np.ndarray
    middle: np.ndarray
    primal: bool

    def coeffs(self, w: np.ndarray) -> np.ndarray:
        """Coefficients c on [S Y] with [S Y] c = Psi w (B form) or Phi w (H form)."""
        w = np.where(self.mask if w.ndim == 1 else self.mask[:, None], w, 0.0)
        return np.concatenate((-self.b0 * w, w) if self.primal else (w, -self.b0 * w))

    def psi_t(self, proj: np.ndarray) -> np.ndarray:
        """Psi^T v (or Phi^T v) from proj = [S Y]^T v, shape (2(m + 1),) or (2(m + 1), k); zero on
        inactive slots whatever proj holds there."""
        m = self.mask.shape[0]
        Sv, Yv = proj[:m], proj[m:]
        out = Yv - self.b0 * Sv if self.primal else Sv - self.b0 * Yv
        return np.where(self.mask if out.ndim == 1 else self.mask[:, None], out, 0.0)


@functools.cache
def _lower(k: int) -> np.ndarray:
    """The (k, k) boolean mask of the lower triangle with the diagonal (read-only, made once per k)."""
    mask = np.tri(k, dtype=bool)
    mask.flags.writeable = False
    return mask


def _default_rank_tol(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).eps) ** (1.0 / 3.0)


class LSR1Matrix(LimitedMemoryMatrix):
    """The L-SR1 approximation B (and its inverse H) held as m curvature pairs.

    Args:
        memory: m, pairs kept.
        n: problem dimension.
        dtype, device: of the pair buffer.
        form: ``"B"`` applies the skip rule and rank repair of Alg. 1 (trust region: test on
            s^T (y - B s), require Psi full column rank and M^{-1} nonsingular); ``"H"`` those of
            Alg. 2 (line search: test on y^T (s - H y), require N^{-1} nonsingular). Both forms offer
            :meth:`mv` (B v) and :meth:`inv_mv` (H v).
        gamma: how B_0 = gamma I is chosen after each stored pair:

            * ``"scaled"``: gamma = y^T y / s^T y of the newest stored pair when s^T y > 0, else the
              previous gamma (the usual Barzilai-Borwein scaling; gamma stays positive). In the H form
              the scaling of the pair stored *before* the newest is used, because the newest pair's
              own scaling makes its entry of N^{-1} vanish (y^T s - delta y^T y = 0). In the B form a
              lone pair with its own scaling gives B = gamma (I - r r^T / r^T r), r = y - gamma s:
              singular along r (``docs/benchmarks.md``, MGH section; the paper fixes B_0 instead).
            * ``"eigen"``: gamma = ``gamma_fraction`` x lambda_hat, with lambda_hat the smallest
              eigenvalue of the pencil (D + L + L^T, S^T S) over the stored pairs, when it is positive
              (Erway, Griffin, Marcia & Omheni 2020). Then M^{-1} = D + L + L^T - gamma S^T S is
              positive definite, so B is positive definite on range(S) and the OBS subproblem is well
              posed with an interior Newton step possible. Otherwise the previous gamma is kept.
            * a float > 0: a constant gamma.
        gamma_init: gamma before any pair is stored (and the constant when ``gamma`` is a float).
        gamma_fraction: the safety fraction of ``"eigen"``, in (0, 1).
        skip_tol: r of the SR1 skip rule |u^T r| >= r ||u|| ||r||, in (0, 1) (u = s, r = y - B s in
            the B form; u = y, r = s - H y in the H form).
        rank_tol: relative threshold for "full column rank" (singular values of Psi above
            rank_tol x (||Y||_F + gamma ||S||_F)) and "nonsingular" (|eigenvalues| of M^{-1} above
            rank_tol x ||S||_F (||Y||_F + gamma ||S||_F)), norms over the pairs kept (S and Y swapped,
            gamma -> 1/gamma for the H form). Default eps^(1/3) of the dtype.
    """

    def __init__(
        self,
        memory: int,
        n: int,
        *,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str = "cpu",
        form: Literal["B", "H"] = "B",
        gamma: GammaChoice | float = "scaled",
        gamma_init: float = 1.0,
        gamma_fraction: float = 0.5,
        skip_tol: float = 1e-8,
        rank_tol: float | None = None,
    ) -> None:
        if form not in ("B", "H"):
            raise ValueError(f"form must be 'B' (trust region) or 'H' (line search), got {form!r}")
        check_gamma(gamma, ("scaled", "eigen"))
        if not 0.0 < gamma_fraction < 1.0:
            raise ValueError(f"gamma_fraction must lie in (0, 1), got {gamma_fraction!r}")
        if not 0.0 < skip_tol < 1.0:
            raise ValueError(f"skip_tol (r of the SR1 skip rule) must lie in (0, 1), got {skip_tol!r}")
        if rank_tol is not None and not 0.0 < rank_tol < 1.0:
            raise ValueError(f"rank_tol must lie in (0, 1), got {rank_tol!r}")
        init = float(gamma) if not isinstance(gamma, str) else gamma_init
        super().__init__(memory, n, dtype=dtype, device=device, gamma_init=init)
        self.form = form
        self.gamma_choice: GammaChoice | float = gamma
        self.gamma_fraction = gamma_fraction
        self.skip_tol = skip_tol
        self.rank_tol = _default_rank_tol(dtype) if rank_tol is None else rank_tol
        self._factors: dict[bool, CompactFactors] = {}
        self.gamma_next = self.gamma  # H form with gamma="scaled": the lagged scaling
        finfo = torch.finfo(dtype)
        # |u^T r| must be a comfortably normal number of the buffer dtype (M^{-1} holds it, M its inverse)
        self._tiny = finfo.tiny / finfo.eps
        # relative rounding of an n-term dot product of the buffer dtype (residuals formed on the host)
        self._dot_eps = 4.0 * finfo.eps * math.sqrt(n)

    # ------------------------------------------------------------- factors
    def _invalidate(self) -> None:
        self._factors.clear()
        self._blocks = None

    #: (primal, b0, time-ordered slots, Psi^T Psi, M^{-1}) of the last rank repair, reused by
    #: :meth:`factors` while nothing changed (one construction of the blocks per stored pair)
    _blocks: tuple[bool, float, np.ndarray, np.ndarray, np.ndarray] | None = None

    def _time_ordered(self) -> np.ndarray:
        """The active slots, oldest first."""
        mem = self.memory
        idx = mem.active.nonzero()[0]
        return idx[mem.serial[idx].argsort(kind="stable")]

    def _middle_inverse(self, primal: bool, idx: np.ndarray, b0: float) -> tuple[np.ndarray, np.ndarray]:
        """(Psi^T Psi, M^{-1}) over the pairs ``idx`` in time order (Phi^T Phi, N^{-1} for the H form).

        M^{-1} = D + L + L^T - b0 U^T U and Psi^T Psi = V^T V - b0 (U^T V + V^T U) + b0^2 U^T U with
        (U, V) = (S, Y) (B form) or (Y, S) (H form), L the strictly lower triangle of U^T V.
        """
        mem, k = self.memory, idx.size
        ii = np.concatenate((idx, mem.slots + idx))
        sub = mem.G[ii[:, None], ii]  # [S Y]^T [S Y] over the pairs, in time order
        SS, SY, YY = sub[:k, :k], sub[:k, k:], sub[k:, k:]
        UV = SY if primal else SY.T  # UV[i, j] = u_i^T v_j
        UU, VV = (SS, YY) if primal else (YY, SS)
        # D + L + L^T: UV on and below the diagonal (row i later than column j below it), UV^T above
        inv = np.where(_lower(k), UV, UV.T) - b0 * UU
        gram = VV - b0 * (UV + UV.T) + (b0 * b0) * UU
        return gram, inv

    def factors(self, primal: bool = True) -> CompactFactors:
        """B = gamma I + Psi M Psi^T (``primal``) or H = delta I + Phi N Phi^T."""
        if primal not in self._factors:
            m = self.memory.slots
            mask = self.memory.active.copy()
            b0 = self.gamma if primal else 1.0 / self.gamma
            idx = self._time_ordered()
            gram = np.zeros((m, m))
            middle = np.zeros((m, m))
            if idx.size:
                cached = self._blocks
                if cached is not None and cached[:2] == (primal, b0) and np.array_equal(cached[2], idx):
                    block_gram, block_inv = cached[3], cached[4]
                else:
                    block_gram, block_inv = self._middle_inverse(primal, idx, b0)
                ix = (idx[:, None], idx)
                gram[ix] = block_gram
                try:
                    middle[ix] = np.linalg.inv(block_inv)
                except np.linalg.LinAlgError:  # rank repair keeps this from happening; never crash
                    middle[ix] = np.linalg.pinv(block_inv)
            self._factors[primal] = CompactFactors(b0, mask, gram, middle, primal)
        return self._factors[primal]

    # ------------------------------------------------------------ products
    def _coefficients(self, proj: np.ndarray, primal: bool) -> tuple[float, np.ndarray]:
        f = self.factors(primal)
        return f.b0, f.coeffs(f.middle @ f.psi_t(proj))

    def mv_coefficients(self, proj: np.ndarray) -> tuple[float, np.ndarray]:
        return self._coefficients(proj, True)

    def inv_mv_coefficients(self, proj: np.ndarray) -> tuple[float, np.ndarray]:
        return self._coefficients(proj, False)

    # ------------------------------------------------------------- updates
    def residual_dots(
        self, Ps: np.ndarray, Py: np.ndarray, dots: tuple[float, float, float]
    ) -> tuple[float, float] | None:
        """(u^T r, r^T r) of the skip rule from the pair's products on the host, or None when rounding
        of the dot products they come from leaves r unresolved.

        B form: u = s, r = y - B s = (y - gamma s) - Psi w with w = M Psi^T s; H form: u = y,
        r = s - H y = (s - delta y) - Phi w with w = N Phi^T y. Expanding ||r||^2 cancels when r is small
        against its terms; a pair whose residual (or u^T r) lies within the rounding of its inputs
        carries no curvature information the update could use, and storing it would put rounding
        noise into M, so such a pair is refused (returns None).
        """
        ss, sy, yy = dots
        primal = self.form == "B"
        f = self.factors(primal)
        b0 = f.b0
        Pu, Pv = (Ps, Py) if primal else (Py, Ps)  # u = s, v = y (B form); u = y, v = s (H form)
        uu, vv = (ss, yy) if primal else (yy, ss)
        psi_u = f.psi_t(Pu)
        w = f.middle @ psi_u
        psi_v_minus = f.psi_t(Pv) - b0 * psi_u  # Psi^T (v - b0 u)
        wGw = float(w @ f.gram @ w)
        uTr = sy - b0 * uu - float(psi_u @ w)
        rr = (vv - 2.0 * b0 * sy + b0 * b0 * uu) - 2.0 * float(psi_v_minus @ w) + wGw
        r_scale = math.sqrt(max(vv, 0.0)) + abs(b0) * math.sqrt(max(uu, 0.0)) + math.sqrt(max(wGw, 0.0))
        u_scale = abs(sy) + abs(b0) * uu + abs(float(psi_u @ w))
        eps = self._dot_eps
        if not (rr > eps * r_scale * r_scale and abs(uTr) > eps * u_scale):
            return None
        return uTr, rr

    def offer(
        self,
        Ps: np.ndarray,
        Py: np.ndarray,
        dots: tuple[float, float, float],
        *,
        residual: tuple[float, float] | None = None,
    ) -> tuple[bool, int]:
        """Offer the pair (s, y) held in the memory's spare slot; store it if it passes the SR1 skip
        rule, then repair the rank.

        Args:
            Ps, Py: [S Y]^T s and [S Y]^T y over the slots (host float64, (2(m + 1),), zero on inactive
                slots).
            dots: (s^T s, s^T y, y^T y).
            residual: (u^T r, r^T r) computed on the device from an explicit r (e.g. r = g(x + s) +
                sigma s, which is y - B s at the trust-region solution); ``None``: formed on the host
                from the products (:meth:`residual_dots`).

        Returns:
            (stored, dropped): whether the pair was stored, and how many older pairs rank repair
            removed (Alg. 1 lines 31-39 / Alg. 2 lines 24-32).
        """
        ss, sy, yy = dots
        if not self.finite_pair(Ps, Py, dots):
            return False, 0  # a non-finite pair is never stored (and never poisons the Gram matrix)
        res = self.residual_dots(Ps, Py, dots) if residual is None else residual
        if res is None:
            return False, 0
        uTr, rr = res
        uu = ss if self.form == "B" else yy
        num = abs(uTr)
        if not (
            math.isfinite(num)
            and math.isfinite(rr)
            and num > self._tiny
            and num >= self.skip_tol * math.sqrt(max(uu, 0.0)) * math.sqrt(max(rr, 0.0))
        ):
            return False, 0
        self.memory.push(Ps, Py, ss, sy, yy)
        after_push = self.memory.count()
        self._update_gamma(sy, yy)
        self._invalidate()  # after the push and the new gamma; rank repair then caches its blocks
        self._repair(self.form == "B")
        return True, after_push - self.memory.count()

    def update(self, s: Tensor, y: Tensor, *, residual: Tensor | None = None) -> tuple[bool, int]:
        """Offer the pair (s, y) with all products formed here (one pass and one read for its products,
        one combination pass and one read for the residual when it is not given): the entry point
        outside the optimizers' steps.

        Args:
            s, y: the pair, shape (n,).
            residual: y - B s (B form) or s - H y (H form) if the caller knows it; formed here otherwise.
        """
        mem = self.memory
        mem.write_spare(s, y)
        Ps, Py, dots = mem.pair_products(s, y)
        if not self.finite_pair(Ps, Py, dots):
            return False, 0  # refused before any product with it is formed
        if residual is None:
            return self.offer(Ps, Py, dots, residual=self._residual(mem.spare, Ps, Py))
        u = s if self.form == "B" else y
        uTr, rr = to_host(u @ residual, residual @ residual)
        return self.offer(Ps, Py, dots, residual=(float(uTr), float(rr)))

    def _residual(self, slot: int, Ps: np.ndarray, Py: np.ndarray) -> tuple[float, float]:
        """(u^T r, r^T r) of the pair in (inactive) ``slot`` against the active pairs, from an explicit
        residual formed in one combination pass into the memory's d row (its scratch) and read once:
        B form r = y - B s (u = s), H form r = s - H y (u = y). ``Ps``, ``Py``: the pair's products with
        the slots, masked to the active ones."""
        mem, S = self.memory, self.memory.slots
        primal = self.form == "B"
        b0, c = self.mv_coefficients(Ps) if primal else self.inv_mv_coefficients(Py)
        c = -c
        u, v = (slot, S + slot) if primal else (S + slot, slot)  # r = v - b0 u - [S Y] c
        c[v] += 1.0
        c[u] -= b0
        r = mem.combine(c, out=mem.d)  # over the pairs only (the g row may hold anything here)
        uTr, rr = to_host(mem.SY_buf[u] @ r, r @ r)
        return float(uTr), float(rr)

    def _update_gamma(self, sy: float, yy: float) -> None:
        if not isinstance(self.gamma_choice, str):
            return
        if self.gamma_choice == "scaled":
            cand = yy / sy if sy > 0 else self.gamma
            ok_cand = math.isfinite(cand) and cand > 0
            if self.form == "B":
                new = cand
            else:
                # H form: delta = s^T y / y^T y of the newest pair makes that pair's own entry of
                # N^{-1} = D + L' + L'^T - delta Y^T Y exactly zero (y^T s - delta y^T y = 0), so a lone
                # new pair could never be kept. Use the scaling of the previously stored pair instead.
                new = self.gamma_next
                if ok_cand:
                    self.gamma_next = cand
        else:
            new = self.gamma_fraction * self._pencil_min()
        if math.isfinite(new) and new > 0:
            self.gamma = float(new)
            self._invalidate()

    def _host_scalars(self) -> dict[str, float]:
        return {**super()._host_scalars(), "gamma_next": self.gamma_next}

    def _pencil_min(self) -> float:
        """lambda_hat: smallest eigenvalue of (D + L + L^T) u = lambda S^T S u on the active pairs.

        S^T S is factored by eigh and restricted to its numerically nonzero spectrum, so collinear
        steps do not break it. NaN if there is no pair.
        """
        mem = self.memory
        idx = mem.active.nonzero()[0]
        if idx.size == 0:
            return math.nan
        ix = (idx[:, None], idx)
        SS = mem.SS[ix]
        SY = mem.SY[ix]
        Lt = np.where(mem.serial[idx][:, None] > mem.serial[idx][None, :], SY, 0.0)
        A = np.diag(SY.diagonal()) + Lt + Lt.T
        E, V = np.linalg.eigh(SS)
        keep = E > (self.rank_tol**2) * max(E.max(), np.finfo(float).tiny)
        W = V[:, keep] / np.sqrt(E[keep])
        return float(np.linalg.eigvalsh(W.T @ A @ W)[0])

    def _repair(self, primal: bool) -> None:
        """Drop the oldest pairs until the compact form is well defined (Alg. 1 l. 31-39, Alg. 2 l. 24-32).

        The candidates (drop 0, 1, ..., k oldest) are the trailing blocks of the time-ordered matrices;
        they are checked in turn and the first that passes is kept.
        """
        mem = self.memory
        b0 = self.gamma if primal else 1.0 / self.gamma
        tol = self.rank_tol
        idx = self._time_ordered()
        if idx.size == 0:
            return
        gram, inv = self._middle_inverse(primal, idx, b0)
        # Thresholds scale with the terms that form Psi = V - b0 U and M^{-1} = D + L + L^T - b0 U^T U
        # ((U, V) = (S, Y), or (Y, S) for the H form), not with their own largest eigenvalue: that cannot
        # see cancellation (a 1 x 1 M^{-1} that is zero up to rounding would always pass).
        UU, VV = (mem.SS, mem.YY) if primal else (mem.YY, mem.SS)
        uu = UU.diagonal()[idx]
        vv = VV.diagonal()[idx]
        for k in range(idx.size):
            u_norm = math.sqrt(max(float(uu[k:].sum()), 0.0))  # ||U||_F over the pairs kept
            size = math.sqrt(max(float(vv[k:].sum()), 0.0)) + abs(b0) * u_norm
            if primal:  # both spectra in one call
                e_inv, e_gram = np.linalg.eigvalsh(np.stack((inv[k:, k:], gram[k:, k:])))
                ok = bool(np.abs(e_inv).min() > tol * u_norm * size and e_gram[0] > tol * tol * size * size)
            else:
                ok = bool(np.abs(np.linalg.eigvalsh(inv[k:, k:])).min() > tol * u_norm * size)
            if ok:
                if k:
                    mem.active[idx[:k]] = False
                self._blocks = (primal, b0, idx[k:].copy(), gram[k:, k:], inv[k:, k:])
                return
        mem.active[idx] = False


__all__ = ["CompactFactors", "LSR1Matrix"]

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

Products cost two passes over the (2m, n) pair buffer and O(m^2) small algebra; no n x n matrix is
formed except by :meth:`LSR1Matrix.to_dense` (tests). Skipping, rank repair and the choice of gamma
are masked device operations (see :mod:`~lightning_sqn.qn.memory`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from lightning_sqn._device import select_row
from lightning_sqn.qn.base import LimitedMemoryMatrix, check_gamma

GammaChoice = Literal["scaled", "eigen"]


@dataclass
class CompactFactors:
    """The pieces of B = b0 I + Psi M Psi^T (or H = b0 I + Phi N Phi^T) that solvers need.

    Attributes:
        b0: gamma (B form) or delta = 1/gamma (H form), 0-dim.
        mask: (m,) bool, active pairs.
        gram: Psi^T Psi (m, m), zero on inactive rows/columns.
        middle: M (m, m), zero on inactive rows/columns.
        primal: True for the B form (Psi = Y - gamma S), False for the H form (Phi = S - delta Y).
    """

    b0: Tensor
    mask: Tensor
    gram: Tensor
    middle: Tensor
    primal: bool

    def coeffs(self, w: Tensor) -> Tensor:
        """Coefficients c on [S Y] with [S Y] c = Psi w (B form) or Phi w (H form)."""
        w = w * (self.mask if w.ndim == 1 else self.mask[:, None])
        return torch.cat((-self.b0 * w, w)) if self.primal else torch.cat((w, -self.b0 * w))

    def psi_t(self, proj: Tensor) -> Tensor:
        """Psi^T v (or Phi^T v) from proj = [S Y]^T v, shape (2m,) or (2m, k)."""
        m = self.mask.shape[0]
        Sv, Yv = proj[:m], proj[m:]
        out = Yv - self.b0 * Sv if self.primal else Sv - self.b0 * Yv
        return out * (self.mask if out.ndim == 1 else self.mask[:, None])


def _default_rank_tol(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).eps) ** (1.0 / 3.0)


class LSR1Matrix(LimitedMemoryMatrix):
    """The L-SR1 approximation B (and its inverse H) held as m curvature pairs.

    Args:
        memory: m, pairs kept.
        n: problem dimension.
        dtype, device: of the pair buffers.
        form: ``"B"`` applies the skip rule and rank repair of Alg. 1 (trust region: test on
            s^T (y - B s), require Psi full column rank and M^{-1} nonsingular); ``"H"`` those of
            Alg. 2 (line search: test on y^T (s - H y), require N^{-1} nonsingular). Both forms offer
            :meth:`mv` (B v) and :meth:`inv_mv` (H v).
        gamma: how B_0 = gamma I is chosen after each stored pair:

            * ``"scaled"``: gamma = y^T y / s^T y of the newest stored pair when s^T y > 0, else the
              previous gamma (the usual Barzilai-Borwein scaling; gamma stays positive). In the H form
              the scaling of the pair stored *before* the newest is used, because the newest pair's
              own scaling makes its entry of N^{-1} vanish (y^T s - delta y^T y = 0).
            * ``"eigen"``: gamma = ``gamma_fraction`` x lambda_hat, with lambda_hat the smallest
              eigenvalue of the pencil (D + L + L^T, S^T S) over the stored pairs, when it is positive
              (Erway, Griffin, Marcia & Omheni 2020). Then M^{-1} = D + L + L^T - gamma S^T S is
              positive definite, so B is positive definite on range(S) and the OBS subproblem is well
              posed with an interior Newton step possible. Otherwise the previous gamma is kept.
            * a float > 0: a constant gamma.
        gamma_init: gamma before any pair is stored (and the constant when ``gamma`` is a float).
        gamma_fraction: the safety fraction of ``"eigen"``, in (0, 1).
        skip_tol: r of the SR1 skip rule |s^T (y - B s)| >= r ||s|| ||y - B s||, in (0, 1).
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
        self.gamma_next = self.gamma.clone()  # H form with gamma="scaled": the lagged scaling

    # ------------------------------------------------------------- factors
    def _invalidate(self) -> None:
        self._factors.clear()

    def _middle_inverse(self, primal: bool, mask: Tensor, b0: Tensor) -> tuple[Tensor, Tensor]:
        """(gram, middle^{-1}) for the given active masks (batched over leading dims of ``mask``)."""
        mem = self.memory
        SY = mem.SY if primal else mem.SY.t()  # UV[i, j] = u_i^T v_j
        UU, VV = (mem.SS, mem.YY) if primal else (mem.YY, mem.SS)
        order = mem.serial[:, None] > mem.serial[None, :]
        Lt = SY * order
        inv = torch.diag_embed(torch.diagonal(SY)) + Lt + Lt.t() - b0 * UU
        gram = VV - b0 * (SY + SY.t()) + b0 * b0 * UU
        mm = mask[..., :, None] & mask[..., None, :]
        zero = torch.zeros((), dtype=inv.dtype, device=inv.device)
        return torch.where(mm, gram, zero), torch.where(mm, inv, zero)

    def factors(self, primal: bool = True) -> CompactFactors:
        """B = gamma I + Psi M Psi^T (``primal``) or H = delta I + Phi N Phi^T."""
        if primal not in self._factors:
            mask = self.memory.active
            b0 = self.gamma if primal else 1.0 / self.gamma
            gram, inv = self._middle_inverse(primal, mask, b0)
            middle, _ = torch.linalg.inv_ex(inv + torch.diag_embed((~mask).to(inv.dtype)))
            mm = mask[:, None] & mask[None, :]
            middle = torch.where(mm, middle, torch.zeros((), dtype=middle.dtype, device=middle.device))
            self._factors[primal] = CompactFactors(b0, mask.clone(), gram, middle, primal)
        return self._factors[primal]

    # ------------------------------------------------------------ products
    def _coefficients(self, v: Tensor, primal: bool) -> tuple[Tensor, Tensor, Tensor]:
        f = self.factors(primal)
        proj = self.memory.project(v)
        return proj, f.b0, f.coeffs(f.middle @ f.psi_t(proj))

    def inv_mv_coefficients(self, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self._coefficients(v, False)

    def mv(self, v: Tensor) -> Tensor:
        """B v for v of shape (n,) or (n, k). (H v, = B^{-1} v when B is nonsingular: ``inv_mv``.)"""
        _, b0, c = self._coefficients(v, True)
        return self.memory.combine(c, v=b0 * v)

    # ------------------------------------------------------------- updates
    def update(
        self, s: Tensor, y: Tensor, *, residual: Tensor | None = None, products: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Offer the pair (s, y); store it if it passes the SR1 skip rule, then repair the rank.

        Args:
            s, y: the pair, shape (n,).
            residual: y - B s (B form) or s - H y (H form) if the caller knows it (e.g. from the
                trust-region optimality condition B s = -g - sigma s); computed with one pass otherwise.
            products: [S Y]^T [s y] (2m, 2) if the caller knows it (saves two passes over the buffer).

        Returns:
            (stored, dropped): 0-dim bool, whether the pair was stored; 0-dim int64, how many older
            pairs rank repair removed (Alg. 1 lines 31-39 / Alg. 2 lines 24-32).
        """
        primal = self.form == "B"
        mem = self.memory
        P = mem.pair_products(s, y) if products is None else products
        f = self.factors(primal)
        u = s if primal else y  # the test is |u^T r| >= skip_tol ||u|| ||r||
        if residual is None:
            # r = v - b0 u - Psi M Psi^T u, with Psi^T u read from the pair products.
            v = y if primal else s
            psi_u = f.psi_t(P[:, 0] if primal else P[:, 1])
            residual = mem.combine(f.coeffs(-(f.middle @ psi_u)), v=v - f.b0 * u)
        ss, sy, yy = s @ s, s @ y, y @ y
        num = (u @ residual).abs()
        unorm = (ss if primal else yy).clamp_min(0).sqrt()
        rnorm = torch.linalg.vector_norm(residual)
        # num must also be a comfortably normal number: M^{-1} holds it, and M holds its inverse
        tiny = torch.finfo(num.dtype).tiny / torch.finfo(num.dtype).eps
        stored = (num > tiny) & (num >= self.skip_tol * unorm * rnorm) & num.isfinite() & rnorm.isfinite()
        # s^T s and y^T y are finite exactly when s and y are (barring overflow, also refused).
        stored &= (ss + yy).isfinite()
        # The masked writes select, never compute with, a refused pair, so it cannot poison the buffer.
        mem.push(s, y, stored, products=P, dots=(ss, sy, yy))
        after_push = mem.count()
        self._update_gamma(stored, sy, yy)
        self._repair(primal)
        self._factors.clear()
        return stored, after_push - mem.count()

    def _update_gamma(self, stored: Tensor, sy: Tensor, yy: Tensor) -> None:
        if not isinstance(self.gamma_choice, str):
            return
        if self.gamma_choice == "scaled":
            cand = torch.where(sy > 0, yy / sy.clamp_min(torch.finfo(sy.dtype).tiny), self.gamma)
            if self.form == "B":
                new = cand
            else:
                # H form: delta = s^T y / y^T y of the newest pair makes that pair's own entry of
                # N^{-1} = D + L' + L'^T - delta Y^T Y exactly zero (y^T s - delta y^T y = 0), so a lone
                # new pair could never be kept. Use the scaling of the previously stored pair instead.
                new = self.gamma_next.clone()
                ok_cand = stored & (cand > 0) & cand.isfinite()
                self.gamma_next.copy_(torch.where(ok_cand, cand, self.gamma_next))
        else:
            new = self.gamma_fraction * self._pencil_min()
        ok = stored & (new > 0) & new.isfinite()
        self.gamma.copy_(torch.where(ok, new, self.gamma))

    def state_dict(self) -> dict:
        return {**super().state_dict(), "gamma_next": self.gamma_next}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.gamma_next.copy_(state["gamma_next"].to(self.gamma_next))

    def _pencil_min(self) -> Tensor:
        """lambda_hat: smallest eigenvalue of (D + L + L^T) u = lambda S^T S u on the active pairs.

        S^T S is factored by eigh and restricted to its numerically nonzero spectrum, so collinear
        steps do not break it (directions outside are given +inf-like eigenvalues).
        """
        mem = self.memory
        mask = mem.active
        mm = mask[:, None] & mask[None, :]
        zero = torch.zeros((), dtype=mem.SS.dtype, device=mem.SS.device)
        SS = torch.where(mm, mem.SS, zero)
        Lt = mem.SY * (mem.serial[:, None] > mem.serial[None, :])
        A = torch.where(mm, torch.diag_embed(torch.diagonal(mem.SY)) + Lt + Lt.t(), zero)
        E, V = torch.linalg.eigh(SS)
        keep = E > (self.rank_tol**2) * E.amax().clamp_min(torch.finfo(E.dtype).tiny)
        W = V * torch.where(keep, E.clamp_min(torch.finfo(E.dtype).tiny).rsqrt(), zero)
        C = W.t() @ A @ W
        big = C.abs().amax() * 4 + 1
        C = C + torch.diag_embed(torch.where(keep, zero, big))
        return torch.linalg.eigvalsh(C)[0]

    def _repair(self, primal: bool) -> None:
        """Drop the oldest pairs until the compact form is well defined (Alg. 1 l. 31-39, Alg. 2 l. 24-32).

        All m + 1 candidates (drop 0, 1, ..., m oldest) are checked in one batched eigvalsh.
        """
        mem = self.memory
        cands = mem.drop_oldest_candidates()  # (m + 1, m)
        b0 = self.gamma if primal else 1.0 / self.gamma
        gram, inv = self._middle_inverse(primal, cands, b0)
        count = cands.sum(1)
        tol = self.rank_tol
        # Thresholds scale with the terms that form Psi = V - b0 U and M^{-1} = D + L + L^T - b0 U^T U
        # ((U, V) = (S, Y), or (Y, S) for the H form), not with their own largest eigenvalue: that cannot
        # see cancellation (a 1 x 1 M^{-1} that is zero up to rounding would always pass).
        UU, VV = (mem.SS, mem.YY) if primal else (mem.YY, mem.SS)
        zero = torch.zeros((), dtype=inv.dtype, device=inv.device)
        u_norm = torch.where(cands, torch.diagonal(UU), zero).sum(1).clamp_min(0).sqrt()  # ||U||_F
        size = torch.where(cands, torch.diagonal(VV), zero).sum(1).clamp_min(0).sqrt() + b0.abs() * u_norm
        if primal:  # one batched call for both (on CUDA each call reads its status back to the host)
            lam_m, lam_g = torch.linalg.eigvalsh(torch.cat((inv, gram))).split(inv.shape[0])
        else:
            lam_m = torch.linalg.eigvalsh(inv)
        ok = (lam_m.abs() > tol * (u_norm * size)[:, None]).sum(1) == count
        if primal:
            ok &= (lam_g > tol * tol * (size * size)[:, None]).sum(1) == count
        first = torch.argmax(ok.to(torch.int8))  # the last candidate (no pairs) always passes
        mem.keep(select_row(cands, first))


__all__ = ["CompactFactors", "LSR1Matrix"]

"""Adapters that present each curvature representation to a stepper (:mod:`~lightning_sqn.optim.steppers`).

A stepper drives a model through one protocol, in this order within a step:

1. it evaluates g(x_k) into :attr:`g`; ``gather(f)`` returns one device tensor with f and what the
   step's single first read needs (for a limited-memory model: [S Y]^T [g y] from one pass over the
   pair buffer and the inner products of g and the staged y, s, r; [S Y]^T s follows on the host from
   the coefficients s was formed with, s = c_g g_prev + [S Y] c, as c_g [S Y]^T g_prev + G c with G
   the Gram matrix [S Y]^T [S Y]);
2. ``peek_gg(values)`` gives g^T g for the finiteness check, then ``absorb(values)`` takes the
   numbers on the host: the pair staged by the previous step is offered to the matrix there (skip
   rule, Gram update, rank repair, gamma: all float64 host algebra) and [S Y]^T g is kept for the
   solve;
3. ``solve(radius)`` (trust region) writes the step into :attr:`s` with one pass and returns the
   subproblem's host record, or ``direction()`` (line search) writes d = -H g into :attr:`s` with
   one pass and returns g^T d and ||d|| computed on the host;
4. after the trial, ``stage_*`` forms the pair (s, y) (and for the trust region the residual
   r = y - B s = g(x + s) + sigma s) in n-vector rows; it is offered at the start of the next step,
   where its products with the stored pairs come out of that step's one pass.

Only composition lives here: the algebra is in :mod:`~lightning_sqn.qn` and :mod:`~lightning_sqn.subproblem`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from lightning_sqn._device import to_host
from lightning_sqn.qn.base import LimitedMemoryMatrix
from lightning_sqn.qn.lsr1 import LSR1Matrix
from lightning_sqn.subproblem.obs import NEWTON_ITERS, solve_obs_projected
from lightning_sqn.subproblem.result import HostTrustRegionStep

ROW_G, ROW_Y, ROW_S, ROW_R = 0, 1, 2, 3  # rows of the work buffer: g first (see PairMemory.combine_work)


class StagingModel:
    """What every model shares: the work rows (g, s, y[, r]), the staged pair and its state.

    Subclasses set ``work`` (a ``(k, n)`` tensor) and call :meth:`_init_rows`.
    """

    work: Tensor
    needs_graph = False  #: quasi-Newton models need no Hessian-vector products
    needs_trial_gradient = True  #: y = g(x_k + s) - g(x_k) needs the gradient at the trial point

    def _init_rows(self) -> None:
        self._rows = self.work.unbind(0)  # views made once: no view operation per step
        self.staged = False  #: a pair (s, y) waits in the work rows to be offered
        self._gg = 0.0

    def __getstate__(self) -> dict:
        # views are rebuilt on unpickling (pickle would turn them into copies)
        return {k: v for k, v in self.__dict__.items() if k not in ("_rows", "_restage", "work")} | {
            "_own_work": None if self._shares_work() else self.work
        }

    def __setstate__(self, state: dict) -> None:
        own = state.pop("_own_work")
        self.__dict__.update(state)
        self.work = self.matrix.memory.work if own is None else own
        self._rows = self.work.unbind(0)
        self._restage = None

    def _shares_work(self) -> bool:
        """Whether the work rows are the pair memory's (limited memory) rather than the model's own."""
        return False

    @property
    def g(self) -> Tensor:
        return self._rows[ROW_G]

    @property
    def s(self) -> Tensor:
        return self._rows[ROW_S]

    def gamma(self) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def conclude(self, accepted: bool) -> None:
        """The trust-region step's decision: nothing to do (the pair is staged either way)."""

    def gradient_direction(self) -> tuple[float, float]:
        """d = -g / gamma into :attr:`s` (the fallback when -H g is not a descent direction)."""
        gamma = self.gamma()
        torch.mul(self.g, -1.0 / gamma, out=self.s)
        return -self._gg / gamma, math.sqrt(self._gg) / gamma

    def stage_line_search(self, g_trial: Tensor, alpha: float) -> None:
        """s = alpha d (d is in the s row), y = g(x + s) - g(x)."""
        self._rows[ROW_S].mul_(alpha)
        torch.sub(g_trial, self._rows[ROW_G], out=self._rows[ROW_Y])
        self.staged = True

    def _staged_state(self) -> dict:
        """The staged pair: every row after g (which is scratch)."""
        rows = self.work[ROW_G + 1 :]
        # without a staged pair the rows are scratch: saved as zeros, so equal states compare equal
        return {"staged": self.staged, "staged_rows": rows if self.staged else torch.zeros_like(rows)}

    def _check_staged_state(self, state: dict) -> None:
        rows = state.get("staged_rows") if isinstance(state, dict) else None
        if (
            "staged" not in state
            or not isinstance(rows, Tensor)
            or rows.shape != self.work[ROW_G + 1 :].shape
        ):
            raise ValueError(
                "the staged-pair rows in this state do not fit this optimizer (expected 'staged_rows' of "
                f"shape {tuple(self.work[ROW_G + 1 :].shape)})"
            )

    def _load_staged_state(self, state: dict) -> None:
        self.work[ROW_G + 1 :].copy_(state["staged_rows"].to(self.work))
        self.staged = bool(state["staged"])

    def commit(self) -> None:
        self.matrix.commit()


class LimitedMemoryModel(StagingModel):
    """An :class:`LSR1Matrix` or :class:`LBFGSMatrix` as trust-region or line-search model.

    The matrix must be built with ``work_rows=4`` (trust region: g, y, s and the residual
    r = y - B s, which the SR1 skip rule then uses exactly) or 3 (line search: g, y, s; the residual's
    inner products are formed on the host).

    Args:
        matrix: the limited-memory matrix.
        newton_iters: cap on the OBS secular Newton iteration.
    """

    def __init__(self, matrix: LimitedMemoryMatrix, newton_iters: int = NEWTON_ITERS) -> None:
        self.matrix = matrix
        self.newton_iters = newton_iters
        mem = matrix.memory
        k = mem.work.shape[0]
        if k not in (3, 4):
            raise ValueError(
                "the matrix must be built with work_rows=4 (trust region: g, y, s, r) or 3 (line search: "
                f"g, y, s), got {k}"
            )
        self.work = mem.work
        self._init_rows()
        self._proj_g: np.ndarray | None = None
        #: inner products read at the start of a step: g^T g, g^T s, g^T y, s^T s, s^T y, y^T y
        #: (and s^T r, r^T r for the trust region)
        self._dots = (
            (ROW_G, ROW_G),
            (ROW_G, ROW_S),
            (ROW_G, ROW_Y),
            (ROW_S, ROW_S),
            (ROW_S, ROW_Y),
            (ROW_Y, ROW_Y),
        )
        if k > ROW_R:
            self._dots += ((ROW_S, ROW_R), (ROW_R, ROW_R))
        #: s (or d) = coef_g g + [S Y] coef, with [S Y]^T g at the time: (coef_g, coef, [S Y]^T g)
        self._step_coef: tuple[float, np.ndarray, np.ndarray] | None = None
        self._restage: Tensor | None = None

    def _shares_work(self) -> bool:
        return True

    # ------------------------------------------------------------------ phase 1
    def gather(self, f: Tensor) -> Tensor:
        """f, [S Y]^T [g y] (one pass over the pairs) and the inner products of g, y, s (and r), as one
        flat device tensor."""
        return self.matrix.memory.step_products(f)

    def peek_gg(self, values: np.ndarray) -> float:
        P, D = self.matrix.memory.sum_step_products(values[1:])
        self._sums = (P, D)
        return float(D[ROW_G, ROW_G])

    def absorb(self, values: np.ndarray) -> tuple[bool | None, int]:
        """Take the numbers of :meth:`gather` (flat, float64, after :meth:`peek_gg`); offer the staged pair.

        Returns (stored, dropped): whether the previous step's pair was stored (None if none was
        staged) and how many older pairs rank repair removed.
        """
        mem = self.matrix.memory
        P, D = self._sums
        dot = {ij: float(D[ij]) for ij in self._dots}
        proj_g = P[:, 0].copy()
        self._gg = dot[ROW_G, ROW_G]
        stored: bool | None = None
        dropped = 0
        if self.staged:
            self.staged = False
            assert self._step_coef is not None
            coef_g, coef, proj_prev = self._step_coef
            Ps = self.matrix.combination_products(coef_g, coef, proj_prev)  # s = coef_g g_prev + [S Y] coef
            slot = mem.next_slot()
            residual = (dot[ROW_S, ROW_R], dot[ROW_R, ROW_R]) if (ROW_R, ROW_R) in dot else None
            stored, dropped = self.matrix.offer(
                self._rows[ROW_S],
                self._rows[ROW_Y],
                Ps,
                P[:, 1],
                (dot[ROW_S, ROW_S], dot[ROW_S, ROW_Y], dot[ROW_Y, ROW_Y]),
                residual=residual,
            )
            if stored:  # the new pair's products with g (its slot held the evicted pair's)
                proj_g[slot], proj_g[mem.m + slot] = dot[ROW_G, ROW_S], dot[ROW_G, ROW_Y]
            # This step overwrites the s row; a rollback re-stages the pair from its memory slot or,
            # for a refused pair (rare), from a copy.
            self._restage = mem.slot_s(slot) if stored else self.s.clone()
        self._proj_g = proj_g
        return stored, dropped

    def _projection(self) -> np.ndarray:
        """[S Y]^T g for the current memory (re-read after the memory was replaced, e.g. sampled pairs)."""
        if self._proj_g is None:
            mem = self.matrix.memory
            if mem.count() == 0:
                self._proj_g = np.zeros(2 * mem.m)
            else:
                self._proj_g = to_host(mem.project(self.g))
        return self._proj_g

    def _form_step(self, coef_g: float, coef: np.ndarray) -> None:
        """s = coef_g g + [S Y] coef into the s row (one pass), remembering the coefficients."""
        self._step_coef = (coef_g, coef, self._projection())
        self.matrix.memory.combine_work(coef, coef_g, ROW_S)

    # ------------------------------------------------------------------ phase 2
    def solve(self, radius: float) -> HostTrustRegionStep:
        """OBS on the host; the step s = c_g g + [S Y] c into :attr:`s` (one pass)."""
        matrix = self.matrix
        if not isinstance(matrix, LSR1Matrix):
            raise TypeError("the trust-region subproblem is solved by OBS, which needs an LSR1Matrix")
        sol = solve_obs_projected(
            matrix, self._projection(), self._gg, radius, newton_iters=self.newton_iters
        )
        self._form_step(sol.coef_g, sol.coef)
        return HostTrustRegionStep(
            sigma=sol.sigma,
            predicted_reduction=sol.predicted_reduction,
            step_norm=sol.step_norm,
            status=sol.status,
            eigenvalues=sol.eigenvalues,
        )

    def direction(self) -> tuple[float, float]:
        """d = -H g into :attr:`s` (one pass); returns (g^T d, ||d||) formed on the host."""
        proj = self._projection()
        b0, c = self.matrix.inv_mv_coefficients(proj)
        self._form_step(-b0, -c)
        return self.matrix.direction_dots(b0, c, proj, self._gg)

    def gradient_direction(self) -> tuple[float, float]:
        self._step_coef = (-1.0 / self.gamma(), np.zeros(2 * self.matrix.m), self._projection())
        return super().gradient_direction()

    # ------------------------------------------------------------------ phase 3
    def stage_trust_region(self, g_trial: Tensor, sigma: float) -> None:
        """y = g(x + s) - g(x) (Alg. 1 line 12) and r = y - B s = g(x + s) + sigma s, since
        (B + sigma I) s = -g at the subproblem solution."""
        W = self._rows
        torch.sub(g_trial, W[ROW_G], out=W[ROW_Y])
        torch.add(g_trial, W[ROW_S], alpha=sigma, out=W[ROW_R])
        self.staged = True

    def stage_line_search(self, g_trial: Tensor, alpha: float) -> None:
        assert self._step_coef is not None
        coef_g, coef, proj = self._step_coef
        self._step_coef = (alpha * coef_g, alpha * coef, proj)
        super().stage_line_search(g_trial, alpha)

    # ------------------------------------------------------------------ transactions
    def begin(self) -> tuple:
        self._restage = None
        return self.matrix.begin(), self.staged, self._step_coef, self._proj_g, self._gg

    def rollback(self, token: tuple) -> None:
        matrix, self.staged, self._step_coef, self._proj_g, self._gg = token
        if self._restage is not None:  # before the memory's journal restores the slot
            self.s.copy_(self._restage)
            self._restage = None
        self.matrix.rollback(matrix)

    # ------------------------------------------------------------------ memory
    def load_pairs(self, S: Tensor, Y: Tensor) -> int:
        """Forget the memory, then offer the pairs (rows of S, Y) in order; return how many were kept.

        Each pair meets the matrix's own test (SR1 skip rule with rank repair, or the BFGS curvature
        condition) against the pairs kept before it, as in a sequence of classical updates.
        """
        self.reset()
        for s, y in zip(S, Y, strict=True):
            self.matrix.update(s, y)
        return self.pairs()

    def pairs(self) -> int:
        return self.matrix.memory.count()

    def gamma(self) -> float:
        return self.matrix.gamma

    def reset(self) -> None:
        """Forget all pairs, the staged one included."""
        self.matrix.reset()
        self.staged = False
        self._proj_g = None

    def state_dict(self) -> dict:
        out = {**self.matrix.state_dict(), **self._staged_state()}
        if self.staged and self._step_coef is not None:
            coef_g, coef, proj = self._step_coef
            out["staged_coef"] = torch.from_numpy(np.concatenate(([coef_g], coef, proj)))
        return out

    def check_state(self, state: dict) -> None:
        self.matrix.check_state(state)
        self._check_staged_state(state)
        coef = state.get("staged_coef")
        if state["staged"] and (not isinstance(coef, Tensor) or coef.shape != (1 + 4 * self.matrix.m,)):
            raise ValueError("a state with a staged pair needs its coefficients ('staged_coef')")

    def load_state_dict(self, state: dict) -> None:
        self.check_state(state)
        self.matrix.load_state_dict(state)
        self._load_staged_state(state)
        self._proj_g = None
        self._step_coef = None
        if self.staged:
            v = state["staged_coef"].numpy(force=True).astype(np.float64)
            m2 = 2 * self.matrix.m
            self._step_coef = (float(v[0]), v[1 : 1 + m2].copy(), v[1 + m2 :].copy())


__all__ = ["LimitedMemoryModel"]

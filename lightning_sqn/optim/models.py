"""The limited-memory curvature model of the steppers (:mod:`~lightning_sqn.optim.steppers`).

A stepper drives a model through one protocol, in this order within a step:

1. it evaluates g(x_k) into :attr:`LimitedMemoryModel.g` (the pair memory's g row); ``gather(f)``
   returns one device tensor with f and the products of pass 1 over the pair buffer,
   [y g]^T [S Y g], with y the staged pair's (see :class:`~lightning_sqn.qn.memory.PairMemory`);
2. ``peek_gg(values)`` gives g^T g for the finiteness check, then ``absorb(values)`` takes the
   numbers on the host: the pair staged by the previous step is offered to the matrix there (skip
   rule, Gram update, rank repair, gamma: all float64 host algebra) and [S Y]^T g is kept for the
   solve. [S Y]^T s of the staged pair follows from the coefficients s was formed with,
   s = c_g g_prev + [S Y] c, as c_g [S Y]^T g_prev + G c with G the Gram matrix [S Y]^T [S Y] of the
   memory s was formed with (the offer comes before any change to it); s^T s and the trust region's
   residual products come from the small product [d g(x+s)]^T [d g(x+s)] staged with the pair;
3. ``solve(radius)`` (trust region) writes the step into :attr:`LimitedMemoryModel.s` with pass 2 and
   returns the subproblem's host record, or ``direction()`` (line search) writes d = -H g there with
   pass 2 and returns g^T d and ||d|| computed on the host;
4. after the trial, ``stage_*`` writes the pair (s, y) into the memory's spare slot (the last device
   write of a step); it is offered at the start of the next step.

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


def gradient_direction(g: Tensor, out: Tensor, gg: float, gamma: float) -> tuple[float, float]:
    """d = -g / gamma into ``out`` (the models' fallback when -H g is not a descent direction); returns
    (g^T d, ||d||) from g^T g = ``gg`` on the host."""
    torch.mul(g, -1.0 / gamma, out=out)
    return -gg / gamma, math.sqrt(gg) / gamma


class LimitedMemoryModel:
    """An :class:`LSR1Matrix` or :class:`LBFGSMatrix` as trust-region or line-search model.

    Args:
        matrix: the limited-memory matrix.
        newton_iters: cap on the OBS secular Newton iteration.
    """

    needs_graph = False  #: quasi-Newton models need no Hessian-vector products
    needs_trial_gradient = True  #: y = g(x_k + s) - g(x_k) needs the gradient at the trial point

    def __init__(self, matrix: LimitedMemoryMatrix, newton_iters: int = NEWTON_ITERS) -> None:
        self.matrix = matrix
        self.newton_iters = newton_iters
        self.staged = False  #: a pair (s, y) waits in the memory's spare slot to be offered
        self._gg = 0.0
        self._proj_g: np.ndarray | None = None
        #: s (or d) = coef_g g + [S Y] coef, with [S Y]^T g at the time: (coef_g, coef, [S Y]^T g)
        self._step_coef: tuple[float, np.ndarray, np.ndarray] | None = None
        self._sums: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        #: how the staged pair was formed from the d row: (alpha, sigma) with s = alpha d, and sigma of
        #: the trust-region solution (NaN for a line search), for s^T s and the SR1 residual's products
        self._staged_scale = (1.0, math.nan)

    @property
    def g(self) -> Tensor:
        """Where the stepper evaluates g(x_k): the memory's g row."""
        return self.matrix.memory.g

    @property
    def s(self) -> Tensor:
        """The step (trust region) or direction (line search): the memory's d row."""
        return self.matrix.memory.d

    @property
    def g_trial(self) -> Tensor:
        """Where the stepper evaluates the gradient at a trial point: the memory's g_trial row."""
        return self.matrix.memory.g_trial

    # ------------------------------------------------------------------ phase 1
    def gather(self, f: Tensor) -> Tensor:
        """f and [y g]^T [S Y g] (pass 1) as one flat device tensor."""
        return self.matrix.memory.step_products(f)

    def peek_gg(self, values: np.ndarray) -> float:
        self._sums = self.matrix.memory.sum_step_products(values[1:])
        return float(self._sums[1][-1])

    def absorb(self, values: np.ndarray) -> tuple[bool | None, int]:
        """Take the numbers of :meth:`gather` (flat, float64, after :meth:`peek_gg`); offer the staged pair.

        Returns (stored, dropped): whether the previous step's pair was stored (None if none was
        staged) and how many older pairs rank repair removed.
        """
        del values  # summed by peek_gg
        assert self._sums is not None
        mem = self.matrix.memory
        S, q = mem.slots, mem.spare
        Py_all, Pg_all, W = self._sums
        self._gg = float(Pg_all[-1])
        stored: bool | None = None
        dropped = 0
        if self.staged:
            self.staged = False
            assert self._step_coef is not None
            coef_g, coef, proj_prev = self._step_coef
            Ps = self.matrix.combination_products(coef_g, coef, proj_prev)
            alpha, sigma = self._staged_scale
            dd, dgt, gtgt = (float(w) for w in W)
            dots = (alpha * alpha * dd, float(Py_all[q]), float(Py_all[S + q]))
            residual = None  # line search: the H-form residual's products are formed on the host
            if not math.isnan(sigma):
                # r = y - B s = g(x + s) + sigma s at the trust-region solution ((B + sigma I) s = -g)
                residual = (dgt + sigma * dd, gtgt + 2.0 * sigma * dgt + sigma * sigma * dd)
            stored, dropped = self.matrix.offer(
                mem.mask(Ps), mem.mask(Py_all[: 2 * S]), dots, residual=residual
            )
        # pass 1 ran over every slot, the staged pair's included: masking keeps the active ones
        self._proj_g = mem.mask(Pg_all[: 2 * S])
        return stored, dropped

    def _projection(self) -> np.ndarray:
        """[S Y]^T g for the current memory (re-read after the memory was replaced, e.g. sampled pairs)."""
        if self._proj_g is None:
            mem = self.matrix.memory
            if mem.count() == 0:
                self._proj_g = np.zeros(2 * mem.slots)
            else:
                self._proj_g = mem.mask(to_host(mem.project(self.g)))
        return self._proj_g

    def _form_step(self, coef_g: float, coef: np.ndarray) -> None:
        """d = coef_g g + [S Y] coef into the d row (pass 2), remembering the coefficients."""
        self._step_coef = (coef_g, coef, self._projection())
        self.matrix.memory.combine_step(coef, coef_g)

    # ------------------------------------------------------------------ phase 2
    def solve(self, radius: float) -> HostTrustRegionStep:
        """OBS on the host; the step s = c_g g + [S Y] c into :attr:`s` (pass 2)."""
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
        """d = -H g into :attr:`s` (pass 2); returns (g^T d, ||d||) formed on the host."""
        proj = self._projection()
        b0, c = self.matrix.inv_mv_coefficients(proj)
        self._form_step(-b0, -c)
        return self.matrix.direction_dots(b0, c, proj, self._gg)

    def gradient_direction(self) -> tuple[float, float]:
        """d = -g / gamma into :attr:`s` (the fallback when -H g is not a descent direction)."""
        gamma = self.gamma()
        self._step_coef = (-1.0 / gamma, np.zeros(2 * self.matrix.memory.slots), self._projection())
        return gradient_direction(self.g, self.s, self._gg, gamma)

    # ------------------------------------------------------------------ phase 3
    def stage_trust_region(self, g_trial: Tensor, sigma: float) -> None:
        """The pair (s, y) with y = g(x + s) - g(x) (Alg. 1 line 12) into the spare slot, and the
        products of s and g(x + s) that give s^T s and the SR1 residual r = y - B s = g(x + s) + sigma s
        (since (B + sigma I) s = -g at the subproblem's solution) at the next offer."""
        mem = self.matrix.memory
        s_row, y_row = mem.spare_rows()
        torch.sub(g_trial, self.g, out=y_row)
        s_row.copy_(self.s)
        mem.stage_products()
        self.staged, self._staged_scale = True, (1.0, float(sigma))

    def stage_line_search(self, g_trial: Tensor, alpha: float) -> None:
        """The pair s = alpha d, y = g(x + s) - g(x) into the spare slot."""
        assert self._step_coef is not None
        coef_g, coef, proj = self._step_coef
        self._step_coef = (alpha * coef_g, alpha * coef, proj)
        mem = self.matrix.memory
        s_row, y_row = mem.spare_rows()
        torch.mul(self.s, alpha, out=s_row)
        torch.sub(g_trial, self.g, out=y_row)
        mem.stage_products()  # s^T s (the residual's products are formed on the host)
        self.staged, self._staged_scale = True, (float(alpha), math.nan)

    def conclude(self, accepted: bool) -> None:
        """The trust-region step's decision: nothing to do (the pair is staged either way)."""

    # ------------------------------------------------------------------ transactions
    def begin(self) -> tuple:
        return self.matrix.begin(), self.staged, self._staged_scale, self._step_coef, self._proj_g, self._gg

    def commit(self) -> None:
        self.matrix.commit()

    def rollback(self, token: tuple) -> None:
        matrix, self.staged, self._staged_scale, self._step_coef, self._proj_g, self._gg = token
        self.matrix.rollback(matrix)

    # ------------------------------------------------------------------ memory
    def load_pairs(self, S: Tensor, Y: Tensor) -> int:
        """Forget the memory, then offer the pairs (rows of S, Y) in order; return how many were kept.

        Each pair meets the matrix's own test (SR1 skip rule with rank repair, or the BFGS curvature
        condition) against the pairs kept before it, as in a sequence of classical updates.
        """
        self.reset()
        return self.matrix.load(S, Y)

    def pairs(self) -> int:
        return self.matrix.memory.count()

    def gamma(self) -> float:
        return self.matrix.gamma

    def reset(self) -> None:
        """Forget all pairs, the staged one included."""
        self.matrix.reset()
        self.staged = False
        self._proj_g = None

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        out = {**self.matrix.state_dict(), "staged": self.staged}
        if self.staged and self._step_coef is not None:
            coef_g, coef, proj = self._step_coef
            W = self.matrix.memory.staged_products()
            values = np.concatenate(([coef_g], coef, proj, W, self._staged_scale))
            out["staged_coef"] = torch.from_numpy(values)
        return out

    def _coef_size(self) -> int:
        return 6 + 4 * self.matrix.memory.slots

    def check_state(self, state: dict) -> None:
        self.matrix.check_state(state)
        if "staged" not in state:
            raise ValueError("the limited-memory state has no 'staged' flag")
        coef = state.get("staged_coef")
        if state["staged"] and (not isinstance(coef, Tensor) or coef.shape != (self._coef_size(),)):
            raise ValueError(
                f"a state with a staged pair needs its coefficients ('staged_coef' of {self._coef_size()} "
                "numbers)"
            )

    def load_state_dict(self, state: dict) -> None:
        self.check_state(state)
        self.matrix.load_state_dict(state)
        self.staged = bool(state["staged"])
        self._proj_g = None
        self._step_coef = None
        if self.staged:
            v = state["staged_coef"].numpy(force=True).astype(np.float64)
            m2 = 2 * self.matrix.memory.slots
            self._step_coef = (float(v[0]), v[1 : 1 + m2].copy(), v[1 + m2 : 1 + 2 * m2].copy())
            self.matrix.memory.load_staged_products(v[1 + 2 * m2 : 4 + 2 * m2])
            self._staged_scale = (float(v[-2]), float(v[-1]))


__all__ = ["LimitedMemoryModel", "gradient_direction"]

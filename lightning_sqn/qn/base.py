"""What the limited-memory matrices share: the pair memory, gamma, products, dense views and state.

A product with B (or H) costs one pass over the (2m, n) pair buffer for the projection [S Y]^T v, one
read of those 2m numbers, the m x m algebra on the host in float64, and one pass for the combination
b0 v + [S Y] c. Optimizers never call :meth:`LimitedMemoryMatrix.mv` in their steps: their steppers
fold the projection into the step's single read (see :mod:`~lightning_sqn.optim.models`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lightning_sqn import _checks as checks
from lightning_sqn._device import to_host
from lightning_sqn._state import as_number, require_keys
from lightning_sqn.qn.memory import PairMemory


def check_gamma(gamma: object, choices: tuple[str, ...]) -> None:
    """ValueError unless ``gamma`` is one of the named choices or a finite float > 0."""
    if isinstance(gamma, str):
        if gamma not in choices:
            raise ValueError(f"gamma must be one of {choices} or a positive float, got {gamma!r}")
    elif not (
        isinstance(gamma, int | float) and not isinstance(gamma, bool) and math.isfinite(gamma) and gamma > 0
    ):
        raise ValueError(f"a constant gamma must be a finite float > 0 (B_0 = gamma I), got {gamma!r}")


class LimitedMemoryMatrix:
    """Base of :class:`~lightning_sqn.qn.lsr1.LSR1Matrix` and :class:`~lightning_sqn.qn.lbfgs.LBFGSMatrix`.

    Holds the :class:`~lightning_sqn.qn.memory.PairMemory` and gamma (B_0 = gamma I, H_0 = I / gamma)
    as a host float. Subclasses implement :meth:`mv_coefficients`, :meth:`inv_mv_coefficients` and
    :meth:`offer`.
    """

    def __init__(
        self,
        memory: int,
        n: int,
        *,
        dtype: torch.dtype,
        device: torch.device | str,
        gamma_init: float,
    ) -> None:
        gamma_init = checks.positive("gamma_init", gamma_init)
        self.memory = PairMemory(memory, n, dtype=dtype, device=device)
        self.gamma = float(gamma_init)

    @classmethod
    def for_params(cls, memory: int, flat: Any, **options: Any) -> Any:
        """The matrix over an optimizer's flat parameters (their length, state dtype and device)."""
        return cls(memory, flat.numel, dtype=flat.dtype, device=flat.device, **options)

    @property
    def m(self) -> int:
        return self.memory.m

    # ------------------------------------------------------------ host algebra
    def mv_coefficients(self, proj: np.ndarray) -> tuple[float, np.ndarray]:  # pragma: no cover - abstract
        """(b0, c) with B v = b0 v + [S Y] c, from proj = [S Y]^T v over the memory's slots ((2(m + 1),) or
        (2(m + 1), k), float64, zero on inactive slots); c is zero on inactive slots."""
        raise NotImplementedError

    def inv_mv_coefficients(self, proj: np.ndarray) -> tuple[float, np.ndarray]:  # pragma: no cover
        """(b0, c) with H v = b0 v + [S Y] c, from proj = [S Y]^T v (as in :meth:`mv_coefficients`)."""
        raise NotImplementedError

    def offer(
        self, Ps: np.ndarray, Py: np.ndarray, dots: tuple[float, float, float], **kw
    ) -> tuple[bool, int]:  # pragma: no cover - abstract
        """Store the pair in the memory's spare slot if it passes the matrix's test; return (stored,
        pairs dropped by rank repair)."""
        raise NotImplementedError

    def finite_pair(self, Ps: np.ndarray, Py: np.ndarray, dots: tuple[float, float, float]) -> bool:
        """Whether the pair in the spare slot has finite products; if not, its rows are cleared (a
        non-finite pair is never stored, and its zero coefficient would not keep NaN out of a pass)."""
        if all(map(math.isfinite, dots)) and np.isfinite(Ps).all() and np.isfinite(Py).all():
            return True
        self.memory.clear_spare()
        return False

    def load(self, S: Tensor, Y: Tensor) -> int:
        """Forget the memory, then offer the pairs (rows of S, Y) in order; return how many are kept.

        Each pair meets the matrix's own test against the pairs kept before it, as in a sequence of
        :meth:`update` calls, but the device work is batched: the k <= m pairs are written into slots
        at once, one pass gives all their inner products (the Gram matrix), and every decision is host
        algebra on it, with one combination pass (and one read) per pair only where the test needs an
        explicit residual (:meth:`_residual`). More than m pairs go through :meth:`update` one by
        one (the oldest are dropped anyway).
        """
        mem = self.memory
        self.reset()
        k = S.shape[0]
        if k > mem.m:
            for s, y in zip(S, Y, strict=True):
                self.update(s, y)
            return mem.count()
        mem.write_slots(S, Y)
        G = mem.slot_gram()
        slots = mem.slots
        # A pair with a non-finite product is refused below; its rows are cleared first, since every
        # combination pass reads them (0 x NaN = NaN), and its products are kept out of the Gram matrix.
        for i in range(k):  # a pair's own products are finite iff its vectors are (and bound the rest)
            if not np.isfinite((G[i, i], G[i, slots + i], G[slots + i, slots + i])).all():
                mem.clear_slot(i)
        mem.G[:] = np.where(np.isfinite(G), G, 0.0)
        for i in range(k):
            mem.spare = i  # pair i sits in slot i, inactive: the spare of its offer
            Ps, Py = mem.mask(G[:, i]), mem.mask(G[:, slots + i])
            dots = (float(G[i, i]), float(G[i, slots + i]), float(G[slots + i, slots + i]))
            if not self.finite_pair(Ps, Py, dots):
                continue
            self.offer(Ps, Py, dots, residual=self._residual(i, Ps, Py))
        mem.spare = int((~mem.active).nonzero()[0][0])
        return mem.count()

    def _residual(self, slot: int, Ps: np.ndarray, Py: np.ndarray) -> tuple[float, float] | None:
        """The explicit residual products the test of the pair in ``slot`` needs (None: it needs none)."""
        return None

    def combination_products(self, coef_g: float, coef: np.ndarray, proj: np.ndarray) -> np.ndarray:
        """[S Y]^T v for v = coef_g w + [S Y] coef, from proj = [S Y]^T w and the Gram matrix (no pass
        over the buffer): coef_g [S Y]^T w + ([S Y]^T [S Y]) coef."""
        return coef_g * proj + self.memory.gram() @ coef

    def direction_dots(self, b0: float, c: np.ndarray, proj: np.ndarray, gg: float) -> tuple[float, float]:
        """(g^T d, ||d||) for d = -(b0 g + [S Y] c), from proj = [S Y]^T g and gg = g^T g (no pass)."""
        pc = float(proj @ c)
        dd = b0 * b0 * gg + 2.0 * b0 * pc + float(c @ self.memory.gram() @ c)
        return -(b0 * gg + pc), math.sqrt(max(dd, 0.0))

    def _invalidate(self) -> None:
        """Drop cached factors (subclasses override when they cache)."""

    # ------------------------------------------------------------ device products
    def _apply(self, v: Tensor, inverse: bool) -> Tensor:
        mem = self.memory
        proj = mem.mask(to_host(mem.project(v)).reshape((2 * mem.slots, *v.shape[1:])))
        b0, c = self.inv_mv_coefficients(proj) if inverse else self.mv_coefficients(proj)
        return self.memory.combine(c, v, beta=b0)

    def mv(self, v: Tensor) -> Tensor:
        """B v for v of shape (n,) or (n, k): two passes over the pair buffer and one read."""
        return self._apply(v, inverse=False)

    def inv_mv(self, v: Tensor) -> Tensor:
        """H v for v of shape (n,) or (n, k)."""
        return self._apply(v, inverse=True)

    def to_dense(self) -> Tensor:
        """B as an n x n matrix (tests and tiny problems only)."""
        return self.mv(torch.eye(self.memory.n, dtype=self.memory.dtype, device=self.memory.device))

    def to_dense_inverse(self) -> Tensor:
        """H as an n x n matrix (tests and tiny problems only)."""
        return self.inv_mv(torch.eye(self.memory.n, dtype=self.memory.dtype, device=self.memory.device))

    # ------------------------------------------------------------ updates
    def reset(self) -> None:
        """Forget all pairs (gamma is kept): Alg. 1 with colDim = 0, or L-BFGS forgetting."""
        self.memory.clear()
        self._invalidate()

    def _host_scalars(self) -> dict[str, float]:
        """The host numbers of the state besides the memory (gamma; subclasses add theirs)."""
        return {"gamma": self.gamma}

    def state_dict(self) -> dict:
        return {"memory": self.memory.state_dict(), **self._host_scalars()}

    def check_state(self, state: dict) -> None:
        """ValueError unless ``state`` can be loaded (changes nothing)."""
        require_keys(type(self).__name__, state, ["memory", *self._host_scalars()])
        self.memory.check_state(state["memory"])

    def load_state_dict(self, state: dict) -> None:
        self.check_state(state)
        self.memory.load_state_dict(state["memory"])
        for name in self._host_scalars():
            setattr(self, name, as_number(state[name], float))
        self._invalidate()

    # ------------------------------------------------------------ transactions
    def begin(self) -> tuple:
        """Start a step's transaction (see :meth:`PairMemory.begin`)."""
        return self.memory.begin(), self._host_scalars()

    def commit(self) -> None:
        self.memory.commit()

    def rollback(self, token: tuple) -> None:
        memory, scalars = token
        self.memory.rollback(memory)
        for name, value in scalars.items():
            setattr(self, name, value)
        self._invalidate()

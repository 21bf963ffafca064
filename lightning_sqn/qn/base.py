"""What the limited-memory matrices share: the pair memory, gamma, dense views and state."""

from __future__ import annotations

import math

import torch
from torch import Tensor

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
    as a 0-dim tensor. Subclasses implement :meth:`mv`, :meth:`inv_mv` and :meth:`update`.
    """

    def __init__(
        self, memory: int, n: int, *, dtype: torch.dtype, device: torch.device | str, gamma_init: float
    ) -> None:
        if not (isinstance(gamma_init, int | float) and math.isfinite(gamma_init) and gamma_init > 0):
            raise ValueError(f"gamma_init must be a finite float > 0, got {gamma_init!r}")
        self.memory = PairMemory(memory, n, dtype=dtype, device=device)
        self.gamma = torch.tensor(float(gamma_init), dtype=dtype, device=device)

    @property
    def m(self) -> int:
        return self.memory.m

    def mv(self, v: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def inv_mv(self, v: Tensor) -> Tensor:
        """H v for v of shape (n,) or (n, k)."""
        _, b0, c = self.inv_mv_coefficients(v)
        return self.memory.combine(c, v=b0 * v)

    def inv_mv_coefficients(self, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:  # pragma: no cover - abstract
        """(proj, b0, c) with proj = [S Y]^T v and H v = b0 v + [S Y] c (one pass over the buffer).

        Callers that form H v themselves can then get [S Y]^T (H v) = b0 proj + ([S Y]^T [S Y]) c from
        the Gram matrices instead of another pass.
        """
        raise NotImplementedError

    def _invalidate(self) -> None:
        """Drop cached factors (subclasses override when they cache)."""

    def to_dense(self) -> Tensor:
        """B as an n x n matrix (tests and tiny problems only)."""
        return self.mv(torch.eye(self.memory.n, dtype=self.memory.dtype, device=self.memory.device))

    def to_dense_inverse(self) -> Tensor:
        """H as an n x n matrix (tests and tiny problems only)."""
        return self.inv_mv(torch.eye(self.memory.n, dtype=self.memory.dtype, device=self.memory.device))

    def reset(self) -> None:
        """Forget all pairs (gamma is kept): Alg. 1 with colDim = 0, or L-BFGS forgetting."""
        self.memory.clear()
        self._invalidate()

    def state_dict(self) -> dict:
        return {"memory": self.memory.state_dict(), "gamma": self.gamma}

    def load_state_dict(self, state: dict) -> None:
        self.memory.load_state_dict(state["memory"])
        self.gamma.copy_(state["gamma"].to(self.gamma))
        self._invalidate()

"""The damping rule of Hessian-free optimization (Martens 2010): Levenberg-Marquardt on lambda."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from lightning_sqn._checks import real


@dataclass(frozen=True, kw_only=True)
class LevenbergMarquardt:
    """Martens' Levenberg-Marquardt heuristic for the damping lambda (slide listing the method's
    ingredients: "using a Levenburg-Marquardt style heuristic for adjusting the damping parameter";
    constants of Martens 2010, Sec. 4.1):

    .. math::

        \\lambda \\leftarrow \\begin{cases}
            \\tfrac32 \\lambda & \\rho < \\tfrac14 \\ (\\text{or } \\rho \\text{ undefined}), \\\\
            \\tfrac23 \\lambda & \\rho > \\tfrac34, \\\\
            \\lambda & \\text{otherwise},
        \\end{cases}

    with the reduction ratio ``rho = (f(x + p) - f(x)) / q(p)`` (see :class:`HessianFree`). The result is
    kept above ``min_damping`` so that it never underflows to zero.

    Args:
        low: boost below this ratio (1/4).
        high: drop above this ratio (3/4).
        boost: factor > 1 (3/2).
        drop: factor in (0, 1) (2/3).
        min_damping: lower clamp, ``>= 0`` (the dtype's smallest normal number is applied in any case).

    Raises:
        ValueError: unless ``0 < low < high``, ``boost > 1``, ``0 < drop < 1``, ``min_damping >= 0``.

    Example:
        >>> LevenbergMarquardt().update(1.0, rho=0.1), LevenbergMarquardt().update(1.0, rho=0.9)
        (1.5, 0.6666666666666666)
    """

    low: float = 0.25
    high: float = 0.75
    boost: float = 1.5
    drop: float = 2.0 / 3.0
    min_damping: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):  # numbers, not strings from a config file
            real(f.name, getattr(self, f.name))
        if not 0.0 < self.low < self.high:
            raise ValueError(f"need 0 < low < high, got low={self.low}, high={self.high}")
        if not (self.boost > 1.0 and math.isfinite(self.boost)):
            raise ValueError(f"boost must be finite and > 1, got {self.boost}")
        if not 0.0 < self.drop < 1.0:
            raise ValueError(f"drop must satisfy 0 < drop < 1, got {self.drop}")
        if not (self.min_damping >= 0.0 and math.isfinite(self.min_damping)):
            raise ValueError(f"min_damping must be finite and >= 0, got {self.min_damping}")

    def update(self, damping: float, rho: float) -> float:
        """The next lambda from the current one and the reduction ratio (NaN counts as ``rho < low``)."""
        if not rho >= self.low:
            damping *= self.boost
        elif rho > self.high:
            damping *= self.drop
        return max(damping, self.min_damping)


__all__ = ["LevenbergMarquardt"]

"""Line searches on a one-dimensional restriction ``phi(alpha) = f(x + alpha d)``.

A line search is an object with a ``search`` method, independent of any optimizer. It only sees

* ``phi(alpha) -> (phi(alpha), phi'(alpha))`` with ``phi'(alpha) = grad f(x + alpha d)^T d``,
* ``f0 = phi(0)`` and ``dphi0 = phi'(0) < 0`` (``d`` must be a descent direction),

and returns a :class:`LineSearchResult`. Conditions, in Nocedal & Wright's notation (eqs. 3.6, 3.7):

.. math::

    \\phi(\\alpha) \\le \\phi(0) + c_1 \\alpha \\phi'(0) \\quad \\text{(sufficient decrease, Armijo)}, \\qquad
    |\\phi'(\\alpha)| \\le c_2 |\\phi'(0)| \\quad \\text{(strong curvature)}.

The searches call ``phi`` with Python floats and branch on the values it returns; they run on the host
and are meant for closure-based optimizers that evaluate the loss anyway.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from lightning_sqn._checks import fail

__all__ = [
    "ArmijoBacktracking",
    "LineSearch",
    "LineSearchResult",
    "Phi",
    "StrongWolfe",
    "resolve_line_search",
]

#: ``phi(alpha) -> (f(x + alpha d), grad f(x + alpha d)^T d)``.
Phi = Callable[[float], tuple[float, float]]


@dataclass(frozen=True)
class LineSearchResult:
    """Outcome of a line search.

    Attributes:
        step_length: alpha. ``0.0`` when no trial point satisfied sufficient decrease.
        f: phi(alpha).
        dphi: phi'(alpha) as returned by ``phi`` (``None`` only if it was never evaluated at ``alpha``).
        evaluations: number of calls to ``phi``.
        success: whether ``alpha`` satisfies all conditions of the search.
        reason: a short human-readable explanation of how the search ended.
    """

    step_length: float
    f: float
    dphi: float | None
    evaluations: int
    success: bool
    reason: str


class LineSearch(Protocol):
    """The interface every line search implements.

    ``uses_slope``: whether the search reads ``phi'(alpha)`` at its trials (``phi(0)``'s slope is always
    given); a caller may then skip the gradient at trial points and return NaN as their slope.
    """

    uses_slope: ClassVar[bool]

    def search(self, phi: Phi, f0: float, dphi0: float, alpha0: float = 1.0) -> LineSearchResult:
        """Search along ``d`` from ``alpha0``; see the module docstring for ``phi``, ``f0``, ``dphi0``."""
        ...


def _check_start(f0: float, dphi0: float, alpha0: float) -> None:
    if not (math.isfinite(f0) and math.isfinite(dphi0)):
        raise ValueError(f"line search needs finite phi(0) and phi'(0), got f0={f0}, dphi0={dphi0}")
    if not dphi0 < 0.0:
        raise ValueError(
            f"line search needs a descent direction, phi'(0) = grad f(x)^T d < 0, got dphi0={dphi0}"
        )
    if not (alpha0 > 0.0 and math.isfinite(alpha0)):
        raise ValueError(f"the initial step length alpha0 must be finite and > 0, got {alpha0}")


def _check_int(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def _sufficient_decrease(f: float, alpha: float, f0: float, c1: float, dphi0: float) -> bool:
    """Armijo condition, N&W eq. (3.4); ``False`` for non-finite ``f``."""
    return math.isfinite(f) and f <= f0 + c1 * alpha * dphi0


@dataclass(frozen=True, kw_only=True)
class ArmijoBacktracking:
    """Backtracking line search for sufficient decrease (Nocedal & Wright, Alg. 3.1).

    Starting from ``alpha0``, the step shrinks until ``phi(alpha) <= phi(0) + c1 alpha phi'(0)``. A
    non-finite ``phi(alpha)`` counts as a failed trial. With ``interpolate=True`` the next trial is the
    minimiser of the quadratic through ``phi(0)``, ``phi'(0)`` and ``phi(alpha)`` (N&W eq. 3.58),
    safeguarded into ``[0.1 alpha, 0.5 alpha]``; otherwise ``alpha <- shrink * alpha``.

    Args:
        c1: sufficient-decrease constant, ``0 < c1 < 1``.
        shrink: backtracking factor, ``0 < shrink < 1`` (unused when interpolating a finite trial).
        max_evals: most calls to ``phi``, ``>= 1``.
        min_step: the search fails once a trial step would fall below this, ``>= 0``.
        interpolate: use safeguarded quadratic interpolation instead of a fixed factor.

    Raises:
        ValueError: if a parameter lies outside its range.

    Example:
        >>> ls = ArmijoBacktracking(c1=1e-4)
        >>> res = ls.search(lambda a: ((a - 0.1) ** 2, 2 * (a - 0.1)), f0=0.01, dphi0=-0.2)
        >>> res.success, res.step_length
        (True, 0.125)
    """

    uses_slope: ClassVar[bool] = False  # only phi(alpha); phi'(0) is given

    c1: float = 1e-4
    shrink: float = 0.5
    max_evals: int = 20
    min_step: float = 1e-12
    interpolate: bool = False

    def __post_init__(self) -> None:
        if not 0.0 < self.c1 < 1.0:
            raise ValueError(f"c1 must satisfy 0 < c1 < 1, got {self.c1}")
        if not 0.0 < self.shrink < 1.0:
            raise ValueError(f"shrink must satisfy 0 < shrink < 1, got {self.shrink}")
        _check_int("max_evals", self.max_evals, 1)
        if not (self.min_step >= 0.0 and math.isfinite(self.min_step)):
            raise ValueError(f"min_step must be finite and >= 0, got {self.min_step}")

    def _next(self, alpha: float, f: float, f0: float, dphi0: float) -> float:
        if not (self.interpolate and math.isfinite(f)):
            return self.shrink * alpha
        # q(a) = f0 + dphi0 a + c a^2 through (alpha, f); c > 0 because Armijo failed and c1 < 1.
        curvature = f - f0 - dphi0 * alpha
        trial = -dphi0 * alpha * alpha / (2.0 * curvature) if curvature > 0.0 else 0.5 * alpha
        return min(max(trial, 0.1 * alpha), 0.5 * alpha)

    def search(self, phi: Phi, f0: float, dphi0: float, alpha0: float = 1.0) -> LineSearchResult:
        """Backtrack from ``alpha0`` until sufficient decrease holds.

        Returns:
            On success the first trial satisfying N&W eq. (3.4). On failure (``max_evals`` calls or a
            step below ``min_step``) ``step_length = 0.0`` with ``f = f0``, ``dphi = dphi0`` and
            ``success=False``.

        Raises:
            ValueError: if ``dphi0 >= 0`` (not a descent direction), or ``f0``, ``dphi0``, ``alpha0`` are
                not finite, or ``alpha0 <= 0``.
        """
        _check_start(f0, dphi0, alpha0)
        alpha = alpha0
        evals = 0
        while evals < self.max_evals:
            if alpha < self.min_step:
                return LineSearchResult(
                    0.0, f0, dphi0, evals, False, f"step length fell below min_step={self.min_step}"
                )
            f, dphi = phi(alpha)
            evals += 1
            if _sufficient_decrease(f, alpha, f0, self.c1, dphi0):
                return LineSearchResult(alpha, f, dphi, evals, True, "sufficient decrease")
            alpha = self._next(alpha, f, f0, dphi0)
        return LineSearchResult(
            0.0, f0, dphi0, evals, False, f"no sufficient decrease within max_evals={self.max_evals}"
        )


def _cubic_minimizer(a: float, fa: float, da: float, b: float, fb: float, db: float) -> float:
    """Minimiser of the cubic interpolating ``phi`` and ``phi'`` at ``a`` and ``b`` (N&W eq. 3.59).

    Returns ``nan`` when the cubic has no real minimiser or an input is not finite.
    """
    if not all(math.isfinite(v) for v in (a, fa, da, b, fb, db)) or a == b:
        return math.nan
    d1 = da + db - 3.0 * (fa - fb) / (a - b)
    disc = d1 * d1 - da * db
    if disc < 0.0:
        return math.nan
    d2 = math.copysign(math.sqrt(disc), b - a)
    denom = db - da + 2.0 * d2
    if denom == 0.0:
        return math.nan
    return b - (b - a) * (db + d2 - d1) / denom


def _quadratic_minimizer(a: float, fa: float, da: float, b: float, fb: float) -> float:
    """Minimiser of the quadratic interpolating ``phi(a)``, ``phi'(a)`` and ``phi(b)`` (N&W eq. 3.57);
    ``nan`` when it has no minimiser or an input is not finite."""
    if not all(math.isfinite(v) for v in (a, fa, da, b, fb)) or a == b:
        return math.nan
    curvature = (fb - fa - da * (b - a)) / (b - a) ** 2
    return a - da / (2.0 * curvature) if curvature > 0.0 else math.nan


def _zoom_trial(lo: _Point, hi: _Point, *, force_bisection: bool) -> float:
    """Next trial step inside the bracket between ``lo`` and ``hi`` (the interpolation step of Alg. 3.6).

    The minimiser of the cubic interpolant (N&W eq. 3.59); when ``phi(hi) > phi(lo)`` (or is not
    finite), the cubic or quadratic (N&W eq. 3.57) minimiser nearer to ``lo``, as in Moré & Thuente
    (1994), case 1, since the cubic overshoots when ``phi(hi)`` is huge. The result is clamped to the
    middle 80% of the bracket so every trial shrinks it by at least 10%. Bisection replaces it when
    neither interpolant has a minimiser, or when ``force_bisection`` says two trials failed to halve
    the bracket.
    """
    left, right = min(lo.alpha, hi.alpha), max(lo.alpha, hi.alpha)
    mid = 0.5 * (left + right)
    if force_bisection:
        return mid
    alpha = _cubic_minimizer(lo.alpha, lo.f, lo.dphi, hi.alpha, hi.f, hi.dphi)
    if not (math.isfinite(hi.f) and hi.f <= lo.f):
        quad = _quadratic_minimizer(lo.alpha, lo.f, lo.dphi, hi.alpha, hi.f)
        if math.isfinite(quad) and not abs(alpha - lo.alpha) <= abs(quad - lo.alpha):
            alpha = quad
    if not math.isfinite(alpha):
        return mid
    margin = 0.1 * (right - left)
    return min(max(alpha, left + margin), right - margin)


@dataclass
class _Point:
    alpha: float
    f: float
    dphi: float


@dataclass(frozen=True, kw_only=True)
class StrongWolfe:
    """Line search for the strong Wolfe conditions (Nocedal & Wright, Alg. 3.5 and 3.6).

    The bracketing phase (Alg. 3.5) tries ``alpha0, expansion * alpha0, ...`` (capped at ``alpha_max``)
    until an interval containing strong-Wolfe points is found; ``zoom`` (Alg. 3.6) then shrinks it with
    the minimiser of the cubic interpolating ``phi`` and ``phi'`` at both ends (N&W eq. 3.59), or of the
    quadratic (eq. 3.57) when that is nearer the better end and the other end has the higher ``phi``.
    Trials are clamped to the middle 80% of the bracket, and bisection replaces interpolation when it is
    undefined or when two trials in a row failed to halve the bracket. A trial with non-finite ``phi``
    or ``phi'`` is treated as too long: it becomes the far end of the bracket.

    Args:
        c1: sufficient-decrease constant, ``0 < c1 < c2``.
        c2: curvature constant, ``c1 < c2 < 1`` (0.9 for quasi-Newton directions, N&W p. 34).
        max_evals: most calls to ``phi``, ``>= 1``.
        alpha_max: largest step tried, ``> 0``.
        expansion: factor by which the bracketing phase grows the step, ``> 1``.

    Raises:
        ValueError: if a parameter lies outside its range.

    Example:
        >>> ls = StrongWolfe()
        >>> res = ls.search(lambda a: ((a - 3.0) ** 2, 2 * (a - 3.0)), f0=9.0, dphi0=-6.0)
        >>> res.success, res.step_length, res.evaluations
        (True, 1.0, 1)
    """

    uses_slope: ClassVar[bool] = True

    c1: float = 1e-4
    c2: float = 0.9
    max_evals: int = 25
    alpha_max: float = 1e10
    expansion: float = 2.0

    def __post_init__(self) -> None:
        if not 0.0 < self.c1 < self.c2 < 1.0:
            raise ValueError(f"c1 and c2 must satisfy 0 < c1 < c2 < 1, got c1={self.c1}, c2={self.c2}")
        _check_int("max_evals", self.max_evals, 1)
        if not self.alpha_max > 0.0:
            raise ValueError(f"alpha_max must be > 0, got {self.alpha_max}")
        if not (self.expansion > 1.0 and math.isfinite(self.expansion)):
            raise ValueError(f"expansion must be finite and > 1, got {self.expansion}")

    def search(self, phi: Phi, f0: float, dphi0: float, alpha0: float = 1.0) -> LineSearchResult:
        """Find ``alpha`` satisfying the strong Wolfe conditions (N&W eq. 3.7).

        That is, ``phi(alpha) <= phi(0) + c1 alpha phi'(0)`` and ``|phi'(alpha)| <= c2 |phi'(0)|``.
        ``alpha0`` is capped at ``alpha_max``.

        Returns:
            On success a step satisfying both strong Wolfe conditions. Otherwise (``max_evals`` calls, a
            bracket that collapsed to machine precision, or ``alpha_max`` reached while ``phi`` still
            decreases) ``success=False`` and the sufficient-decrease point with the lowest ``phi`` seen,
            or ``step_length = 0.0`` with ``f = f0``, ``dphi = dphi0`` if there was none.

        Raises:
            ValueError: if ``dphi0 >= 0`` (not a descent direction), or ``f0``, ``dphi0``, ``alpha0`` are
                not finite, or ``alpha0 <= 0``.
        """
        _check_start(f0, dphi0, alpha0)
        return _StrongWolfeRun(self, phi, f0, dphi0).run(min(alpha0, self.alpha_max))


class _StrongWolfeRun:
    """The state of one :meth:`StrongWolfe.search` call."""

    def __init__(self, params: StrongWolfe, phi: Phi, f0: float, dphi0: float) -> None:
        self.p = params
        self.phi = phi
        self.f0 = f0
        self.dphi0 = dphi0
        self.evals = 0
        self.best = _Point(0.0, f0, dphi0)  # lowest phi among sufficient-decrease points

    def evaluate(self, alpha: float) -> _Point:
        f, dphi = self.phi(alpha)
        self.evals += 1
        point = _Point(alpha, float(f), float(dphi))
        if self.armijo(point) and point.f < self.best.f:
            self.best = point
        return point

    def armijo(self, point: _Point) -> bool:
        return math.isfinite(point.dphi) and _sufficient_decrease(
            point.f, point.alpha, self.f0, self.p.c1, self.dphi0
        )

    def curvature(self, point: _Point) -> bool:
        return abs(point.dphi) <= -self.p.c2 * self.dphi0

    def done(self, point: _Point, reason: str) -> LineSearchResult:
        return LineSearchResult(point.alpha, point.f, point.dphi, self.evals, True, reason)

    def fail(self, reason: str) -> LineSearchResult:
        b = self.best
        return LineSearchResult(b.alpha, b.f, b.dphi, self.evals, False, reason)

    def exhausted(self) -> LineSearchResult:
        return self.fail(f"strong Wolfe conditions not met within max_evals={self.p.max_evals}")

    def run(self, alpha: float) -> LineSearchResult:
        """Alg. 3.5: bracketing."""
        prev = _Point(0.0, self.f0, self.dphi0)
        first = True
        while self.evals < self.p.max_evals:
            cur = self.evaluate(alpha)
            if not self.armijo(cur) or (not first and cur.f >= prev.f):  # Alg. 3.5 line 5
                return self.zoom(prev, cur)
            if self.curvature(cur):  # line 9
                return self.done(cur, "strong Wolfe conditions satisfied")
            if cur.dphi >= 0.0:  # line 10
                return self.zoom(cur, prev)
            if alpha >= self.p.alpha_max:
                return self.fail(f"reached alpha_max={self.p.alpha_max} with phi still decreasing")
            prev, first = cur, False
            alpha = min(self.p.expansion * alpha, self.p.alpha_max)
        return self.exhausted()

    def zoom(self, lo: _Point, hi: _Point) -> LineSearchResult:
        """Alg. 3.6: ``lo`` satisfies sufficient decrease with the lowest phi so far and
        ``phi'(lo) (hi - lo) < 0``; the bracket between them contains strong-Wolfe points."""
        widths: list[float] = []
        while self.evals < self.p.max_evals:
            width = abs(hi.alpha - lo.alpha)
            if width <= 4.0 * math.ulp(max(lo.alpha, hi.alpha)):
                return self.fail("bracket collapsed to machine precision")
            alpha = _zoom_trial(lo, hi, force_bisection=len(widths) >= 2 and width > 0.5 * widths[-2])
            widths.append(width)
            trial = self.evaluate(alpha)
            if not self.armijo(trial) or trial.f >= lo.f:  # Alg. 3.6 line 4
                hi = trial
                continue
            if self.curvature(trial):  # line 8
                return self.done(trial, "strong Wolfe conditions satisfied")
            if trial.dphi * (hi.alpha - lo.alpha) >= 0.0:  # line 9
                hi = lo
            lo = trial
        return self.exhausted()


def resolve_line_search(value: Any, default: Callable[[], LineSearch]) -> LineSearch | None:
    """The ``line_search`` argument of every optimizer: ``"default"`` gives ``default()`` (the
    optimizer's paper default), ``None`` no line search (a fixed step), else a line-search object."""
    if isinstance(value, str) and value == "default":
        return default()
    if value is None:
        return None
    if not callable(getattr(value, "search", None)):
        fail(
            "line_search",
            "'default', None (a fixed step) or a line-search object such as StrongWolfe() or "
            "ArmijoBacktracking()",
            value,
        )
    return value

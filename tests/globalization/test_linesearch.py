"""Armijo backtracking and strong-Wolfe line searches.

Oracle: the conditions themselves, evaluated independently in the test on the returned step (Nocedal &
Wright eqs. 3.6a and 3.7), closed-form interpolation steps, and call counts recorded by the test.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from lightning_sqn.globalization.linesearch import ArmijoBacktracking, LineSearchResult, StrongWolfe

DTYPE = torch.float64


class CountingPhi:
    """Wraps phi(alpha) -> (f, dphi) and records every call."""

    def __init__(self, fn: Callable[[float], tuple[float, float]]) -> None:
        self.fn = fn
        self.calls: list[float] = []

    def __call__(self, alpha: float) -> tuple[float, float]:
        self.calls.append(alpha)
        return self.fn(alpha)

    def start(self) -> tuple[float, float]:
        """phi(0), phi'(0) without counting."""
        return self.fn(0.0)


def quadratic(center: float) -> CountingPhi:
    return CountingPhi(lambda a: ((a - center) ** 2, 2.0 * (a - center)))


def along_direction(
    f: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor, d: torch.Tensor
) -> CountingPhi:
    """phi(alpha) = f(x0 + alpha d) with phi'(alpha) = grad f(x0 + alpha d)^T d from autograd."""

    def phi(alpha: float) -> tuple[float, float]:
        x = (x0 + alpha * d).detach().requires_grad_(True)
        y = f(x)
        (grad,) = torch.autograd.grad(y, x)
        return float(y.detach()), float(grad @ d)

    return CountingPhi(phi)


def rosenbrock(x: torch.Tensor) -> torch.Tensor:
    return (100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2).sum()


def ill_conditioned_quadratic(x: torch.Tensor) -> torch.Tensor:
    scales = torch.logspace(0, 4, x.numel(), dtype=DTYPE)
    return 0.5 * (scales * x**2).sum()


def rosenbrock_phi() -> CountingPhi:
    x0 = torch.tensor([-1.2, 1.0, -0.5, 0.8], dtype=DTYPE)
    x = x0.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(rosenbrock(x), x)
    return along_direction(rosenbrock, x0, -g)


def quadratic_nd_phi() -> CountingPhi:
    x0 = torch.linspace(-1.0, 2.0, 6, dtype=DTYPE)
    x = x0.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(ill_conditioned_quadratic(x), x)
    return along_direction(ill_conditioned_quadratic, x0, -g / torch.linalg.vector_norm(g))


# Moré & Thuente (1994), Table 1 test functions, written from their formulas.
def more_thuente_1(beta: float = 2.0) -> CountingPhi:
    return CountingPhi(lambda a: (-a / (a * a + beta), (a * a - beta) / (a * a + beta) ** 2))


def more_thuente_2(beta: float = 0.004) -> CountingPhi:
    return CountingPhi(
        lambda a: ((a + beta) ** 5 - 2.0 * (a + beta) ** 4, 5.0 * (a + beta) ** 4 - 8.0 * (a + beta) ** 3)
    )


def more_thuente_3(beta: float = 0.01, l: int = 39) -> CountingPhi:
    def phi(a: float) -> tuple[float, float]:
        if a <= 1.0 - beta:
            f0, d0 = 1.0 - a, -1.0
        elif a >= 1.0 + beta:
            f0, d0 = a - 1.0, 1.0
        else:
            f0, d0 = (a - 1.0) ** 2 / (2.0 * beta) + beta / 2.0, (a - 1.0) / beta
        s = math.sin(l * math.pi / 2.0 * a)
        c = math.cos(l * math.pi / 2.0 * a)
        scale = 2.0 * (1.0 - beta) / (l * math.pi)
        return f0 + scale * s, d0 + scale * c * l * math.pi / 2.0

    return CountingPhi(phi)


PHIS = {
    "quadratic_near": lambda: quadratic(0.3),
    "quadratic_far": lambda: quadratic(100.0),
    "rosenbrock": rosenbrock_phi,
    "ill_conditioned": quadratic_nd_phi,
    "more_thuente_1": more_thuente_1,
    "more_thuente_2": more_thuente_2,
    "more_thuente_3": more_thuente_3,
}


def armijo_holds(res: LineSearchResult, f0: float, dphi0: float, c1: float) -> bool:
    return res.f <= f0 + c1 * res.step_length * dphi0


def check_result_matches_phi(res: LineSearchResult, phi: CountingPhi) -> None:
    """Reported evaluations equal the number of calls; f and dphi are phi's values at alpha."""
    assert res.evaluations == len(phi.calls)
    if res.step_length > 0:
        assert res.step_length in phi.calls
        f, d = phi.fn(res.step_length)
        assert res.f == f
        assert res.dphi == d


# ------------------------------------------------------------------------------------------ Armijo


@pytest.mark.parametrize("name", sorted(PHIS))
@pytest.mark.parametrize("alpha0", [1e-3, 1.0, 10.0])
@pytest.mark.parametrize("interpolate", [False, True])
def test_armijo_sufficient_decrease(name: str, alpha0: float, interpolate: bool) -> None:
    phi = PHIS[name]()
    f0, dphi0 = phi.start()
    ls = ArmijoBacktracking(c1=1e-4, interpolate=interpolate, max_evals=60)
    res = ls.search(phi, f0, dphi0, alpha0)
    assert res.success
    assert 0 < res.step_length <= alpha0
    assert armijo_holds(res, f0, dphi0, 1e-4)
    check_result_matches_phi(res, phi)
    # every rejected trial violated sufficient decrease, and the steps decreased
    for a in phi.calls[:-1]:
        assert not phi.fn(a)[0] <= f0 + 1e-4 * a * dphi0
    assert phi.calls == sorted(phi.calls, reverse=True)


def test_armijo_accepts_first_trial_when_good() -> None:
    phi = quadratic(3.0)  # f(1) = 4 <= 9 - 1e-4 * 6
    res = ArmijoBacktracking().search(phi, *phi.start())
    assert (res.step_length, res.evaluations, res.success) == (1.0, 1, True)
    assert res.f == 4.0 and res.dphi == -4.0


def test_armijo_backtracks_by_shrink_factor() -> None:
    phi = quadratic(0.01)  # too long: 1 -> 0.5 -> ... until (a - 0.01)^2 <= 1e-4 - 2e-6 a
    res = ArmijoBacktracking(shrink=0.5).search(phi, *phi.start())
    expected = [0.5**k for k in range(len(phi.calls))]
    assert phi.calls == expected
    assert res.step_length == expected[-1]
    assert res.success
    # the accepted step is the first power of 1/2 meeting the condition (independent recomputation)
    first = next(0.5**k for k in range(60) if (0.5**k - 0.01) ** 2 <= 1e-4 + 1e-4 * 0.5**k * -0.02)
    assert res.step_length == first


def test_armijo_quadratic_interpolation_is_exact_on_quadratics() -> None:
    phi = quadratic(0.3)  # q(a) = (a - 0.3)^2: the interpolant is phi itself, minimiser 0.3 in [0.1, 0.5]
    res = ArmijoBacktracking(interpolate=True).search(phi, *phi.start())
    assert res.evaluations == 2
    assert res.step_length == pytest.approx(0.3, rel=1e-14)
    assert res.success


def test_armijo_interpolation_safeguards() -> None:
    # minimiser 1e-3 of the quadratic lies below 0.1 alpha: trial clamped to 0.1
    phi = quadratic(1e-3)
    ArmijoBacktracking(interpolate=True, max_evals=2).search(phi, *phi.start())
    assert phi.calls[1] == pytest.approx(0.1, rel=1e-14)
    # phi(1) = -5e-5 just misses sufficient decrease (-1e-4): quadratic minimiser 0.500025 -> clamp to 0.5
    k = 1.0 - 5e-5
    phi = CountingPhi(lambda a: (-a + k * a * a, -1.0 + 2.0 * k * a))
    ArmijoBacktracking(interpolate=True, max_evals=2).search(phi, *phi.start())
    assert phi.calls[1] == 0.5
    phi = CountingPhi(lambda a: (-a + 2.0 * a**4, -1.0 + 8.0 * a**3))
    ArmijoBacktracking(interpolate=True, max_evals=2).search(phi, *phi.start())
    # f(1) = 1: q(a) = -a + 2 a^2, minimiser 0.25 inside [0.1, 0.5]
    assert phi.calls[1] == pytest.approx(0.25, rel=1e-14)
    phi = CountingPhi(lambda a: (-a + 0.6 * a**2 if a < 0.99 else math.inf, -1.0 + 1.2 * a))
    ArmijoBacktracking(interpolate=True, max_evals=2).search(phi, *phi.start())
    assert phi.calls[1] == pytest.approx(0.5, rel=1e-14)  # non-finite f: plain halving


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_armijo_backtracks_through_non_finite(bad: float) -> None:
    phi = CountingPhi(lambda a: ((a - 0.2) ** 2 if a <= 0.3 else bad, 2.0 * (a - 0.2) if a <= 0.3 else bad))
    res = ArmijoBacktracking().search(phi, *phi.start())
    assert res.success
    assert res.step_length == 0.25
    assert phi.calls == [1.0, 0.5, 0.25]
    assert math.isfinite(res.f)


def test_armijo_failure_after_max_evals() -> None:
    phi = CountingPhi(lambda a: (math.nan, math.nan))
    res = ArmijoBacktracking(max_evals=5).search(phi, 1.0, -1.0)
    assert not res.success
    assert res.evaluations == 5 == len(phi.calls)
    assert res.step_length == 0.0 and res.f == 1.0 and res.dphi == -1.0
    assert "max_evals" in res.reason


def test_armijo_failure_below_min_step() -> None:
    phi = CountingPhi(lambda a: (1.0 + a, 1.0))  # increasing despite dphi0 < 0 (bad derivative)
    res = ArmijoBacktracking(min_step=0.1, max_evals=100).search(phi, 1.0, -1.0)
    assert not res.success
    assert phi.calls == [1.0, 0.5, 0.25, 0.125]
    assert res.evaluations == 4
    assert "min_step" in res.reason


# ------------------------------------------------------------------------------------- strong Wolfe


@pytest.mark.parametrize("name", sorted(PHIS))
@pytest.mark.parametrize("alpha0", [1e-3, 1e-1, 1.0, 10.0, 1e3])
@pytest.mark.parametrize(("c1", "c2"), [(1e-4, 0.9), (1e-3, 0.1)])
def test_strong_wolfe_conditions_hold(name: str, alpha0: float, c1: float, c2: float) -> None:
    phi = PHIS[name]()
    f0, dphi0 = phi.start()
    res = StrongWolfe(c1=c1, c2=c2).search(phi, f0, dphi0, alpha0)
    assert res.success, res.reason
    assert res.step_length > 0
    assert armijo_holds(res, f0, dphi0, c1)
    assert abs(res.dphi) <= c2 * abs(dphi0)
    check_result_matches_phi(res, phi)


def test_strong_wolfe_accepts_unit_step() -> None:
    phi = quadratic(3.0)  # phi'(1) = -4, |-4| <= 0.9 * 6
    res = StrongWolfe().search(phi, *phi.start())
    assert (res.step_length, res.evaluations, res.success) == (1.0, 1, True)


def test_strong_wolfe_extends_step() -> None:
    phi = quadratic(100.0)  # phi'(1) = -198 < -0.9 * 200: too short, grow 1, 2, 4, ...
    res = StrongWolfe(expansion=2.0).search(phi, *phi.start())
    assert res.success
    assert phi.calls[:3] == [1.0, 2.0, 4.0]
    assert res.step_length > 1.0
    assert abs(res.dphi) <= 0.9 * 200.0


def test_strong_wolfe_shrinks_too_long_step() -> None:
    phi = quadratic(0.3)
    f0, dphi0 = phi.start()
    res = StrongWolfe(c2=0.1).search(phi, f0, dphi0, 1.0)
    assert res.success
    # cubic interpolation through (0, f0, dphi0), (1, f(1), dphi(1)) is exact on a quadratic
    assert phi.calls == [1.0, pytest.approx(0.3, rel=1e-12)]
    assert abs(res.dphi) <= 0.1 * abs(dphi0)


def test_strong_wolfe_interpolation_is_clamped_away_from_bracket_ends() -> None:
    phi = quadratic(0.01)  # the exact minimiser 0.01 lies in the outer 10% of [0, 1]: first clamp to 0.1
    res = StrongWolfe(c2=0.5).search(phi, *phi.start(), 1.0)
    assert res.success
    assert phi.calls == [1.0, pytest.approx(0.1, rel=1e-12), pytest.approx(0.01, rel=1e-10)]


def test_strong_wolfe_huge_overshoot_uses_quadratic_step() -> None:
    # phi(1000) is enormous: the quadratic through phi(0), phi'(0), phi(1000) lands near 0 and is clamped
    # to 10% of the bracket, instead of the cubic's step into the middle
    phi = CountingPhi(lambda a: (a**4 / 4.0 - a, a**3 - 1.0))  # cubic minimiser on [0, 1000]: ~333
    res = StrongWolfe().search(phi, *phi.start(), 1000.0)
    assert phi.calls[1] == pytest.approx(100.0, rel=1e-12)
    assert res.success and abs(res.dphi) <= 0.9


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_strong_wolfe_non_finite_trial_is_too_long(bad: float) -> None:
    phi = CountingPhi(lambda a: ((a - 0.2) ** 2 if a <= 0.3 else bad, 2.0 * (a - 0.2) if a <= 0.3 else bad))
    f0, dphi0 = phi.start()
    res = StrongWolfe().search(phi, f0, dphi0, 1.0)
    assert res.success
    assert res.step_length <= 0.3
    assert armijo_holds(res, f0, dphi0, 1e-4) and abs(res.dphi) <= 0.9 * abs(dphi0)
    check_result_matches_phi(res, phi)


def test_strong_wolfe_non_finite_derivative_is_too_long() -> None:
    phi = CountingPhi(lambda a: ((a - 0.2) ** 2, 2.0 * (a - 0.2) if a <= 0.3 else math.nan))
    f0, dphi0 = phi.start()
    res = StrongWolfe().search(phi, f0, dphi0, 1.0)
    assert res.success and res.step_length <= 0.3 and math.isfinite(res.dphi)


def test_strong_wolfe_exhausted_returns_best_sufficient_decrease_point() -> None:
    # f(1) satisfies sufficient decrease but not curvature: with one evaluation the search must fail
    phi = quadratic(100.0)
    res = StrongWolfe(max_evals=1).search(phi, *phi.start())
    assert not res.success
    assert res.evaluations == 1
    assert res.step_length == 1.0 and res.f == 99.0**2
    assert "max_evals" in res.reason
    # the best of several: growth 1, 2, 4 all decrease; the lowest f is at 4
    phi = quadratic(100.0)
    res = StrongWolfe(max_evals=3).search(phi, *phi.start())
    assert not res.success and res.step_length == 4.0 and res.evaluations == 3


def test_strong_wolfe_exhausted_without_decrease_returns_zero_step() -> None:
    phi = CountingPhi(lambda a: (math.nan, math.nan))
    res = StrongWolfe(max_evals=4).search(phi, 2.0, -1.0)
    assert not res.success
    assert (res.step_length, res.f, res.dphi, res.evaluations) == (0.0, 2.0, -1.0, 4)


def test_strong_wolfe_alpha_max() -> None:
    phi = CountingPhi(lambda a: (-a, -1.0))  # unbounded below: never satisfies curvature
    res = StrongWolfe(alpha_max=5.0).search(phi, 0.0, -1.0, 1.0)
    assert not res.success
    assert res.step_length == 5.0
    assert phi.calls == [1.0, 2.0, 4.0, 5.0]
    assert "alpha_max" in res.reason
    phi = CountingPhi(lambda a: (-a, -1.0))
    res = StrongWolfe(alpha_max=0.5).search(phi, 0.0, -1.0, 1.0)  # alpha0 capped
    assert phi.calls[0] == 0.5


# --------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize("search", [ArmijoBacktracking(), StrongWolfe()])
@pytest.mark.parametrize("dphi0", [0.0, 1.0])
def test_ascent_direction_raises(search, dphi0: float) -> None:
    phi = quadratic(1.0)
    with pytest.raises(ValueError, match="descent direction"):
        search.search(phi, 1.0, dphi0)
    assert phi.calls == []


@pytest.mark.parametrize("search", [ArmijoBacktracking(), StrongWolfe()])
@pytest.mark.parametrize(
    ("f0", "dphi0", "alpha0"), [(math.nan, -1.0, 1.0), (1.0, -math.inf, 1.0), (1.0, -1.0, 0.0)]
)
def test_bad_start_raises(search, f0: float, dphi0: float, alpha0: float) -> None:
    with pytest.raises(ValueError):
        search.search(quadratic(1.0), f0, dphi0, alpha0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"c1": 0.0}, "0 < c1 < 1"),
        ({"c1": 1.0}, "0 < c1 < 1"),
        ({"shrink": 1.0}, "0 < shrink < 1"),
        ({"shrink": 0.0}, "0 < shrink < 1"),
        ({"max_evals": 0}, "max_evals"),
        ({"max_evals": 2.5}, "max_evals"),
        ({"min_step": -1.0}, "min_step"),
    ],
)
def test_armijo_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ArmijoBacktracking(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"c1": 0.0}, "0 < c1 < c2 < 1"),
        ({"c1": 0.5, "c2": 0.5}, "0 < c1 < c2 < 1"),
        ({"c2": 1.0}, "0 < c1 < c2 < 1"),
        ({"max_evals": 0}, "max_evals"),
        ({"alpha_max": 0.0}, "alpha_max"),
        ({"expansion": 1.0}, "expansion"),
    ],
)
def test_strong_wolfe_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        StrongWolfe(**kwargs)


def test_searches_are_keyword_only_and_frozen() -> None:
    with pytest.raises(TypeError):
        ArmijoBacktracking(1e-4)  # type: ignore[misc]
    with pytest.raises(TypeError):
        StrongWolfe(1e-4, 0.9)  # type: ignore[misc]
    ls = StrongWolfe()
    with pytest.raises(AttributeError):
        ls.c1 = 0.5  # type: ignore[misc]

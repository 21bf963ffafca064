"""Steihaug-Toint truncated CG in a diagonal A-norm against dense oracles.

Oracles: the Newton step ``-B^{-1} g`` (``torch.linalg.solve``); the dense exact solver
:func:`solve_exact` after the change of variables ``u = A^{1/2} s`` (``g_u = A^{-1/2} g``,
``B_u = A^{-1/2} B A^{-1/2}``, ``||u||_2 = ||s||_A``); the ``A``-norm Cauchy point in closed form (and
:func:`cauchy_point` in ``u``); and the Krylov characterisation of the preconditioned CG iterates,
``u_j = argmin`` of the model over ``K_j(B_u, g_u)``, from an orthonormal Lanczos basis in NumPy.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lightning_sqn.subproblem import SteihaugResult, cauchy_point, solve_exact, solve_steihaug
from lightning_sqn.subproblem.steihaug import _boundary_root

DTYPE = torch.float64


def model(B: torch.Tensor, g: torch.Tensor, s: torch.Tensor) -> float:
    return float(g @ s + 0.5 * s @ (B @ s))


def a_norm(a: torch.Tensor, s: torch.Tensor) -> float:
    return float(torch.sqrt(s @ (a * s)))


def symmetric(n: int, eigenvalues: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    Q, R = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=DTYPE))
    Q = Q * torch.sign(torch.diagonal(R))
    return (Q * eigenvalues) @ Q.T


def problem(
    n: int, seed: int, *, indefinite: bool, spherical: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    lo = -2.0 if indefinite else 0.5
    B = symmetric(n, torch.linspace(lo, 5.0, n, dtype=DTYPE), gen)
    g = torch.randn(n, generator=gen, dtype=DTYPE)
    a = torch.ones(n, dtype=DTYPE) if spherical else torch.exp(torch.randn(n, generator=gen, dtype=DTYPE))
    return B, g, a


def in_u(B: torch.Tensor, g: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """B_u = A^{-1/2} B A^{-1/2}, g_u = A^{-1/2} g."""
    r = a.rsqrt()
    return r[:, None] * B * r[None, :], r * g


def cauchy_model_value(B: torch.Tensor, g: torch.Tensor, a: torch.Tensor, radius: float) -> float:
    """min of m(t d), d = -A^{-1} g, over 0 <= t with ||t d||_A <= radius (closed form)."""
    d = -g / a
    t_max = radius / a_norm(a, d)
    curv = float(d @ (B @ d))
    slope = float(g @ d)  # = -g^T A^{-1} g < 0
    t = t_max if curv <= 0 else min(t_max, -slope / curv)
    return t * slope + 0.5 * t * t * curv


def krylov_iterates(B: torch.Tensor, g: torch.Tensor, a: torch.Tensor, k: int) -> list[torch.Tensor]:
    """s_j = A^{-1/2} u_j, u_j = argmin_{u in K_j(B_u, g_u)} g_u^T u + 1/2 u^T B_u u, j = 0..k."""
    Bu, gu = (t.numpy() for t in in_u(B, g, a))
    n = gu.shape[0]
    V = np.zeros((n, k))
    v = gu / np.linalg.norm(gu)
    for j in range(k):
        V[:, j] = v
        w = Bu @ v
        for _ in range(2):
            w -= V[:, : j + 1] @ (V[:, : j + 1].T @ w)
        v = w / np.linalg.norm(w)
    out = [torch.zeros_like(g)]
    for j in range(1, k + 1):
        Vj = V[:, :j]
        u = -Vj @ np.linalg.solve(Vj.T @ Bu @ Vj, Vj.T @ gu)
        out.append(torch.from_numpy(u) * a.rsqrt())
    return out


# ----------------------------------------------------------------------------------------------------
# The three exits


@pytest.mark.parametrize("spherical", [True, False])
def test_interior_equals_newton_step(spherical: bool) -> None:
    B, g, a = problem(25, 1, indefinite=False, spherical=spherical)
    newton = -torch.linalg.solve(B, g)
    radius = 10.0 * a_norm(a, newton)

    res = solve_steihaug(lambda v: B @ v, g, radius, norm_diag=a, kappa=1e-12, max_iters=200)

    assert isinstance(res, SteihaugResult)
    assert res.reason == "converged" and not res.hit_boundary
    torch.testing.assert_close(res.step, newton, rtol=1e-9, atol=1e-11)
    assert float(res.predicted_reduction) == pytest.approx(-model(B, g, res.step), rel=1e-12)
    assert float(res.step_norm) == pytest.approx(a_norm(a, res.step), rel=1e-12)
    # the exact solver in u = A^{1/2} s returns the same (interior) solution
    Bu, gu = in_u(B, g, a)
    exact = solve_exact(Bu, gu, radius)
    assert not bool(exact.hit_boundary)
    torch.testing.assert_close(exact.step * a.rsqrt(), res.step, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("spherical", [True, False])
def test_boundary_exit_lands_on_the_ellipsoid(spherical: bool) -> None:
    B, g, a = problem(25, 2, indefinite=False, spherical=spherical)
    newton = -torch.linalg.solve(B, g)
    radius = 0.3 * a_norm(a, newton)

    res = solve_steihaug(lambda v: B @ v, g, radius, norm_diag=a)

    assert res.reason == "boundary" and res.hit_boundary
    assert abs(a_norm(a, res.step) - radius) <= 1e-10 * radius
    assert float(res.step_norm) == pytest.approx(radius, rel=1e-10)
    assert float(res.predicted_reduction) == pytest.approx(-model(B, g, res.step), rel=1e-11)
    Bu, gu = in_u(B, g, a)
    exact = solve_exact(Bu, gu, radius)
    assert float(-exact.predicted_reduction) <= model(B, g, res.step) + 1e-12


@pytest.mark.parametrize("spherical", [True, False])
def test_negative_curvature_exit_lands_on_the_ellipsoid(spherical: bool) -> None:
    B, g, a = problem(25, 3, indefinite=True, spherical=spherical)
    radius = 1e3

    res = solve_steihaug(lambda v: B @ v, g, radius, norm_diag=a)

    assert res.reason == "negative_curvature" and res.hit_boundary
    assert res.iterations >= 1
    assert abs(a_norm(a, res.step) - radius) <= 1e-10 * radius
    assert float(res.predicted_reduction) == pytest.approx(-model(B, g, res.step), rel=1e-10)
    assert float(res.predicted_reduction) > 0.0


def test_negative_curvature_along_the_first_direction() -> None:
    # g along a negative-curvature eigenvector: s = -radius A^{-1} g / ||A^{-1} g||_A at once
    B = torch.diag(torch.tensor([-1.0, 2.0, 3.0], dtype=DTYPE))
    g = torch.tensor([0.5, 0.0, 0.0], dtype=DTYPE)
    a = torch.tensor([4.0, 1.0, 1.0], dtype=DTYPE)
    res = solve_steihaug(lambda v: B @ v, g, 2.0, norm_diag=a)
    assert (res.reason, res.iterations) == ("negative_curvature", 1)
    torch.testing.assert_close(res.step, torch.tensor([-1.0, 0.0, 0.0], dtype=DTYPE))  # ||.||_A = 2


@pytest.mark.parametrize("sAp_sign", [1.0, 0.0, -1.0])
def test_boundary_root_solves_the_quadratic(sAp_sign: float) -> None:
    gen = torch.Generator().manual_seed(4)
    a = torch.exp(torch.randn(6, generator=gen, dtype=DTYPE))
    s = 0.3 * torch.randn(6, generator=gen, dtype=DTYPE)
    p = torch.randn(6, generator=gen, dtype=DTYPE)
    p = p - (s @ (a * p)) / (s @ (a * s)) * s + sAp_sign * 0.7 * s  # set the sign of s^T A p
    sAs, sAp, pAp = (float(x) for x in (s @ (a * s), s @ (a * p), p @ (a * p)))
    assert math.copysign(1.0, sAp) == math.copysign(1.0, sAp_sign) or sAp_sign == 0.0
    radius = 2.0 * math.sqrt(sAs)
    sigma = _boundary_root(sAs, sAp, pAp, radius)
    assert sigma > 0.0
    assert a_norm(a, s + sigma * p) == pytest.approx(radius, rel=1e-13)


# ----------------------------------------------------------------------------------------------------
# Decrease guarantees against Cauchy and exact solutions


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("indefinite", [False, True])
@pytest.mark.parametrize("radius_scale", [0.05, 1.0, 20.0])
def test_decrease_between_cauchy_point_and_exact_solution(
    seed: int, indefinite: bool, radius_scale: float
) -> None:
    B, g, a = problem(12, 100 + seed, indefinite=indefinite, spherical=seed % 3 == 0)
    radius = radius_scale * a_norm(a, g / a)
    res = solve_steihaug(lambda v: B @ v, g, radius, norm_diag=a)
    m_steihaug = model(B, g, res.step)
    scale = 1e-12 * max(1.0, abs(m_steihaug))

    assert a_norm(a, res.step) <= radius * (1 + 1e-10)
    m_cauchy = cauchy_model_value(B, g, a, radius)
    Bu, gu = in_u(B, g, a)
    # the closed form agrees with the spherical Cauchy point in u = A^{1/2} s
    assert m_cauchy == pytest.approx(-float(cauchy_point(Bu, gu, radius).predicted_reduction), rel=1e-10)
    assert m_steihaug <= m_cauchy + scale
    m_exact = -float(solve_exact(Bu, gu, radius).predicted_reduction)
    assert m_exact <= m_steihaug + scale
    assert float(res.predicted_reduction) == pytest.approx(-m_steihaug, rel=1e-10, abs=1e-13)


def test_change_of_variables_gives_the_same_run() -> None:
    B, g, a = problem(20, 7, indefinite=True, spherical=False)
    Bu, gu = in_u(B, g, a)
    for radius in (0.1, 1.0, 100.0):
        res_s = solve_steihaug(lambda v: B @ v, g, radius, norm_diag=a)
        res_u = solve_steihaug(lambda v: Bu @ v, gu, radius)
        assert (res_s.reason, res_s.iterations) == (res_u.reason, res_u.iterations)
        torch.testing.assert_close(res_s.step, res_u.step * a.rsqrt(), rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(res_s.predicted_reduction, res_u.predicted_reduction)


# ----------------------------------------------------------------------------------------------------
# Krylov stopping rule and cap


@pytest.mark.parametrize(("g_scale", "binding"), [(10.0, "kappa"), (1e-3, "theta")])
def test_krylov_stopping_rule_fires_at_the_oracle_iteration(g_scale: float, binding: str) -> None:
    n = 60
    gen = torch.Generator().manual_seed(11)
    B = symmetric(n, torch.linspace(0.01, 1.0, n, dtype=DTYPE), gen)
    g = torch.randn(n, generator=gen, dtype=DTYPE)
    g = g_scale * g / torch.linalg.vector_norm(g)
    a = torch.exp(0.5 * torch.randn(n, generator=gen, dtype=DTYPE))
    kappa, theta = 0.1, 0.5
    g_norm = float(torch.linalg.vector_norm(g))
    assert (kappa < g_norm**theta) == (binding == "kappa")
    threshold = g_norm * min(kappa, g_norm**theta)

    iterates = krylov_iterates(B, g, a, 40)
    residuals = [float(torch.linalg.vector_norm(g + B @ s)) for s in iterates]
    expected = next(j for j, r in enumerate(residuals) if r <= threshold)
    assert 3 <= expected < 40
    assert abs(residuals[expected] - threshold) > 1e-6 * threshold
    assert abs(residuals[expected - 1] - threshold) > 1e-6 * threshold

    res = solve_steihaug(lambda v: B @ v, g, 1e6 * g_norm, norm_diag=a)

    assert (res.reason, res.iterations) == ("converged", expected)
    torch.testing.assert_close(res.step, iterates[expected], rtol=1e-8, atol=1e-12 * g_scale)
    assert res.residual_norm == pytest.approx(residuals[expected], rel=1e-6)


def test_cap_returns_the_interior_krylov_iterate() -> None:
    B, g, a = problem(30, 12, indefinite=False, spherical=False)
    res = solve_steihaug(lambda v: B @ v, g, 1e6, norm_diag=a, max_iters=3)
    assert (res.reason, res.iterations, res.hit_boundary) == ("cap", 3, False)
    torch.testing.assert_close(res.step, krylov_iterates(B, g, a, 3)[3], rtol=1e-9, atol=1e-12)
    assert solve_steihaug(lambda v: B @ v, g, 1.0, max_iters=0).reason == "cap"


def test_zero_gradient_returns_zero_step_without_products() -> None:
    calls = []
    res = solve_steihaug(lambda v: calls.append(1) or v, torch.zeros(4, dtype=DTYPE), 1.0)
    assert (res.reason, res.iterations, res.hit_boundary, len(calls)) == ("converged", 0, False, 0)
    assert torch.count_nonzero(res.step) == 0
    assert float(res.predicted_reduction) == 0.0


def test_iterations_count_products() -> None:
    B, g, a = problem(30, 13, indefinite=True, spherical=False)
    calls = []

    def matvec(v: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return B @ v

    for radius in (0.01, 1.0, 1e3):
        calls.clear()
        res = solve_steihaug(matvec, g, radius, norm_diag=a)
        assert res.iterations == len(calls) >= 1


def test_rejects_bad_arguments() -> None:
    g = torch.ones(3, dtype=DTYPE)
    with pytest.raises(ValueError, match="radius"):
        solve_steihaug(lambda v: v, g, 0.0)
    with pytest.raises(ValueError, match="radius"):
        solve_steihaug(lambda v: v, g, math.inf)
    with pytest.raises(ValueError, match="positive"):
        solve_steihaug(lambda v: v, g, 1.0, norm_diag=torch.tensor([1.0, -1.0, 1.0], dtype=DTYPE))
    with pytest.raises(ValueError, match="norm_diag"):
        solve_steihaug(lambda v: v, g, 1.0, norm_diag=torch.ones(2, dtype=DTYPE))
    with pytest.raises(ValueError, match="kappa"):
        solve_steihaug(lambda v: v, g, 1.0, kappa=0.0)

"""Exact trust-region solver and Cauchy point against SciPy, closed forms and the optimality conditions.

Oracles: ``scipy.optimize.minimize`` (SLSQP with the constraint ``Delta^2 - ||p||^2 >= 0``, several
starts, best feasible point kept), the closed-form hard-case and interior solutions, and the global
optimality conditions of Moré & Sorensen (Nocedal & Wright, Thm. 4.1).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from lightning_sqn.subproblem.exact import cauchy_point, solve_exact
from lightning_sqn.subproblem.result import SolverStatus

DTYPE = torch.float64


def model(B: torch.Tensor, g: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """m(p) = g^T p + 1/2 p^T B p for one p of shape (n,) or a batch of shape (k, n)."""
    return p @ g + 0.5 * ((p @ B) * p).sum(-1)


def random_orthogonal(n: int, gen: torch.Generator) -> torch.Tensor:
    Q, R = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=DTYPE))
    return Q * torch.sign(torch.diagonal(R))


def scipy_trust_region(B: torch.Tensor, g: torch.Tensor, radius: float, starts: int = 12) -> np.ndarray:
    """Best feasible SLSQP solution of the subproblem over several random starts."""
    Bn, gn = B.numpy(), g.numpy()
    n = gn.shape[0]
    rng = np.random.default_rng(1234)
    best, best_val = None, math.inf
    constraint = {"type": "ineq", "fun": lambda x: radius**2 - x @ x, "jac": lambda x: -2.0 * x}
    for _ in range(starts):
        x0 = rng.standard_normal(n)
        x0 *= rng.uniform(0.1, 0.9) * radius / np.linalg.norm(x0)
        out = minimize(
            lambda x: gn @ x + 0.5 * x @ Bn @ x,
            x0,
            jac=lambda x: gn + Bn @ x,
            method="SLSQP",
            constraints=[constraint],
            options={"ftol": 1e-15, "maxiter": 1000},
        )
        x = out.x * min(1.0, radius / np.linalg.norm(out.x))  # project onto the ball
        val = gn @ x + 0.5 * x @ Bn @ x
        if val < best_val:
            best, best_val = x, val
    return best


def random_feasible(n: int, radius: float, gen: torch.Generator, k: int = 4000) -> torch.Tensor:
    """Points uniform in the ball plus points on its boundary sphere."""
    d = torch.randn(k, n, generator=gen, dtype=DTYPE)
    d = d / torch.linalg.vector_norm(d, dim=1, keepdim=True)
    r = radius * torch.rand(k, 1, generator=gen, dtype=DTYPE) ** (1.0 / n)
    r[: k // 4] = radius
    return d * r


def assert_optimal(B: torch.Tensor, g: torch.Tensor, radius: float, res, gen: torch.Generator) -> None:
    """Moré–Sorensen global optimality conditions plus comparisons with feasible and Cauchy points."""
    n = g.shape[0]
    p, sigma = res.step, float(res.sigma)
    scale = float(torch.linalg.matrix_norm(B, ord=2)) * radius + float(torch.linalg.vector_norm(g)) + 1.0
    residual = torch.linalg.vector_norm((B + sigma * torch.eye(n, dtype=DTYPE)) @ p + g)
    assert residual <= 1e-10 * scale
    assert sigma >= 0.0
    assert sigma * abs(radius - float(torch.linalg.vector_norm(p))) <= 1e-10 * scale
    lam_min = float(torch.linalg.eigvalsh(B)[0])
    assert lam_min + sigma >= -1e-12 * scale
    assert torch.linalg.vector_norm(p) <= radius * (1 + 1e-10)
    torch.testing.assert_close(res.step_norm, torch.linalg.vector_norm(p), rtol=1e-14, atol=0)
    torch.testing.assert_close(res.predicted_reduction, -model(B, g, p), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(res.eigenvalues, torch.linalg.eigvalsh(B), rtol=1e-12, atol=1e-12)
    m_star = float(model(B, g, p))
    assert m_star <= float(model(B, g, random_feasible(n, radius, gen)).min()) + 1e-12 * scale
    assert m_star <= float(model(B, g, cauchy_point(B, g, radius).step)) + 1e-12 * scale


def assert_matches_scipy(B: torch.Tensor, g: torch.Tensor, radius: float, res, unique: bool = True) -> None:
    x = scipy_trust_region(B, g, radius)
    m_ref = float(model(B, g, torch.from_numpy(x)))
    scale = abs(m_ref) + 1.0
    assert float(model(B, g, res.step)) <= m_ref + 1e-12 * scale
    assert float(model(B, g, res.step)) == pytest.approx(m_ref, rel=1e-9, abs=1e-10)
    if unique:
        np.testing.assert_allclose(res.step.numpy(), x, rtol=0, atol=1e-5 * radius)


@pytest.mark.parametrize("seed", range(4))
def test_positive_definite_interior(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    n = 6
    A = torch.randn(n, n, generator=gen, dtype=DTYPE)
    B = A @ A.T + 0.5 * torch.eye(n, dtype=DTYPE)
    g = torch.randn(n, generator=gen, dtype=DTYPE)
    newton = torch.linalg.solve(B, -g)
    radius = 1.5 * float(torch.linalg.vector_norm(newton))
    res = solve_exact(B, g, radius)
    assert int(res.status) == SolverStatus.INTERIOR
    assert float(res.sigma) == 0.0
    assert not bool(res.hit_boundary)
    torch.testing.assert_close(res.step, newton, rtol=1e-12, atol=1e-12)
    assert_optimal(B, g, radius, res, gen)
    assert_matches_scipy(B, g, radius, res)


@pytest.mark.parametrize("seed", range(4))
def test_positive_definite_boundary(seed: int) -> None:
    gen = torch.Generator().manual_seed(10 + seed)
    n = 6
    A = torch.randn(n, n, generator=gen, dtype=DTYPE)
    B = A @ A.T + 0.1 * torch.eye(n, dtype=DTYPE)
    g = torch.randn(n, generator=gen, dtype=DTYPE)
    radius = 0.3 * float(torch.linalg.vector_norm(torch.linalg.solve(B, g)))
    res = solve_exact(B, g, radius)
    assert int(res.status) == SolverStatus.BOUNDARY
    assert float(res.sigma) > 0.0
    assert bool(res.hit_boundary)
    assert float(res.step_norm) == pytest.approx(radius, rel=1e-12)
    assert_optimal(B, g, radius, res, gen)
    assert_matches_scipy(B, g, radius, res)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("radius", [0.05, 1.0, 20.0])
def test_indefinite_boundary(seed: int, radius: float) -> None:
    gen = torch.Generator().manual_seed(100 + seed)
    n = 7
    A = torch.randn(n, n, generator=gen, dtype=DTYPE)
    B = A + A.T
    g = torch.randn(n, generator=gen, dtype=DTYPE)
    assert float(torch.linalg.eigvalsh(B)[0]) < 0
    res = solve_exact(B, g, radius)
    assert int(res.status) == SolverStatus.BOUNDARY
    assert float(res.sigma) > -float(res.eigenvalues[0])
    assert float(res.step_norm) == pytest.approx(radius, rel=1e-12)
    assert_optimal(B, g, radius, res, gen)
    assert_matches_scipy(B, g, radius, res)


@pytest.mark.parametrize("multiplicity", [1, 2])
@pytest.mark.parametrize("seed", range(3))
def test_hard_case(seed: int, multiplicity: int) -> None:
    gen = torch.Generator().manual_seed(200 + seed)
    n = 6
    Q = random_orthogonal(n, gen)
    lam = torch.tensor([-2.0] * multiplicity + [0.5, 1.0, 3.0, 4.0, 6.0][: n - multiplicity], dtype=DTYPE)
    B = Q @ torch.diag(lam) @ Q.T
    c = torch.randn(n - multiplicity, generator=gen, dtype=DTYPE)
    g = Q[:, multiplicity:] @ c  # orthogonal to the eigenspace of lambda_1 = -2
    p_hat = -Q[:, multiplicity:] @ (c / (lam[multiplicity:] + 2.0))  # p(-lambda_1) on the complement
    radius = 2.0 * float(torch.linalg.vector_norm(p_hat))
    res = solve_exact(B, g, radius)
    assert int(res.status) == SolverStatus.HARD_CASE
    assert float(res.sigma) == pytest.approx(2.0, rel=1e-12)
    assert bool(res.hit_boundary)
    # closed form: p = p_hat + tau z with z in the eigenspace of lambda_1, ||p|| = radius
    E1 = Q[:, :multiplicity]
    torch.testing.assert_close(res.step - E1 @ (E1.T @ res.step), p_hat, rtol=1e-10, atol=1e-12)
    tau = float(torch.linalg.vector_norm(E1.T @ res.step))
    assert tau == pytest.approx(math.sqrt(radius**2 - float(p_hat @ p_hat)), rel=1e-10)
    assert_optimal(B, g, radius, res, gen)
    assert_matches_scipy(B, g, radius, res, unique=False)


def test_hard_case_radius_too_small_is_boundary() -> None:
    """With ||p(-lambda_1)|| > radius the hard case does not occur even though g is orthogonal to q_1."""
    gen = torch.Generator().manual_seed(300)
    n = 5
    Q = random_orthogonal(n, gen)
    lam = torch.tensor([-1.0, 0.5, 1.0, 2.0, 3.0], dtype=DTYPE)
    B = Q @ torch.diag(lam) @ Q.T
    g = Q[:, 1:] @ torch.randn(n - 1, generator=gen, dtype=DTYPE)
    p_hat = -Q[:, 1:] @ ((Q[:, 1:].T @ g) / (lam[1:] + 1.0))
    radius = 0.5 * float(torch.linalg.vector_norm(p_hat))
    res = solve_exact(B, g, radius)
    assert int(res.status) == SolverStatus.BOUNDARY
    assert float(res.sigma) > 1.0
    assert_optimal(B, g, radius, res, gen)
    assert_matches_scipy(B, g, radius, res)


@pytest.mark.parametrize("eps_g", [1e-5, 1e-8])
def test_nearly_hard_case(eps_g: float) -> None:
    """A tiny component of g on q_1: secular equation with sigma just above -lambda_1."""
    gen = torch.Generator().manual_seed(400)
    n = 5
    Q = random_orthogonal(n, gen)
    lam = torch.tensor([-1.5, 0.5, 1.0, 2.0, 3.0], dtype=DTYPE)
    B = Q @ torch.diag(lam) @ Q.T
    coeff = torch.cat([torch.tensor([eps_g], dtype=DTYPE), torch.randn(n - 1, generator=gen, dtype=DTYPE)])
    g = Q @ coeff
    p_hat = -Q[:, 1:] @ (coeff[1:] / (lam[1:] + 1.5))
    radius = 2.0 * float(torch.linalg.vector_norm(p_hat))
    res = solve_exact(B, g, radius)
    assert int(res.status) == SolverStatus.BOUNDARY
    assert 1.5 < float(res.sigma) < 1.5 + 1e-3
    assert_optimal(B, g, radius, res, gen)
    assert_matches_scipy(B, g, radius, res, unique=False)
    # the q_1 component points along -sign(q_1^T g), as the sign convention of the hard case does
    assert float(Q[:, 0] @ res.step) < 0


def test_singular_psd_min_norm_interior() -> None:
    gen = torch.Generator().manual_seed(500)
    n = 5
    Q = random_orthogonal(n, gen)
    lam = torch.tensor([0.0, 0.5, 1.0, 2.0, 3.0], dtype=DTYPE)
    B = Q @ torch.diag(lam) @ Q.T
    g = Q[:, 1:] @ torch.randn(n - 1, generator=gen, dtype=DTYPE)
    expected = -torch.linalg.pinv(B, hermitian=True, rtol=1e-10) @ g
    radius = 3.0 * float(torch.linalg.vector_norm(expected))
    res = solve_exact(B, g, radius)
    assert int(res.status) == SolverStatus.INTERIOR
    assert float(res.sigma) == 0.0
    torch.testing.assert_close(res.step, expected, rtol=1e-10, atol=1e-12)
    assert_optimal(B, g, radius, res, gen)


def test_zero_gradient_positive_definite() -> None:
    gen = torch.Generator().manual_seed(600)
    A = torch.randn(4, 4, generator=gen, dtype=DTYPE)
    B = A @ A.T + torch.eye(4, dtype=DTYPE)
    g = torch.zeros(4, dtype=DTYPE)
    res = solve_exact(B, g, 0.7)
    assert int(res.status) == SolverStatus.ZERO_GRADIENT
    assert torch.equal(res.step, torch.zeros(4, dtype=DTYPE))
    assert float(res.sigma) == 0.0
    assert float(res.predicted_reduction) == 0.0
    assert not bool(res.hit_boundary)


def test_zero_gradient_indefinite() -> None:
    gen = torch.Generator().manual_seed(601)
    n = 5
    Q = random_orthogonal(n, gen)
    lam = torch.tensor([-3.0, -1.0, 0.5, 1.0, 2.0], dtype=DTYPE)
    B = Q @ torch.diag(lam) @ Q.T
    g = torch.zeros(n, dtype=DTYPE)
    radius = 0.7
    res = solve_exact(B, g, radius)
    assert int(res.status) == SolverStatus.HARD_CASE
    assert float(res.sigma) == pytest.approx(3.0, rel=1e-12)
    assert abs(float(Q[:, 0] @ res.step)) == pytest.approx(radius, rel=1e-12)
    # predicted reduction -1/2 lambda_1 radius^2, the global minimum of the model on the ball
    assert float(res.predicted_reduction) == pytest.approx(0.5 * 3.0 * radius**2, rel=1e-12)
    assert_optimal(B, g, radius, res, gen)


def test_radius_as_tensor_and_result_dtypes() -> None:
    gen = torch.Generator().manual_seed(700)
    A = torch.randn(4, 4, generator=gen, dtype=DTYPE)
    B, g = A + A.T, torch.randn(4, generator=gen, dtype=DTYPE)
    res_t = solve_exact(B, g, torch.tensor(0.8, dtype=DTYPE))
    res_f = solve_exact(B, g, 0.8)
    torch.testing.assert_close(res_t.step, res_f.step, rtol=0, atol=0)
    assert res_t.step.dtype == DTYPE and res_t.sigma.dtype == DTYPE
    assert res_t.status.dtype == torch.int64
    assert res_t.hit_boundary.dtype == torch.bool
    assert res_t.sigma.ndim == 0 and res_t.step_norm.ndim == 0
    assert res_t.eigenvalues.shape == (4,)


def test_only_symmetric_part_used() -> None:
    gen = torch.Generator().manual_seed(701)
    A = torch.randn(5, 5, generator=gen, dtype=DTYPE)
    g = torch.randn(5, generator=gen, dtype=DTYPE)
    torch.testing.assert_close(solve_exact(A, g, 0.5).step, solve_exact(0.5 * (A + A.T), g, 0.5).step)


@pytest.mark.parametrize(
    ("B", "g", "radius"),
    [
        (torch.eye(3, dtype=DTYPE), torch.ones(3, dtype=DTYPE), 0.0),
        (torch.eye(3, dtype=DTYPE), torch.ones(3, dtype=DTYPE), -1.0),
        (torch.eye(3, dtype=DTYPE), torch.ones(3, dtype=DTYPE), math.inf),
        (torch.eye(3, dtype=DTYPE), torch.ones(4, dtype=DTYPE), 1.0),
        (torch.ones(3, 2, dtype=DTYPE), torch.ones(3, dtype=DTYPE), 1.0),
    ],
)
def test_solve_exact_rejects_bad_input(B: torch.Tensor, g: torch.Tensor, radius: float) -> None:
    with pytest.raises(ValueError):
        solve_exact(B, g, radius)


# --------------------------------------------------------------------------------------------- Cauchy


def test_cauchy_point_closed_form_interior() -> None:
    B = torch.diag(torch.tensor([2.0, 4.0], dtype=DTYPE))
    g = torch.tensor([1.0, 1.0], dtype=DTYPE)
    # tau = ||g||^3 / (Delta g^T B g) = 2^{3/2} / 60 < 1: p = -(g^T g / g^T B g) g = -(1/3) g
    res = cauchy_point(B, g, 10.0)
    torch.testing.assert_close(res.step, torch.tensor([-1 / 3, -1 / 3], dtype=DTYPE), rtol=1e-15, atol=0)
    assert int(res.status) == SolverStatus.INTERIOR
    assert not bool(res.hit_boundary)
    assert float(res.predicted_reduction) == pytest.approx(1 / 3, rel=1e-14)  # (g^T g)^2 / (2 g^T B g)
    assert float(res.step_norm) == pytest.approx(math.sqrt(2) / 3, rel=1e-14)
    assert float(res.sigma) == 0.0
    assert res.eigenvalues.numel() == 0


def test_cauchy_point_closed_form_boundary() -> None:
    B = torch.diag(torch.tensor([2.0, 4.0], dtype=DTYPE))
    g = torch.tensor([1.0, 1.0], dtype=DTYPE)
    res = cauchy_point(B, g, 0.1)  # ||g||^3 / (Delta g^T B g) = 2^{3/2} / 0.6 > 1: tau = 1
    expected = -0.1 * g / math.sqrt(2)
    torch.testing.assert_close(res.step, expected, rtol=1e-15, atol=0)
    assert int(res.status) == SolverStatus.BOUNDARY
    assert bool(res.hit_boundary)
    assert float(res.step_norm) == pytest.approx(0.1, rel=1e-15)
    assert float(res.predicted_reduction) == pytest.approx(-float(model(B, g, expected)), rel=1e-14)


def test_cauchy_point_negative_curvature_goes_to_boundary() -> None:
    B = -torch.eye(3, dtype=DTYPE)
    g = torch.tensor([3.0, 0.0, 4.0], dtype=DTYPE)
    res = cauchy_point(B, g, 2.0)
    torch.testing.assert_close(res.step, -2.0 * g / 5.0, rtol=1e-15, atol=0)
    assert int(res.status) == SolverStatus.BOUNDARY
    # pred = Delta ||g|| + 1/2 Delta^2 = 10 + 2
    assert float(res.predicted_reduction) == pytest.approx(12.0, rel=1e-14)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("radius", [0.01, 0.5, 5.0])
def test_cauchy_point_minimises_model_along_negative_gradient(seed: int, radius: float) -> None:
    gen = torch.Generator().manual_seed(800 + seed)
    n = 6
    A = torch.randn(n, n, generator=gen, dtype=DTYPE)
    B = A + A.T if seed % 2 else A @ A.T
    g = torch.randn(n, generator=gen, dtype=DTYPE)
    res = cauchy_point(B, g, radius)
    t = torch.linspace(0.0, radius, 20001, dtype=DTYPE).unsqueeze(1)
    grid = -t * g / torch.linalg.vector_norm(g)
    m_grid = model(B, g, grid)
    m_c = float(model(B, g, res.step))
    assert m_c <= float(m_grid.min()) + 1e-14 * (1 + abs(m_c))
    assert float(res.step_norm) <= radius * (1 + 1e-14)
    torch.testing.assert_close(res.predicted_reduction, -model(B, g, res.step), rtol=1e-12, atol=1e-15)


def test_cauchy_point_accepts_operator_and_tensor_radius() -> None:
    gen = torch.Generator().manual_seed(900)
    A = torch.randn(5, 5, generator=gen, dtype=DTYPE)
    B = A @ A.T
    g = torch.randn(5, generator=gen, dtype=DTYPE)
    dense = cauchy_point(B, g, 0.3)
    op = cauchy_point(lambda v: B @ v, g, torch.tensor(0.3, dtype=DTYPE))
    for name in ("step", "sigma", "hit_boundary", "predicted_reduction", "status", "step_norm"):
        torch.testing.assert_close(getattr(op, name), getattr(dense, name), rtol=0, atol=0)


def test_cauchy_point_zero_gradient() -> None:
    res = cauchy_point(torch.eye(3, dtype=DTYPE), torch.zeros(3, dtype=DTYPE), 1.0)
    assert torch.equal(res.step, torch.zeros(3, dtype=DTYPE))
    assert int(res.status) == SolverStatus.ZERO_GRADIENT
    assert float(res.predicted_reduction) == 0.0
    assert float(res.step_norm) == 0.0
    assert not bool(res.hit_boundary)


def test_kkt_sweep_over_scales_and_near_hard_cases() -> None:
    """Optimality conditions on many random problems: eigenvalue scales 1e-3..1e3, radii 1e-3..1e3,
    repeated lambda_1, and g with a zero or tiny (1e-14, 1e-10, 1e-6) component on the eigenspace of
    lambda_1 (hard, nearly hard, and "hard-case candidate that ends on the secular equation")."""
    gen = torch.Generator().manual_seed(2024)
    seen = set()
    for t in range(240):
        n = int(torch.randint(1, 9, (1,), generator=gen))
        Q = random_orthogonal(n, gen)
        lam = torch.randn(n, generator=gen, dtype=DTYPE) * 10.0 ** float(
            torch.randint(-3, 4, (1,), generator=gen)
        )
        if t % 4 == 1 and n > 1:
            lam[1] = lam[0]
        a = torch.randn(n, generator=gen, dtype=DTYPE)
        if t % 4 >= 2:
            a[lam <= lam.min()] *= (0.0, 1e-14, 1e-10, 1e-6)[(t // 4) % 4]
        B = Q @ torch.diag(lam) @ Q.T
        g = Q @ a
        radius = 10.0 ** float(6.0 * torch.rand(1, generator=gen) - 3.0)
        res = solve_exact(B, g, radius)
        seen.add(int(res.status))
        p, sigma = res.step, float(res.sigma)
        scale = float(lam.abs().max()) * radius + float(torch.linalg.vector_norm(g)) + 1.0
        residual = torch.linalg.vector_norm((B + sigma * torch.eye(n, dtype=DTYPE)) @ p + g)
        assert residual <= 1e-10 * scale, t
        assert sigma * abs(radius - float(torch.linalg.vector_norm(p))) <= 1e-10 * scale, t
        assert float(lam.min()) + sigma >= -1e-12 * scale, t
        assert float(torch.linalg.vector_norm(p)) <= radius * (1 + 1e-10), t
    assert {0, 1, 2} <= seen

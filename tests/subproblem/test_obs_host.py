"""solve_obs_host (the NumPy OBS solver on the host) against the dense Moré-Sorensen oracle.

Every problem is solved from the host factors (``LSR1Matrix.factors()``, Psi^T g from the pair buffer)
under ``np.errstate(raise)``, so no inf or nan arithmetic passes silently, and checked against the
dense B = ``mat.to_dense()``:

* the step p = coef_g g + [S Y] coef, formed in float64, has the model value of
  ``solve_exact(B, g, radius)`` and is its step where the solution is unique (up to the sign of the
  eigenvector component in the hard case); the Moré-Sorensen conditions hold for (p, sigma) with B;
* the reported predicted reduction and ||p|| are those of p, and the m + 1 reported eigenvalues are
  those of B (the r parallel ones, then gamma; lambda_max as padding when Psi spans R^n);
* the status agrees with the oracle's, and the diagnostics fit it: one Newton evaluation in the
  interior and hard cases, a converged secular equation on the boundary, and residual_phi equal to
  Delta / ||p(sigma)|| - 1 measured with B;
* the coefficients have the layout the device combination needs: zero on inactive slots, the S half
  -gamma times the Y half.

tests/subproblem/test_obs.py checks the wrapper solve_obs on other problems; these tests cover what
it does not expose (coefficients, Newton diagnostics, rank_tol, inactive slots, the iteration cap).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lightning_sqn.qn.lsr1 import CompactFactors, LSR1Matrix
from lightning_sqn.subproblem.exact import solve_exact
from lightning_sqn.subproblem.obs import NEWTON_ITERS, HostOBSSolution, solve_obs_host
from lightning_sqn.subproblem.result import SolverStatus

DTYPE = torch.float64
INTERIOR, BOUNDARY = int(SolverStatus.INTERIOR), int(SolverStatus.BOUNDARY)
HARD, ZERO = int(SolverStatus.HARD_CASE), int(SolverStatus.ZERO_GRADIENT)
DEFAULT_RANK_TOL = float(np.finfo(np.float64).eps) ** (1.0 / 3.0)


# ----------------------------------------------------------------------------------------- problems


def quadratic(n: int, gen: torch.Generator, lo: float, hi: float) -> torch.Tensor:
    Q, R = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=DTYPE))
    Q = Q * torch.sign(torch.diagonal(R))
    return Q @ torch.diag(torch.linspace(lo, hi, n, dtype=DTYPE)) @ Q.T


def lsr1_from_pairs(A: torch.Tensor, m: int, k: int, gen: torch.Generator, *, gamma, noise: float):
    """L-SR1 matrix after k pairs (s, A s + noise) offered through update (skip rule, repair)."""
    n = A.shape[0]
    mat = LSR1Matrix(m, n, dtype=DTYPE, gamma=gamma)
    for _ in range(k):
        s = torch.randn(n, generator=gen, dtype=DTYPE)
        mat.update(s, A @ s + noise * torch.randn(n, generator=gen, dtype=DTYPE))
    return mat


def pd_matrix(n: int, m: int, gen: torch.Generator, k: int | None = None) -> LSR1Matrix:
    """gamma="eigen" on a positive definite quadratic: B > 0. ``k`` < m pairs leave the memory partly
    full."""
    mat = lsr1_from_pairs(
        quadratic(n, gen, 0.5, 6.0), m, m + 2 if k is None else k, gen, gamma="eigen", noise=0.05
    )
    assert float(torch.linalg.eigvalsh(mat.to_dense())[0]) > 0
    return mat


def indefinite_matrix(n: int, m: int, gen: torch.Generator, k: int | None = None) -> LSR1Matrix:
    mat = lsr1_from_pairs(
        quadratic(n, gen, -3.0, 4.0), m, m + 2 if k is None else k, gen, gamma=1.0, noise=0.05
    )
    assert float(torch.linalg.eigvalsh(mat.to_dense())[0]) < -0.1
    return mat


def dense(mat: LSR1Matrix) -> torch.Tensor:
    B = mat.to_dense()
    return 0.5 * (B + B.T)


def newton_norm(mat: LSR1Matrix, g: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(torch.linalg.solve(dense(mat), g)))


def hard_case_problem(n: int, m: int, seed: int, eps_g: float = 0.0, shrink: float = 3.0):
    """Indefinite B, g orthogonal to the eigenvector z of lambda_min (plus eps_g ||g|| z), and a radius
    ``shrink`` times ||p(-lambda_min)||."""
    gen = torch.Generator().manual_seed(seed)
    mat = indefinite_matrix(n, m, gen)
    lam, Q = torch.linalg.eigh(dense(mat))
    assert float(lam[1] - lam[0]) > 0.1  # simple lambda_min
    z = Q[:, 0]
    g = torch.randn(n, generator=gen, dtype=DTYPE)
    g = g - (g @ z) * z
    g = g + eps_g * float(torch.linalg.vector_norm(g)) * z
    p_hat = -Q[:, 1:] @ ((Q[:, 1:].T @ g) / (lam[1:] - lam[0]))
    return mat, g, shrink * float(torch.linalg.vector_norm(p_hat))


def write_pairs(mat: LSR1Matrix, S: torch.Tensor, Y: torch.Tensor) -> None:
    """Store pairs directly in the memory (no skip rule, no rank repair)."""
    for s, y in zip(S, Y, strict=True):
        mat.memory.append(s, y)
    mat._invalidate()


def rank_deficient_matrix(n: int, m: int, rank: int, seed: int, psi_scale: float) -> LSR1Matrix:
    """m pairs with Psi = Y - gamma S of rank ``rank`` (collinear columns), M^{-1} nonsingular."""
    gen = torch.Generator().manual_seed(seed)
    S = torch.randn(m, n, generator=gen, dtype=DTYPE)
    W = torch.randn(rank, n, generator=gen, dtype=DTYPE)
    C = torch.randn(m, rank, generator=gen, dtype=DTYPE)
    mat = LSR1Matrix(m, n, gamma=1.0)
    write_pairs(mat, S, S + psi_scale * (C @ W))
    assert int(torch.linalg.matrix_rank(torch.from_numpy(mat.factors().gram), rtol=1e-8)) == rank
    return mat


def truncated_dense(mat: LSR1Matrix, rank_tol: float) -> torch.Tensor:
    """gamma I + Psi_k M Psi_k^T with Psi_k = Psi V_k V_k^T, V_k the eigenvectors of Psi^T Psi that the
    rank rule keeps (e > rank_tol^2 max e): the matrix OBS solves for when it drops directions."""
    f = mat.factors()
    idx = np.flatnonzero(f.mask)
    mem = mat.memory
    S, Y = mem.S.numpy()[idx], mem.Y.numpy()[idx]
    Psi = (Y - f.b0 * S).T  # (n, k)
    e, V = np.linalg.eigh(Psi.T @ Psi)
    Vk = V[:, e > rank_tol**2 * e.max()]
    Psi_k = Psi @ Vk @ Vk.T
    B = f.b0 * np.eye(mem.n) + Psi_k @ f.middle[np.ix_(idx, idx)] @ Psi_k.T
    return torch.from_numpy(0.5 * (B + B.T))


# ----------------------------------------------------------------------------------------- checks


def factors_and_psi_g(mat: LSR1Matrix, g: torch.Tensor) -> tuple[CompactFactors, np.ndarray]:
    f = mat.factors(primal=True)
    return f, f.psi_t(mat.memory.project(g).numpy())


def solve_host(f: CompactFactors, psi_g: np.ndarray, g_norm_sq: float, radius: float, n: int, **kw):
    args = (f.b0, f.mask, f.gram, f.middle, psi_g, g_norm_sq, radius, n)
    with np.errstate(divide="raise", invalid="raise", over="raise"):  # no silent inf / nan arithmetic
        return solve_obs_host(*args, **kw)


def step_of(mat: LSR1Matrix, g: torch.Tensor, coef_g, coef) -> np.ndarray:
    """p = coef_g g + [S Y] coef in float64."""
    return float(coef_g) * g.numpy() + mat.memory.SY_buf.numpy().T @ np.asarray(coef)


def parallel_rank(f: CompactFactors, rank_tol: float) -> int:
    """r, the rank of Psi by the solver's rule (eigenvalues of Psi^T Psi above rank_tol^2 of the largest)."""
    idx = np.flatnonzero(f.mask)
    if idx.size == 0:
        return 0
    e = np.linalg.eigvalsh(f.gram[np.ix_(idx, idx)])
    return int(np.sum(e > rank_tol**2 * max(e[-1], np.finfo(float).tiny)))


def expected_eigenvalues(lam: np.ndarray, gamma: float, r: int, m: int) -> np.ndarray:
    """The m + 1 eigenvalues OBS reports, from the dense spectrum ``lam`` (ascending): the r parallel
    ones and gamma (m + 1 - r times) when r < n; all n and lambda_max as padding when r = n."""
    n = lam.size
    if r < n:
        perp = np.argsort(np.abs(lam - gamma), kind="stable")[: n - r]  # the gamma eigenspace
        par = np.delete(lam, perp)
        return np.sort(np.concatenate((par, np.full(m + 1 - r, gamma))))
    return np.concatenate((lam, np.full(m + 1 - n, lam[-1])))


def check_layout(host: HostOBSSolution, f: CompactFactors, newton_iters: int) -> None:
    """Shapes, coefficient layout and the Newton diagnostics that follow from the status alone."""
    m = f.mask.shape[0]
    assert isinstance(host.coef, np.ndarray) and host.coef.dtype == np.float64
    assert host.coef.shape == (2 * m,) and host.eigenvalues.shape == (m + 1,)
    coef = host.coef.reshape(2, m)
    assert not coef[:, ~f.mask].any()  # inactive slots stay out of the combination
    np.testing.assert_array_equal(coef[0], -f.b0 * coef[1])  # [S Y] coef = Psi w, Psi = Y - gamma S
    assert np.all(np.diff(host.eigenvalues) >= 0)
    assert host.hit_boundary == (host.status in (BOUNDARY, HARD))
    assert isinstance(host.newton_iterations, int) and 1 <= host.newton_iterations <= newton_iters
    if host.status != BOUNDARY:  # phi >= 0 at the start: one evaluation, no Newton step
        assert host.newton_iterations == 1
    assert host.sigma >= 0.0 and not math.isnan(host.residual_phi)


def check(
    mat: LSR1Matrix,
    g: torch.Tensor,
    radius: float,
    *,
    status: int | None = None,
    oracle_status: int | None = None,
    B: torch.Tensor | None = None,
    **kw,
) -> HostOBSSolution:
    """Solve on the host and compare with the dense oracle on ``B`` (default: ``dense(mat)``).

    ``status``: the expected status of both solvers (``oracle_status`` for the oracle if it differs);
    without it the two statuses must agree. ``kw`` goes to solve_obs_host (rank_tol defaults to the
    matrix's).
    """
    n, m = mat.memory.n, mat.memory.slots  # OBS reports one eigenvalue per slot, plus one
    kw.setdefault("rank_tol", mat.rank_tol)
    newton_iters = kw.get("newton_iters", NEWTON_ITERS)
    f, psi_g = factors_and_psi_g(mat, g)
    host = solve_host(f, psi_g, float(g @ g), radius, n, **kw)
    check_layout(host, f, newton_iters)

    B_t = dense(mat) if B is None else B
    B = B_t.numpy()
    lam, Q = np.linalg.eigh(B)
    p = step_of(mat, g, host.coef_g, host.coef)
    gn = g.numpy()
    model = float(gn @ p + 0.5 * p @ B @ p)
    p_norm = float(np.linalg.norm(p))
    b_norm = float(np.abs(lam).max())
    g_norm = float(np.linalg.norm(gn))
    mscale = (b_norm * radius + g_norm) * radius

    # The reported values are those of the step, and the eigenvalues those of B.
    assert host.predicted_reduction == pytest.approx(-model, rel=1e-9, abs=1e-12 * mscale)
    assert host.step_norm == pytest.approx(p_norm, rel=1e-9, abs=1e-300)
    assert p_norm <= radius * (1 + 1e-10)
    r = parallel_rank(f, kw["rank_tol"] if kw["rank_tol"] is not None else DEFAULT_RANK_TOL)
    eig = expected_eigenvalues(lam, f.b0, r, m)
    np.testing.assert_allclose(host.eigenvalues, eig, rtol=1e-9, atol=1e-10 * b_norm)
    assert (host.coef_g == 0.0) == (r == n)  # the g term is the perpendicular part

    # Moré-Sorensen optimality with the dense B.
    resid = float(np.linalg.norm(B @ p + host.sigma * p + gn))
    assert resid <= 1e-9 * g_norm + 1e-12 * (b_norm * radius + g_norm)
    assert lam[0] + host.sigma >= -1e-9 * b_norm
    assert host.sigma * abs(radius - p_norm) <= 1e-9 * (host.sigma + b_norm) * radius

    # The dense oracle: same status, same model value, the same step where it is unique.
    ex = solve_exact(B_t, g, radius)
    q = ex.step.numpy()
    model_ex = float(gn @ q + 0.5 * q @ B @ q)
    assert model == pytest.approx(model_ex, rel=1e-9, abs=1e-12 * mscale)
    if status is not None:
        assert host.status == status
        assert int(ex.status) == (status if oracle_status is None else oracle_status)
    else:
        assert host.status == int(ex.status)
    if host.status == HARD:
        assert host.sigma == pytest.approx(-lam[0], rel=1e-9)
        if lam[1] - lam[0] > 1e-6 * b_norm:  # simple lambda_min: unique up to the sign along z
            z, tol = Q[:, 0], 1e-8 * radius
            np.testing.assert_allclose(p - (p @ z) * z, q - (q @ z) * z, rtol=0, atol=tol)
            assert abs(p @ z) == pytest.approx(abs(q @ z), abs=tol)
    elif host.status != ZERO:
        assert float(np.linalg.norm(p - q)) <= 1e-7 * float(np.linalg.norm(q)) + 1e-300
        assert host.sigma == pytest.approx(float(ex.sigma), rel=1e-7, abs=1e-9 * b_norm)

    # residual_phi = |Delta / ||p(sigma)|| - 1| at the last iterate (without the tau z of the hard case).
    if host.status == INTERIOR:
        assert host.residual_phi == pytest.approx(radius / p_norm - 1.0, rel=1e-7, abs=1e-12)
    elif host.status == BOUNDARY:
        assert host.residual_phi <= 1e-10  # converged within the cap
    else:
        E1 = Q[:, lam <= lam[0] + 1e-9 * b_norm]
        p_hat = float(np.linalg.norm(p - E1 @ (E1.T @ p)))
        if p_hat <= 1e-12 * radius:  # g = 0: nothing but the eigenvector (or nothing at all)
            assert math.isinf(host.residual_phi)
        else:
            assert host.residual_phi == pytest.approx(radius / p_hat - 1.0, rel=1e-7)
    return host


# ----------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize(("n", "m", "seed"), [(10, 3, 40), (20, 5, 41), (30, 8, 42), (40, 12, 43)], ids=str)
def test_positive_definite(n, m, seed) -> None:
    gen = torch.Generator().manual_seed(seed)
    mat = pd_matrix(n, m, gen)
    g = torch.randn(n, generator=gen, dtype=DTYPE)
    nn = newton_norm(mat, g)
    host = check(mat, g, 2.0 * nn, status=INTERIOR)
    assert host.sigma == 0.0 and not host.hit_boundary
    for shrink in (0.999, 0.7, 0.05, 1e-4):
        host = check(mat, g, shrink * nn, status=BOUNDARY)
        assert host.sigma > 0 and host.hit_boundary


@pytest.mark.parametrize(("n", "m", "seed"), [(10, 3, 44), (20, 5, 45), (30, 4, 46), (40, 10, 47)], ids=str)
def test_indefinite_boundary(n, m, seed) -> None:
    gen = torch.Generator().manual_seed(seed)
    mat = indefinite_matrix(n, m, gen)
    g = torch.randn(n, generator=gen, dtype=DTYPE)
    for radius in (1e-3, 0.05, 1.0, 30.0, 1e4):
        check(mat, g, radius, status=BOUNDARY)


@pytest.mark.parametrize(("n", "m", "seed"), [(10, 3, 48), (20, 5, 49), (16, 4, 50)], ids=str)
def test_hard_case(n, m, seed) -> None:
    mat, g, radius = hard_case_problem(n, m, seed)
    check(mat, g, radius, status=HARD)  # the sign of tau z follows rounding noise in g^T z
    # A component of g on z below the solver's threshold (above the oracle's, which then reports a
    # nearly hard boundary step): the sign of tau z is decided, tau g^T z <= 0.
    for eps_g in (1e-10, -1e-10):
        mat, g, radius = hard_case_problem(n, m, seed, eps_g)
        host = check(mat, g, radius, status=HARD, oracle_status=BOUNDARY)
        z = np.linalg.eigh(dense(mat).numpy())[1][:, 0]
        assert float(step_of(mat, g, host.coef_g, host.coef) @ z) * float(g.numpy() @ z) < 0
    # ||p(-lambda_min)|| > Delta: boundary, not the hard case.
    mat, g, radius = hard_case_problem(n, m, seed, shrink=0.5)
    check(mat, g, radius, status=BOUNDARY)


@pytest.mark.parametrize("eps_g", [1e-3, 1e-5, 1e-7])
@pytest.mark.parametrize(("n", "m", "seed"), [(12, 4, 51), (20, 5, 52)], ids=str)
def test_nearly_hard_case(n, m, seed, eps_g) -> None:
    mat, g, radius = hard_case_problem(n, m, seed, eps_g)
    host = check(mat, g, radius, status=BOUNDARY)
    lam_min = float(np.linalg.eigvalsh(dense(mat).numpy())[0])
    assert 0 < host.sigma + lam_min < 10 * eps_g * float(torch.linalg.vector_norm(g)) / radius


@pytest.mark.parametrize("case", ["interior", "boundary", "indefinite"])
@pytest.mark.parametrize(("n", "m", "rank", "seed"), [(12, 4, 2, 17), (12, 5, 1, 18), (3, 4, 2, 15)], ids=str)
def test_rank_deficient_psi(case, n, m, rank, seed) -> None:
    """Collinear columns of Psi: the dropped directions join the perpendicular space (also when m > n)."""
    mat = rank_deficient_matrix(n, m, rank, seed, 1.0 if case == "indefinite" else 0.05)
    gen = torch.Generator().manual_seed(seed + 100)
    g = torch.randn(n, generator=gen, dtype=DTYPE)
    lam_min = float(torch.linalg.eigvalsh(dense(mat))[0])
    if case == "indefinite":
        assert lam_min < 0
        check(mat, g, 1.0, status=BOUNDARY)
        return
    assert lam_min > 0
    nn = newton_norm(mat, g)
    if case == "interior":
        check(mat, g, 2.0 * nn, status=INTERIOR)
    else:
        check(mat, g, 0.3 * nn, status=BOUNDARY)


def test_rank_tol_is_passed_on() -> None:
    """A large rank_tol drops directions of a full-rank Psi: the solution is then the exact one for B
    with Psi projected onto the kept directions (built densely), and fewer eigenvalues differ from
    gamma."""
    gen = torch.Generator().manual_seed(19)
    mat = indefinite_matrix(10, 5, gen)
    g = torch.randn(10, generator=gen, dtype=DTYPE)
    kept = []
    for rank_tol in (None, 1e-3, 0.1, 0.5):
        B = truncated_dense(mat, DEFAULT_RANK_TOL if rank_tol is None else rank_tol)
        for radius in (0.1, 100.0):
            host = check(mat, g, radius, B=B, rank_tol=rank_tol)
        kept.append(int(np.sum(host.eigenvalues != 1.0)))  # gamma = 1: the parallel eigenvalues
    assert kept[0] == 5 and kept[-1] < 5


@pytest.mark.parametrize(("n", "m", "k", "seed"), [(10, 8, 3, 20), (25, 12, 5, 21), (15, 6, 1, 22)], ids=str)
def test_memory_partly_full(n, m, k, seed) -> None:
    gen = torch.Generator().manual_seed(seed)
    mat = pd_matrix(n, m, gen, k=k)
    assert 1 <= int(mat.memory.count()) < m
    g = torch.randn(n, generator=gen, dtype=DTYPE)
    nn = newton_norm(mat, g)
    check(mat, g, 2.0 * nn, status=INTERIOR)
    check(mat, g, 0.2 * nn, status=BOUNDARY)
    mat = indefinite_matrix(n, m, gen, k=max(k, 3))
    assert int(mat.memory.count()) < m
    check(mat, g, 0.5, status=BOUNDARY)


def test_inactive_slots_anywhere() -> None:
    """Inactive slots between active ones (as rank repair leaves them): the same solution, with zero
    coefficients on the inactive slots; both for the compact factors embedded by hand and for a real
    memory whose pairs sit among deactivated ones."""
    gen = torch.Generator().manual_seed(23)
    n, m = 14, 4
    mat = indefinite_matrix(n, m, gen)
    g = torch.randn(n, generator=gen, dtype=DTYPE)
    f, psi_g = factors_and_psi_g(mat, g)
    act = np.flatnonzero(f.mask)
    assert act.size == m  # every pair is active; the memory's spare slot is the one inactive slot
    ia = np.ix_(act, act)
    slots = np.array([1, 2, 4, 6])  # the 4 pairs placed among 7 slots
    M = 7
    mask = np.zeros(M, dtype=bool)
    mask[slots] = True
    gram, middle = np.zeros((M, M)), np.zeros((M, M))
    gram[np.ix_(slots, slots)] = f.gram[ia]
    middle[np.ix_(slots, slots)] = f.middle[ia]
    pg = np.zeros(M)
    pg[slots] = psi_g[act]
    holey = CompactFactors(f.b0, mask, gram, middle, True)

    # The same pairs in time order in slots 1, 2, 4, 6 of a 7-pair memory; slots 0, 3, 5 hold other
    # pairs, then deactivated (slot 7 is that memory's spare).
    order = act[np.argsort(mat.memory.serial[act])]
    pairs = iter(zip(mat.memory.S[order], mat.memory.Y[order], strict=True))
    mat7 = LSR1Matrix(M, n, gamma=mat.gamma)
    for j in range(M):
        s, y = next(pairs) if mask[j] else torch.randn(2, n, generator=gen, dtype=DTYPE)
        assert mat7.memory.append(s, y) == j
    mat7.memory.keep(np.append(mask, False))
    mat7._invalidate()
    torch.testing.assert_close(mat7.to_dense(), mat.to_dense(), rtol=1e-12, atol=1e-12)

    for radius in (0.05, 1.0, 50.0):
        compact = check(mat, g, radius, status=BOUNDARY)
        host = solve_host(holey, pg, float(g @ g), radius, n, rank_tol=mat.rank_tol)
        check_layout(host, holey, NEWTON_ITERS)
        coef = host.coef.reshape(2, M)
        compact_coef = compact.coef.reshape(2, m + 1)[:, act]
        np.testing.assert_allclose(coef[:, mask], compact_coef, rtol=1e-12, atol=1e-14)
        assert host.sigma == pytest.approx(compact.sigma, rel=1e-13)
        assert host.coef_g == pytest.approx(compact.coef_g, rel=1e-13)
        in_memory = check(mat7, g, radius, status=BOUNDARY)
        coef = in_memory.coef.reshape(2, M + 1)[:, :M]
        expected = compact.coef.reshape(2, m + 1)[:, order]  # mat7 holds the pairs in time order
        np.testing.assert_allclose(coef[:, mask], expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(("n", "m", "seed"), [(3, 5, 24), (4, 4, 25), (2, 3, 26)], ids=str)
@pytest.mark.parametrize("case", ["interior", "boundary", "indefinite"])
def test_no_perpendicular_space(n, m, seed, case) -> None:
    """Psi spans R^n (n <= number of pairs): no gamma eigenspace, eigenvalues padded with lambda_max."""
    gen = torch.Generator().manual_seed(seed)
    indefinite = case == "indefinite"
    A = quadratic(n, gen, -2.0, 3.0) if indefinite else quadratic(n, gen, 1.0, 4.0)
    mat = lsr1_from_pairs(A, m, 3 * m, gen, gamma=1.0 if indefinite else "eigen", noise=0.3)
    assert int(torch.linalg.matrix_rank(torch.from_numpy(mat.factors().gram), rtol=1e-8)) == n
    g = torch.randn(n, generator=gen, dtype=DTYPE)
    if indefinite:
        assert float(torch.linalg.eigvalsh(dense(mat))[0]) < 0
        host = check(mat, g, 1.0, status=BOUNDARY)
    else:
        interior = case == "interior"
        radius = (2.0 if interior else 0.3) * newton_norm(mat, g)
        host = check(mat, g, radius, status=INTERIOR if interior else BOUNDARY)
    assert host.coef_g == 0.0
    np.testing.assert_allclose(host.eigenvalues[n:], host.eigenvalues[-1], rtol=1e-12)


@pytest.mark.parametrize("gamma", [0.5, 3.0])
def test_empty_memory_is_scaled_identity(gamma) -> None:
    n = 9
    mat = LSR1Matrix(4, n, gamma=gamma)
    g = torch.randn(n, generator=torch.Generator().manual_seed(27), dtype=DTYPE)
    g_norm = float(torch.linalg.vector_norm(g))
    host = check(mat, g, 2.0 * g_norm / gamma, status=INTERIOR)
    assert host.coef_g == pytest.approx(-1.0 / gamma, rel=1e-15) and not host.coef.any()
    radius = 0.1 * g_norm / gamma
    host = check(mat, g, radius, status=BOUNDARY)
    assert host.sigma == pytest.approx(g_norm / radius - gamma, rel=1e-12)
    assert np.all(host.eigenvalues == gamma)


def test_zero_gradient() -> None:
    gen = torch.Generator().manual_seed(28)
    n, m = 10, 4
    g = torch.zeros(n, dtype=DTYPE)
    mat = pd_matrix(n, m, gen)
    host = check(mat, g, 1.0, status=ZERO)
    assert host.predicted_reduction == 0.0 and host.step_norm == 0.0 and not host.hit_boundary
    assert not host.coef.any() and not step_of(mat, g, host.coef_g, host.coef).any()  # coef_g = -1/gamma
    # Indefinite B and g = 0: radius times an eigenvector of lambda_min (its sign is arbitrary; check
    # compares the model value and the step up to that sign).
    mat = indefinite_matrix(n, m, gen)
    host = check(mat, g, 2.0, status=HARD)
    lam0 = float(torch.linalg.eigvalsh(dense(mat))[0])
    assert host.predicted_reduction == pytest.approx(-0.5 * lam0 * 4.0, rel=1e-10)
    assert host.step_norm == pytest.approx(2.0, rel=1e-12)


@pytest.mark.parametrize("newton_iters", [1, 2, NEWTON_ITERS, 200])
def test_newton_cap_and_safeguard(newton_iters) -> None:
    """Cut short (1 or 2 iterations), the iterate lies left of the root and the step p(sigma) is scaled
    back onto the sphere: feasible, (B + sigma I) p = -c g with 0 < c < 1, no better than the exact
    solution, and reported as what it is. With the default cap or more, the exact solution, the same for
    any cap above the iterations needed."""
    gen = torch.Generator().manual_seed(29)
    n, m = 20, 5
    mat = indefinite_matrix(n, m, gen)
    g = torch.randn(n, generator=gen, dtype=DTYPE)
    radius = 0.05  # far from sigma_0: one or two Newton steps do not reach the root
    if newton_iters >= NEWTON_ITERS:
        host = check(mat, g, radius, status=BOUNDARY, newton_iters=newton_iters)
        assert 2 < host.newton_iterations < NEWTON_ITERS
        f, psi_g = factors_and_psi_g(mat, g)
        default = solve_host(f, psi_g, float(g @ g), radius, n, rank_tol=mat.rank_tol)
        np.testing.assert_array_equal(host.coef, default.coef)
        assert host.sigma == default.sigma and host.newton_iterations == default.newton_iterations
        return

    f, psi_g = factors_and_psi_g(mat, g)
    host = solve_host(f, psi_g, float(g @ g), radius, n, rank_tol=mat.rank_tol, newton_iters=newton_iters)
    check_layout(host, f, newton_iters)
    assert host.newton_iterations == newton_iters and host.status == BOUNDARY
    B_t = dense(mat)
    B, gn = B_t.numpy(), g.numpy()
    ex = solve_exact(B_t, g, radius)
    assert int(ex.status) == BOUNDARY
    assert 0 < host.sigma < float(ex.sigma)  # really cut short
    assert host.residual_phi > 1e-6 and math.isfinite(host.residual_phi)
    p = step_of(mat, g, host.coef_g, host.coef)
    p_norm = float(np.linalg.norm(p))
    assert p_norm <= radius * (1 + 1e-10)
    assert p_norm == pytest.approx(radius, rel=1e-10)
    assert host.step_norm == pytest.approx(radius, rel=1e-10)
    # p = c p(sigma): (B + sigma I) p = -c g with 0 < c < 1 (the scale that brings p(sigma) back).
    Bp = B @ p + host.sigma * p
    c = -float(gn @ Bp) / float(gn @ gn)
    assert 0 < c < 1
    assert float(np.linalg.norm(Bp + c * gn)) <= 1e-9 * float(np.linalg.norm(gn))
    model = float(gn @ p + 0.5 * p @ B @ p)
    q = ex.step.numpy()
    model_ex = float(gn @ q + 0.5 * q @ B @ q)
    assert host.predicted_reduction == pytest.approx(-model, rel=1e-9)
    assert model >= model_ex - 1e-9 * abs(model_ex)
    lam = np.linalg.eigvalsh(B)
    eig = expected_eigenvalues(lam, f.b0, parallel_rank(f, mat.rank_tol), mat.memory.slots)
    np.testing.assert_allclose(host.eigenvalues, eig, rtol=1e-9, atol=1e-10 * float(np.abs(lam).max()))


def test_many_random_problems() -> None:
    """Random mixes of the cases above (sizes, memory fill, definiteness, radius over 6 decades)."""
    gen = torch.Generator().manual_seed(30)
    statuses = set()
    for trial in range(60):
        n = int(torch.randint(3, 40, (), generator=gen))
        m = int(torch.randint(1, 12, (), generator=gen))
        k = int(torch.randint(1, m + 3, (), generator=gen))
        lo = -3.0 if trial % 2 else 0.5
        mat = lsr1_from_pairs(
            quadratic(n, gen, lo, 5.0), m, k, gen, gamma=1.0 if trial % 2 else "eigen", noise=0.05
        )
        g = torch.randn(n, generator=gen, dtype=DTYPE)
        if trial % 5 == 4 and float(torch.linalg.eigvalsh(dense(mat))[0]) < -0.1:
            lam, Q = torch.linalg.eigh(dense(mat))
            if float(lam[1] - lam[0]) > 1e-3:
                z = Q[:, 0]
                g = g - (g @ z) * z + 10.0 ** -float(torch.randint(3, 8, (), generator=gen)) * z
        radius = 10.0 ** float(torch.empty(()).uniform_(-3, 3, generator=gen))
        host = check(mat, g, radius)
        statuses.add(host.status)
    assert {INTERIOR, BOUNDARY} <= statuses

"""Compact L-SR1 (LSR1Matrix) against the dense SR1 recursion, its dual, SciPy's SR1 and closed forms.

Oracles:

* the SR1 recursion B_{j+1} = B_j + r r^T / (r^T s), r = y - B_j s (Nocedal & Wright eq. 6.24) started
  at B_0 = gamma I with the *current* gamma and applied to exactly the active pairs in time order (read
  from ``memory.active`` / ``memory.serial``); the dual recursion H_{j+1} = H_j + u u^T / (u^T y),
  u = s - H_j y (eq. 6.25) from H_0 = I / gamma; inv(B);
* ``scipy.optimize.SR1`` fed the same pairs with ``init_scale`` fixed to gamma (1 / gamma for H);
* the skip rule, the rank repair and the gamma rules evaluated directly from their definitions.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import scipy.linalg
import scipy.optimize
import torch
from pair_state import assert_state_equal, clone_state
from pairs import active_pairs

from lightning_sqn.qn.lsr1 import LSR1Matrix

DTYPE = torch.float64


# ----------------------------------------------------------------------------------------- helpers


def sr1_recursion(U: torch.Tensor, V: torch.Tensor, M0: torch.Tensor) -> tuple[torch.Tensor, float]:
    """M_{j+1} = M_j + r r^T / (r^T u), r = v - M_j u over the rows (u, v) of (U, V), from M0.

    Also returns the smallest |r^T u| / (||r|| ||u||) met, so callers can tell that the reference
    itself is well defined.
    """
    M = M0.clone()
    worst = math.inf
    for u, v in zip(U, V, strict=True):
        r = v - M @ u
        den = r @ u
        worst = min(worst, float(den.abs() / (torch.linalg.vector_norm(r) * torch.linalg.vector_norm(u))))
        M = M + torch.outer(r, r) / den
    return M, worst


def dense_reference(mat: LSR1Matrix) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """(B, H) from the recursions on the active pairs with the current gamma, and their worst cosines."""
    n = mat.memory.n
    S, Y = active_pairs(mat)
    eye = torch.eye(n, dtype=DTYPE)
    gamma = float(mat.gamma)
    B, wb = sr1_recursion(S, Y, gamma * eye)
    H, wh = sr1_recursion(Y, S, eye / gamma)
    return B, H, wb, wh


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b).clamp_min(1e-300))


def random_orthogonal(n: int, gen: torch.Generator) -> torch.Tensor:
    Q, R = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=DTYPE))
    return Q * torch.sign(torch.diagonal(R))


def quadratic(n: int, gen: torch.Generator, lo: float, hi: float) -> torch.Tensor:
    Q = random_orthogonal(n, gen)
    return Q @ torch.diag(torch.linspace(lo, hi, n, dtype=DTYPE)) @ Q.T


def orthogonal_part(v: torch.Tensor, to: torch.Tensor) -> torch.Tensor:
    return v - (v @ to) / (to @ to) * to


def rejected_pair(mat: LSR1Matrix, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A pair the skip rule of ``mat.form`` rejects: u^T (v - M u) = 0, (M, u, v) = (B, s, y) or (H, y, s)."""
    n = mat.memory.n
    u = torch.randn(n, generator=gen, dtype=DTYPE)
    r = orthogonal_part(torch.randn(n, generator=gen, dtype=DTYPE), u)
    if mat.form == "B":
        return u, mat.mv(u) + r
    return mat.inv_mv(u) + r, u


def middle_inverse(S: torch.Tensor, Y: torch.Tensor, b0: float) -> torch.Tensor:
    """D + L + L^T - b0 S^T S for the pairs as rows in time order (L strictly lower of S^T Y)."""
    SY = S @ Y.T
    L = torch.tril(SY, -1)
    return torch.diag(torch.diagonal(SY)) + L + L.T - b0 * (S @ S.T)


# --------------------------------------------------------------------------- compact = recursion


@pytest.mark.parametrize(
    ("n", "m", "seed"), [(8, 3, 0), (13, 4, 1), (30, 5, 2), (20, 5, 3)], ids=lambda v: str(v)
)
@pytest.mark.parametrize("gamma", ["scaled", "eigen", 0.7])
@pytest.mark.parametrize("form", ["B", "H"])
def test_compact_equals_sr1_recursion_over_a_run(form, gamma, n, m, seed) -> None:
    """Many updates (ring buffer wraps, rejected pairs interleaved): B, H and products match the recursion."""
    gen = torch.Generator().manual_seed(seed)
    A = quadratic(n, gen, -2.0, 5.0) if gamma != "eigen" else quadratic(n, gen, 0.5, 5.0)
    mat = LSR1Matrix(m, n, form=form, gamma=gamma, gamma_init=1.3)
    stored_total, compared = 0, 0
    for k in range(3 * m + 2):
        if k % 4 == 3:
            s, y = rejected_pair(mat, gen)
            expect_stored = False
        else:
            s = torch.randn(n, generator=gen, dtype=DTYPE)
            y = A @ s + 0.05 * torch.randn(n, generator=gen, dtype=DTYPE)
            u, v, M = (s, y, mat.to_dense()) if form == "B" else (y, s, mat.to_dense_inverse())
            r = v - M @ u
            cos = float((u @ r).abs() / (torch.linalg.vector_norm(u) * torch.linalg.vector_norm(r)))
            assert cos > 1e-6  # far from the threshold: the decision below is unambiguous
            expect_stored = True
        serial_before, count_before = int(mat.memory.next_serial), int(mat.memory.count())
        stored, dropped = mat.update(s, y)
        assert bool(stored) == expect_stored
        assert int(mat.memory.next_serial) == serial_before + int(expect_stored)
        # count = min(count + stored, m) - dropped: eviction by the ring buffer is not counted as dropped
        assert int(mat.memory.count()) == min(count_before + int(expect_stored), m) - int(dropped)
        stored_total += int(expect_stored)

        B_ref, H_ref, worst_b, worst_h = dense_reference(mat)
        assert worst_b > 1e-8  # the reference recursion is well defined on this state
        B = mat.to_dense()
        torch.testing.assert_close(B, B.T, rtol=0, atol=1e-12 * float(B.abs().max()))
        assert rel(B, B_ref) < 1e-9
        eig = torch.linalg.eigvalsh(B_ref).abs()
        if float(eig.min()) > 1e-6 * float(eig.max()):  # B safely nonsingular: H = B^{-1}
            H = mat.to_dense_inverse()
            # The dual recursion from H_0 = I/gamma can hit a zero denominator even though the compact
            # form is well defined (H form, lagged gamma: the oldest pair defined gamma), so it is
            # compared only where its denominators are safe; H = inv(B) always.
            if worst_h > 1e-8:
                assert rel(H, H_ref) < 1e-8
            assert rel(H, torch.linalg.inv(B_ref)) < 1e-8
            compared += 1
        v1 = torch.randn(n, generator=gen, dtype=DTYPE)
        V3 = torch.randn(n, 3, generator=gen, dtype=DTYPE)
        torch.testing.assert_close(mat.mv(v1), B_ref @ v1, rtol=1e-9, atol=1e-9 * float(B_ref.abs().max()))
        torch.testing.assert_close(mat.mv(V3), B_ref @ V3, rtol=1e-9, atol=1e-9 * float(B_ref.abs().max()))
    assert stored_total > m  # the buffer wrapped
    assert int(mat.memory.count()) >= 2
    assert compared > 0


@pytest.mark.parametrize("form", ["B", "H"])
def test_inverse_products_on_vectors_and_blocks(form) -> None:
    gen = torch.Generator().manual_seed(5)
    n, m = 12, 4
    A = quadratic(n, gen, -1.0, 4.0)
    mat = LSR1Matrix(m, n, form=form, gamma=1.1)
    for _ in range(6):
        s = torch.randn(n, generator=gen, dtype=DTYPE)
        mat.update(s, A @ s)
    assert int(mat.memory.count()) == m
    B_ref, H_ref, _, _ = dense_reference(mat)
    v = torch.randn(n, generator=gen, dtype=DTYPE)
    V = torch.randn(n, 4, generator=gen, dtype=DTYPE)
    scale = float(H_ref.abs().max())
    torch.testing.assert_close(mat.inv_mv(v), H_ref @ v, rtol=1e-9, atol=1e-9 * scale)
    torch.testing.assert_close(mat.inv_mv(V), H_ref @ V, rtol=1e-9, atol=1e-9 * scale)
    torch.testing.assert_close(mat.mv(mat.inv_mv(V)), V, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(mat.inv_mv(v), torch.linalg.solve(B_ref, v), rtol=1e-9, atol=1e-9 * scale)


@pytest.mark.parametrize("gamma", [0.8, "scaled"])
def test_matches_scipy_sr1(gamma) -> None:
    """SciPy's dense SR1 ('hess' and 'inv_hess') on the same active pairs, scale fixed to gamma."""
    gen = torch.Generator().manual_seed(7)
    n, m = 10, 4
    A = quadratic(n, gen, -3.0, 3.0)
    mat = LSR1Matrix(m, n, gamma=gamma)
    for _ in range(7):
        s = torch.randn(n, generator=gen, dtype=DTYPE)
        mat.update(s, A @ s + 0.1 * torch.randn(n, generator=gen, dtype=DTYPE))
    S, Y = active_pairs(mat)
    assert S.shape[0] == m
    g = float(mat.gamma)
    hess = scipy.optimize.SR1(min_denominator=1e-8, init_scale=g)
    hess.initialize(n, "hess")
    inv = scipy.optimize.SR1(min_denominator=1e-8, init_scale=1.0 / g)
    inv.initialize(n, "inv_hess")
    for s, y in zip(S.numpy(), Y.numpy(), strict=True):
        hess.update(s, y)
        inv.update(s, y)
    B_sp = torch.from_numpy(hess.get_matrix())
    H_sp = torch.from_numpy(inv.get_matrix())
    assert rel(mat.to_dense(), B_sp) < 1e-10
    assert rel(mat.to_dense_inverse(), H_sp) < 1e-9


# ----------------------------------------------------------------------------------------- skip rule


@pytest.mark.parametrize("form", ["B", "H"])
def test_skip_rule_rejects_orthogonal_residual_and_changes_nothing(form) -> None:
    gen = torch.Generator().manual_seed(11)
    n, m = 10, 4
    A = quadratic(n, gen, -1.0, 3.0)
    mat = LSR1Matrix(m, n, form=form, gamma="scaled")
    for _ in range(3):
        s = torch.randn(n, generator=gen, dtype=DTYPE)
        mat.update(s, A @ s)
    before = clone_state(mat)
    B_before = mat.to_dense()
    for _ in range(3):
        s, y = rejected_pair(mat, gen)
        stored, dropped = mat.update(s, y)
        assert not bool(stored) and int(dropped) == 0
        assert_state_equal(mat, before)
    torch.testing.assert_close(mat.to_dense(), B_before, rtol=0, atol=0)
    # r = 0 exactly (empty memory, y = 2 s = B_0 s in exact arithmetic): zero numerator, rejected.
    empty = LSR1Matrix(m, n, form=form, gamma=2.0)
    s = torch.randn(n, generator=gen, dtype=DTYPE)
    stored, dropped = empty.update(s, 2.0 * s) if form == "B" else empty.update(0.5 * s, s)
    assert not bool(stored) and int(dropped) == 0
    assert int(empty.memory.next_serial) == 0


@pytest.mark.parametrize("form", ["B", "H"])
@pytest.mark.parametrize(("factor", "expected"), [(2.0, True), (0.5, False)])
def test_skip_threshold_is_relative_cosine(form, factor, expected) -> None:
    """|u^T r| >= r_tol ||u|| ||r||: stored at twice the threshold, rejected at half of it."""
    gen = torch.Generator().manual_seed(12)
    n, m, tol = 9, 3, 1e-3
    mat = LSR1Matrix(m, n, form=form, gamma=1.0, skip_tol=tol)
    A = quadratic(n, gen, 0.5, 3.0)
    s = torch.randn(n, generator=gen, dtype=DTYPE)
    mat.update(s, A @ s)
    assert int(mat.memory.count()) == 1
    twin = LSR1Matrix(m, n, form=form, gamma=1.0, skip_tol=tol)
    twin.load_state_dict(mat.state_dict())
    u = torch.randn(n, generator=gen, dtype=DTYPE)
    u_hat = u / torch.linalg.vector_norm(u)
    w = orthogonal_part(torch.randn(n, generator=gen, dtype=DTYPE), u)
    w = w / torch.linalg.vector_norm(w)
    c = factor * tol
    r = math.sqrt(1 - c * c) * w + c * u_hat  # cos(u, r) = c
    s, y = (u, mat.mv(u) + r) if form == "B" else (mat.inv_mv(u) + r, u)
    stored, _ = mat.update(s, y)
    assert bool(stored) == expected
    # The caller may pass the residual it already knows: same decision.
    stored, _ = twin.update(s, y, residual=r)
    assert bool(stored) == expected


def test_explicit_residual_is_used() -> None:
    """update(..., residual=r) decides on the given r (the trust-region loop passes y - B s)."""
    gen = torch.Generator().manual_seed(13)
    n = 8
    mat = LSR1Matrix(3, n, gamma=1.0)
    s = torch.randn(n, generator=gen, dtype=DTYPE)
    y = 2.0 * s + torch.randn(n, generator=gen, dtype=DTYPE)
    fake = orthogonal_part(torch.randn(n, generator=gen, dtype=DTYPE), s)
    stored, _ = mat.update(s, y, residual=fake)
    assert not bool(stored)
    stored, _ = mat.update(s, y, residual=y - s)
    assert bool(stored)


# --------------------------------------------------------------------------------------- rank repair


def assert_well_defined(mat: LSR1Matrix) -> None:
    """Psi^T Psi and M^{-1} (or N^{-1}) of the active pairs are well conditioned."""
    S, Y = active_pairs(mat)
    g = float(mat.gamma)
    if mat.form == "B":
        Psi = (Y - g * S).T
        sv = torch.linalg.svdvals(Psi)
        assert float(sv.min()) > 1e-4 * float(sv.max())
        inv = middle_inverse(S, Y, g)
    else:
        inv = middle_inverse(Y, S, 1.0 / g)
    ev = torch.linalg.eigvalsh(inv).abs()
    assert float(ev.min()) > 1e-4 * float(ev.max())


def test_repair_drops_oldest_until_psi_has_full_rank() -> None:
    """y_3 - gamma s_3 in span(psi_1, psi_2): Psi loses rank, dropping pair 1 restores it."""
    gen = torch.Generator().manual_seed(21)
    n, m, g = 10, 4, 1.0
    mat = LSR1Matrix(m, n, gamma=g)
    pairs = []
    for _ in range(2):
        s = torch.randn(n, generator=gen, dtype=DTYPE)
        y = torch.randn(n, generator=gen, dtype=DTYPE)
        stored, dropped = mat.update(s, y)
        assert bool(stored) and int(dropped) == 0
        pairs.append((s, y))
    psi1, psi2 = (y - g * s for s, y in pairs)
    s3 = torch.randn(n, generator=gen, dtype=DTYPE)
    y3 = g * s3 + 0.7 * psi1 - 1.3 * psi2
    stored, dropped = mat.update(s3, y3)
    assert bool(stored) and int(dropped) == 1
    S, Y = active_pairs(mat)
    torch.testing.assert_close(S, torch.stack((pairs[1][0], s3)), rtol=0, atol=0)
    torch.testing.assert_close(Y, torch.stack((pairs[1][1], y3)), rtol=0, atol=0)
    assert_well_defined(mat)
    B_ref, *_ = dense_reference(mat)
    assert rel(mat.to_dense(), B_ref) < 1e-10


def test_repair_with_all_psi_parallel_keeps_only_the_newest() -> None:
    gen = torch.Generator().manual_seed(22)
    n, m, g = 9, 4, 2.0
    mat = LSR1Matrix(m, n, gamma=g)
    w = torch.randn(n, generator=gen, dtype=DTYPE)
    drops = []
    for k in range(4):
        s = torch.randn(n, generator=gen, dtype=DTYPE)
        y = g * s + (k + 1.5) * w
        stored, dropped = mat.update(s, y)
        assert bool(stored)
        drops.append(int(dropped))
        S, Y = active_pairs(mat)
        torch.testing.assert_close(S, s[None], rtol=0, atol=0)
        torch.testing.assert_close(Y, y[None], rtol=0, atol=0)
        assert_well_defined(mat)
    assert drops == [0, 1, 1, 1]


@pytest.mark.parametrize("form", ["B", "H"])
def test_repair_drops_oldest_until_middle_matrix_is_nonsingular(form) -> None:
    """m = 2: pair 3 evicts pair 1 and makes M^{-1}(2, 3) (N^{-1} for form H) singular; pair 2 goes too.

    Without eviction a singular middle matrix is impossible (its Schur complement is the skip-rule
    numerator), so the construction needs the wrap.
    """
    gen = torch.Generator().manual_seed(23)
    n, m, g = 8, 2, 1.5
    b0 = g if form == "B" else 1.0 / g
    mat = LSR1Matrix(m, n, form=form, gamma=g)
    pairs = []
    for _ in range(2):
        s = torch.randn(n, generator=gen, dtype=DTYPE)
        y = torch.randn(n, generator=gen, dtype=DTYPE)
        stored, _ = mat.update(s, y)
        assert bool(stored)
        pairs.append((s, y) if form == "B" else (y, s))  # (u, v): test on u^T (v - M u)
    u2, v2 = pairs[1]
    psi2 = v2 - b0 * u2
    u3 = torch.randn(n, generator=gen, dtype=DTYPE)
    d = torch.randn(n, generator=gen, dtype=DTYPE)
    a, b = float(u2 @ psi2), float(u3 @ psi2)
    t = b * b / (a * float(u3 @ d))  # u3^T (v3 - b0 u3) = b^2 / a: det [[a, b], [b, b^2/a]] = 0
    v3 = b0 * u3 + t * d
    assert (
        abs(float(torch.linalg.det(middle_inverse(torch.stack((u2, u3)), torch.stack((v2, v3)), b0)))) < 1e-9
    )
    s3, y3 = (u3, v3) if form == "B" else (v3, u3)
    stored, dropped = mat.update(s3, y3)
    assert bool(stored) and int(dropped) == 1  # count after the push was 2 (pair 1 evicted), now 1
    S, Y = active_pairs(mat)
    torch.testing.assert_close(S, s3[None], rtol=0, atol=0)
    torch.testing.assert_close(Y, y3[None], rtol=0, atol=0)
    assert_well_defined(mat)


@pytest.mark.parametrize("form", ["B", "H"])
def test_numerically_singular_single_pair_is_dropped(form) -> None:
    """A middle matrix that is zero up to rounding must count as singular, even when it is 1 x 1.

    Form H with delta = s^T y / y^T y gives N^{-1} = y^T s - delta y^T y = 0 for that pair alone; form B
    with y parallel to s gives Psi = y - gamma s = 0. Keeping such a pair (a tolerance relative to the
    middle matrix's own largest eigenvalue can never reject a 1 x 1 matrix) put entries of order 1/eps
    into H.
    """
    gen = torch.Generator().manual_seed(24)
    n = 7
    s = torch.randn(n, generator=gen, dtype=DTYPE)
    y = 3.0 * s if form == "B" else torch.randn(n, generator=gen, dtype=DTYPE) + 2.0 * s
    assert float(s @ y) > 0
    g = float(y @ y) / float(s @ y)
    mat = LSR1Matrix(3, n, form=form, gamma="scaled" if form == "B" else g)
    stored, dropped = mat.update(s, y)
    # B: stored, then removed by rank repair. H: y^T (s - H_0 y) = 0 up to rounding, so either the skip
    # rule or the repair removes it; in both cases nothing stays in memory.
    assert int(mat.memory.count()) == 0
    assert int(dropped) == int(bool(stored))
    if form == "B":
        assert bool(stored)
    assert float(mat.gamma) == pytest.approx(g, rel=1e-14)
    eye = torch.eye(n, dtype=DTYPE)
    torch.testing.assert_close(mat.to_dense(), float(mat.gamma) * eye, rtol=1e-15, atol=0)
    torch.testing.assert_close(mat.to_dense_inverse(), eye / float(mat.gamma), rtol=1e-15, atol=0)


def lone_scaled_pair(form: str, seed: int, n: int):
    """A memory-3 matrix with gamma="scaled" offered one exact pair (y = A s, A SPD in [0.5, 3]):
    (generator, A, matrix, s, y, what update returned)."""
    gen = torch.Generator().manual_seed(seed)
    A = quadratic(n, gen, 0.5, 3.0)
    mat = LSR1Matrix(3, n, form=form, gamma="scaled", gamma_init=1.0)
    s = torch.randn(n, generator=gen, dtype=DTYPE)
    y = A @ s
    return gen, A, mat, s, y, mat.update(s, y)


def test_h_form_scaled_gamma_keeps_a_lone_pair() -> None:
    """H form, gamma="scaled": the newest pair's own scaling would zero its N^{-1} entry, so the lagged
    scaling is used and a first pair on a convex problem is kept (secant equation H y = s holds)."""
    n = 7
    gen, A, mat, s, y, (stored, dropped) = lone_scaled_pair("H", seed=26, n=n)
    assert bool(stored) and int(dropped) == 0 and int(mat.memory.count()) == 1
    assert float(mat.gamma) == 1.0  # lagged: the first pair's scaling waits for the next pair
    torch.testing.assert_close(mat.inv_mv(y), s, rtol=1e-12, atol=1e-12)
    assert float(mat.gamma_next) == pytest.approx(float(y @ y) / float(s @ y), rel=1e-14)
    s2 = torch.randn(n, generator=gen, dtype=DTYPE)
    mat.update(s2, A @ s2)
    assert float(mat.gamma) == pytest.approx(float(y @ y) / float(s @ y), rel=1e-14)


def test_b_form_scaled_gamma_lone_pair_is_singular_along_the_residual() -> None:
    """B form, gamma="scaled", one stored pair: gamma = y^T y / s^T y and r = y - gamma s give
    B = gamma I + r r^T / (r^T s) = gamma (I - r r^T / r^T r), since r^T s = -r^T r / gamma. So B is
    exactly singular along r (what docs/benchmarks.md reports for the MGH runs). The compact form must
    reproduce that closed form: the matrix from the package, the dense SR1 update and the formula agree."""
    n = 6
    _, _, mat, s, y, (stored, _) = lone_scaled_pair("B", seed=27, n=n)
    assert bool(stored) and int(mat.memory.count()) == 1
    gamma = float(y @ y) / float(s @ y)
    assert float(mat.gamma) == pytest.approx(gamma, rel=1e-14)
    r = y - gamma * s
    eye = torch.eye(n, dtype=DTYPE)
    closed = gamma * (eye - torch.outer(r, r) / (r @ r))
    sr1 = gamma * eye + torch.outer(r, r) / (r @ s)
    B = mat.to_dense()
    assert rel(B, closed) < 1e-12 and rel(sr1, closed) < 1e-12
    assert float((B @ r).norm()) <= 1e-12 * float(r.norm()) * gamma
    torch.testing.assert_close(B @ s, y, rtol=1e-12, atol=1e-12)  # the secant equation still holds


def test_repair_reported_dropped_count_with_wrap() -> None:
    """The returned count excludes the pair evicted by the ring buffer (that is not rank repair)."""
    gen = torch.Generator().manual_seed(25)
    n, m = 10, 3
    A = quadratic(n, gen, -1.0, 2.0)
    mat = LSR1Matrix(m, n, gamma=1.0)
    for _ in range(2 * m):
        s = torch.randn(n, generator=gen, dtype=DTYPE)
        stored, dropped = mat.update(s, A @ s)
        assert bool(stored) and int(dropped) == 0
        assert int(mat.memory.count()) == min(int(mat.memory.next_serial), m)


# ------------------------------------------------------------------------------------------- gamma


def test_gamma_scaled_follows_newest_stored_pair() -> None:
    gen = torch.Generator().manual_seed(31)
    n = 9
    A = quadratic(n, gen, -2.0, 4.0)
    mat = LSR1Matrix(4, n, gamma="scaled", gamma_init=0.9)
    assert float(mat.gamma) == 0.9
    seen_neg = seen_pos = False
    for _ in range(12):
        s = torch.randn(n, generator=gen, dtype=DTYPE)
        y = A @ s
        before = float(mat.gamma)
        stored, _ = mat.update(s, y)
        assert bool(stored)
        sy = float(s @ y)
        if sy > 0:
            seen_pos = True
            assert float(mat.gamma) == pytest.approx(float(y @ y) / sy, rel=1e-14)
        else:
            seen_neg = True
            assert float(mat.gamma) == before
    assert seen_neg and seen_pos
    before = float(mat.gamma)
    s, y = rejected_pair(mat, gen)
    stored, _ = mat.update(s, y)
    assert not bool(stored) and float(mat.gamma) == before


def pencil_min(S: torch.Tensor, Y: torch.Tensor) -> float:
    """Smallest eigenvalue of (D + L + L^T) x = lambda S^T S x, pairs as rows in time order (SciPy)."""
    A = middle_inverse(S, Y, 0.0)
    return float(scipy.linalg.eigh(A.numpy(), (S @ S.T).numpy(), eigvals_only=True)[0])


def test_gamma_eigen_makes_middle_matrix_positive_definite() -> None:
    gen = torch.Generator().manual_seed(32)
    n, m, frac = 12, 4, 0.5
    A = quadratic(n, gen, 0.3, 6.0)
    mat = LSR1Matrix(m, n, gamma="eigen", gamma_fraction=frac, gamma_init=1.0)
    for _ in range(2 * m + 1):
        s = torch.randn(n, generator=gen, dtype=DTYPE)
        y = A @ s + 0.05 * torch.randn(n, generator=gen, dtype=DTYPE)
        stored, dropped = mat.update(s, y)
        assert bool(stored) and int(dropped) == 0
        S, Y = active_pairs(mat)
        lam_hat = pencil_min(S, Y)
        assert lam_hat > 0
        assert float(mat.gamma) == pytest.approx(frac * lam_hat, rel=1e-9)
        M_inv = middle_inverse(S, Y, float(mat.gamma))
        assert float(torch.linalg.eigvalsh(M_inv)[0]) > 0
        # hence B is positive definite and the compact B still equals the recursion
        B_ref, *_ = dense_reference(mat)
        assert rel(mat.to_dense(), B_ref) < 1e-9
        assert float(torch.linalg.eigvalsh(mat.to_dense())[0]) > 0


def test_gamma_eigen_keeps_previous_value_when_pencil_is_not_positive() -> None:
    gen = torch.Generator().manual_seed(33)
    n = 10
    A = quadratic(n, gen, -4.0, -1.0)  # negative definite: s^T y < 0, lambda_hat < 0
    mat = LSR1Matrix(3, n, gamma="eigen", gamma_init=1.7)
    for _ in range(4):
        s = torch.randn(n, generator=gen, dtype=DTYPE)
        stored, _ = mat.update(s, A @ s)
        assert bool(stored)
        S, Y = active_pairs(mat)
        assert pencil_min(S, Y) < 0
        assert float(mat.gamma) == 1.7


def test_constant_gamma_never_changes() -> None:
    gen = torch.Generator().manual_seed(34)
    n = 8
    mat = LSR1Matrix(3, n, gamma=2.5, gamma_init=9.0)  # the constant wins over gamma_init
    for _ in range(6):
        s = torch.randn(n, generator=gen, dtype=DTYPE)
        mat.update(s, 4.0 * s + torch.randn(n, generator=gen, dtype=DTYPE))
        assert float(mat.gamma) == 2.5


# ------------------------------------------------------------------------------- robustness, state


@pytest.mark.parametrize("form", ["B", "H"])
@pytest.mark.parametrize("bad", ["nan_s", "inf_y", "ninf_s", "overflow"])
def test_non_finite_pairs_are_never_stored(form, bad) -> None:
    gen = torch.Generator().manual_seed(41)
    n = 8
    mat = LSR1Matrix(3, n, form=form, gamma="scaled")
    for _ in range(2):
        s = torch.randn(n, generator=gen, dtype=DTYPE)
        mat.update(s, 2.0 * s + torch.randn(n, generator=gen, dtype=DTYPE))
    before = clone_state(mat)
    s = torch.randn(n, generator=gen, dtype=DTYPE)
    y = torch.randn(n, generator=gen, dtype=DTYPE)
    if bad == "nan_s":
        s[2] = float("nan")
    elif bad == "inf_y":
        y[0] = float("inf")
    elif bad == "ninf_s":
        s[-1] = float("-inf")
    else:
        s, y = s * 1e200, y * 1e200  # finite vectors whose inner products overflow
    stored, dropped = mat.update(s, y)
    assert not bool(stored) and int(dropped) == 0
    assert_state_equal(mat, before)
    assert bool(torch.isfinite(mat.memory.SY_buf).all())
    for name in ("SS", "SY", "YY"):
        assert np.isfinite(getattr(mat.memory, name)).all()
    assert bool(torch.isfinite(mat.to_dense()).all())


@pytest.mark.parametrize("form", ["B", "H"])
def test_non_finite_pair_with_finite_residual_from_caller_is_not_stored(form) -> None:
    """The residual the caller passes may be finite while the pair is not (form B: y; form H: s)."""
    gen = torch.Generator().manual_seed(44)
    n = 6
    mat = LSR1Matrix(3, n, form=form, gamma=1.0)
    before = clone_state(mat)
    s = torch.randn(n, generator=gen, dtype=DTYPE)
    y = torch.randn(n, generator=gen, dtype=DTYPE)
    residual = (y - s) if form == "B" else (s - y)
    if form == "B":
        y[0] = float("inf")
    else:
        s[0] = float("nan")
    stored, _ = mat.update(s, y, residual=residual)
    assert not bool(stored)
    assert_state_equal(mat, before)


@pytest.mark.parametrize("form", ["B", "H"])
def test_state_dict_round_trip_through_torch_save(form) -> None:
    gen = torch.Generator().manual_seed(42)
    n, m = 10, 3
    A = quadratic(n, gen, -1.0, 3.0)
    kw = dict(form=form, gamma="scaled", gamma_init=1.2)
    mat = LSR1Matrix(m, n, **kw)
    for _ in range(5):
        s = torch.randn(n, generator=gen, dtype=DTYPE)
        mat.update(s, A @ s + 0.1 * torch.randn(n, generator=gen, dtype=DTYPE))
    buf = io.BytesIO()
    torch.save(mat.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    other = LSR1Matrix(m, n, **kw)
    other.mv(torch.ones(n, dtype=DTYPE))  # populate the factor cache: loading must invalidate it
    other.load_state_dict(state)
    assert torch.equal(other.to_dense(), mat.to_dense())
    assert torch.equal(other.to_dense_inverse(), mat.to_dense_inverse())
    for _ in range(3):
        s = torch.randn(n, generator=gen, dtype=DTYPE)
        y = A @ s
        assert [int(t) for t in mat.update(s, y)] == [int(t) for t in other.update(s, y)]
    assert torch.equal(other.to_dense(), mat.to_dense())
    assert other.gamma == mat.gamma
    with pytest.raises(ValueError, match="cannot be loaded"):
        LSR1Matrix(m + 1, n, **kw).load_state_dict(state)


def test_reset_forgets_pairs_and_keeps_gamma() -> None:
    gen = torch.Generator().manual_seed(43)
    n = 6
    mat = LSR1Matrix(3, n, gamma="scaled")
    for _ in range(3):
        s = torch.randn(n, generator=gen, dtype=DTYPE)
        mat.update(s, 2.0 * s + torch.randn(n, generator=gen, dtype=DTYPE))
    mat.mv(torch.ones(n, dtype=DTYPE))
    g = float(mat.gamma)
    mat.reset()
    assert int(mat.memory.count()) == 0
    torch.testing.assert_close(mat.to_dense(), g * torch.eye(n, dtype=DTYPE), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(form="C"), "form"),
        (dict(gamma="bb"), "gamma"),
        (dict(gamma=0.0), "gamma"),
        (dict(gamma=-1.0), "gamma"),
        (dict(gamma=float("nan")), "gamma"),
        (dict(gamma=float("inf")), "gamma"),
        (dict(gamma=True), "gamma"),
        (dict(gamma_init=0.0), "gamma_init"),
        (dict(gamma_init=float("nan")), "gamma_init"),
        (dict(gamma_fraction=0.0), "gamma_fraction"),
        (dict(gamma_fraction=1.0), "gamma_fraction"),
        (dict(skip_tol=0.0), "skip_tol"),
        (dict(skip_tol=1.0), "skip_tol"),
        (dict(rank_tol=0.0), "rank_tol"),
        (dict(rank_tol=1.5), "rank_tol"),
        (dict(memory=0), "memory"),
        (dict(memory=2.5), "memory"),
    ],
)
def test_bad_arguments_raise(kwargs, match) -> None:
    args = dict(memory=3, n=5) | kwargs
    memory, n = args.pop("memory"), args.pop("n")
    with pytest.raises(ValueError, match=match):
        LSR1Matrix(memory, n, **args)


def test_dense_reference_is_not_trivial() -> None:
    """Guard for the oracle: the SR1 recursion depends on the order of the pairs."""
    gen = torch.Generator().manual_seed(50)
    n = 6
    S = torch.randn(3, n, generator=gen, dtype=DTYPE)
    Y = S @ quadratic(n, gen, -1.0, 2.0) + 0.3 * torch.randn(3, n, generator=gen, dtype=DTYPE)
    B1, _ = sr1_recursion(S, Y, torch.eye(n, dtype=DTYPE))
    B2, _ = sr1_recursion(S.flip(0), Y.flip(0), torch.eye(n, dtype=DTYPE))
    assert rel(B1, B2) > 1e-3
    # secant equation for the newest pair holds in both
    torch.testing.assert_close(B1 @ S[-1], Y[-1])
    assert np.isfinite(B1.numpy()).all()


@pytest.mark.parametrize("form", ["B", "H"])
def test_residual_dots_from_products_equal_the_explicit_residual(form) -> None:
    """The line-search stepper forms u^T r and r^T r of the skip rule on the host from [S Y]^T s,
    [S Y]^T y and the pair's dots; they equal the products of the explicit residual (r = y - B s or
    s - H y), and a pair the matrix already reproduces (r = 0 up to rounding) is refused as unresolved."""
    gen = torch.Generator().manual_seed(51)
    n, m = 12, 4
    A = quadratic(n, gen, -1.0, 3.0)
    mat = LSR1Matrix(m, n, form=form, gamma="scaled")
    for _ in range(3):
        s = torch.randn(n, generator=gen, dtype=DTYPE)
        mat.update(s, A @ s + 0.1 * torch.randn(n, generator=gen, dtype=DTYPE))
    for _ in range(5):
        s = torch.randn(n, generator=gen, dtype=DTYPE)
        y = A @ s + 0.1 * torch.randn(n, generator=gen, dtype=DTYPE)
        Ps, Py, dots = mat.memory.pair_products(s, y)
        r = (y - mat.mv(s)) if form == "B" else (s - mat.inv_mv(y))
        u = s if form == "B" else y
        res = mat.residual_dots(Ps, Py, dots)
        assert res is not None
        assert res[0] == pytest.approx(float(u @ r), rel=1e-9, abs=1e-12)
        assert res[1] == pytest.approx(float(r @ r), rel=1e-9, abs=1e-12)
    s = torch.randn(n, generator=gen, dtype=DTYPE)
    y = mat.mv(s) if form == "B" else torch.linalg.solve(mat.to_dense_inverse(), s)
    if form == "H":
        s = mat.inv_mv(y)  # s - H y = 0 exactly in exact arithmetic
    Ps, Py, dots = mat.memory.pair_products(s, y)
    assert mat.residual_dots(Ps, Py, dots) is None

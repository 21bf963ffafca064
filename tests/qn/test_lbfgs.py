"""Compact L-BFGS (LBFGSMatrix) against the dense BFGS recursion, a plain two-loop recursion and SciPy.

Oracles, all on exactly the active pairs in time order (read from ``memory.active`` / ``memory.serial``)
with the *current* gamma:

* the dense BFGS recursions (Nocedal & Wright eqs. 6.17 and 6.19) from H_0 = I / gamma, B_0 = gamma I;
* the two-loop recursion (N&W Alg. 7.4), written out below;
* ``scipy.optimize.BFGS`` with ``init_scale`` fixed to gamma (1 / gamma for the inverse).
"""

from __future__ import annotations

import io
import math

import pytest
import scipy.optimize
import torch
from pair_state import assert_state_equal, clone_state
from pairs import active_pairs

from lightning_sqn.qn.lbfgs import LBFGSMatrix

DTYPE = torch.float64


# ----------------------------------------------------------------------------------------- helpers


def bfgs_dense(S: torch.Tensor, Y: torch.Tensor, gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, H) after the BFGS updates (N&W 6.19, 6.17) over the rows of S, Y from gamma I, I / gamma."""
    n = S.shape[1]
    eye = torch.eye(n, dtype=DTYPE)
    B, H = gamma * eye, eye / gamma
    for s, y in zip(S, Y, strict=True):
        rho = 1.0 / (y @ s)
        Bs = B @ s
        B = B - torch.outer(Bs, Bs) / (s @ Bs) + rho * torch.outer(y, y)
        V = eye - rho * torch.outer(y, s)
        H = V.T @ H @ V + rho * torch.outer(s, s)
    return B, H


def two_loop(S: torch.Tensor, Y: torch.Tensor, gamma: float, q: torch.Tensor) -> torch.Tensor:
    """H q by the two-loop recursion (N&W Alg. 7.4) with H_0 = I / gamma; rows of S, Y oldest first."""
    q = q.clone()
    k = S.shape[0]
    alpha = [0.0] * k
    rho = [1.0 / float(Y[i] @ S[i]) for i in range(k)]
    for i in reversed(range(k)):
        alpha[i] = rho[i] * float(S[i] @ q)
        q = q - alpha[i] * Y[i]
    r = q / gamma
    for i in range(k):
        beta = rho[i] * float(Y[i] @ r)
        r = r + S[i] * (alpha[i] - beta)
    return r


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


def spd(n: int, gen: torch.Generator, lo: float, hi: float) -> torch.Tensor:
    Q, R = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=DTYPE))
    Q = Q * torch.sign(torch.diagonal(R))
    return Q @ torch.diag(torch.logspace(math.log10(lo), math.log10(hi), n, dtype=DTYPE)) @ Q.T


# ---------------------------------------------------------------------------- compact = references


@pytest.mark.parametrize(("n", "m", "seed"), [(8, 3, 0), (15, 4, 1), (30, 5, 2)], ids=str)
@pytest.mark.parametrize("gamma", ["scaled", 0.6])
def test_compact_equals_dense_bfgs_and_two_loop_over_a_run(gamma, n, m, seed) -> None:
    """Many updates (ring buffer wraps; negative-curvature pairs interleaved and skipped)."""
    gen = torch.Generator().manual_seed(seed)
    A = spd(n, gen, 0.2, 20.0)
    mat = LBFGSMatrix(m, n, gamma=gamma, gamma_init=1.4)
    stored_total = 0
    for k in range(3 * m + 1):
        s = torch.randn(n, generator=gen, dtype=DTYPE)
        if k % 4 == 2:
            y = -A @ s  # s^T y < 0: the curvature condition fails
        else:
            y = A @ s + 0.1 * torch.randn(n, generator=gen, dtype=DTYPE)
        expected = float(s @ y) > 1e-8 * float(torch.linalg.vector_norm(s) * torch.linalg.vector_norm(y))
        stored = mat.update(s, y)
        assert bool(stored) == expected
        stored_total += int(expected)
        assert int(mat.memory.count()) == min(stored_total, m)

        S, Y = active_pairs(mat)
        g = float(mat.gamma)
        B_ref, H_ref = bfgs_dense(S, Y, g)
        B, H = mat.to_dense(), mat.to_dense_inverse()
        assert rel(B, B_ref) < 1e-10
        assert rel(H, H_ref) < 1e-10
        assert rel(H, torch.linalg.inv(B_ref)) < 1e-9
        v = torch.randn(n, generator=gen, dtype=DTYPE)
        V = torch.randn(n, 3, generator=gen, dtype=DTYPE)
        ref = two_loop(S, Y, g, v)
        torch.testing.assert_close(mat.inv_mv(v), ref, rtol=1e-10, atol=1e-10 * float(ref.abs().max()))
        ref3 = torch.stack([two_loop(S, Y, g, V[:, j]) for j in range(3)], 1)
        torch.testing.assert_close(mat.inv_mv(V), ref3, rtol=1e-10, atol=1e-10 * float(ref3.abs().max()))
        torch.testing.assert_close(mat.mv(V), B_ref @ V, rtol=1e-10, atol=1e-10 * float(B_ref.abs().max()))
        torch.testing.assert_close(mat.mv(mat.inv_mv(v)), v, rtol=1e-9, atol=1e-9 * float(v.abs().max()))
    assert stored_total > m  # the buffer wrapped
    # positive definite throughout
    assert float(torch.linalg.eigvalsh(mat.to_dense())[0]) > 0


def test_matches_scipy_bfgs() -> None:
    gen = torch.Generator().manual_seed(3)
    n, m = 9, 4
    A = spd(n, gen, 0.5, 10.0)
    mat = LBFGSMatrix(m, n)
    for _ in range(6):
        s = torch.randn(n, generator=gen, dtype=DTYPE)
        assert bool(mat.update(s, A @ s + 0.05 * torch.randn(n, generator=gen, dtype=DTYPE)))
    S, Y = active_pairs(mat)
    g = float(mat.gamma)
    hess = scipy.optimize.BFGS(exception_strategy="skip_update", min_curvature=1e-12, init_scale=g)
    hess.initialize(n, "hess")
    inv = scipy.optimize.BFGS(exception_strategy="skip_update", min_curvature=1e-12, init_scale=1.0 / g)
    inv.initialize(n, "inv_hess")
    for s, y in zip(S.numpy(), Y.numpy(), strict=True):
        hess.update(s, y)
        inv.update(s, y)
    assert rel(mat.to_dense(), torch.from_numpy(hess.get_matrix())) < 1e-10
    assert rel(mat.to_dense_inverse(), torch.from_numpy(inv.get_matrix())) < 1e-10


def test_empty_memory_is_scaled_identity() -> None:
    n = 5
    mat = LBFGSMatrix(3, n, gamma_init=2.5)
    eye = torch.eye(n, dtype=DTYPE)
    torch.testing.assert_close(mat.to_dense(), 2.5 * eye, rtol=0, atol=0)
    torch.testing.assert_close(mat.to_dense_inverse(), eye / 2.5, rtol=0, atol=0)


# ------------------------------------------------------------------------------- skips and gamma


def test_curvature_threshold_is_relative() -> None:
    """s^T y > eps ||s|| ||y||: stored at twice the threshold, skipped at half of it (memory untouched)."""
    gen = torch.Generator().manual_seed(4)
    n, eps = 7, 1e-3
    mat = LBFGSMatrix(3, n, curvature_eps=eps)
    s0 = torch.randn(n, generator=gen, dtype=DTYPE)
    assert bool(mat.update(s0, 2.0 * s0))
    s = torch.randn(n, generator=gen, dtype=DTYPE)
    s_hat = s / torch.linalg.vector_norm(s)
    w = torch.randn(n, generator=gen, dtype=DTYPE)
    w = w - (w @ s_hat) * s_hat
    w = w / torch.linalg.vector_norm(w)
    before = clone_state(mat)
    for factor in (0.5, 0.0, -3.0):
        c = factor * eps
        y = 3.0 * (c * s_hat + math.sqrt(1 - c * c) * w)  # cos(s, y) = c
        assert not bool(mat.update(s, y))
        assert_state_equal(mat, before)
    c = 2.0 * eps
    y = 3.0 * (c * s_hat + math.sqrt(1 - c * c) * w)
    assert bool(mat.update(s, y))
    assert int(mat.memory.count()) == 2
    assert float(mat.gamma) == pytest.approx(float(y @ y) / float(s @ y), rel=1e-13)


def test_curvature_condition_is_strict() -> None:
    """With eps = 0 an exactly orthogonal pair (s^T y = 0) is still skipped: B must stay definite."""
    n = 4
    mat = LBFGSMatrix(2, n, curvature_eps=0.0)
    eye = torch.eye(n, dtype=DTYPE)
    assert not bool(mat.update(eye[0], eye[1]))
    assert not bool(mat.update(eye[0], -eye[0]))
    assert bool(mat.update(eye[0], 1e-3 * eye[0] + eye[1]))  # small but positive curvature
    assert int(mat.memory.count()) == 1


def test_gamma_scaled_and_constant() -> None:
    gen = torch.Generator().manual_seed(5)
    n = 8
    A = spd(n, gen, 0.5, 5.0)
    scaled = LBFGSMatrix(3, n, gamma="scaled", gamma_init=0.3)
    const = LBFGSMatrix(3, n, gamma=4.0, gamma_init=0.3)
    assert float(scaled.gamma) == 0.3 and float(const.gamma) == 4.0
    for _ in range(5):
        s = torch.randn(n, generator=gen, dtype=DTYPE)
        y = A @ s
        scaled.update(s, y)
        const.update(s, y)
        assert float(scaled.gamma) == pytest.approx(float(y @ y) / float(s @ y), rel=1e-14)
        assert float(const.gamma) == 4.0


@pytest.mark.parametrize("bad", ["nan_s", "inf_y", "overflow"])
def test_non_finite_pairs_are_never_stored(bad) -> None:
    gen = torch.Generator().manual_seed(6)
    n = 6
    mat = LBFGSMatrix(3, n)
    for _ in range(2):
        s = torch.randn(n, generator=gen, dtype=DTYPE)
        mat.update(s, 2.0 * s + 0.1 * torch.randn(n, generator=gen, dtype=DTYPE))
    before = clone_state(mat)
    s = torch.randn(n, generator=gen, dtype=DTYPE)
    y = 2.0 * s
    if bad == "nan_s":
        s[1] = float("nan")
    elif bad == "inf_y":
        y[3] = float("inf")
    else:
        s, y = 1e200 * s, 1e200 * y
    assert not bool(mat.update(s, y))
    assert_state_equal(mat, before)
    assert bool(torch.isfinite(mat.memory.SY_buf).all())


# ------------------------------------------------------------------------------------------ state


def test_state_dict_round_trip_through_torch_save() -> None:
    gen = torch.Generator().manual_seed(7)
    n, m = 10, 3
    A = spd(n, gen, 0.5, 5.0)
    mat = LBFGSMatrix(m, n)
    for _ in range(5):
        s = torch.randn(n, generator=gen, dtype=DTYPE)
        mat.update(s, A @ s)
    buf = io.BytesIO()
    torch.save(mat.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    other = LBFGSMatrix(m, n)
    other.load_state_dict(state)
    assert torch.equal(other.to_dense(), mat.to_dense())
    assert torch.equal(other.to_dense_inverse(), mat.to_dense_inverse())
    for _ in range(2):
        s = torch.randn(n, generator=gen, dtype=DTYPE)
        assert bool(mat.update(s, A @ s)) == bool(other.update(s, A @ s))
    assert torch.equal(other.to_dense_inverse(), mat.to_dense_inverse())
    with pytest.raises(ValueError, match="cannot be loaded"):
        LBFGSMatrix(m, n + 1).load_state_dict(state)
    mat.reset()
    assert int(mat.memory.count()) == 0
    torch.testing.assert_close(mat.to_dense(), mat.gamma * torch.eye(n, dtype=DTYPE), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(gamma="eigen"), "gamma"),
        (dict(gamma=0.0), "gamma"),
        (dict(gamma=-2.0), "gamma"),
        (dict(gamma_init=-1.0), "gamma_init"),
        (dict(curvature_eps=-0.1), "curvature_eps"),
        (dict(curvature_eps=1.0), "curvature_eps"),
        (dict(curvature_eps=float("nan")), "curvature_eps"),
    ],
)
def test_bad_arguments_raise(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        LBFGSMatrix(3, 5, **kwargs)


def test_two_loop_reference_is_inverse_of_dense_bfgs() -> None:
    """Guard for the oracles: two-loop and the dense H recursion agree, and H y_newest = s_newest."""
    gen = torch.Generator().manual_seed(8)
    n = 6
    A = spd(n, gen, 0.5, 4.0)
    S = torch.randn(3, n, generator=gen, dtype=DTYPE)
    Y = S @ A
    _, H = bfgs_dense(S, Y, 1.7)
    v = torch.randn(n, generator=gen, dtype=DTYPE)
    torch.testing.assert_close(two_loop(S, Y, 1.7, v), H @ v)
    torch.testing.assert_close(H @ Y[-1], S[-1])


def test_combination_products_and_direction_dots_match_explicit_vectors() -> None:
    """The host forms [S Y]^T v and (g^T d, ||d||) of v = c_g w + [S Y] c from projections and the Gram
    matrix, without a pass over the buffer; they equal the products of the explicit vectors."""
    gen = torch.Generator().manual_seed(61)
    n, m = 15, 4
    A = spd(n, gen, 0.5, 20.0)
    mat = LBFGSMatrix(m, n)
    for _ in range(6):  # the ring buffer wraps
        s = torch.randn(n, generator=gen, dtype=DTYPE)
        mat.update(s, A @ s)
    mem = mat.memory
    g = torch.randn(n, generator=gen, dtype=DTYPE)
    proj = mem.project(g).numpy()
    b0, c = mat.inv_mv_coefficients(proj)
    d = -mem.combine(c, g, beta=b0)
    gd, dnorm = mat.direction_dots(b0, c, proj, float(g @ g))
    assert gd == pytest.approx(float(g @ d), rel=1e-12)
    assert dnorm == pytest.approx(float(torch.linalg.vector_norm(d)), rel=1e-12)
    v = mem.combine(c, g, beta=0.7)
    torch.testing.assert_close(
        torch.from_numpy(mat.combination_products(0.7, c, proj)), mem.project(v), rtol=1e-12, atol=1e-12
    )

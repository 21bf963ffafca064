"""Dense SR1/BFGS matrices against SciPy's ``SR1``/``BFGS`` and against the defining identities.

Differences between SciPy 1.x (``scipy/optimize/_hessian_update_strategy.py``) and our rules, and how
the parity tests make both sides comparable:

* init_scale="auto": SciPy fixes the scale from the *first* non-zero pair, ``y^T y / |s^T y|`` for
  ``'hess'`` and ``|s^T y| / y^T y`` for ``'inv_hess'``, with an absolute value for BFGS too, even if
  that pair is then skipped. ``DenseSR1`` uses the same formula and the same pair (first pair with
  s^T y != 0). ``DenseBFGS`` takes gamma = y^T y / s^T y from the first *stored* pair. The parity tests
  therefore start with a pair of positive curvature, where all rules agree.
* BFGS skip rule: SciPy skips iff ``s^T y <= min_curvature * s^T B s`` (``'hess'``) or
  ``<= min_curvature * y^T H y`` (``'inv_hess'``); ours stores iff ``s^T y > eps ||s|| ||y||``. With
  ``min_curvature=0`` and ``curvature_eps=0`` both reduce to "store iff s^T y > 0" (B, H stay positive
  definite), so the parity test uses those settings.
* SR1 skip rule: SciPy skips iff ``|w^T (z - M w)| <= tol ||w|| ||z - M w||`` with (M, w, z) = (B, s, y)
  or (H, y, s): N&W eq. (6.26) and its dual, as ours except at exact ties. Default tolerances match.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import scipy.optimize
import torch

from lightning_sqn.qn.dense import MAX_DENSE_DIM, DenseBFGS, DenseSR1

N = 6


def _rel_err(a: torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    b = torch.as_tensor(b, dtype=torch.float64)
    return float(torch.linalg.matrix_norm(a - b) / torch.linalg.matrix_norm(b))


def _sym(rng: np.random.Generator, eigenvalues: np.ndarray) -> np.ndarray:
    Q, _ = np.linalg.qr(rng.standard_normal((len(eigenvalues), len(eigenvalues))))
    return Q @ np.diag(eigenvalues) @ Q.T


def _orthogonal_to(rng: np.random.Generator, v: np.ndarray) -> np.ndarray:
    r = rng.standard_normal(v.shape)
    return r - (r @ v) / (v @ v) * v


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


# ------------------------------------------------------------------------------------ SciPy parity


@pytest.mark.parametrize("gamma", ["auto", 2.5])
def test_sr1_matches_scipy_including_skipped_pairs(gamma):
    rng = np.random.default_rng(0)
    A = _sym(rng, np.array([-2.0, -0.5, 0.3, 1.0, 2.0, 4.0]))  # indefinite: SR1 pairs of both signs
    qn = DenseSR1(N, gamma=gamma)
    scale = "auto" if gamma == "auto" else gamma
    sp_B = scipy.optimize.SR1(init_scale=scale)
    sp_B.initialize(N, "hess")
    sp_H = scipy.optimize.SR1(init_scale="auto" if gamma == "auto" else 1.0 / gamma)
    sp_H.initialize(N, "inv_hess")

    P = _sym(rng, np.arange(1.0, N + 1))  # the first pair has s^T y > 0: the same auto scale everywhere
    kinds = ["first", "plain", "skip_B", "plain", "plain", "skip_H", "plain", "skip_B", "plain", "skip_H"]
    firsts = None
    for kind in kinds:
        if kind == "skip_B":  # s orthogonal to y - B s: eq. (6.26) must reject it for B
            s = rng.standard_normal(N)
            y = sp_B.get_matrix() @ s + _orthogonal_to(rng, s)
        elif kind == "skip_H":  # y orthogonal to s - H y: the dual test must reject it for H only
            y = rng.standard_normal(N)
            s = sp_H.get_matrix() @ y + _orthogonal_to(rng, y)
        else:
            s = rng.standard_normal(N)
            y = P @ s if kind == "first" else A @ s + 0.1 * rng.standard_normal(N)
            firsts = firsts or (s, y)
        stored = qn.update(_t(s), _t(y))
        assert stored.dtype == torch.bool and stored.dim() == 0
        assert bool(stored) == (kind != "skip_B")
        sp_B.update(s, y)
        sp_H.update(s, y)
        assert _rel_err(qn.to_dense(), sp_B.get_matrix()) < 1e-10
        assert _rel_err(qn.to_dense_inverse(), sp_H.get_matrix()) < 1e-10

    assert qn.num_skipped == kinds.count("skip_B")
    assert qn.num_updates == len(kinds) - kinds.count("skip_B")
    if gamma == "auto":
        s0, y0 = firsts
        assert qn.gamma == pytest.approx((y0 @ y0) / abs(s0 @ y0), rel=1e-14)
    else:
        assert qn.gamma == gamma


@pytest.mark.parametrize("gamma", ["auto", 0.4])
def test_bfgs_matches_scipy_including_skipped_pairs(gamma):
    rng = np.random.default_rng(1)
    A = _sym(rng, np.array([0.5, 1.0, 2.0, 3.0, 5.0, 8.0]))
    qn = DenseBFGS(N, gamma=gamma, curvature_eps=0.0)
    sp_B = scipy.optimize.BFGS(min_curvature=0.0, init_scale="auto" if gamma == "auto" else gamma)
    sp_B.initialize(N, "hess")
    sp_H = scipy.optimize.BFGS(min_curvature=0.0, init_scale="auto" if gamma == "auto" else 1.0 / gamma)
    sp_H.initialize(N, "inv_hess")

    negative = {2, 5, 6}  # pairs with s^T y < 0, which both sides must skip
    for k in range(10):
        s = rng.standard_normal(N)
        y = A @ s + 0.1 * rng.standard_normal(N)
        if k in negative:
            y = -y
        assert (s @ y > 0) == (k not in negative)
        stored = qn.update(_t(s), _t(y))
        assert bool(stored) == (k not in negative)
        sp_B.update(s, y)
        sp_H.update(s, y)
        assert _rel_err(qn.to_dense(), sp_B.get_matrix()) < 1e-10
        assert _rel_err(qn.to_dense_inverse(), sp_H.get_matrix()) < 1e-10
    assert qn.num_skipped == len(negative)
    assert qn.num_updates == 10 - len(negative)


# ------------------------------------------------------------------------------ defining identities


# SR1 with gamma="auto" is left out on purpose: see test_sr1_auto_gamma_first_pair_skips_h.
@pytest.mark.parametrize(("cls", "gamma"), [(DenseSR1, 1.0), (DenseBFGS, 1.0), (DenseBFGS, "auto")])
def test_secant_equations_and_inverse_after_each_update(cls, gamma):
    rng = np.random.default_rng(2)
    A = _sym(rng, np.array([0.5, 1.0, 1.5, 2.0, 3.0, 4.0]))
    qn = cls(N, gamma=gamma)
    for _ in range(8):
        s = _t(rng.standard_normal(N))
        y = _t(A) @ s + 0.05 * _t(rng.standard_normal(N))
        assert bool(qn.update(s, y))
        B, H = qn.to_dense(), qn.to_dense_inverse()
        torch.testing.assert_close(B @ s, y, rtol=1e-10, atol=1e-12)  # B_{k+1} s_k = y_k
        torch.testing.assert_close(H @ y, s, rtol=1e-10, atol=1e-12)  # H_{k+1} y_k = s_k
        torch.testing.assert_close(H @ B, torch.eye(N, dtype=torch.float64), rtol=0, atol=1e-9)
        torch.testing.assert_close(qn.mv(s), B @ s, rtol=0, atol=0)
        torch.testing.assert_close(qn.inv_mv(y), H @ y, rtol=0, atol=0)
    assert qn.num_updates == 8 and qn.num_skipped == 0


def test_bfgs_stays_symmetric_positive_definite():
    rng = np.random.default_rng(3)
    A = _sym(rng, np.array([-3.0, -1.0, 0.1, 1.0, 10.0, 100.0]))
    qn = DenseBFGS(N)
    for k in range(40):
        s = _t(rng.standard_normal(N))
        qn.update(s, (-1) ** (k % 3 == 2) * _t(A) @ s)  # every third pair flipped: many s^T y < 0
        B, H = qn.to_dense(), qn.to_dense_inverse()
        assert torch.equal(B, B.mT) and torch.equal(H, H.mT)
        assert float(torch.linalg.eigvalsh(B).min()) > 0
        assert float(torch.linalg.eigvalsh(H).min()) > 0
    assert qn.num_updates > 0 and qn.num_skipped > 0
    assert qn.num_updates + qn.num_skipped == 40


def test_bfgs_skips_pairs_without_enough_curvature():
    e = torch.eye(N, dtype=torch.float64)
    qn = DenseBFGS(N, gamma=1.0, curvature_eps=1e-8)
    cases = [
        (e[0], -e[0]),  # s^T y < 0
        (e[0], e[1]),  # s^T y = 0
        (e[0], e[1] + 1e-10 * e[0]),  # 0 < s^T y < eps ||s|| ||y||
    ]
    for k, (s, y) in enumerate(cases, start=1):
        assert not bool(qn.update(s, y))
        assert torch.equal(qn.to_dense(), e) and torch.equal(qn.to_dense_inverse(), e)
        assert qn.num_skipped == k and qn.num_updates == 0
    # The same tiny-curvature pair is stored when epsilon is 0.
    assert bool(DenseBFGS(N, gamma=1.0, curvature_eps=0.0).update(*cases[2]))


def test_sr1_skip_rule_rejects_s_orthogonal_to_residual_and_updates_h_independently():
    rng = np.random.default_rng(4)
    qn = DenseSR1(N, gamma=1.0)
    s = _t(rng.standard_normal(N))
    assert bool(qn.update(s, 3.0 * s + 0.5 * _t(rng.standard_normal(N))))
    B, H = qn.to_dense(), qn.to_dense_inverse()

    s = rng.standard_normal(N)
    r = _orthogonal_to(rng, s)  # s^T (y - B s) = 0
    y = qn.mv(_t(s)) + _t(r)
    assert not bool(qn.update(_t(s), y))
    assert torch.equal(qn.to_dense(), B)  # B skipped ...
    assert not torch.allclose(qn.to_dense_inverse(), H)  # ... H took its own update
    torch.testing.assert_close(qn.inv_mv(y), _t(s), rtol=1e-10, atol=1e-12)
    assert qn.num_skipped == 1 and qn.num_updates == 1

    # y = B s exactly: the residual vanishes, nothing to store.
    B = qn.to_dense()
    s = _t(rng.standard_normal(N))
    assert not bool(qn.update(s, B @ s))
    assert torch.equal(qn.to_dense(), B) and qn.num_skipped == 2


@pytest.mark.parametrize("cls", [DenseSR1, DenseBFGS])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_pairs_are_not_stored(cls, bad):
    rng = np.random.default_rng(5)
    qn = cls(N)
    s = _t(rng.standard_normal(N))
    s_bad, y_bad = s.clone(), 2.0 * s
    s_bad[1] = bad
    y_bad[3] = bad
    for pair in [(s_bad, 2.0 * s), (s, y_bad), (s_bad, y_bad)]:
        assert not bool(qn.update(*pair))
    assert qn.num_skipped == 3 and qn.num_updates == 0 and qn.gamma == 1.0  # no gamma from bad pairs
    eye = torch.eye(N, dtype=torch.float64)
    assert torch.equal(qn.to_dense(), eye) and torch.equal(qn.to_dense_inverse(), eye)


def test_auto_gamma_sr1_uses_absolute_value_and_bfgs_first_stored_pair():
    rng = np.random.default_rng(6)
    s, w = _t(rng.standard_normal(N)), _t(rng.standard_normal(N))
    y = -2.0 * s + 0.3 * w  # s^T y < 0
    sr1 = DenseSR1(N)
    assert sr1.gamma == 1.0
    assert bool(sr1.update(s, y))
    gamma = float(y @ y) / abs(float(s @ y))
    assert sr1.gamma == pytest.approx(gamma, rel=1e-14) and gamma > 0
    r = y - gamma * s  # B_0 = gamma I, then eq. (6.24)
    expected = gamma * torch.eye(N, dtype=torch.float64) + torch.outer(r, r) / float(r @ s)
    torch.testing.assert_close(sr1.to_dense(), expected, rtol=1e-12, atol=1e-12)

    bfgs = DenseBFGS(N)
    assert not bool(bfgs.update(s, y))  # negative curvature: skipped and fixes no gamma
    assert bfgs.gamma == 1.0
    assert bool(bfgs.update(s, -y))
    assert bfgs.gamma == pytest.approx(float(y @ y) / float(s @ -y), rel=1e-14)


def test_sr1_auto_gamma_first_pair_skips_h():
    """With gamma = y^T y / s^T y > 0, H_0 = (s^T y / y^T y) I gives y^T (s - H_0 y) = 0 exactly.

    So the first pair never updates H (SciPy's inv_hess SR1 behaves the same) and H != B^{-1} after it.
    """
    rng = np.random.default_rng(9)
    s = _t(rng.standard_normal(N))
    y = 2.0 * s + 0.5 * _t(rng.standard_normal(N))
    assert float(s @ y) > 0
    qn = DenseSR1(N)
    assert bool(qn.update(s, y))  # B is updated ...
    torch.testing.assert_close(qn.mv(s), y, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        qn.to_dense_inverse(), torch.eye(N, dtype=torch.float64) / qn.gamma
    )  # ... H not
    sp_H = scipy.optimize.SR1()
    sp_H.initialize(N, "inv_hess")
    sp_H.update(s.numpy(), y.numpy())
    assert _rel_err(qn.to_dense_inverse(), sp_H.get_matrix()) < 1e-12


# ---------------------------------------------------------------------------- state and contracts


@pytest.mark.parametrize("cls", [DenseSR1, DenseBFGS])
def test_state_dict_round_trip_through_torch_save(cls):
    rng = np.random.default_rng(7)
    A = _t(_sym(rng, np.array([0.5, 1.0, 1.5, 2.0, 3.0, 4.0])))
    qn = cls(N)
    for _ in range(4):
        s = _t(rng.standard_normal(N))
        qn.update(s, A @ s)
    qn.update(s, -A @ s)  # skipped by BFGS; taken by SR1
    buf = io.BytesIO()
    torch.save(qn.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)

    other = cls(N)
    other.load_state_dict(state)
    assert torch.equal(other.to_dense(), qn.to_dense())
    assert torch.equal(other.to_dense_inverse(), qn.to_dense_inverse())
    assert (other.gamma, other.num_updates, other.num_skipped) == (qn.gamma, qn.num_updates, qn.num_skipped)
    s = _t(rng.standard_normal(N))  # both continue identically
    assert bool(other.update(s, A @ s)) == bool(qn.update(s, A @ s))
    assert torch.equal(other.to_dense(), qn.to_dense())

    with pytest.raises(ValueError, match="n = "):
        cls(N + 1).load_state_dict(state)
    with pytest.raises(ValueError, match="gamma"):
        cls(N, gamma=1.0).load_state_dict(state)


@pytest.mark.parametrize("cls", [DenseSR1, DenseBFGS])
@pytest.mark.parametrize("gamma", ["auto", 3.0])
def test_reset_restores_initial_state(cls, gamma):
    qn = cls(3, gamma=gamma)
    s = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    qn.update(s, 5.0 * s + torch.tensor([0.0, 0.1, -0.3], dtype=torch.float64))
    assert qn.num_updates == 1
    qn.reset()
    g = 1.0 if gamma == "auto" else gamma
    assert qn.gamma == g and qn.num_updates == 0 and qn.num_skipped == 0
    torch.testing.assert_close(qn.to_dense(), g * torch.eye(3, dtype=torch.float64), rtol=0, atol=0)
    torch.testing.assert_close(qn.to_dense_inverse(), torch.eye(3, dtype=torch.float64) / g, rtol=0, atol=0)


@pytest.mark.parametrize("cls", [DenseSR1, DenseBFGS])
def test_products_accept_vectors_and_blocks(cls):
    rng = np.random.default_rng(8)
    qn = cls(N, gamma=2.0)
    s = _t(rng.standard_normal(N))
    qn.update(s, 3.0 * s + 0.1 * _t(rng.standard_normal(N)))
    V = _t(rng.standard_normal((N, 3)))
    torch.testing.assert_close(qn.mv(V), qn.to_dense() @ V, rtol=0, atol=0)
    torch.testing.assert_close(qn.inv_mv(V), qn.to_dense_inverse() @ V, rtol=0, atol=0)
    torch.testing.assert_close(qn.mv(V[:, 0]), qn.to_dense() @ V[:, 0], rtol=0, atol=0)
    with pytest.raises(ValueError, match="shape"):
        qn.mv(V.T)
    with pytest.raises(ValueError, match="shape"):
        qn.update(s[:-1], s[:-1])


def test_too_large_dimension_points_to_limited_memory():
    assert MAX_DENSE_DIM == 10_000
    for cls in (DenseSR1, DenseBFGS):
        with pytest.raises(ValueError, match="MAX_DENSE_DIM") as info:
            cls(MAX_DENSE_DIM + 1)
        msg = str(info.value)
        assert "LSR1/LBFGS" in msg and "0.75 GiB" in msg


@pytest.mark.parametrize("gamma", [0.0, -1.0, math.nan, math.inf, "Auto", True])
def test_invalid_gamma_raises(gamma):
    for cls in (DenseSR1, DenseBFGS):
        with pytest.raises(ValueError, match="gamma"):
            cls(3, gamma=gamma)


def test_invalid_tolerances_raise():
    with pytest.raises(ValueError, match="skip_tol"):
        DenseSR1(3, skip_tol=-1e-3)
    with pytest.raises(ValueError, match="curvature_eps"):
        DenseBFGS(3, curvature_eps=1.0)
    with pytest.raises(ValueError, match="positive int"):
        DenseSR1(0)

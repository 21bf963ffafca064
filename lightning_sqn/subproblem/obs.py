r"""Orthonormal basis SR1 (OBS) trust-region subproblem solver (Brust, Erway & Marcia 2017).

Solves

.. math::

    \min_p \; g^T p + \tfrac12 p^T B p \quad \text{s.t.} \quad \|p\|_2 \le \Delta,
    \qquad B = \gamma I + \Psi M \Psi^T

exactly, working only with m x m matrices:

1. Rank-revealing thin factorization of Psi from its Gram matrix (no Cholesky, so a rank-deficient
   Psi is fine): Psi^T Psi = V diag(e) V^T, Psi = Q R with R = diag(sqrt e) V^T on the numerically
   nonzero e, Q = Psi V diag(e^{-1/2}) orthonormal (never formed).
2. Eigen-decomposition R M R^T = U diag(Lambda_hat) U^T. Then B = P_par diag(Lambda_hat + gamma) P_par^T
   + gamma (I - P_par P_par^T) with P_par = Q U: the eigenvalues of B are lambda_i = Lambda_hat_i + gamma
   (r of them) and gamma with multiplicity n - r.
3. In these coordinates, g_par = P_par^T g (from Psi^T g) and ||g_perp||^2 = ||g||^2 - ||g_par||^2, and
   p(sigma) = -P_par (Lambda + sigma)^{-1} g_par - g_perp / (gamma + sigma).
4. Cases (Brust et al., Alg. 1): interior (lambda_min > 0 and ||p(0)|| <= Delta, sigma = 0); boundary
   (Newton's method on the secular equation phi(sigma) = 1/||p(sigma)|| - 1/Delta from a start with
   phi <= 0, where the iteration increases monotonically to the root); hard case (lambda_min <= 0, g
   has no component on its eigenspace and ||p(-lambda_min)|| <= Delta: add tau z, z the eigenvector).
   Newton runs in the shifted variable t = sigma - max(-lambda_min, 0), so the denominators
   lambda_i + sigma are gap_i + t and keep their digits when sigma is large and the root lies just
   right of -lambda_min (``benchmarks/obs_newton_iterations.py``).

Everything above works on m x m matrices and runs on the host in NumPy float64
(:func:`solve_obs_host`); the step is returned as p = c_g g + [S Y] c, so forming it costs one pass
over the pair buffer on the device; the predicted reduction and ||p|| come from the spectral
coordinates.

We require gamma > 0 (see :class:`~lightning_sqn.qn.lsr1.LSR1Matrix`): then the model is bounded
along the (n - r)-dimensional complement and the hard case can only arise in the parallel space.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from lightning_sqn._device import to_host
from lightning_sqn.qn.lsr1 import LSR1Matrix
from lightning_sqn.subproblem.result import SolverStatus, TrustRegionResult

#: Cap on the Newton iterations on the secular equation (the iteration stops once no iterate moves).
#: benchmarks/obs_newton_iterations.py needs at most 10 on 3,000 random hard problems, and a step the
#: cap cuts short is scaled back onto the sphere (still feasible).
NEWTON_ITERS = 12


_FINFO = np.finfo(np.float64)
_EPS = float(_FINFO.eps)
_TINY = float(_FINFO.tiny)
_DEFAULT_RANK_TOL = _EPS ** (1.0 / 3.0)
_SQRT_EPS = _EPS**0.5
_INTERIOR = int(SolverStatus.INTERIOR)
_BOUNDARY = int(SolverStatus.BOUNDARY)
_HARD_CASE = int(SolverStatus.HARD_CASE)
_ZERO_GRADIENT = int(SolverStatus.ZERO_GRADIENT)


@dataclass
class HostOBSSolution:
    """The OBS solution in coefficient form, p = coef_g g + [S Y] coef (host numbers)."""

    coef_g: float
    #: (2m,): coefficients on the S rows (-gamma w) then on the Y rows (w), zero on inactive slots
    coef: np.ndarray
    sigma: float
    status: int  #: int(SolverStatus.X)
    predicted_reduction: float
    step_norm: float
    hit_boundary: bool
    #: (m + 1,) ascending: lambda_1..lambda_r padded with gamma, then gamma (lambda_r instead of gamma
    #: when r = n, where gamma is no eigenvalue of B)
    eigenvalues: np.ndarray
    residual_phi: float  #: |phi(sigma)| Delta at the last Newton iterate, for diagnostics
    newton_iterations: int  #: Newton iterations run until no iterate moved (at most ``newton_iters``)


def _norm_sq(t: float, terms: list[tuple[float, float]]) -> tuple[float, float]:
    """||p||^2 = sum w2 / (gap + t)^2 and sum w2 / (gap + t)^3 (for phi') over the weighted secular
    terms (gap, w2), sigma = shift + t. Plain floats: at most m + 1 terms, where NumPy's per-call
    overhead would dominate."""
    q = q3 = 0.0
    for gap, w2 in terms:
        d = gap + t
        r = 1.0 / d if d != 0.0 else math.inf
        r2 = r * r
        q += w2 * r2
        q3 += w2 * r * r2
    return q, q3


def _inv_sqrt(q: float) -> float:
    """q^{-1/2} with 0 -> inf (torch's rsqrt)."""
    return 1.0 / math.sqrt(q) if q > 0.0 else math.inf


def solve_obs_host(
    gamma: float,
    mask: np.ndarray,
    gram: np.ndarray,
    middle: np.ndarray,
    psi_g: np.ndarray,
    g_norm_sq: float,
    radius: float,
    n: int,
    *,
    rank_tol: float | None = None,
    newton_iters: int = NEWTON_ITERS,
) -> HostOBSSolution:
    r"""Solve min g^T p + 1/2 p^T B p, ||p|| <= Delta, B = gamma I + Psi M Psi^T, in m x m algebra.

    The OBS method (Brust, Erway & Marcia 2017, Alg. 1): with Psi = Q R (rank revealing) and
    R M R^T = U diag(Lambda_hat) U^T, B has the eigenvalues Lambda = Lambda_hat + gamma on
    P_par = Q U and gamma on the complement; the multiplier sigma >= 0 of (B + sigma I) p = -g is 0
    (interior), -lambda_min (hard case) or the root of the secular equation
    phi(sigma) = 1/||p(sigma)|| - 1/Delta, found by Newton's method in the shifted variable
    t = sigma - max(-lambda_min, 0) (Moré & Sorensen 1983). The Newton loop stops once
    |step| <= 4 eps |t| or after ``newton_iters`` steps, and a boundary step left outside the sphere by
    the cap is scaled back onto it. (Ported from this package's earlier torch implementation of the same
    method and checked against it on 3,000 hard problems: same statuses, steps within rounding.)

    Args:
        gamma: gamma > 0 (B_0 = gamma I).
        mask: (m,) bool, active pairs.
        gram: Psi^T Psi, (m, m) float64, zero on inactive rows and columns.
        middle: M, (m, m) float64, zero on inactive rows and columns.
        psi_g: Psi^T g, (m,) float64, zero on inactive entries.
        g_norm_sq: ||g||^2.
        radius: Delta > 0.
        n: the problem dimension (tells whether a perpendicular space exists).
        rank_tol: relative singular-value threshold for the rank of Psi (default eps^(1/3)).
        newton_iters: cap on the Newton steps on the secular equation.

    Returns:
        The step as p = coef_g g + [S Y] coef with sigma, status, predicted reduction -m(p), ||p||
        and the m + 1 known eigenvalues of B (ascending), all from the spectral coordinates.
    """
    gamma = float(gamma)
    radius = float(radius)
    g_norm_sq = float(g_norm_sq)
    m = mask.shape[0]
    tol = _DEFAULT_RANK_TOL if rank_tol is None else rank_tol

    # 1.-3. Spectral coordinates on the active slots (inactive slots are zero in every input).
    full = bool(mask.all())
    idx = None if full else mask.nonzero()[0]
    k = m if full else idx.size
    if k and not full:
        sub = (idx[:, None], idx)
        gram, middle, psi_g = gram[sub], middle[sub], psi_g[idx]
    if k:
        e, V = np.linalg.eigh(gram)
        # Rank-revealing: e ascending, so the kept directions (e > tol^2 max e) are a suffix.
        j = bisect.bisect_right(e.tolist(), tol * tol * max(float(e[-1]), _TINY))
        Vk = V[:, j:]
        sqrt_e = np.sqrt(e[j:])
        inv_sqrt_e = 1.0 / sqrt_e
        Rt = Vk * sqrt_e  # R^T on the kept directions, (k, r)
        lam_hat, U = np.linalg.eigh(Rt.T @ middle @ Rt)
        lam = (lam_hat + gamma).tolist()  # ascending
        a = (U.T @ (inv_sqrt_e * (Vk.T @ psi_g))).tolist()
    else:
        lam, a = [], []
    r = len(lam)
    has_perp = r < n
    a_sq = [x * x for x in a]
    a_perp_sq = max(g_norm_sq - sum(a_sq), 0.0) if has_perp else 0.0

    lam_min = min(lam[0], gamma) if r else gamma
    scale = max(abs(lam[0]), abs(lam[-1]), abs(gamma)) if r else abs(gamma)
    # The eigenspace of lambda_min among the parallel eigenvalues: a prefix (lam is ascending).
    near = 1e3 * _EPS * scale
    n_min = 0
    while n_min < r and lam[n_min] - lam_min <= near:
        n_min += 1
    a_min = math.sqrt(sum(a_sq[:n_min]))
    g_norm = math.sqrt(max(g_norm_sq, 0.0))
    zero_on_min = a_min <= _SQRT_EPS * max(g_norm, _TINY)

    # Shifted variable (Moré & Sorensen): sigma = shift + t, denominators lambda_i + sigma = gap_i + t.
    shift = max(-lam_min, 0.0)
    gaps = [x + shift for x in lam]
    gap_perp = gamma + shift
    r_sq = radius * radius

    def weighted(skip_min: bool) -> list[tuple[float, float]]:
        """The secular terms (gap, w2) with nonzero weight; the lambda_min terms left out if asked."""
        terms = [(gaps[i], a_sq[i]) for i in range(n_min if skip_min else 0, r) if a_sq[i] != 0.0]
        if a_perp_sq != 0.0:
            terms.append((gap_perp, a_perp_sq))
        return terms

    # Interior: sigma = 0 with B positive definite (shift = 0 then).
    interior = lam_min > 0.0 and _norm_sq(0.0, weighted(False))[0] <= r_sq
    # Hard case: lambda_min <= 0, no component on its eigenspace, ||p(-lambda_min)|| <= Delta.
    skip = lam_min <= 0.0 and zero_on_min
    terms = weighted(skip)
    hard = not interior and skip and _norm_sq(0.0, terms)[0] <= r_sq

    # Boundary: Newton on phi(sigma) = 1/||p|| - 1/Delta from sigma_0 = shift + a_min / Delta, where
    # phi <= 0; phi is concave and increasing there, so the iterates increase monotonically to the
    # root. Stop once no iterate moves. (Interior and hard case: phi >= 0 at the start, so this is one
    # evaluation, as in the torch version, and the iterate is not used.)
    t = 0.0 if lam_min > 0.0 else a_min / radius
    inv_radius = 1.0 / radius
    iterations = 0
    for _ in range(newton_iters):
        iterations += 1
        q, q3 = _norm_sq(t, terms)
        phi = _inv_sqrt(q) - inv_radius
        if not phi < 0.0:
            break  # at the root up to rounding: the step is 0
        step = phi * (q * math.sqrt(q)) / max(q3, _TINY)
        t -= step
        if not abs(step) > 4.0 * _EPS * abs(t):
            break
    q, _ = _norm_sq(t, terms)
    residual_phi = abs(_inv_sqrt(q) - inv_radius) * radius
    # Safeguard: the iterates approach the root from the left (||p|| > Delta); a step the cap cut short
    # is scaled back onto the sphere (beyond rounding only).
    boundary_scale = radius / math.sqrt(q) if q > r_sq * (1.0 + 16.0 * _EPS) else 1.0

    if interior:
        t, c = -shift, 1.0
    elif hard:
        t, c = 0.0, 1.0
    else:
        c = boundary_scale
    sigma = shift + t
    v_par = [0.0] * r  # the lambda_min terms stay 0 when left out (hard case, or g_par ~ 0 there)
    for i in range(n_min if skip else 0, r):
        d = gaps[i] + t
        v_par[i] = -a[i] / (d if d != 0.0 else 1.0) * c
    dp = gap_perp + t
    perp_norm_sq = c * c * a_perp_sq / (dp * dp)
    v_sq = sum(v * v for v in v_par)
    if hard:
        # tau z along the first eigenvector of lambda_min, ||p|| = Delta, tau g^T z <= 0.
        tau = math.sqrt(max(r_sq - v_sq - perp_norm_sq, 0.0))
        v_par[0] += -tau if a[0] > 0.0 else tau
        v_sq = sum(v * v for v in v_par)

    # Spectral model value m(p) = sum_par (a v + lam v^2 / 2) + perp part, and ||p||.
    m_par = sum(ai * v + 0.5 * li * v * v for ai, li, v in zip(a, lam, v_par, strict=True))
    m_perp = -c * a_perp_sq / dp + 0.5 * gamma * perp_norm_sq
    pred = -(m_par + m_perp)
    step_norm = math.sqrt(v_sq + perp_norm_sq)

    # p = P_par (v_par + c a / dp) - c g / dp in [S Y] coefficients: [S Y] coef = Psi w with
    # w = V diag(e^{-1/2}) U c_par.
    if has_perp:
        coef_g = -c / dp
        c_par = [v + c * ai / dp for v, ai in zip(v_par, a, strict=True)]
    else:
        coef_g = 0.0
        c_par = v_par
    coef = np.zeros(2 * m)
    if r:
        w = Vk @ (inv_sqrt_e * (U @ np.array(c_par)))
        if full:
            np.multiply(w, -gamma, out=coef[:m])
            coef[m:] = w
        else:
            coef[idx] = -gamma * w
            coef[m + idx] = w

    if g_norm_sq == 0.0 and lam_min > 0.0:
        status = _ZERO_GRADIENT
    elif interior:
        status = _INTERIOR
    else:
        status = _HARD_CASE if hard else _BOUNDARY
    # gamma is an eigenvalue of B only when r < n; otherwise pad with lambda_max of the parallel space.
    pad = gamma if has_perp else (lam[-1] if r else -math.inf)
    eigenvalues = lam + [pad] * (m + 1 - r)
    eigenvalues.sort()
    return HostOBSSolution(
        coef_g=coef_g,
        coef=coef,
        sigma=sigma,
        status=status,
        predicted_reduction=pred,
        step_norm=step_norm,
        hit_boundary=not interior and status != _ZERO_GRADIENT,
        eigenvalues=np.array(eigenvalues),
        residual_phi=residual_phi,
        newton_iterations=iterations,
    )


def solve_obs_projected(
    matrix: LSR1Matrix,
    proj_g: np.ndarray,
    g_norm_sq: float,
    radius: float,
    *,
    newton_iters: int = NEWTON_ITERS,
) -> HostOBSSolution:
    """:func:`solve_obs_host` for the matrix's B-form factors, given [S Y]^T g and g^T g (host)."""
    f = matrix.factors(primal=True)
    return solve_obs_host(
        f.b0,
        f.mask,
        f.gram,
        f.middle,
        f.psi_t(proj_g),
        g_norm_sq,
        radius,
        matrix.memory.n,
        rank_tol=matrix.rank_tol,
        newton_iters=newton_iters,
    )


def solve_obs(
    matrix: LSR1Matrix,
    g: Tensor,
    radius: float,
    *,
    newton_iters: int = NEWTON_ITERS,
) -> TrustRegionResult:
    """Solve min g^T p + 1/2 p^T B p, ||p|| <= radius for the L-SR1 matrix B exactly (OBS).

    The entry point outside the optimizers' steps (tests, tools): one pass for [S Y]^T g, one read,
    the host solve, one pass for the step. Scalars of the result are host numbers, ``eigenvalues`` a
    CPU float64 tensor.

    Args:
        matrix: the L-SR1 matrix (any form; the B-form factors are used).
        g: gradient, shape (n,).
        radius: Delta > 0.
        newton_iters: cap on the secular Newton iterations.
    """
    mem = matrix.memory
    h = to_host(mem.project(g), g @ g)
    sol = solve_obs_projected(matrix, h[:-1], float(h[-1]), float(radius), newton_iters=newton_iters)
    step = mem.combine(sol.coef, g, beta=sol.coef_g)  # p = c_g g + [S Y] c, one pass over the buffer
    return TrustRegionResult(
        step=step,
        sigma=sol.sigma,
        hit_boundary=sol.hit_boundary,
        predicted_reduction=sol.predicted_reduction,
        status=sol.status,
        eigenvalues=torch.from_numpy(sol.eigenvalues.copy()),
        step_norm=sol.step_norm,
        coefficients=(sol.coef_g, sol.coef),
    )


__all__ = ["NEWTON_ITERS", "HostOBSSolution", "solve_obs", "solve_obs_host", "solve_obs_projected"]

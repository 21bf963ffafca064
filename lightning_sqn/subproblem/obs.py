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

The step is returned as p = c_g g + [S Y] c, so forming it costs one pass over the pair buffer; the
predicted reduction and ||p|| come from the spectral coordinates. Every operation is a fixed-shape
device operation (the Newton iteration runs a fixed number of steps on an accelerator, frozen once
converged), so the solver never reads a value back itself; on CUDA its two ``torch.linalg.eigh`` calls
each read their cuSOLVER status back (torch offers no ``eigh_ex``).

We require gamma > 0 (see :class:`~lightning_sqn.qn.lsr1.LSR1Matrix`): then the model is bounded
along the (n - r)-dimensional complement and the hard case can only arise in the parallel space.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_sqn._device import host_reads_are_free, one_hot_mask
from lightning_sqn.qn.lsr1 import CompactFactors, LSR1Matrix
from lightning_sqn.subproblem.result import SubproblemStatus, TrustRegionResult

#: Newton iterations on the secular equation: a cap on the CPU (which stops once no iterate moves), the
#: fixed count of the accelerator form. benchmarks/obs_newton_iterations.py needs at most 10 on 3,000
#: random hard problems, and a step the cap cuts short is scaled back onto the sphere (still feasible).
NEWTON_ITERS = 12


@dataclass
class OBSSolution:
    """The OBS solution in coefficient form, p = coef_g g + [S Y] coef (all 0-dim unless stated)."""

    coef_g: Tensor
    coef: Tensor  #: (2m,)
    sigma: Tensor
    status: Tensor
    predicted_reduction: Tensor
    step_norm: Tensor
    hit_boundary: Tensor
    #: (m + 1,) ascending: lambda_1..lambda_r padded with gamma, then gamma (with lambda_r instead of
    #: gamma when r = n, where gamma is no eigenvalue of B)
    eigenvalues: Tensor
    residual_phi: Tensor  #: |phi(sigma)| at exit, for diagnostics
    #: Newton iterations run on the secular equation: until no iterate moved where the solver branches
    #: on the host (CPU), else the fixed ``newton_iters`` of the accelerator form
    newton_iterations: int = 0


def solve_obs_small(
    f: CompactFactors,
    psi_g: Tensor,
    g_norm_sq: Tensor,
    radius: Tensor,
    n: int,
    *,
    rank_tol: float | None = None,
    newton_iters: int = NEWTON_ITERS,
) -> OBSSolution:
    """Solve the L-SR1 trust-region subproblem in the m-dimensional coordinates.

    Args:
        f: the B-form factors (gamma, Psi^T Psi, M) of :meth:`LSR1Matrix.factors`.
        psi_g: Psi^T g, shape (m,).
        g_norm_sq: ||g||^2.
        radius: Delta > 0.
        n: the problem dimension (tells whether a perpendicular space exists).
        rank_tol: relative singular-value threshold for the rank of Psi (default eps^(1/3)).
        newton_iters: Newton steps on the secular equation (:data:`NEWTON_ITERS`; quadratic
            convergence from the safe start, 1-10 steps in practice).
    """
    if not f.primal:
        raise ValueError("OBS needs the B-form factors (LSR1Matrix.factors(primal=True))")
    dtype, device = f.gram.dtype, f.gram.device
    eps = torch.finfo(dtype).eps
    tol = eps ** (1.0 / 3.0) if rank_tol is None else rank_tol
    zero = torch.zeros((), dtype=dtype, device=device)
    gamma = f.b0
    radius = torch.as_tensor(radius, dtype=dtype, device=device)

    # 1. Psi = Q R, rank-revealing (Brust et al. Sec. 3: thin QR; here via the Gram matrix).
    e, V = torch.linalg.eigh(f.gram)
    keep = e > tol * tol * e.amax().clamp_min(torch.finfo(dtype).tiny)
    sqrt_e = torch.where(keep, e.clamp_min(0).sqrt(), zero)
    inv_sqrt_e = torch.where(keep, 1.0 / sqrt_e.clamp_min(torch.finfo(dtype).tiny), zero)
    # 2. R M R^T = U Lambda_hat U^T (dropped directions get a large eigenvalue and are masked below).
    RMRt = sqrt_e[:, None] * (V.t() @ f.middle @ V) * sqrt_e[None, :]
    # Dropped coordinates get a distinct large diagonal, so their eigenvectors are exactly unit
    # vectors on them and never mix with the kept block (which may have zero eigenvalues).
    big = 2 * RMRt.abs().amax() + 1
    lam_hat, U = torch.linalg.eigh(RMRt + torch.diag_embed(torch.where(keep, zero, big)))
    kept_vec = (U * U * keep[:, None]).sum(0) > 0.5  # eigenvector lies in the kept subspace
    lam = lam_hat + gamma
    # 3. g_par = U^T R^{-T} Psi^T g = U^T diag(1/sqrt e) V^T psi_g.
    a = U.t() @ (inv_sqrt_e * (V.t() @ psi_g))
    a = torch.where(kept_vec, a, zero)
    lam = torch.where(kept_vec, lam, gamma)  # dropped slots behave like the perpendicular space
    r = kept_vec.sum()
    has_perp = r < n
    a_perp_sq = torch.where(has_perp, (g_norm_sq - (a * a).sum()).clamp_min(0), zero)

    lam_min_par = torch.where(kept_vec, lam, torch.full_like(lam, float("inf"))).amin()
    lam_min = torch.minimum(lam_min_par, gamma)
    # Components of g on the eigenspace of lambda_min (eigenvalues within a relative tolerance).
    scale = lam.abs().amax().clamp_min(gamma.abs())
    on_min = kept_vec & ((lam - lam_min).abs() <= 1e3 * eps * scale)
    a_min = torch.sqrt((torch.where(on_min, a, zero) ** 2).sum())
    g_norm = g_norm_sq.clamp_min(0).sqrt()
    zero_on_min = a_min <= eps**0.5 * g_norm.clamp_min(torch.finfo(dtype).tiny)

    # The secular function over the r + 1 distinct eigenvalues: [lambda_1..lambda_m, gamma] with
    # squared weights [a_i^2, ||g_perp||^2]; zero weights (dropped slots, or the lambda_min terms left
    # out in the (near-)hard case) contribute nothing and never divide by zero.
    lam_ext = torch.cat((lam, gamma.reshape(1)))
    # Shifted variable (Moré & Sorensen 1983): sigma = shift + t with shift = max(-lambda_min, 0), and
    # the denominators lambda_i + sigma = gap_i + t with gap_i = lambda_i + shift >= 0 (exactly 0 for
    # lambda_min). When -lambda_min is large and the root lies just right of that pole (nearly hard
    # case), lambda_min + sigma formed directly would lose the digits that decide ||p||.
    shift = (-lam_min).clamp_min(0)
    gaps_ext = lam_ext + shift

    def weights(skip_min: Tensor) -> Tensor:
        w = torch.where(skip_min & on_min, zero, a)
        return torch.cat((w * w, a_perp_sq.reshape(1)))

    one = torch.ones_like(lam_ext)

    def norm_sq(t: Tensor, w2: Tensor, weighted: Tensor) -> tuple[Tensor, Tensor]:
        """||p(sigma)||^2 = sum w2 / (gap + t)^2 and sum w2 / (gap + t)^3 (for phi'), sigma = shift + t.

        ``weighted`` = (w2 != 0): terms without weight get a unit denominator, so they never divide by
        zero. Two dot products, so an iteration is a handful of device operations (on an accelerator
        the loop below runs all ``newton_iters`` of them).
        """
        r = torch.where(weighted, gaps_ext + t, one).reciprocal()
        r2 = r * r
        return torch.dot(w2, r2), torch.dot(w2 * r, r2)

    no_skip = torch.zeros((), dtype=torch.bool, device=device)
    # Interior candidate: sigma = 0 when B is positive definite.
    w2_all = weights(no_skip)
    q0, _ = norm_sq(-shift, w2_all, w2_all != 0)  # sigma = 0 (shift = 0 where it matters)
    interior = (lam_min > 0) & (q0 <= radius * radius)
    # Hard case: lambda_min <= 0, no component on its eigenspace, ||p(-lambda_min)|| <= Delta.
    w2_hard = weights(zero_on_min)
    q_hard, _ = norm_sq(zero, w2_hard, w2_hard != 0)  # sigma = -lambda_min = shift
    hard = (~interior) & (lam_min <= 0) & zero_on_min & (q_hard <= radius * radius)

    # Boundary: Newton on phi(sigma) = 1/||p|| - 1/Delta from sigma_0 with phi(sigma_0) <= 0; phi is
    # concave and increasing there, so the iterates increase monotonically to the root. On the CPU the
    # loop stops once no iterate moves (reading a CPU tensor costs no device synchronisation); on an
    # accelerator it runs ``newton_iters`` fixed-shape steps, frozen once converged.
    t = torch.where(lam_min > 0, zero, a_min / radius)  # sigma_0 = shift + a_min / Delta
    skip = (lam_min <= 0) & zero_on_min
    w2 = weights(skip)
    weighted = w2 != 0
    inv_radius = 1.0 / radius
    tiny = torch.finfo(dtype).tiny
    early_exit = host_reads_are_free(device)
    iterations = 0
    for _ in range(newton_iters):
        iterations += 1
        q, q3 = norm_sq(t, w2, weighted)
        # phi = 1/||p|| - 1/Delta, phi' = q3 / ||p||^3, so the Newton step is phi ||p||^3 / q3. Once
        # phi >= 0 (the root, up to rounding) the iterate is frozen. q3 = 0 only if every weight is
        # zero; then q = 0, phi = +inf and nothing moves.
        phi = q.rsqrt() - inv_radius
        step = torch.where(phi < 0, phi * q.pow(1.5) / q3.clamp_min(tiny), zero)
        t = t - step
        if early_exit and not bool(step.abs() > 4 * eps * t.abs()):
            break
    q, _ = norm_sq(t, w2, weighted)
    residual_phi = (q.rsqrt() - inv_radius).abs() * radius
    # Safeguard: the iterates approach the root from the left, where ||p(t)|| > Delta. Should the
    # iterations run out first (never seen: at most 10 are needed in benchmarks/obs_newton_iterations.py),
    # the boundary step is scaled back onto the sphere, so it is always feasible.
    # (Beyond rounding only: a converged iterate may sit an ulp outside and stays as it is.)
    outside = q > radius * radius * (1 + 16 * eps)
    boundary_scale = torch.where(outside, radius * q.rsqrt(), torch.ones_like(q))

    t = torch.where(interior, -shift, torch.where(hard, zero, t))
    sigma = shift + t
    c = torch.where(interior | hard, 1.0, boundary_scale)  # the safeguard's factor, 1 as a rule
    skip_terms = hard | skip
    d = (lam + shift) + t
    v_par = torch.where(skip_terms & on_min, zero, -a / torch.where(d == 0, torch.ones_like(d), d))
    v_par = torch.where(kept_vec, v_par, zero) * c
    dp = (gamma + shift) + t
    perp_norm_sq = c * c * a_perp_sq / (dp * dp)
    # Hard case: add tau z along the first eigenvector of lambda_min, ||p|| = Delta, tau g^T z <= 0.
    first_min = one_hot_mask(torch.argmax(on_min.to(torch.int8)), on_min.shape[0]).to(dtype)
    tau = (radius * radius - (v_par * v_par).sum() - perp_norm_sq).clamp_min(0).sqrt()
    sign = torch.where((a * first_min).sum() > 0, -1.0, 1.0).to(dtype)
    v_par = v_par + torch.where(hard, sign * tau, zero) * first_min

    # Step p = P_par (v_par + a / (gamma + sigma)) - g / (gamma + sigma) in [S Y] coefficients.
    coef_g = -c / dp
    c_par = torch.where(has_perp, v_par + c * a / dp, v_par)
    coef_g = torch.where(has_perp, coef_g, zero)
    w = V @ (inv_sqrt_e * (U @ c_par))
    coef = f.coeffs(w)

    # Spectral model value m(p) = sum_par (a v + lam v^2 / 2) + perp part.
    m_par = (a * v_par + 0.5 * lam * v_par * v_par).sum()
    m_perp = -c * a_perp_sq / dp + 0.5 * gamma * perp_norm_sq
    pred = -(m_par + m_perp)
    step_norm = ((v_par * v_par).sum() + perp_norm_sq).sqrt()

    # Python ints as torch.where scalars: no host-to-device copy (torch.tensor(..., device=) would be one).
    status = torch.where(hard, int(SubproblemStatus.HARD_CASE), int(SubproblemStatus.BOUNDARY))
    status = torch.where(interior, int(SubproblemStatus.INTERIOR), status)
    status = torch.where((g_norm_sq == 0) & (lam_min > 0), int(SubproblemStatus.ZERO_GRADIENT), status)
    # gamma is an eigenvalue of B only if the perpendicular space exists (r < n); otherwise pad with
    # lambda_max of the parallel space so min/max stay those of B.
    lam_max_par = torch.where(kept_vec, lam, torch.full_like(lam, float("-inf"))).amax()
    pad = torch.where(has_perp, gamma, lam_max_par)
    eigenvalues = torch.sort(torch.cat((torch.where(kept_vec, lam, pad), pad.reshape(1)))).values
    return OBSSolution(
        coef_g=coef_g,
        coef=coef,
        sigma=sigma,
        status=status,
        predicted_reduction=pred,
        step_norm=step_norm,
        hit_boundary=~interior & (status != int(SubproblemStatus.ZERO_GRADIENT)),
        eigenvalues=eigenvalues,
        residual_phi=residual_phi,
        newton_iterations=iterations,
    )


def solve_obs(
    matrix: LSR1Matrix,
    g: Tensor,
    radius: Tensor | float,
    *,
    proj_g: Tensor | None = None,
    out: Tensor | None = None,
    newton_iters: int = NEWTON_ITERS,
    g_norm_sq: Tensor | None = None,
) -> TrustRegionResult:
    """Solve min g^T p + 1/2 p^T B p, ||p|| <= radius for the L-SR1 matrix B exactly (OBS).

    Args:
        matrix: the L-SR1 matrix (any form; the B-form factors are used).
        g: gradient, shape (n,).
        radius: Delta > 0.
        proj_g: [S Y]^T g if already computed (saves a pass).
        g_norm_sq: g^T g if already computed.
        out: optional (n,) buffer for the step.
        newton_iters: see :func:`solve_obs_small`.
    """
    mem = matrix.memory
    f = matrix.factors(primal=True)
    proj = mem.project(g) if proj_g is None else proj_g
    sol = solve_obs_small(
        f,
        f.psi_t(proj),
        g @ g if g_norm_sq is None else g_norm_sq,
        torch.as_tensor(radius, dtype=g.dtype, device=g.device),
        mem.n,
        rank_tol=matrix.rank_tol,
        newton_iters=newton_iters,
    )
    step = torch.mul(g, sol.coef_g, out=out) if out is not None else g * sol.coef_g
    step.addmv_(mem.SY_buf.t(), sol.coef)  # p = c_g g + [S Y] c, one pass over the pair buffer
    return TrustRegionResult(
        step=step,
        sigma=sol.sigma,
        hit_boundary=sol.hit_boundary,
        predicted_reduction=sol.predicted_reduction,
        status=sol.status,
        eigenvalues=sol.eigenvalues,
        step_norm=sol.step_norm,
        coefficients=(sol.coef_g, sol.coef),
    )

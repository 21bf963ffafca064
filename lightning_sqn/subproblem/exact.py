"""Exact (Moré–Sorensen) and Cauchy-point solutions of the trust-region subproblem.

Both solve

.. math::

    \\min_{p \\in \\mathbb{R}^n} m(p) = g^T p + \\tfrac12 p^T B p
    \\quad \\text{subject to} \\quad \\|p\\|_2 \\le \\Delta

for a symmetric ``B``. :func:`solve_exact` computes the global minimiser from the full eigendecomposition
of a dense ``B`` and serves as the test oracle for the limited-memory solvers and as a solver for tiny
problems; :func:`cauchy_point` is the cheap reference point of Nocedal & Wright, Alg. 4.2.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from lightning_sqn.subproblem.result import SolverStatus, TrustRegionResult

__all__ = ["cauchy_point", "solve_exact"]

_MAX_SECULAR_ITERS = 200


def _radius_value(radius: Tensor | float) -> float:
    delta = float(radius)
    if not (delta > 0.0 and math.isfinite(delta)):
        raise ValueError(f"the trust-region radius must be finite and > 0, got {delta}")
    return delta


def _step_norm_sq(a: Tensor, lam: Tensor, sigma: float) -> tuple[float, float]:
    """||p(sigma)||^2 and sum_i a_i^2 / (lambda_i + sigma)^3 in eigen-coordinates."""
    shifted = lam + sigma
    w = a.square() / shifted.square()
    return float(w.sum()), float((w / shifted).sum())


def _solve_secular(a: Tensor, lam: Tensor, delta: float, lower: float, upper: float) -> float:
    """Root sigma in (lower, upper] of the secular equation psi(sigma) = 1/||p(sigma)|| - 1/delta.

    With ``a = Q^T g``, ``||p(sigma)||^2 = sum_i a_i^2 / (lambda_i + sigma)^2`` (Nocedal & Wright eq. 4.38).
    ``psi`` is increasing and concave on ``(-lambda_1, inf)`` (Moré & Sorensen 1983), so Newton's method

    .. math::

        \\sigma_{+} = \\sigma - \\psi(\\sigma)/\\psi'(\\sigma), \\qquad
        \\psi'(\\sigma) = \\|p(\\sigma)\\|^{-3} \\sum_i a_i^2 / (\\lambda_i + \\sigma)^3

    (N&W Alg. 4.3 in eigen-coordinates) increases monotonically to the root from any start left of it.
    It starts at the lower bound ``max_i (|a_i| / delta - lambda_i)`` of the root (each term of
    ``||p(sigma)||`` is at most ``delta`` there), which lies left of the root and, in the nearly hard
    case, close to it. When that bound is not above ``lower``, it starts at ``upper`` instead. Iterates
    are safeguarded by a bracket ``(lo, hi)`` with ``psi(lo) < 0 <= psi(hi)``; a Newton iterate outside
    it is replaced by the midpoint, and so is one that stalls (a correction below machine precision while
    ``||p|| != delta``, which happens next to the pole of a term with tiny ``a_i``). The loop stops when
    ``||p|| = delta`` to machine precision or the bracket cannot be split any further.

    The caller guarantees ``psi(lower+) < 0`` and ``psi(upper) >= 0``.
    """
    eps = torch.finfo(a.dtype).eps
    lo, hi = lower, upper
    start = float((a.abs() / delta - lam).max())
    sigma = start if lower < start <= upper else upper
    for _ in range(_MAX_SECULAR_ITERS):
        norm_sq, cubic = _step_norm_sq(a, lam, sigma)
        norm = math.sqrt(norm_sq)
        psi = 1.0 / norm - 1.0 / delta
        if psi < 0.0:
            lo = sigma
        else:
            hi = sigma
        if not cubic > 0.0:
            break
        if abs(norm - delta) <= 4.0 * eps * delta:
            break
        candidate = sigma - psi * norm_sq * norm / cubic
        stalled = abs(candidate - sigma) <= 2.0 * eps * abs(sigma)
        if stalled or not lo < candidate < hi:
            candidate = 0.5 * (lo + hi)
            if candidate in (lo, hi):
                break
        sigma = candidate
    return sigma


def _onto_sphere(a: Tensor, shifted: Tensor, in_e1: Tensor, delta: float) -> Tensor:
    """Eigen-coordinates ``c ~ -a / (lambda + sigma)`` of the boundary step, with ``||c|| = delta`` exactly.

    Two candidates are formed and the one with the smaller residual ``||(Lambda + sigma) c + a||`` is
    returned:

    * ``c * delta / ||c||`` (uniform rescaling), accurate when the secular equation is well conditioned;
    * ``c`` off ``E_1``, and ``-a_{E_1} / ||a_{E_1}|| * sqrt(delta^2 - ||c_{rest}||^2)`` on ``E_1``. In
      the nearly hard case ``lambda_1 + sigma`` is tiny and ``sigma`` is only known to machine precision
      (possibly rounding onto the pole ``-lambda_1`` itself), so ``c_{E_1}`` is ill determined while its
      residual contribution ``(lambda_1 + sigma) c_{E_1}`` is negligible: its length is fixed by the
      constraint instead and its direction is the limit of ``-a_{E_1} / (lambda_1 + sigma)``.
    """
    at_pole = shifted == 0
    c = torch.where(at_pole, torch.zeros_like(a), -a / torch.where(at_pole, torch.ones_like(a), shifted))
    candidates = [c * (delta / torch.linalg.vector_norm(c))]
    a_e1_norm = torch.linalg.vector_norm(a[in_e1])
    rest_sq = float(c[~in_e1].square().sum())
    if float(a_e1_norm) > 0.0 and rest_sq <= delta * delta:
        length = math.sqrt(delta * delta - rest_sq)
        candidates.append(torch.where(in_e1, -a * (length / a_e1_norm), c))
    residuals = [float(torch.linalg.vector_norm(shifted * cand + a)) for cand in candidates]
    residuals = [r if math.isfinite(r) else math.inf for r in residuals]
    return candidates[min(range(len(candidates)), key=residuals.__getitem__)]


def _result(
    B: Tensor,
    g: Tensor,
    step: Tensor,
    sigma: float,
    hit_boundary: bool,
    status: SolverStatus,
    eigenvalues: Tensor,
) -> TrustRegionResult:
    """Pack a step into a :class:`TrustRegionResult`, with pred = -(g^T p + 1/2 p^T B p) (Alg. 1 line 10)."""
    pred = -(g @ step + 0.5 * step @ (B @ step))
    return TrustRegionResult(
        step=step,
        sigma=torch.tensor(sigma, dtype=B.dtype, device=B.device),
        hit_boundary=torch.tensor(hit_boundary, device=B.device),
        predicted_reduction=pred,
        status=torch.tensor(int(status), dtype=torch.int64, device=B.device),
        eigenvalues=eigenvalues,
        step_norm=torch.linalg.vector_norm(step),
    )


def solve_exact(
    B: Tensor, g: Tensor, radius: Tensor | float, *, tol: float | None = None
) -> TrustRegionResult:
    """Global minimiser of ``g^T p + 1/2 p^T B p`` subject to ``||p||_2 <= radius`` for dense ``B``.

    By Moré & Sorensen (1983) (Nocedal & Wright, Thm. 4.1), ``p*`` is a global solution iff there is a
    ``sigma >= 0`` with

    .. math::

        (B + \\sigma I) p^* = -g, \\qquad \\sigma (\\Delta - \\|p^*\\|) = 0, \\qquad
        B + \\sigma I \\succeq 0.

    With the eigendecomposition ``B = Q diag(lambda) Q^T`` (``lambda_1 <= ... <= lambda_n``) and
    ``a = Q^T g``, ``p(sigma) = -sum_i a_i / (lambda_i + sigma) q_i`` and the cases are

    * zero gradient (``g = 0``): ``p = 0`` if ``B`` is positive semidefinite
      (:attr:`~SolverStatus.ZERO_GRADIENT`), else ``p = radius * q_1`` with ``sigma = -lambda_1``
      (:attr:`~SolverStatus.HARD_CASE`);
    * interior: ``lambda_1 > 0`` and ``||B^{-1} g|| <= radius`` gives ``sigma = 0``. A positive
      semidefinite singular ``B`` with ``g`` (numerically) in its range and ``||B^+ g|| <= radius`` is
      also reported as interior, with the minimum-norm solution ``p = -B^+ g``;
    * boundary: ``sigma > max(0, -lambda_1)`` solves the secular equation
      ``1/||p(sigma)|| = 1/radius`` (N&W eq. 4.39–4.40) by safeguarded Newton, see
      :func:`_solve_secular`; the step is then put on the sphere ``||p|| = radius`` exactly, see
      :func:`_onto_sphere`;
    * hard case (N&W eq. 4.45): ``lambda_1 < 0``, ``g`` orthogonal to the eigenspace ``E_1`` of
      ``lambda_1`` and ``||p(-lambda_1)|| < radius`` (with the ``E_1`` terms left out). Then
      ``sigma = -lambda_1`` and ``p = p(-lambda_1) + tau z`` with ``tau = sqrt(radius^2 -
      ||p(-lambda_1)||^2)`` and ``z`` the unit eigenvector of ``lambda_1`` along ``-P_{E_1} g`` (the
      limit of the nearly hard case, so the step is continuous in ``g``), or ``q_1`` when
      ``P_{E_1} g = 0`` exactly.

    This is the test oracle and a solver for tiny problems: it runs an ``O(n^3)`` eigendecomposition and
    a Python loop that synchronises with the host.

    Args:
        B: symmetric matrix, shape ``(n, n)``; only its symmetric part ``(B + B^T)/2`` is used.
        g: gradient, shape ``(n,)``, same dtype and device as ``B``.
        radius: trust-region radius ``Delta > 0``.
        tol: relative tolerance (default ``100 n eps`` of the dtype). Eigenvalues within
            ``tol * max_i |lambda_i|`` of ``lambda_1`` form ``E_1``; ``g`` counts as orthogonal to
            ``E_1`` when ``||Q_{E_1}^T g|| <= tol * ||g||``; ``B`` counts as positive semidefinite when
            ``lambda_1 >= -tol * max_i |lambda_i|``.

    Returns:
        A :class:`TrustRegionResult` with all ``n`` eigenvalues of ``B`` in ascending order.

    Raises:
        ValueError: on mismatched shapes, a non-floating dtype, or a radius that is not finite and > 0.
    """
    if B.ndim != 2 or B.shape[0] != B.shape[1] or g.shape != (B.shape[0],):
        raise ValueError(
            f"need B of shape (n, n) and g of shape (n,), got {tuple(B.shape)} and {tuple(g.shape)}"
        )
    if not B.is_floating_point() or g.dtype != B.dtype:
        raise ValueError(f"B and g must share one floating dtype, got {B.dtype} and {g.dtype}")
    delta = _radius_value(radius)
    n = B.shape[0]
    eps = torch.finfo(B.dtype).eps
    rtol = 100.0 * n * eps if tol is None else float(tol)

    B = 0.5 * (B + B.T)
    lam, Q = torch.linalg.eigh(B)
    lam1 = float(lam[0])
    scale = max(float(lam.abs().max()), torch.finfo(B.dtype).tiny)
    eig_tol = rtol * scale
    psd = lam1 >= -eig_tol

    g_norm = float(torch.linalg.vector_norm(g))
    if g_norm == 0.0:
        if psd:
            return _result(B, g, torch.zeros_like(g), 0.0, False, SolverStatus.ZERO_GRADIENT, lam)
        return _result(B, g, delta * Q[:, 0], -lam1, True, SolverStatus.HARD_CASE, lam)

    a = Q.T @ g

    # Interior case: B positive definite and the Newton step -B^{-1} g inside the region.
    if lam1 > eig_tol:
        newton = -(Q @ (a / lam))
        if float(torch.linalg.vector_norm(newton)) <= delta:
            return _result(B, g, newton, 0.0, False, SolverStatus.INTERIOR, lam)

    lower = max(0.0, -lam1)
    in_e1 = lam <= lam1 + eig_tol
    if lam1 <= eig_tol and float(torch.linalg.vector_norm(a[in_e1])) <= rtol * g_norm:
        # g is orthogonal to E_1: p(lower) restricted to the complement of E_1 (N&W eq. 4.45).
        shift = 0.0 if psd else lower
        coeff = torch.where(
            in_e1, torch.zeros_like(a), -a / torch.where(in_e1, torch.ones_like(lam), lam + shift)
        )
        p_hat = Q @ coeff
        p_hat_norm = float(torch.linalg.vector_norm(p_hat))
        if p_hat_norm <= delta:
            if psd:
                return _result(B, g, p_hat, 0.0, False, SolverStatus.INTERIOR, lam)
            tau = math.sqrt(max(delta * delta - p_hat_norm * p_hat_norm, 0.0))
            a_e1 = torch.where(in_e1, a, torch.zeros_like(a))
            a_e1_norm = torch.linalg.vector_norm(a_e1)
            z = -(Q @ a_e1) / a_e1_norm if float(a_e1_norm) > 0.0 else Q[:, 0]
            step = p_hat + tau * z
            return _result(B, g, step, lower, True, SolverStatus.HARD_CASE, lam)

    if lam1 > 0.0:
        newton = -(Q @ (a / lam))
        if float(torch.linalg.vector_norm(newton)) <= delta:
            return _result(B, g, newton, 0.0, False, SolverStatus.INTERIOR, lam)

    # Boundary case: ||p(sigma)|| <= ||g|| / (lambda_1 + sigma), so psi(upper) >= 0.
    upper = max(lower, g_norm / delta - lam1)
    sigma = _solve_secular(a, lam, delta, lower, upper)
    shifted = lam + sigma
    step = Q @ _onto_sphere(a, shifted, in_e1, delta)
    return _result(B, g, step, sigma, True, SolverStatus.BOUNDARY, lam)


def cauchy_point(
    B: Tensor | Callable[[Tensor], Tensor], g: Tensor, radius: Tensor | float
) -> TrustRegionResult:
    """The Cauchy point: the minimiser of the model along ``-g`` inside the trust region.

    Nocedal & Wright, Alg. 4.2 and eqs. (4.11)–(4.12):

    .. math::

        p^C = -\\tau \\frac{\\Delta}{\\|g\\|} g, \\qquad
        \\tau = \\begin{cases} 1 & g^T B g \\le 0, \\\\
        \\min\\left(\\|g\\|^3 / (\\Delta\\, g^T B g),\\ 1\\right) & \\text{otherwise.} \\end{cases}

    Needs one product ``B g`` and no host synchronisation. ``status`` is
    :attr:`~SolverStatus.BOUNDARY` when ``tau = 1``, :attr:`~SolverStatus.INTERIOR` when the
    minimiser along ``-g`` lies strictly inside, and :attr:`~SolverStatus.ZERO_GRADIENT` (with
    ``p = 0``) when ``g = 0``. ``sigma`` is 0 and ``eigenvalues`` is empty: the Cauchy point does not
    solve the subproblem's optimality conditions.

    Args:
        B: symmetric matrix of shape ``(n, n)``, or a callable ``v -> B v``.
        g: gradient, shape ``(n,)``.
        radius: trust-region radius ``Delta > 0`` (float or 0-dim tensor).

    Returns:
        A :class:`TrustRegionResult` for ``p^C``.
    """
    Bg = B(g) if callable(B) else B @ g
    delta = torch.as_tensor(radius, dtype=g.dtype, device=g.device)
    g_norm = torch.linalg.vector_norm(g)
    nonzero = g_norm > 0
    safe_norm = torch.where(nonzero, g_norm, torch.ones_like(g_norm))
    gBg = g @ Bg
    positive = gBg > 0
    safe_gBg = torch.where(positive, gBg, torch.ones_like(gBg))
    tau = torch.where(positive, torch.clamp(safe_norm**3 / (delta * safe_gBg), max=1.0), torch.ones_like(gBg))
    tau = torch.where(nonzero, tau, torch.zeros_like(tau))
    t = tau * delta / safe_norm  # p^C = -t g
    step = -t * g
    pred = t * g_norm.square() - 0.5 * t.square() * gBg  # -(g^T p + 1/2 p^T B p)
    hit = nonzero & (tau >= 1.0)
    status = torch.where(
        nonzero,
        torch.where(hit, int(SolverStatus.BOUNDARY), int(SolverStatus.INTERIOR)),
        int(SolverStatus.ZERO_GRADIENT),
    ).to(torch.int64)
    return TrustRegionResult(
        step=step,
        sigma=torch.zeros_like(g_norm),
        hit_boundary=hit,
        predicted_reduction=pred,
        status=status,
        eigenvalues=g.new_empty(0),
        step_norm=tau * delta,
    )

"""Linear (preconditioned) conjugate gradient on the quadratic model, with Martens' HF extras.

:func:`solve_cg` minimises

.. math::

    q(x) = \\tfrac12 x^T A x - b^T x, \\qquad A \\succ 0,

given only products ``v -> A v``. In Martens' Hessian-free notation (slides "2nd-order optimization")
the model is ``q_theta(p) = f + grad f^T p + 1/2 p^T B p`` with the damped curvature ``B = H + lambda I``
(slide "Standard Hessian-free Optimization", line 4) or ``G + lambda I`` with the Gauss-Newton matrix
``G``, so ``A = B``, ``b = -grad f`` and
``x = p``; the model value reported here omits the constant ``f``.

Besides the textbook method (Nocedal & Wright, Alg. 5.3) it carries the ingredients of Martens (2010),
"Deep learning via Hessian-free optimization" (the ICML 2010 talk: slide "CG stopping conditions" and
the slide listing the method's ingredients; constants from the paper, as quoted in the docstrings):

* the relative-progress stopping rule (:class:`ProgressWindow`), instead of the residual test
  ``||r|| < min(1/2, ||g||^{1/2}) ||g||`` of "most versions of HF";
* warm starts ``x0`` ("initializing each run of the inner CG-loop from the solution found by the
  previous run"; the paper scales it by ``0.95``, which is left to the caller);
* a diagonal preconditioner ``M`` (Martens: ``M = [diag(sum_i grad f_i^2) + lambda I]^alpha``);
* storage of iterates for CG backtracking (:func:`cg_backtrack`).

The model value is tracked by the recurrence ``q(x_i) = 1/2 x_i^T (r_i - b)`` with the recurrence
residual ``r_i = A x_i - b``, so it costs no product with ``A``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

__all__ = ["CGResult", "ProgressWindow", "cg_backtrack", "solve_cg"]

CGReason = Literal["converged", "progress", "cap", "negative_curvature"]


@dataclass(frozen=True, kw_only=True)
class ProgressWindow:
    """Martens' relative-progress stopping rule for CG on the quadratic model.

    The slides ("CG stopping conditions") state: terminate CG once the relative per-iteration reduction
    rate falls below ``eps``, ``Delta q / q < eps``, where ``Delta q`` is the change of the quadratic
    model *averaged over a window of the last k iterations*. With the average
    ``Delta q = (q(x_i) - q(x_{i-k})) / k`` this is the form of Martens (2010), Section 4.4, which is the
    form implemented: stop after iteration ``i`` iff

    .. math::

        i > k, \\qquad q(x_i) < 0, \\qquad
        \\frac{q(x_i) - q(x_{i-k})}{q(x_i)} < k \\, \\epsilon, \\qquad
        k = \\max(k_{\\min}, \\lceil \\text{frac} \\cdot i \\rceil),

    with ``eps = 5e-4``, ``k_min = 10``, ``frac = 0.1`` (Martens 2010, Sec. 4.4). Note the factor ``k``
    on the right: the average progress per iteration is compared with ``eps``, not the total progress
    over the window. The window ``max(10, 0.1 i)`` of the paper is rounded up to an integer (as in the
    HF port of google/init2winit); ``frac * i`` is rounded to 9 decimals first so that e.g.
    ``0.1 * 110`` gives ``k = 11`` and not 12.

    Args:
        eps: tolerance ``epsilon > 0`` on the average relative progress per iteration.
        min_window: smallest window ``k_min >= 1``.
        frac: window growth ``frac >= 0`` (``k`` grows as ``frac * i``).

    Raises:
        ValueError: if ``eps <= 0``, ``min_window < 1`` or ``frac < 0``.
    """

    eps: float = 5e-4
    min_window: int = 10
    frac: float = 0.1

    def __post_init__(self) -> None:
        if not (self.eps > 0.0 and math.isfinite(self.eps)):
            raise ValueError(f"eps must be finite and > 0, got {self.eps}")
        if self.min_window < 1:
            raise ValueError(f"min_window must be >= 1, got {self.min_window}")
        if not (self.frac >= 0.0 and math.isfinite(self.frac)):
            raise ValueError(f"frac must be finite and >= 0, got {self.frac}")

    def window(self, i: int) -> int:
        """The window ``k = max(k_min, ceil(frac * i))`` used after iteration ``i``."""
        return max(self.min_window, math.ceil(round(self.frac * i, 9)))

    def stop(self, i: int, q_values: Sequence[float]) -> bool:
        """Whether the rule fires after iteration ``i``; ``q_values[j] = q(x_j)`` for ``j = 0..i``."""
        k = self.window(i)
        if i <= k:
            return False
        q_i = q_values[i]
        return q_i < 0.0 and (q_i - q_values[i - k]) / q_i < k * self.eps


@dataclass
class CGResult:
    """Outcome of :func:`solve_cg`.

    Attributes:
        x: the returned iterate ``x_i``, shape ``(n,)``; the last iterate whose step had positive
            curvature (on ``"negative_curvature"`` the step along the offending direction is not taken).
        iterations: ``i``, the number of CG steps taken (``x = x_i``; ``q_values`` has ``i + 1`` entries).
        matvecs: products with ``A`` used: ``iterations``, plus one for the initial residual
            ``A x0 - b`` of a warm start, plus one when the run ends on ``"negative_curvature"`` (the
            product that revealed it). Equals ``iterations`` for a cold start ending otherwise.
        reason: why CG stopped: ``"converged"`` (``||r_i|| <= tol ||b||``), ``"progress"``
            (:class:`ProgressWindow` fired), ``"cap"`` (``max_iters`` steps taken) or
            ``"negative_curvature"`` (a search direction with ``p^T A p <= 0``).
        iterates: ``(i, x_i)`` pairs stored for CG backtracking, ascending in ``i``: every
            ``i = ceil(gamma^j)``, ``j = 0, 1, ...`` that was reached, and the returned (last) iterate.
        q_values: ``q(x_j)`` for ``j = 0..iterations`` by the recurrence, shape ``(iterations + 1,)``.
        residual_norm: ``||r_i|| = ||A x_i - b||`` of the returned iterate (recurrence residual).
    """

    x: Tensor
    iterations: int
    matvecs: int
    reason: CGReason
    iterates: list[tuple[int, Tensor]]
    q_values: Tensor
    residual_norm: float


def solve_cg(
    matvec: Callable[[Tensor], Tensor],
    b: Tensor,
    *,
    x0: Tensor | None = None,
    precond: Tensor | None = None,
    max_iters: int | None = None,
    tol: float = 1e-6,
    progress_window: ProgressWindow | None = None,
    backtrack_gamma: float = 1.3,
) -> CGResult:
    """Preconditioned CG for ``min_x q(x) = 1/2 x^T A x - b^T x`` (``A x = b``), Nocedal & Wright Alg. 5.3.

    With ``r_0 = A x_0 - b``, ``y_0 = M^{-1} r_0``, ``p_0 = -y_0``, each iteration ``i = 0, 1, ...``
    computes

    .. math::

        \\alpha_i = \\frac{r_i^T y_i}{p_i^T A p_i}, \\quad
        x_{i+1} = x_i + \\alpha_i p_i, \\quad
        r_{i+1} = r_i + \\alpha_i A p_i, \\quad
        y_{i+1} = M^{-1} r_{i+1}, \\quad
        \\beta_{i+1} = \\frac{r_{i+1}^T y_{i+1}}{r_i^T y_i}, \\quad
        p_{i+1} = -y_{i+1} + \\beta_{i+1} p_i,

    and the model value by the recurrence ``q(x_{i+1}) = 1/2 x_{i+1}^T (r_{i+1} - b)`` (no product with
    ``A``). After each step the tests run in this order: residual ``||r_{i+1}|| <= tol ||b||``
    (``"converged"``), Martens' relative progress (``"progress"``, only with ``progress_window``), the
    cap ``i + 1 = max_iters`` (``"cap"``). A direction with ``p_i^T A p_i <= 0`` (or NaN) ends the run
    before the step (``"negative_curvature"``) and ``x_i`` is returned: CG is only defined for positive
    definite ``A``, so HF callers pass positive semidefinite curvature (Gauss-Newton) plus damping.

    Iterates are stored at ``i = ceil(gamma^j)``, ``j = 0, 1, ...`` (Martens 2010, Sec. 4.6:
    ``gamma = 1.3``), plus the returned iterate, for :func:`cg_backtrack`.

    Host synchronisation: one per iteration (``p^T A p``, ``||r||^2`` and ``q`` are read together
    after the update is computed; the update is discarded on negative curvature), plus one at the start
    (and one to validate ``precond``).

    Args:
        matvec: ``v -> A v`` on flat tensors of shape ``(n,)``; ``A`` symmetric positive definite (e.g.
            the damped curvature ``B + lambda I``).
        b: right-hand side, shape ``(n,)`` (``b = -grad f`` for the HF model).
        x0: warm start ``x_0`` (default 0, which saves one product). Martens: ``0.95`` times the
            previous solution; the caller scales.
        precond: diagonal ``M`` of the preconditioner as a tensor of shape ``(n,)`` with positive
            entries: the preconditioned residual is ``y = r / M``. ``None``: no preconditioning.
        max_iters: cap on the number of CG steps (default ``n``, the exact-arithmetic bound).
        tol: residual tolerance relative to ``||b||``; ``0`` keeps only an exactly zero residual (HF
            relies on the progress rule instead). ``b = 0`` converges at once to ``x = 0`` (cold start).
        progress_window: Martens' relative-progress rule, or ``None`` to disable it.
        backtrack_gamma: the ratio ``gamma > 1`` of the geometric storage schedule.

    Returns:
        A :class:`CGResult`.

    Raises:
        ValueError: on mismatched shapes or dtypes, a preconditioner with non-positive entries, a
            negative ``max_iters`` or ``tol``, or ``backtrack_gamma <= 1``.
    """
    if b.ndim != 1:
        raise ValueError(f"b must be flat, shape (n,), got {tuple(b.shape)}")
    if not b.is_floating_point():
        raise ValueError(f"b must have a floating dtype, got {b.dtype}")
    for name, t in (("x0", x0), ("precond", precond)):
        if t is not None and (t.shape != b.shape or t.dtype != b.dtype):
            raise ValueError(
                f"{name} must match b (shape {tuple(b.shape)}, {b.dtype}), got {tuple(t.shape)}, {t.dtype}"
            )
    n = b.shape[0]
    cap = n if max_iters is None else int(max_iters)
    if cap < 0:
        raise ValueError(f"max_iters must be >= 0, got {max_iters}")
    if not (tol >= 0.0 and math.isfinite(tol)):
        raise ValueError(f"tol must be finite and >= 0, got {tol}")
    if not (backtrack_gamma > 1.0 and math.isfinite(backtrack_gamma)):
        raise ValueError(f"backtrack_gamma must be finite and > 1, got {backtrack_gamma}")
    if precond is not None and not bool((precond > 0).all()):
        raise ValueError("the diagonal preconditioner must have positive entries")

    def apply_precond(r: Tensor) -> Tensor:
        return r if precond is None else r / precond

    if x0 is None:
        x = torch.zeros_like(b)
        r = -b
        q = torch.zeros((), dtype=b.dtype, device=b.device)
        matvecs = 0
    else:
        x = x0.clone()
        r = matvec(x) - b
        q = 0.5 * (x @ (r - b))
        matvecs = 1
    y = apply_precond(r)
    p = -y
    rz = r @ y
    bb, rr, q_host = torch.stack([b @ b, r @ r, q]).tolist()
    threshold = tol * tol * bb  # ||r||^2 <= tol^2 ||b||^2

    q_values = [q_host]
    iterates: list[tuple[int, Tensor]] = []
    next_save_j = 0
    next_save = 1  # ceil(gamma^0)
    i = 0
    reason: CGReason | None = None
    if rr <= threshold:
        reason = "converged"
    elif cap == 0:
        reason = "cap"

    while reason is None:
        Ap = matvec(p)
        matvecs += 1
        pAp = p @ Ap
        alpha = rz / pAp
        x_next = x + alpha * p
        r_next = r + alpha * Ap
        q_next = 0.5 * (x_next @ (r_next - b))
        pAp_host, rr_next, q_host = torch.stack([pAp, r_next @ r_next, q_next]).tolist()
        if not pAp_host > 0.0:
            reason = "negative_curvature"
            break
        i += 1
        x, r, rr = x_next, r_next, rr_next
        q_values.append(q_host)
        if i == next_save:
            iterates.append((i, x))
            while next_save <= i:
                next_save_j += 1
                next_save = math.ceil(backtrack_gamma**next_save_j)
        if rr <= threshold:
            reason = "converged"
        elif progress_window is not None and progress_window.stop(i, q_values):
            reason = "progress"
        elif i >= cap:
            reason = "cap"
        else:
            y = apply_precond(r)
            rz_next = r @ y
            p = -y + (rz_next / rz) * p
            rz = rz_next

    if not iterates or iterates[-1][0] != i:
        iterates.append((i, x))
    return CGResult(
        x=x,
        iterations=i,
        matvecs=matvecs,
        reason=reason,
        iterates=iterates,
        q_values=torch.tensor(q_values, dtype=b.dtype, device=b.device),
        residual_norm=math.sqrt(max(rr, 0.0)),
    )


def cg_backtrack(
    iterates: Sequence[tuple[int, Tensor]], objective: Callable[[Tensor], Tensor | float]
) -> tuple[int, Tensor | float]:
    """Martens' CG backtracking: choose among the stored CG iterates by the true objective.

    Martens (2010), Sec. 4.6 (in the slides' list of ingredients: "carefully bounding and back-tracking
    the maximum number of CG steps to compensate for the effect of using mini-batches to compute the Bv
    products"):
    the CG iterates ``p_{ceil(gamma^j)}`` and the last one are kept; the objective ``f(theta + p)`` is
    evaluated from the last stored iterate backwards, and the scan stops at the first iterate that is
    worse (strictly larger objective) than the one after it; that later iterate is returned. Ties
    continue backwards (towards the shorter step). If no earlier iterate is worse, the first stored
    iterate is returned. The scan is monotone, so the returned iterate is the best one evaluated; it
    need not be the best of all stored iterates (those before the stopping point are not evaluated).
    A NaN objective value counts as ``+inf``.

    Each evaluation is compared on the host (one synchronisation per evaluated iterate).

    Args:
        iterates: ``(i, p_i)`` pairs ascending in ``i``, e.g. :attr:`CGResult.iterates`.
        objective: ``p -> f(theta + p)`` (lower is better), returning a 0-dim tensor or a float.

    Returns:
        ``(index, value)``: the position of the chosen iterate in ``iterates`` and its objective value
        as returned by ``objective``.

    Raises:
        ValueError: if ``iterates`` is empty.
    """
    if len(iterates) == 0:
        raise ValueError("cg_backtrack needs at least one stored iterate")

    def key(value: Tensor | float) -> float:
        v = float(value)
        return math.inf if math.isnan(v) else v

    best = len(iterates) - 1
    best_value = objective(iterates[best][1])
    best_key = key(best_value)
    for j in range(best - 1, -1, -1):
        value = objective(iterates[j][1])
        value_key = key(value)
        if value_key > best_key:
            break
        best, best_value, best_key = j, value, value_key
    return best, best_value

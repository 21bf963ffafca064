"""The globalization of Hessian-free optimization: CG backtracking, the damping rule, a line search.

Martens (2010), the slide listing the method's ingredients and the "Standard Hessian-free
Optimization" listing: after CG on the damped quadratic model ``q(p) = g^T p + 1/2 p^T (B + lambda I) p``
(warm-started, preconditioned; see :class:`~lightning_sqn.HessianFree`), this stepper

1. evaluates the stored CG iterates from the last one backwards until one is worse than its successor
   and keeps the best (CG backtracking, :func:`~lightning_sqn.krylov.cg.cg_backtrack`); these
   evaluations, and the line search's when it reads no slopes (Armijo, the default), need only f: under
   the ``sqn``/``ddp_sqn`` strategies they are forward passes
   (:meth:`~lightning_sqn.optim.evaluation.Evaluation.loss_only`);
2. forms ``rho = (f(x + p) - f(x)) / q(p)`` and updates lambda by the Levenberg-Marquardt rule
   (:class:`~lightning_sqn.globalization.damping.LevenbergMarquardt`);
3. runs the line search along ``p`` from alpha = 1 (whose value step 1 already knows); no sufficient
   decrease leaves x where it was.

All decisions are host arithmetic on the losses the closure returned.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightning_sqn.globalization.damping import LevenbergMarquardt
from lightning_sqn.globalization.linesearch import LineSearch
from lightning_sqn.krylov.cg import CGResult, cg_backtrack
from lightning_sqn.optim.evaluation import Closure, Evaluation
from lightning_sqn.optim.stats import StepStats
from lightning_sqn.subproblem.result import SolverStatus


class DampedStepper:
    """Steps 1-3 of the module docstring around one CG result.

    Args:
        ev: the optimizer's closure evaluation (x_k, evaluations, BatchNorm statistics).
        line_search: the final line search, or ``None``: take p if ``f(x + p) < f(x)``.
        damping_rule: the lambda update.
        hessian_products: whether B is the Hessian (its products are then also reported as
            ``hessian_products``).
    """

    def __init__(
        self,
        ev: Evaluation,
        line_search: LineSearch | None,
        damping_rule: LevenbergMarquardt,
        hessian_products: bool,
    ) -> None:
        self.ev = ev
        self.line_search = line_search
        self.damping_rule = damping_rule
        self.hessian_products = hessian_products
        self.g_trial = ev.flat.new_zeros()

    def step(
        self, closure: Closure, g: Tensor, f0_t: Tensor, lam: float, res: CGResult, warm: bool
    ) -> tuple[StepStats, float]:
        """Globalize the CG run ``res`` made at x_k with damping ``lam``; returns the step's record and
        the next lambda. ``warm``: CG started from the previous step's direction (so its first stored
        iterate is not p = 0)."""
        ev, flat, g_trial, x = self.ev, self.ev.flat, self.g_trial, self.ev.x
        f0 = float(f0_t)
        cold_zero = res.iterates[0][0] == 0 and not warm  # CG took no step from x_0 = 0
        evaluated: dict[int, tuple[float, float, int]] = {}  # id(p) -> (f, dphi, evaluation index)

        # CG backtracking needs f only, and so does a line search that reads no slope at its trials
        # (Armijo): those points are loss-only evaluations (a forward pass under the sqn strategies)
        slopes = self.line_search is not None and getattr(self.line_search, "uses_slope", True)

        def evaluate_at(direction: Tensor, alpha: float) -> tuple[float, float]:
            flat.set_params(torch.add(x, direction, alpha=alpha))
            if not slopes:
                return float(ev.loss_only(closure, g_trial)), math.nan
            f = float(ev(closure, g_trial))
            return f, float(g_trial @ direction)

        def objective(p: Tensor) -> float:  # f(x + p) of a stored CG iterate
            if cold_zero and p is res.iterates[0][1]:
                return f0  # p = 0: no evaluation needed
            f, dphi = evaluate_at(p, 1.0)
            evaluated[id(p)] = (f, dphi, ev.count - 1)
            return f

        position, f_p = cg_backtrack(res.iterates, objective)
        i_chosen, p = res.iterates[position]
        f_p = float(f_p)
        q_p = float(res.q_values[i_chosen])
        rho = (f_p - f0) / q_p if q_p < 0.0 and math.isfinite(f_p) else -math.inf
        next_lam = max(self.damping_rule.update(lam, rho), torch.finfo(flat.dtype).tiny)

        dphi0 = float(g @ p)
        alpha, f_trial, ls = 0.0, f_p, None
        eval_index = evaluated.get(id(p), (0.0, 0.0, 0))[2]
        if dphi0 < 0.0 and math.isfinite(dphi0):
            if self.line_search is None:
                alpha = 1.0 if f_p < f0 else 0.0
            else:
                at: dict[float, int] = {}

                def phi(a: float) -> tuple[float, float]:
                    if a == 1.0 and id(p) in evaluated:  # known from CG backtracking
                        f, dphi, _ = evaluated[id(p)]
                        return f, dphi
                    f, dphi = evaluate_at(p, a)
                    at[a] = ev.count - 1
                    return f, dphi

                ls = self.line_search.search(phi, f0, dphi0, 1.0)
                alpha, f_trial = ls.step_length, ls.f
                if alpha > 0.0 and alpha in at:
                    eval_index = at[alpha]
        accepted = alpha > 0.0
        flat.set_params(torch.add(x, p, alpha=alpha) if accepted else x)
        ev.commit_running_stats(accepted, if_accepted=eval_index, if_rejected=0)
        stats = StepStats(
            loss=f0_t,
            closure_evals=ev.count,
            loss_only_evals=ev.loss_only_count,
            accepted=accepted,
            step_norm=alpha * float(torch.linalg.vector_norm(p)),
            pair_stored=None,
            pairs_in_memory=0,
            trial_loss=f_trial,
            rho=rho,
            predicted_reduction=-q_p,
            actual_reduction=f0 - f_p,
            step_length=alpha,
            line_search_success=None if ls is None else ls.success,
            line_search_reason=None if ls is None else ls.reason,
            hessian_products=res.matvecs if self.hessian_products else None,
            curvature_products=res.matvecs,
            damping=lam,
            cg_iterations=res.iterations,
            cg_reason=int(SolverStatus.of(res.reason)),
            backtrack_index=i_chosen,
        )
        return stats, next_lam


__all__ = ["DampedStepper"]

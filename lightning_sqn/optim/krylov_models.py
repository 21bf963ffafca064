"""Trust-region models whose subproblem is solved by Steihaug-Toint truncated CG.

* :class:`SteihaugModel`: B is an :class:`~lightning_sqn.qn.lsr1.LSR1Matrix` (sampled L-SR1 with the
  authors' subproblem solver, Berahas et al.).
* :class:`NewtonModel`: B is the Hessian of the mini-batch loss at x_k, through Hessian-vector
  products from the graph of the evaluation at x_k, and the region is the ellipsoid
  ``||s||_A <= Delta`` with ``A = diag(sqrt(v) + eps)`` of Kohler, Adolphs & Lucchi (their eq. 7).

Both are run by :class:`~lightning_sqn.optim.steppers.TrustRegionStepper`, which evaluates, decides
rho, acceptance and the radius, and restores x on rejection. CG knows neither B's eigenvalues nor a
multiplier: the records carry ``sigma=None`` and no eigenvalues, plus the CG iteration count.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from lightning_sqn._device import to_host
from lightning_sqn._state import AttributePart, AttributeState
from lightning_sqn.optim.evaluation import Evaluation
from lightning_sqn.optim.models import LimitedMemoryModel
from lightning_sqn.qn.lsr1 import LSR1Matrix
from lightning_sqn.subproblem.result import HostTrustRegionStep
from lightning_sqn.subproblem.steihaug import solve_steihaug

Norm = Literal["uniform", "adagrad", "rmsprop"]


def steihaug_step(
    s: Tensor,
    matvec: Callable[[Tensor], Tensor],
    g: Tensor,
    radius: float,
    *,
    norm_diag: Tensor | None = None,
    kappa: float,
    theta: float,
    max_iters: int | None,
) -> HostTrustRegionStep:
    """Steihaug-Toint CG on ``min g^T s + 1/2 s^T B s, ||s||_A <= radius``: the step into ``s``, and the
    record the stepper decides from (one read)."""
    res = solve_steihaug(
        matvec,
        g,
        torch.full((), radius, dtype=g.dtype, device=g.device),
        norm_diag=norm_diag,
        kappa=kappa,
        theta=theta,
        max_iters=max_iters,
    )
    s.copy_(res.step)
    pred, norm = to_host(res.predicted_reduction, res.step_norm)
    return HostTrustRegionStep(
        sigma=None,
        predicted_reduction=float(pred),
        step_norm=float(norm),
        status=int(res.status),
        extra={"cg_iterations": res.iterations, "curvature_products": res.iterations},
    )


class SteihaugModel(LimitedMemoryModel):
    """An :class:`LSR1Matrix` whose trust-region subproblem is solved by Steihaug-Toint truncated CG.

    Products B v come from the compact form (two passes over the pair buffer and a read each). B =
    gamma I plus a rank-<= m term has at most m + 1 distinct eigenvalues, so CG ends within m + 1
    iterations in exact arithmetic; the cap defaults to 2 (m + 1). The truncated step does not satisfy
    (B + sigma I) s = -g, so this model serves only methods that do not offer the step's own pair
    (sampled L-SR1).
    """

    def __init__(
        self, matrix: LSR1Matrix, kappa: float = 0.1, theta: float = 0.5, max_iters: int | None = None
    ) -> None:
        super().__init__(matrix)
        self.kappa, self.theta = kappa, theta
        self.max_iters = 2 * (matrix.m + 1) if max_iters is None else max_iters

    def solve(self, radius: float) -> HostTrustRegionStep:
        return steihaug_step(
            self.s,
            self.matrix.mv,
            self.g,
            radius,
            kappa=self.kappa,
            theta=self.theta,
            max_iters=self.max_iters,
        )


class NewtonModel(AttributePart):
    """The Hessian of the mini-batch loss in an RMSProp / Adagrad / uniform ellipsoid (Kohler et al.).

    The evaluation at x_k keeps its graph (``needs_graph``); :meth:`solve` runs preconditioned
    Steihaug-Toint CG on its Hessian-vector products, with ``A_k`` as the preconditioner and the
    region's norm (App. F.2), then frees the graph before the trial evaluation.

    The ellipsoid (diagonal of their eqs. 2-3): ``A_k = diag(sqrt(v_k) + eps)`` with
    ``v_k = beta v_{k-1} + (1 - beta) g_k ⊙ g_k`` (``"rmsprop"``) or ``v_k = v_{k-1} + g_k ⊙ g_k``
    (``"adagrad"``); ``A = I`` for ``"uniform"``. ``v_0 = g_0 ⊙ g_0``; ``v`` takes g(x_k) at the start
    of step k only if step k-1 was accepted (the authors' code; a rejected step leaves x and v as
    they were).

    Args:
        ev: the optimizer's closure evaluation (the kept graph).
        norm: ``"uniform"``, ``"adagrad"`` or ``"rmsprop"``.
        beta: RMSProp decay.
        eps: added to ``sqrt(v)``.
        kappa, theta, max_iters: the Krylov stopping rule and the CG cap of
            :func:`~lightning_sqn.subproblem.steihaug.solve_steihaug`.
    """

    needs_graph = True
    #: no pairs: the trial point needs only its loss (rho), one forward pass
    needs_trial_gradient = False

    def __init__(
        self,
        ev: Evaluation,
        norm: Norm,
        *,
        beta: float,
        eps: float,
        kappa: float,
        theta: float,
        max_iters: int | None,
    ) -> None:
        self.ev = ev
        self.norm: Norm = norm
        self.beta, self.eps = beta, eps
        self.kappa, self.theta, self.max_iters = kappa, theta, max_iters
        flat = ev.flat
        self.g, self.s, self.g_trial = flat.new_zeros(), flat.new_zeros(), flat.new_zeros()
        self.v = flat.new_zeros()  # second-moment accumulator (unused for "uniform")
        self.v_started = False
        #: update v at the next step (first step, warm-up, or the previous step was accepted)
        self.update_v = True
        self._state = AttributeState(
            self, {"v": "v", "v_started": "v_started", "update_v": "update_v"}, "TrustRegionNewton model"
        )

    # ------------------------------------------------------------ the ellipsoid
    def update_accumulator(self, g: Tensor) -> None:
        """v from g at x_k (eqs. 2-3, diagonal), if :attr:`update_v` says so."""
        if self.norm == "uniform" or not self.update_v:
            return
        if not self.v_started:  # v_0 = g_0 ⊙ g_0 (authors' code)
            torch.mul(g, g, out=self.v)
            self.v_started = True
        elif self.norm == "rmsprop":
            torch.lerp(g * g, self.v, self.beta, out=self.v)  # beta v + (1 - beta) g ⊙ g
        else:
            self.v.add_(g * g)

    def norm_diag(self) -> Tensor | None:
        """``a`` with ``A = diag(a) = diag(sqrt(v) + eps)``; ``None`` for the uniform (spherical) norm."""
        return None if self.norm == "uniform" else self.v.sqrt().add_(self.eps)

    # ------------------------------------------------------------ the stepper's protocol
    def gather(self, f: Tensor) -> Tensor:
        return torch.stack((f, self.g @ self.g))

    def peek_gg(self, values: np.ndarray) -> float:
        return float(values[1])

    def absorb(self, values: np.ndarray) -> tuple[None, int]:
        """After the finiteness check: the accumulator takes g(x_k). No pairs."""
        self.update_accumulator(self.g)
        return None, 0

    def solve(self, radius: float) -> HostTrustRegionStep:
        graph = self.ev.graph
        if graph is None:  # pragma: no cover - the evaluation raises first
            raise RuntimeError("the evaluation at x_k did not keep its graph")
        try:
            res = steihaug_step(
                self.s,
                graph.hvp,
                self.g,
                radius,
                norm_diag=self.norm_diag(),
                kappa=self.kappa,
                theta=self.theta,
                max_iters=self.max_iters,
            )
        finally:
            self.ev.graph = None  # free the activations before the trial evaluation
        res.extra.update(hessian_products=res.extra["cg_iterations"], warmup=False)
        return res

    def stage_trust_region(self, g_trial: Tensor, sigma: float | None) -> None:
        pass  # no pairs

    def conclude(self, accepted: bool) -> None:
        """The accumulator takes the next g only if this step moved x."""
        self.update_v = accepted

    def pairs(self) -> int:
        return 0

    def gamma(self) -> None:
        return None

    def reset(self) -> None:
        pass


__all__ = ["NewtonModel", "SteihaugModel", "steihaug_step"]

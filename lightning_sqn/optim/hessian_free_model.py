"""The curvature model of Hessian-free optimization: damped products, the preconditioner, warm-started CG.

Martens (2010), the "Standard Hessian-free Optimization" listing, lines 4-5, with the ingredients of the
slide that lists them: CG on ``q(p) = g^T p + 1/2 p^T (B + lambda I) p`` with B the Gauss-Newton matrix
(on the curvature mini-batch of K examples) or the Hessian, preconditioned by
``M = [diag(sum_i grad f_i^2) + lambda I]^alpha``, started from ``zeta p_{k-1}`` and stopped by the
relative-progress rule. :class:`~lightning_sqn.HessianFree` composes it with
:class:`~lightning_sqn.optim.damped_stepper.DampedStepper`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from torch import Tensor, nn

from lightning_sqn._flat import FunctionalModule
from lightning_sqn._state import AttributePart, AttributeState
from lightning_sqn.curvature.capture import (
    CAPTURE_HINTS,
    CapturedBatch,
    CaptureError,
    ForwardCapture,
    fisher_diagonal,
)
from lightning_sqn.curvature.ggn import GGNLoss, ggn_matvec
from lightning_sqn.krylov.cg import CGResult, ProgressWindow, solve_cg
from lightning_sqn.optim.evaluation import Evaluation

Curvature = Literal["ggn", "hessian"]


class HessianFreeModel(AttributePart):
    """Damped curvature products and preconditioned, warm-started CG at x_k (see the module docstring).

    State (a :class:`~lightning_sqn._state.Part`): the previous CG run's last iterate p_{k-1}.

    Args:
        ev: the optimizer's closure evaluation (the graph for ``"hessian"``, the communicator).
        what: the optimizer's description for messages.
        curvature: ``"ggn"`` or ``"hessian"``.
        loss: the loss of the GGN products.
        max_cg_iters, cg_eps, cg_tol: CG's cap, progress threshold and residual tolerance.
        warm_start_decay: zeta.
        preconditioner, preconditioner_exponent: Martens' diagonal preconditioner and alpha.
        curvature_batch_fraction: K / B for the GGN products and the preconditioner.
    """

    def __init__(
        self,
        ev: Evaluation,
        what: str,
        *,
        curvature: Curvature,
        loss: GGNLoss | None,
        max_cg_iters: int,
        cg_eps: float,
        cg_tol: float,
        warm_start_decay: float,
        preconditioner: bool,
        preconditioner_exponent: float,
        curvature_batch_fraction: float,
    ) -> None:
        self.ev = ev
        self.what = what
        self.curvature: Curvature = curvature
        self.loss = loss
        self.max_cg_iters = max_cg_iters
        self.progress_window = ProgressWindow(eps=cg_eps)
        self.cg_tol = cg_tol
        self.warm_start_decay = warm_start_decay
        self.preconditioner = preconditioner
        self.preconditioner_exponent = preconditioner_exponent
        self.curvature_batch_fraction = curvature_batch_fraction
        self.capture: ForwardCapture | None = None
        #: the previous CG run's last iterate (warm start); a step replaces it, never writes it in place,
        #: so the undo token holds it by reference
        self.p_prev = ev.flat.new_zeros()
        self.has_prev = False
        self._state = AttributeState(self, {"p_prev": "p_prev", "has_prev": "has_prev"}, "HessianFree model")

    # ------------------------------------------------------------ the watched module
    def watch(self, module: nn.Module) -> None:
        if self.capture is not None:
            self.capture.remove()
        self.capture = ForwardCapture(module)

    @property
    def needs_capture(self) -> bool:
        return self.curvature == "ggn" or self.preconditioner

    def check_capture(self) -> None:
        """CaptureError if the step needs the network's input and output but no module is watched."""
        if self.needs_capture and self.capture is None:
            raise CaptureError(
                f"{self.what} needs the network's input and output at x_k, but no module is watched. "
                f"{CAPTURE_HINTS}"
            )

    # ------------------------------------------------------------ products and CG
    def _products(self, batch: CapturedBatch | None, fmod: FunctionalModule | None) -> Callable:
        """``v -> B v`` (undamped) at x_k, averaged over ranks."""
        if self.curvature == "hessian":
            graph = self.ev.graph
            if graph is None:  # pragma: no cover - the evaluation raises first
                raise RuntimeError("the evaluation at x_k did not keep its graph")
            return graph.hvp
        assert batch is not None and fmod is not None and self.loss is not None
        K = batch.curvature_size(self.curvature_batch_fraction)
        matvec = ggn_matvec(fmod, self.loss, batch.inputs[:K])
        comm = self.ev.communicator
        if comm is None:
            return matvec
        return lambda v: comm.all_reduce_mean(matvec(v))

    def _fisher_diagonal(self, batch: CapturedBatch, fmod: FunctionalModule) -> Tensor:
        """D of the preconditioner, averaged over ranks."""
        D = fisher_diagonal(fmod, batch, batch.curvature_size(self.curvature_batch_fraction))
        comm = self.ev.communicator
        return D if comm is None else comm.all_reduce_mean(D)

    def solve(self, g: Tensor, lam: float) -> tuple[CGResult, bool]:
        """Preconditioned, warm-started CG on the damped model at x_k; also whether it was warm-started."""
        batch = fmod = None
        if self.needs_capture:
            assert self.capture is not None
            batch = self.capture.batch(self.what)
            fmod = FunctionalModule(self.capture.module, self.ev.flat)
        products = self._products(batch, fmod)

        def damped(v: Tensor) -> Tensor:  # (B + lambda I) v, slide "Standard HF", line 4
            return products(v) + lam * v

        precond = None
        if self.preconditioner:
            assert batch is not None and fmod is not None
            D = self._fisher_diagonal(batch, fmod)
            # M = [diag(sum_i grad f_i^2) + lambda I]^alpha (slide listing the ingredients)
            precond = D.add_(lam).pow_(self.preconditioner_exponent)
        decay = self.warm_start_decay
        x0 = self.p_prev * decay if self.has_prev and decay > 0.0 else None
        res = solve_cg(
            damped,
            -g,
            x0=x0,
            precond=precond,
            max_iters=self.max_cg_iters,
            tol=self.cg_tol,
            progress_window=self.progress_window,
        )
        return res, x0 is not None

    def remember(self, res: CGResult) -> None:
        """The next CG run's warm start (called after the step's last closure evaluation)."""
        self.p_prev = res.x
        self.has_prev = True

    def begin(self) -> tuple[Tensor, bool]:
        return self.p_prev, self.has_prev  # a reference: see p_prev

    def rollback(self, token: tuple[Tensor, bool]) -> None:
        self.p_prev, self.has_prev = token


__all__ = ["Curvature", "HessianFreeModel"]

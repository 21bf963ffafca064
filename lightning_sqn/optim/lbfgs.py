"""L-BFGS with optional "forgetting" (the baseline of Ramamurthy & Duffy: memory cleared every k steps)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from torch import Tensor

from lightning_sqn import _checks as checks
from lightning_sqn.globalization.linesearch import LineSearch, StrongWolfe, resolve_line_search
from lightning_sqn.optim.base import QuasiNewtonOptimizer
from lightning_sqn.optim.evaluation import Closure
from lightning_sqn.optim.line_search_stepper import LineSearchStepper
from lightning_sqn.optim.models import LimitedMemoryModel
from lightning_sqn.optim.stats import StepStats
from lightning_sqn.qn.lbfgs import LBFGSMatrix


class LBFGS(QuasiNewtonOptimizer):
    """Limited-memory BFGS (compact form) with a line search, and optional forgetting.

    Each step: d = -H g (Byrd-Nocedal-Schnabel compact inverse, two passes over the pair buffer), a
    line search along d (strong Wolfe by default; ``line_search=None`` takes the fixed step ``lr``),
    and the pair (s, y) stored if s^T y > curvature_eps ||s|| ||y||. With ``forget_every=k`` the memory
    is cleared before every k-th step, the "L-BFGS with forgetting" of the L-SR1 paper's experiments.
    If the line search finds no decrease, x stays and the memory is cleared (restart).

    Args:
        params: parameters or groups (one flat vector).
        memory: m, pairs kept.
        forget_every: clear the memory every k steps (``None``: never).
        line_search: ``"default"`` (:class:`StrongWolfe`), a line-search object, or ``None`` for fixed
            steps.
        lr: initial trial step (and the fixed step without line search); read from the parameter
            groups at every step, so learning-rate schedulers act on it.
        gamma: ``"scaled"`` (y^T y / s^T y, N&W eq. 7.20) or a constant > 0.
        curvature_eps: eps of the curvature condition.
        full_batch: the closure computes the same function at every call (deterministic full-batch
            training, the usual scientific-computing use): f and g at the point a step ends on are
            reused as the next step's f(x_k), g(x_k), so an iteration costs one evaluation fewer.
            Default False, the mini-batch setting of the papers, where each step sees a new batch.
    """

    group_options = ("lr",)

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        *,
        memory: int = 5,
        forget_every: int | None = None,
        line_search: LineSearch | Literal["default"] | None = "default",
        lr: float = 1.0,
        gamma: Literal["scaled"] | float = "scaled",
        curvature_eps: float = 1e-8,
        full_batch: bool = False,
    ) -> None:
        memory = checks.integer("memory", memory, 1)
        forget_every = checks.integer(
            "forget_every",
            forget_every,
            1,
            none=True,
            allowed="None or an integer >= 1 (steps between resets)",
        )
        full_batch = checks.flag("full_batch", full_batch)
        lr = checks.positive("lr", lr)
        checks.real("curvature_eps", curvature_eps, lambda v: v >= 0, "a finite number >= 0")
        search = resolve_line_search(line_search, StrongWolfe)
        defaults = dict(
            memory=memory, forget_every=forget_every, lr=lr, gamma=gamma, curvature_eps=curvature_eps
        )
        super().__init__(params, defaults)
        self.matrix = LBFGSMatrix.for_params(
            memory,
            self._flat,
            gamma=gamma,
            curvature_eps=curvature_eps,
        )
        self.forget_every = forget_every
        self.full_batch = full_batch
        self._model = LimitedMemoryModel(self.matrix)
        self._stepper = LineSearchStepper(self, self._model, search)

    def _step(self, closure: Closure) -> StepStats:
        k = self.counters.steps
        forget = self.forget_every is not None and k > 0 and k % self.forget_every == 0
        return self._stepper.step(closure, forget=forget)

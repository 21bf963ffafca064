"""What a step reports: :class:`StepStats` (``optimizer.last_step``) and the cumulative :class:`Counters`."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar

import numpy as np
from torch import Tensor


@dataclass
class StepStats:
    """What one optimizer step did (``optimizer.last_step``).

    Host numbers (the quasi-Newton steppers decide on the host), except ``loss``, a 0-dim tensor on
    the parameters' device, and fields the Hessian-free family fills with device tensors; ``None``
    where a method has no such quantity. :meth:`as_dict` converts everything to Python numbers.
    """

    loss: Tensor  #: f(x_k) on the step's mini-batch
    closure_evals: int  #: closure evaluations in this step
    accepted: bool | Tensor  #: whether x moved
    step_norm: float | Tensor  #: ||s_k|| of the step taken or tried
    #: whether the pair offered in this step entered the memory: the quasi-Newton steppers offer the
    #: previous step's pair (s_{k-1}, y_{k-1}) at the start of step k; None when no pair was offered
    pair_stored: bool | Tensor | None
    pairs_in_memory: int | Tensor  #: number of pairs after the step
    trial_loss: float | Tensor | None = None  #: f(x_k + s_k) (trust region) or f at the chosen step length
    radius: float | Tensor | None = None  #: trust-region radius used for this step
    next_radius: float | Tensor | None = None  #: radius for the next step
    rho: float | Tensor | None = None  #: ared / pred
    predicted_reduction: float | Tensor | None = None
    actual_reduction: float | Tensor | None = None
    sigma: float | Tensor | None = None  #: subproblem multiplier
    #: :class:`~lightning_sqn.subproblem.result.SolverStatus`
    subproblem_status: int | Tensor | None = None
    eig_min: float | Tensor | None = None  #: smallest known eigenvalue of B_k
    eig_max: float | Tensor | None = None  #: largest known eigenvalue of B_k
    num_negative_eigs: int | Tensor | None = None  #: count of negative eigenvalues of B_k (with multiplicity)
    #: the eigenvalues of B_k the subproblem solver knows, ascending (for L-SR1: the m parallel ones,
    #: padded, and gamma); a vector, so :meth:`as_dict` leaves it out
    eigenvalues: np.ndarray | Tensor | None = None
    pairs_dropped: int | Tensor | None = None  #: pairs removed by rank repair
    gamma: float | Tensor | None = None  #: B_0 = gamma I after the step
    step_length: float | None = None  #: line-search alpha
    line_search_success: bool | None = None
    line_search_reason: str | None = None
    fallback_to_gradient: bool | None = None  #: the quasi-Newton direction was not a descent direction
    #: the curvature memory was discarded because the step could not progress with it: a line search
    #: that found no decrease, or a rejected trust-region trial point with f(x_k + s_k) = f(x_k)
    restarted: bool | None = None
    pairs_sampled: int | None = None  #: curvature pairs sampled at x_k (sampled quasi-Newton)
    pairs_kept: int | Tensor | None = None  #: sampled pairs that passed the SR1 / BFGS test
    hessian_products: int | None = None  #: Hessian-vector products formed in this step
    #: products with the curvature matrix (GGN or Hessian) formed in this step (Hessian-free, TR Newton)
    curvature_products: int | None = None
    damping: float | Tensor | None = None  #: Levenberg-Marquardt lambda used in this step (Hessian-free)
    cg_iterations: int | None = None  #: (truncated) CG iterations of the step's inner solve
    #: why the inner CG stopped, a :class:`~lightning_sqn.subproblem.result.SolverStatus` code
    cg_reason: int | None = None
    backtrack_index: int | None = None  #: CG iteration of the iterate chosen by CG backtracking
    warmup: bool | None = None  #: a first-order warm-up step (trust-region Newton)
    #: of ``closure_evals``, those that computed only the loss (a forward pass, no gradient)
    loss_only_evals: int | None = None

    def as_dict(self) -> dict[str, float | int | bool | str]:
        out: dict[str, float | int | bool | str] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None or (isinstance(v, Tensor | np.ndarray) and v.ndim > 0):
                continue
            if isinstance(v, Tensor | np.generic):
                v = v.item()
            out[f.name] = v
        return out


def _count(v: Any) -> int:
    """A count or flag of a step record as a Python int (reads a device tensor)."""
    return int(v.item() if isinstance(v, Tensor) else v)


@dataclass
class Counters:
    """Cumulative counts since construction (or since the state was loaded).

    ``closure_evals`` counts closure evaluations, ``loss_only_evals`` those of them that computed only
    the loss (a forward pass), ``curvature_products`` the Hessian- or Gauss-Newton-vector products (each
    one more backpropagation); gradients plus products are the "number of backpropagations" of Kohler,
    Adolphs & Lucchi's figures (:attr:`backprops`).
    """

    steps: int = 0
    closure_evals: int = 0
    accepted_steps: int = 0
    stored_pairs: int = 0
    skipped_pairs: int = 0
    curvature_products: int = 0
    loss_only_evals: int = 0
    restarts: int = 0  #: steps that discarded the curvature memory (:attr:`StepStats.restarted`)

    #: fields a state saved before they existed may lack (they load as 0)
    _ADDED: ClassVar[tuple[str, ...]] = ("curvature_products", "loss_only_evals", "restarts")

    @property
    def backprops(self) -> int:
        """Gradient evaluations (closure evaluations less the loss-only ones) plus curvature-vector
        products."""
        return self.closure_evals - self.loss_only_evals + self.curvature_products

    def record(self, stats: StepStats) -> None:
        """Add one step."""
        self.steps += 1
        self.closure_evals += stats.closure_evals
        self.loss_only_evals += int(stats.loss_only_evals or 0)
        products = (
            stats.curvature_products if stats.curvature_products is not None else stats.hessian_products
        )
        self.curvature_products += int(products or 0)
        self.accepted_steps += _count(stats.accepted)
        self.restarts += int(bool(stats.restarted))
        if stats.pairs_sampled is not None and stats.pairs_kept is not None:  # sampled pairs
            kept = _count(stats.pairs_kept)
            self.stored_pairs += kept
            self.skipped_pairs += stats.pairs_sampled - kept
        elif stats.pair_stored is not None:
            stored = _count(stats.pair_stored)
            self.stored_pairs += stored
            self.skipped_pairs += 1 - stored

    def state_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def check_state(self, state: Any) -> None:
        required = [f.name for f in fields(self) if f.name not in self._ADDED]
        if not isinstance(state, dict) or any(name not in state for name in required):
            raise ValueError(f"the counters in this state lack some of {required}")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.check_state(state)
        for f in fields(self):
            setattr(self, f.name, _count(state.get(f.name, 0)))

    def as_dict(self) -> dict[str, int]:
        return self.state_dict()


__all__ = ["Counters", "StepStats"]

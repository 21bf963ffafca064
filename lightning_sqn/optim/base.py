"""The closure-driven base of every optimizer in this package: bookkeeping only, no matrix algebra.

:class:`QuasiNewtonOptimizer` turns the parameters of all groups into one flat vector
(:class:`~lightning_sqn._flat.FlatParams`), evaluates closures, keeps the counters and the
``last_step`` record, and round-trips its state through ``state_dict()``. Subclasses compose a
curvature model (:mod:`~lightning_sqn.qn`) with a globalization (:mod:`~lightning_sqn.optim.steppers`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lightning_sqn._device import read_to_host
from lightning_sqn._flat import FlatParams
from lightning_sqn.curvature.graph import (
    GRAPH_MISSING,
    LIGHTNING_STRATEGY_NEEDED,
    GradientGraph,
    take_graph_from_grads,
)
from lightning_sqn.distributed.communicator import Communicator, check_communicator
from lightning_sqn.optim.running_stats import RunningStats, running_stat_buffers

Closure = Callable[[], Any]

CLOSURE_REQUIRED = (
    "{name}.step() needs a closure: a function that clears the gradients, recomputes the loss on the "
    "current mini-batch, calls loss.backward() and returns the loss. {name} evaluates it several times "
    "per step (the trial point of a trust region or line search), so it cannot work from a gradient "
    "that was computed before step() was called. In plain PyTorch call `optimizer.step(closure)`; in "
    "Lightning use automatic optimization (it passes the closure) or `optimizer.step(closure=...)` in "
    "manual optimization. Lightning's 16-mixed precision (GradScaler) and DeepSpeed call step() without "
    "a closure after one evaluation: use precision='32-true', '64-true' or 'bf16-mixed' instead."
)


class NonFiniteLossError(FloatingPointError):
    """The loss or gradient at the current point is NaN or infinite; parameters and memory are unchanged."""


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
    #: :class:`~lightning_sqn.subproblem.result.SubproblemStatus`
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
    pairs_sampled: int | None = None  #: curvature pairs sampled at x_k (sampled quasi-Newton)
    pairs_kept: int | Tensor | None = None  #: sampled pairs that passed the SR1 / BFGS test
    hessian_products: int | None = None  #: Hessian-vector products formed in this step
    #: products with the curvature matrix (GGN or Hessian) formed in this step (Hessian-free, TR Newton)
    curvature_products: int | None = None
    damping: float | Tensor | None = None  #: Levenberg-Marquardt lambda used in this step (Hessian-free)
    cg_iterations: int | None = None  #: (truncated) CG iterations of the step's inner solve
    #: why the inner CG stopped, a :class:`~lightning_sqn.optim.hessian_free.KrylovExit` code
    cg_reason: int | None = None
    backtrack_index: int | None = None  #: CG iteration of the iterate chosen by CG backtracking
    warmup: bool | None = None  #: a first-order warm-up step (trust-region Newton)

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
    """Cumulative counts since construction (or since the state was loaded)."""

    steps: int = 0
    closure_evals: int = 0
    accepted_steps: int = 0
    stored_pairs: int = 0
    skipped_pairs: int = 0

    def record(self, stats: StepStats) -> None:
        """Add one step."""
        self.steps += 1
        self.closure_evals += stats.closure_evals
        self.accepted_steps += _count(stats.accepted)
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
        if not isinstance(state, dict) or any(f.name not in state for f in fields(self)):
            raise ValueError(f"the counters in this state lack some of {[f.name for f in fields(self)]}")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.check_state(state)
        for f in fields(self):
            setattr(self, f.name, _count(state[f.name]))

    def as_dict(self) -> dict[str, int]:
        return self.state_dict()


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    try:
        return bool(a == b)
    except Exception:  # objects without a usable __eq__ (e.g. tensors)
        return a is b


def _is_lightning_closure(closure: Closure) -> bool:
    """Whether Lightning built this closure (its precision plugin wraps every closure in a partial)."""
    obj: Any = closure
    for _ in range(4):
        if isinstance(obj, functools.partial):
            obj = obj.func
        elif getattr(obj, "__self__", None) is not None:
            obj = obj.__self__
        else:
            break
    return type(obj).__module__.split(".")[0] in ("lightning", "pytorch_lightning")


class QuasiNewtonOptimizer(torch.optim.Optimizer):
    """Base class: one flat parameter vector, closure evaluation, counters and state.

    Every parameter of every group is part of one vector x; groups may be given (e.g. by code that
    builds them for first-order optimizers) but must not carry options that differ from each other,
    because one curvature model and one step serve all of them.

    Args:
        params: parameters or parameter groups.
        defaults: the optimizer's options.
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], defaults: dict[str, Any]) -> None:
        super().__init__(params, defaults)
        self._check_groups()
        self._flat = FlatParams([p for g in self.param_groups for p in g["params"]])
        self.counters = Counters()
        #: the closure computes the same function at every call (full-batch training): f and g at the
        #: point a step ends on are reused as the next step's f(x_k), g(x_k) (set by the subclasses)
        self.full_batch = False
        self.last_step: StepStats | None = None
        self._started = False
        #: mean of the loss over ranks (set by ``strategy="ddp_sqn"``); ``None`` on a single process
        self.communicator: Communicator | None = None
        self._running_stats: RunningStats | None = None
        #: True while the closure runs for an evaluation whose gradient must keep its autograd graph
        #: (plain PyTorch closures then call ``loss.backward(create_graph=True)``)
        self.graph_requested = False
        #: set by the ``sqn``/``ddp_sqn`` strategies, whose backward hands the graph to :meth:`keep_graph`
        self.graph_from_strategy = False
        self._graph: GradientGraph | None = None

    #: whether :meth:`step` needs Hessian-vector products (a closure evaluation that keeps the graph)
    needs_graph: bool = False

    def track_running_stats(self, module: torch.nn.Module) -> None:
        """Advance ``module``'s BatchNorm running statistics once per step, from the accepted point.

        Without this, every closure evaluation (two per trust-region step, more in a line search) moves
        them, partly from rejected points. The ``sqn`` and ``ddp_sqn`` strategies call this for the
        LightningModule; in plain PyTorch call it once after building the optimizer. See
        :mod:`lightning_sqn.optim.running_stats`.
        """
        buffers = running_stat_buffers(module)
        self._running_stats = RunningStats(buffers) if buffers else None

    def load_pairs(self, S: Tensor, Y: Tensor) -> Tensor:
        """Replace the curvature memory by the pairs (rows of ``S``, ``Y``), offered in order.

        Each pair meets the optimizer's own test (SR1 skip rule with rank repair, BFGS curvature
        condition) against those kept before it. Returns how many were kept (0-dim tensor). Used by
        :class:`~lightning_sqn.callbacks.CurvaturePairSampler`.

        Raises:
            TypeError: for an optimizer without a limited-memory pair store.
            ValueError: if ``S`` and ``Y`` are not both ``(k, n)``.
        """
        model = getattr(self, "_model", None)
        if not hasattr(model, "load_pairs"):
            raise TypeError(f"{type(self).__name__} has no limited-memory pair store to load pairs into")
        n = self._flat.numel
        if S.ndim != 2 or S.shape != Y.shape or S.shape[1] != n:
            raise ValueError(
                f"S and Y must both have shape (k, {n}), got {tuple(S.shape)} and {tuple(Y.shape)}"
            )
        flat = self._flat
        return model.load_pairs(S.to(flat.dtype), Y.to(flat.dtype))  # type: ignore[union-attr]

    # ------------------------------------------------------------ groups
    def _check_groups(self, groups: list[dict[str, Any]] | None = None) -> None:
        """ValueError if a group (of ``groups``, default ``param_groups``) sets an option differently."""
        groups = self.param_groups if groups is None else groups
        first = groups[0]
        for i, group in enumerate(groups):
            for key, value in group.items():
                if key == "params":
                    continue
                if key in self.defaults and not _same(value, self.defaults[key]):
                    # The options are read from the constructor, never from the groups: a group value
                    # that differs would be shown in param_groups but silently ignored.
                    raise ValueError(
                        f"{type(self).__name__} reads its options from its constructor, not from parameter "
                        f"groups: group {i} sets {key}={value!r} but the optimizer was built with "
                        f"{key}={self.defaults[key]!r}. Pass {key}={value!r} to the optimizer instead."
                    )
                if i > 0 and not _same(value, first.get(key)):
                    raise ValueError(
                        f"{type(self).__name__} treats all parameters as one vector with one curvature "
                        f"model, so parameter groups cannot have different options: group {i} sets "
                        f"{key}={value!r} but group 0 has {key}={first.get(key)!r}. Give the option once, "
                        "to the optimizer."
                    )

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if getattr(self, "_flat", None) is not None:
            raise ValueError(
                f"{type(self).__name__} cannot take new parameter groups after construction: its curvature "
                "memory is laid out over the original parameter vector. Build a new optimizer over all "
                "parameters instead."
            )
        super().add_param_group(param_group)

    # ------------------------------------------------------------ closure
    def keep_graph(self, loss: Tensor) -> None:
        """Backward for an evaluation that keeps the graph (called by the ``sqn``/``ddp_sqn`` strategies).

        ``torch.autograd.grad`` with ``create_graph=True`` instead of ``loss.backward()``: no
        parameter/gradient reference cycle, and under DDP (run under ``no_sync``) no reducer hooks.
        ``p.grad`` receives the detached gradients, so Lightning's hooks see the usual gradients.
        """
        params = self._flat.params
        grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
        for p, g in zip(params, grads, strict=True):
            p.grad = None if g is None else g.detach()
        self._graph = GradientGraph(grads, params, self.communicator)

    def _evaluate(self, closure: Closure, out: Tensor, create_graph: bool = False) -> Tensor:
        """Run the closure once with fresh gradients; write g into ``out`` and return f (0-dim, on device).

        ``create_graph``: the gradient must keep its graph; afterwards :attr:`_graph` holds it (a
        :class:`~lightning_sqn.curvature.graph.GradientGraph`). Such an evaluation bypasses DDP's
        gradient averaging, so with a communicator its gradient is averaged here.
        """
        for p in self._flat.params:
            p.grad = None
        if self._running_stats is not None:
            self._running_stats.before_evaluation()
        self._graph = None
        self.graph_requested = create_graph
        try:
            with torch.enable_grad():
                loss = closure()
        finally:
            self.graph_requested = False
        if self._running_stats is not None:
            self._running_stats.after_evaluation()
        if loss is None:
            raise RuntimeError(
                f"the closure given to {type(self).__name__}.step() returned None; it must return the loss "
                "(in Lightning: training_step must return the loss, not None, on every batch)"
            )
        if create_graph and self._graph is None:
            grads = take_graph_from_grads(self._flat.params)
            if grads is None:
                raise RuntimeError(GRAPH_MISSING.format(name=type(self).__name__))
            self._graph = GradientGraph(grads, self._flat.params, self.communicator)
        self._evals_this_step += 1
        self._flat.gather_grads(out)
        if create_graph and self.communicator is not None:
            out.copy_(self.communicator.all_reduce_mean(out))
        loss = loss.detach() if isinstance(loss, Tensor) else torch.tensor(float(loss))
        loss = loss.to(device=out.device, dtype=out.dtype)
        if loss.dim():
            loss = loss.reshape(())
        if self.communicator is not None:  # every rank decides from the same (global mean) loss
            loss = self.communicator.all_reduce_mean(loss)
        return loss

    def _check_finite(self, f: float, gg: float) -> None:
        """Raise :class:`NonFiniteLossError` unless f(x_k) and g^T g are finite (host values).

        g^T g is finite exactly when g is, barring overflow of the sum of squares, which is refused too
        (NaN means a NaN entry; +inf an infinite entry or an overflow, and the message says both).
        """
        if math.isfinite(f) and math.isfinite(gg):
            return
        if not math.isfinite(f):
            what = "loss"
        elif math.isnan(gg):
            what = "gradient"
        else:
            what = "gradient (an entry is infinite, or its squared norm overflows the parameters' dtype)"
        raise NonFiniteLossError(
            f"{type(self).__name__}: the {what} at the current parameters is not finite, so no step can "
            "be computed. Parameters and curvature memory are unchanged. Check the data, the model's "
            "initialisation and the loss (e.g. log of zero)."
        )

    def _check_finite_start(self, f: Tensor, g: Tensor) -> tuple[Tensor, float]:
        """Raise if f(x_k) or g(x_k) is not finite (one host read); return (g^T g, f(x_k) on the host)."""
        gg = g @ g
        f_host, gg_host = read_to_host(f, gg)
        self._check_finite(f_host, gg_host)
        return gg, f_host

    def step(self, closure: Closure | None = None) -> Tensor:  # type: ignore[override]
        """Perform one optimization step; returns f(x_k) (the loss before the step).

        Args:
            closure: re-evaluates the model and returns the loss (required).
        """
        if closure is None:
            raise RuntimeError(CLOSURE_REQUIRED.format(name=type(self).__name__))
        check_communicator(self, self.communicator)
        if self.needs_graph and not self.graph_from_strategy and _is_lightning_closure(closure):
            from lightning.fabric.utilities.exceptions import MisconfigurationException

            raise MisconfigurationException(
                LIGHTNING_STRATEGY_NEEDED.format(name=type(self).__name__, strategy="in use")
            )
        self._evals_this_step = 0
        if self._running_stats is not None:
            self._running_stats.begin_step()
        try:
            stats = self._step(closure)
        except BaseException:
            if self._running_stats is not None:
                self._running_stats.abort()
            raise
        finally:
            self._graph = None  # frees the activations a graph-keeping evaluation saved
        self.last_step = stats
        self.counters.record(stats)
        self._started = True
        return stats.loss

    def _step(self, closure: Closure) -> StepStats:  # pragma: no cover - abstract
        raise NotImplementedError

    def _commit_running_stats(
        self, accepted: Tensor | bool, if_accepted: int | None, if_rejected: int | None = 0
    ) -> None:
        """Steppers call this once per step: which evaluation's statistics to keep (0-based indices;
        ``None``: those at the start of the step)."""
        if self._running_stats is not None:
            self._running_stats.commit(accepted, if_accepted, if_rejected)

    # ------------------------------------------------------------ state
    def _extra_state(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _load_extra_state(self, state: dict[str, Any]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["state"] = {
            "sqn": {"counters": self.counters.state_dict(), "started": self._started, **self._extra_state()}
        }
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = state_dict["state"].get("sqn")
        if state is None:
            raise ValueError(
                f"this state_dict was not written by {type(self).__name__} (no 'sqn' entry in its state)"
            )
        # Saved options that differ from this optimizer's would be shown in param_groups but ignored.
        self._check_groups(state_dict["param_groups"])
        stripped = {"state": {}, "param_groups": state_dict["param_groups"]}
        super().load_state_dict(stripped)
        self.state.clear()  # our state lives in the flat buffers, not per parameter
        self.counters.load_state_dict(state["counters"])
        self._started = bool(state["started"])
        self._load_extra_state(state)

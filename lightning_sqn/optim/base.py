"""The closure-driven base of every optimizer in this package: bookkeeping only, no matrix algebra.

:class:`QuasiNewtonOptimizer` turns the parameters of all groups into one flat vector
(:class:`~lightning_sqn._flat.FlatParams`), runs closures through one
:class:`~lightning_sqn.optim.evaluation.Evaluation`, keeps the counters and the ``last_step`` record,
makes every step a transaction over the optimizer's state parts (:mod:`~lightning_sqn._state`),
and round-trips that state through ``state_dict()`` all-or-nothing. Subclasses compose a curvature
model (:mod:`~lightning_sqn.qn`) with a globalization (:mod:`~lightning_sqn.optim.steppers`) and
list their state in :meth:`QuasiNewtonOptimizer._parts`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from torch import Tensor

from lightning_sqn._flat import FlatParams
from lightning_sqn._state import Part, as_number, require_keys
from lightning_sqn.curvature.graph import LIGHTNING_STRATEGY_NEEDED
from lightning_sqn.distributed.communicator import Communicator, check_communicator
from lightning_sqn.optim.evaluation import Closure, Evaluation
from lightning_sqn.optim.groups import (
    NO_LEARNING_RATE,
    check_groups,
    group_learning_rate,
    without_learning_rate,
)
from lightning_sqn.optim.running_stats import RunningStats, running_stat_buffers
from lightning_sqn.optim.stats import Counters, StepStats

CLOSURE_REQUIRED = (
    "{name}.step() needs a closure: a function that clears the gradients, recomputes the loss on the "
    "current mini-batch, calls loss.backward() and returns the loss. {name} evaluates it several times "
    "per step (the trial point of a trust region or line search), so it cannot work from a gradient "
    "that was computed before step() was called. In plain PyTorch call `optimizer.step(closure)`; in "
    "Lightning use automatic optimization (it passes the closure) or `optimizer.step(closure=...)` in "
    "manual optimization. Lightning's 16-mixed precision (GradScaler) and DeepSpeed call step() without "
    "a closure after one evaluation: use precision='32-true', '64-true' or 'bf16-mixed' instead."
)


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


def _is_lightning_step_without_closure(closure: Closure) -> bool:
    """Whether Lightning's manual optimization called ``optimizer.step()`` without a closure (it then
    passes its ``do_nothing_closure``, wrapped by the precision plugin)."""
    obj: Any = closure
    for _ in range(4):
        if not isinstance(obj, functools.partial):
            break
        for arg in (*obj.args, *obj.keywords.values()):
            module = getattr(arg, "__module__", "") or ""
            if getattr(arg, "__name__", "") == "do_nothing_closure" and module.startswith(
                ("lightning", "pytorch_lightning")
            ):
                return True
        obj = obj.func
    return False


class QuasiNewtonOptimizer(torch.optim.Optimizer):
    """Base class: one flat parameter vector, closure evaluation, transactional steps, counters, state.

    Every parameter of every group is part of one vector x; groups may be given (e.g. by code that
    builds them for first-order optimizers) but must not carry options that differ from each other,
    because one curvature model and one step serve all of them. The options are the constructor's;
    a group may repeat them, and only ``lr`` (for optimizers that have a learning rate, see
    :attr:`group_options`) is read from the groups at every step, so learning-rate schedulers work.

    A step is a transaction: if anything raises inside :meth:`step` (the closure, an interrupt, a
    non-finite loss), the parameters, the state of every part (curvature memory, radius, step length,
    counters) and the BatchNorm running statistics are as they were before the step, and the exception
    propagates.

    Args:
        params: parameters or parameter groups.
        defaults: the optimizer's options.
    """

    #: options read from ``param_groups`` at every step (``("lr",)`` for optimizers with a step length)
    group_options: tuple[str, ...] = ()
    #: what sizes the steps of an optimizer without a learning rate (for the scheduler error)
    step_sizing: str = "trust region"
    #: whether :meth:`step` needs Hessian-vector products (a closure evaluation that keeps the graph)
    needs_graph: bool = False
    #: whether the method keeps curvature pairs (s, y) and so counts stored and skipped ones in
    #: :attr:`counters` (what :class:`~lightning_sqn.callbacks.SkippedUpdateCounter` reports)
    keeps_pairs: bool = True

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], defaults: dict[str, Any]) -> None:
        super().__init__(params, defaults)
        self._check_groups()
        self._wrap_groups()
        self._flat = FlatParams([p for g in self.param_groups for p in g["params"]])
        self.evaluation = Evaluation(self._flat, type(self).__name__)
        self.counters = Counters()
        #: the closure computes the same function at every call (full-batch training): f and g at the
        #: point a step ends on are reused as the next step's f(x_k), g(x_k) (set by the subclasses)
        self.full_batch = False
        self.last_step: StepStats | None = None
        self._started = False

    # ------------------------------------------------------------ evaluation (see Evaluation)
    @property
    def communicator(self) -> Communicator | None:
        """Mean of the loss over ranks (set by ``strategy="ddp_sqn"``); ``None`` on a single process."""
        return self.evaluation.communicator

    @communicator.setter
    def communicator(self, value: Communicator | None) -> None:
        self.evaluation.communicator = value

    @property
    def graph_requested(self) -> bool:
        """True while the closure runs for an evaluation whose gradient must keep its autograd graph
        (plain PyTorch closures then call ``loss.backward(create_graph=True)``)."""
        return self.evaluation.graph_requested

    @property
    def gradient_requested(self) -> bool:
        """False while the closure runs for an evaluation that needs only the loss (a trust-region trial
        point without pairs), which happens only under the ``sqn``/``ddp_sqn`` strategies: they run
        ``training_step`` under ``torch.no_grad()`` and skip the backward pass. With a plain PyTorch
        closure it stays True (the closure computes its gradient as usual)."""
        return self.evaluation.gradient_requested

    @property
    def graph_from_strategy(self) -> bool:
        """Set by the ``sqn``/``ddp_sqn`` strategies, whose backward hands the graph to :meth:`keep_graph`."""
        return self.evaluation.graph_from_strategy

    @graph_from_strategy.setter
    def graph_from_strategy(self, value: bool) -> None:
        self.evaluation.graph_from_strategy = bool(value)

    def keep_graph(self, loss: Tensor) -> None:
        """Backward for an evaluation that keeps the graph (see :meth:`Evaluation.keep_graph`)."""
        self.evaluation.keep_graph(loss)

    def track_running_stats(self, module: torch.nn.Module) -> None:
        """Advance ``module``'s BatchNorm running statistics once per step, from the accepted point.

        Without this, every closure evaluation (two per trust-region step, more in a line search) moves
        them, partly from rejected points. The ``sqn`` and ``ddp_sqn`` strategies call this for the
        LightningModule; in plain PyTorch call it once after building the optimizer. See
        :mod:`lightning_sqn.optim.running_stats`.
        """
        buffers = running_stat_buffers(module)
        self.evaluation.running_stats = RunningStats(buffers) if buffers else None

    def load_pairs(self, S: Tensor, Y: Tensor) -> int:
        """Replace the curvature memory by the pairs (rows of ``S``, ``Y``), offered in order.

        Each pair meets the optimizer's own test (SR1 skip rule with rank repair, BFGS curvature
        condition) against those kept before it. Returns how many were kept. Used by
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
        """ValueError for groups (default ``param_groups``) whose options the optimizer would ignore."""
        check_groups(
            type(self).__name__,
            self.defaults,
            self.group_options,
            self.param_groups if groups is None else groups,
        )

    def _wrap_groups(self) -> None:
        """Without a learning rate, groups answer ``group["lr"]`` with :class:`NoLearningRateError`."""
        if "lr" not in self.group_options:
            message = NO_LEARNING_RATE.format(name=type(self).__name__, sizing=self.step_sizing)
            self.param_groups = without_learning_rate(self.param_groups, message)

    def learning_rate(self) -> float:
        """The learning rate of this step, read from the groups (a scheduler may have changed it);
        :class:`NoLearningRateError` for an optimizer without one."""
        return group_learning_rate(type(self).__name__, self.param_groups)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if getattr(self, "_flat", None) is not None:
            raise ValueError(
                f"{type(self).__name__} cannot take new parameter groups after construction: its curvature "
                "memory is laid out over the original parameter vector. Build a new optimizer over all "
                "parameters instead."
            )
        super().add_param_group(param_group)

    # ------------------------------------------------------------ step
    def step(self, closure: Closure | None = None) -> Tensor:  # type: ignore[override]
        """Perform one optimization step; returns f(x_k) (the loss before the step).

        Args:
            closure: re-evaluates the model and returns the loss (required).
        """
        name = type(self).__name__
        if closure is None or _is_lightning_step_without_closure(closure):
            raise RuntimeError(CLOSURE_REQUIRED.format(name=name))
        check_communicator(self, self.communicator)
        if self.needs_graph and not self.graph_from_strategy and _is_lightning_closure(closure):
            raise MisconfigurationException(LIGHTNING_STRATEGY_NEEDED.format(name=name, strategy="in use"))
        ev = self.evaluation
        parts = self._parts()
        ev.begin_step()
        tokens = {key: part.begin() for key, part in parts.items()}
        try:
            stats = self._step(closure)
        except BaseException:
            ev.abort()
            for key, part in parts.items():
                part.rollback(tokens[key])
            raise
        finally:
            ev.end_step()
        for part in parts.values():
            part.commit()
        self.last_step = stats
        self.counters.record(stats)
        self._started = True
        return stats.loss

    def _step(self, closure: Closure) -> StepStats:
        """One step by the optimizer's stepper (a curvature model under a globalization)."""
        return self._stepper.step(closure)  # type: ignore[attr-defined]

    def _parts(self) -> dict[str, Part]:
        """The optimizer's state, one :class:`~lightning_sqn._state.Part` per entry: by default the
        curvature model and the stepper."""
        return {"matrix": self._model, "stepper": self._stepper}  # type: ignore[attr-defined]

    # ------------------------------------------------------------ pickle / deepcopy
    def __getstate__(self) -> dict[str, Any]:
        # torch.optim.Optimizer keeps only defaults, state and param_groups; everything here is state,
        # except the wrapper a learning-rate scheduler puts on this instance's step (it refers to the
        # original optimizer; the copy's scheduler wraps the copy again).
        return {k: v for k, v in self.__dict__.items() if k not in ("step", "_opt_called")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)

    # ------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        parts = {key: part.state_dict() for key, part in self._parts().items()}
        sd["state"] = {
            "sqn": {
                "optimizer": type(self).__name__,
                "counters": self.counters.state_dict(),
                "started": self._started,
                **parts,
            }
        }
        return sd

    def _check_state_dict(self, state_dict: Any) -> dict[str, Any]:
        """Every check of :meth:`load_state_dict`, before anything changes; returns the 'sqn' entry."""
        name = type(self).__name__
        require_keys(f"{name} state_dict", state_dict, ("state", "param_groups"))
        state = state_dict["state"].get("sqn") if isinstance(state_dict["state"], dict) else None
        if state is None:
            raise ValueError(f"this state_dict was not written by {name} (no 'sqn' entry in its state)")
        saved = state.get("optimizer", name)
        if saved != name:
            raise ValueError(f"this state_dict was written by {saved}, not {name}; it cannot be loaded")
        groups = state_dict["param_groups"]
        if not isinstance(groups, list) or len(groups) != len(self.param_groups):
            raise ValueError(
                f"the state_dict has {len(groups) if isinstance(groups, list) else groups!r} parameter "
                f"groups, this {name} has {len(self.param_groups)}"
            )
        for i, (saved_group, group) in enumerate(zip(groups, self.param_groups, strict=True)):
            if not isinstance(saved_group, dict) or len(saved_group.get("params", ())) != len(
                group["params"]
            ):
                raise ValueError(
                    f"parameter group {i} of the state_dict does not have this optimizer's parameters"
                )
        # Saved options that differ from this optimizer's would be shown in param_groups but ignored.
        self._check_groups(groups)
        self.counters.check_state(state.get("counters"))
        require_keys(f"{name}", state, ["started", *self._parts()])
        for key, part in self._parts().items():
            try:
                part.check_state(state[key])
            except ValueError as err:
                raise ValueError(f"{name} state '{key}': {err}") from None
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state written by :meth:`state_dict` of the same optimizer class and configuration.

        All-or-nothing: everything is checked first (class, parameter groups and their options, the
        counters, every part's keys and shapes); a mismatch raises a ValueError that names it, and the
        optimizer is unchanged.
        """
        state = self._check_state_dict(state_dict)
        super().load_state_dict({"state": {}, "param_groups": state_dict["param_groups"]})
        self._wrap_groups()
        self.state.clear()  # our state lives in the parts, not per parameter
        self.counters.load_state_dict(state["counters"])
        self._started = as_number(state["started"], bool)
        for key, part in self._parts().items():
            part.load_state_dict(state[key])

"""One closure evaluation object per optimizer: what steppers, pair refreshes and callbacks call.

:class:`Evaluation` owns everything about running the user's closure: clearing and gathering the
gradients into a flat vector, the request for a gradient that keeps its autograd graph (and the
:class:`~lightning_sqn.curvature.graph.GradientGraph` it gives), the BatchNorm running statistics of the
step's evaluations (:mod:`~lightning_sqn.optim.running_stats`), the rank average of the loss under
``ddp_sqn``, the count of evaluations in the current step and x_k, the point the step started from.

Components of a step get this object, not the optimizer's private members. The optimizer's
:meth:`~lightning_sqn.optim.base.QuasiNewtonOptimizer.step` opens a step with :meth:`begin_step`
(x_k gathered, statistics saved) and, if anything raises inside the step, calls :meth:`abort`
(parameters back to x_k, statistics back to their values at the start).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from lightning_sqn._device import read_to_host
from lightning_sqn._flat import FlatParams
from lightning_sqn.curvature.graph import GRAPH_MISSING, GradientGraph, take_graph_from_grads
from lightning_sqn.distributed.communicator import Communicator
from lightning_sqn.optim.running_stats import RunningStats

Closure = Callable[[], Any]

NO_GRADIENT = (
    "{name}: after the closure ran, no parameter has a gradient, so the step would train nothing. The "
    "closure must call loss.backward() on a loss computed with autograd enabled (not under "
    "torch.no_grad() or from detached tensors) and return that loss. Parameters and optimizer state are "
    "unchanged. (A gradient that was computed and is zero is fine: that is a stationary point.)"
)


class NonFiniteLossError(FloatingPointError):
    """The loss or gradient at the current point is NaN or infinite; parameters and memory are unchanged."""


class Evaluation:
    """Runs closures for one optimizer (see the module docstring).

    Args:
        flat: the optimizer's flat parameter layout.
        name: the optimizer's class name (for messages).
    """

    def __init__(self, flat: FlatParams, name: str) -> None:
        self.flat = flat
        self.name = name
        #: mean of the loss over ranks (set by ``strategy="ddp_sqn"``); ``None`` on a single process
        self.communicator: Communicator | None = None
        self.running_stats: RunningStats | None = None
        #: True while the closure runs for an evaluation whose gradient must keep its autograd graph
        self.graph_requested = False
        #: set by the ``sqn``/``ddp_sqn`` strategies, whose backward hands the graph to :meth:`keep_graph`
        self.graph_from_strategy = False
        #: the graph of the latest evaluation that asked for it (freed at the end of a step)
        self.graph: GradientGraph | None = None
        #: False while the closure runs for an evaluation that needs only the loss (see :meth:`loss_only`)
        self.gradient_requested = True
        #: closure evaluations in the current step, and those of them that computed only the loss
        self.count = 0
        self.loss_only_count = 0
        #: x_k, the parameters at the start of the current step
        self.x = flat.new_zeros()

    # ------------------------------------------------------------ step boundaries
    def begin_step(self) -> None:
        """x_k into :attr:`x`, the counts to zero, the running statistics saved."""
        self.count = 0
        self.loss_only_count = 0
        self.flat.gather_params(self.x)
        if self.running_stats is not None:
            self.running_stats.begin_step()

    def end_step(self) -> None:
        """Free the activations a graph-keeping evaluation saved."""
        self.graph = None

    def abort(self) -> None:
        """Undo what the step's evaluations changed: parameters back to x_k, statistics restored."""
        self.graph = None
        self.graph_requested = False
        self.gradient_requested = True
        self.flat.set_params(self.x)
        if self.running_stats is not None:
            self.running_stats.abort()

    def commit_running_stats(
        self, accepted: Tensor | bool, if_accepted: int | None, if_rejected: int | None = 0
    ) -> None:
        """Which evaluation's BatchNorm statistics to keep (0-based indices into this step's
        evaluations; ``None``: those at the start of the step). Called once per step."""
        if self.running_stats is not None:
            self.running_stats.commit(accepted, if_accepted, if_rejected)

    # ------------------------------------------------------------ evaluation
    def keep_graph(self, loss: Tensor) -> None:
        """Backward for an evaluation that keeps the graph (called by the ``sqn``/``ddp_sqn`` strategies).

        ``torch.autograd.grad`` with ``create_graph=True`` instead of ``loss.backward()``: no
        parameter/gradient reference cycle, and under DDP (run under ``no_sync``) no reducer hooks.
        ``p.grad`` receives the detached gradients, so Lightning's hooks see the usual gradients.
        """
        params = self.flat.params
        grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
        for p, g in zip(params, grads, strict=True):
            p.grad = None if g is None else g.detach()
        self.graph = GradientGraph(grads, params, self.communicator)

    def __call__(self, closure: Closure, out: Tensor, create_graph: bool = False) -> Tensor:
        """Run the closure once with fresh gradients; write g into ``out`` and return f (0-dim, on device).

        ``create_graph``: the gradient must keep its graph; afterwards :attr:`graph` holds it. Such an
        evaluation bypasses DDP's gradient averaging, so with a communicator its gradient is averaged
        here.

        Raises:
            RuntimeError: the closure returned None, or no parameter received a gradient.
            ValueError: the closure returned a loss with more than one element.
        """
        params = self.flat.params
        loss = self._run(closure, create_graph=create_graph, gradient=True)
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            raise RuntimeError(NO_GRADIENT.format(name=self.name))
        sparse = next((tuple(g.shape) for g in grads if g.is_sparse), None)
        if sparse is not None:
            raise RuntimeError(
                f"{self.name} needs dense gradients, but a parameter of shape {sparse} has a sparse one "
                "(e.g. nn.Embedding(sparse=True)); build that layer with sparse=False."
            )
        if create_graph and self.graph is None:
            grads = take_graph_from_grads(params)
            if grads is None:
                raise RuntimeError(GRAPH_MISSING.format(name=self.name))
            self.graph = GradientGraph(grads, params, self.communicator)
        self.flat.gather_grads(out)
        comm = self.communicator
        if create_graph and comm is not None:
            out.copy_(comm.all_reduce_mean(out))
        return self._global_loss(loss, out)

    def loss_only(self, closure: Closure, out: Tensor) -> Tensor:
        """f at the current parameters where only the loss is needed (a trust-region trial point whose
        gradient the method does not use); returns f like :meth:`__call__`.

        Under the ``sqn``/``ddp_sqn`` strategies (:attr:`graph_from_strategy`) the closure runs under
        ``torch.no_grad()`` with :attr:`gradient_requested` False, and the strategy's backward skips the
        backward pass: a forward only, counted in :attr:`loss_only_count`. A plain PyTorch closure calls
        ``loss.backward()`` itself, so there the evaluation is an ordinary one (its gradient lands in
        ``out`` and is not used).
        """
        if not self.graph_from_strategy:
            return self(closure, out)
        loss = self._run(closure, create_graph=False, gradient=False)
        self.loss_only_count += 1
        return self._global_loss(loss, out)

    def _run(self, closure: Closure, *, create_graph: bool, gradient: bool) -> Tensor:
        """One closure call with fresh gradients, the running statistics around it, the flags the
        strategies read set while it runs (autograd off for a loss-only call), counted; the loss as a
        detached 0-dim tensor."""
        for p in self.flat.params:
            p.grad = None
        stats = self.running_stats
        if stats is not None:
            stats.before_evaluation()
        self.graph = None
        self.graph_requested, self.gradient_requested = create_graph, gradient
        try:
            with torch.set_grad_enabled(gradient):
                loss = closure()
        finally:
            self.graph_requested, self.gradient_requested = False, True
        if stats is not None:
            stats.after_evaluation()
        self.count += 1
        return self._check_loss(loss)

    def _global_loss(self, loss: Tensor, out: Tensor) -> Tensor:
        """The loss in ``out``'s dtype and device, averaged over ranks under ``ddp_sqn`` (every rank
        decides from the same global mean)."""
        loss = loss.to(device=out.device, dtype=out.dtype)
        return loss if self.communicator is None else self.communicator.all_reduce_mean(loss)

    # ------------------------------------------------------------ finiteness
    def check_finite(self, f: float, gg: float) -> None:
        """Raise :class:`NonFiniteLossError` unless f(x_k) and g^T g are finite (host values).

        g^T g is finite exactly when g is, barring overflow of the sum of squares: if every entry of
        g is finite the message says that the squared norm overflowed (one more pass, only then).
        """
        if math.isfinite(f) and math.isfinite(gg):
            return
        if not math.isfinite(f):
            what = "loss at the current parameters is not finite"
        elif math.isnan(gg) or not bool(self.flat.gather_grads().isfinite().all()):
            what = "gradient at the current parameters is not finite"
        else:
            what = (
                f"squared norm of the gradient overflows {self.flat.dtype} (every entry is finite): scale "
                "the loss down or train in float64"
            )
        raise NonFiniteLossError(
            f"{self.name}: the {what}, so no step can be computed. Parameters and optimizer "
            "state are unchanged. Check the data, the model's initialisation and the loss (e.g. log of "
            "zero)."
        )

    def check_finite_start(self, f: Tensor, g: Tensor) -> tuple[Tensor, float]:
        """Raise if f(x_k) or g(x_k) is not finite (one host read); return (g^T g, f(x_k) on the host)."""
        gg = g @ g
        f_host, gg_host = read_to_host(f, gg)
        self.check_finite(f_host, gg_host)
        return gg, f_host

    def _check_loss(self, loss: Any) -> Tensor:
        """The closure's return value as a detached 0-dim tensor (a Python number is accepted)."""
        if loss is None:
            raise RuntimeError(
                f"the closure given to {self.name}.step() returned None; it must return the loss "
                "(in Lightning: training_step must return the loss, not None, on every batch)"
            )
        if isinstance(loss, Tensor):
            if loss.numel() != 1:
                raise ValueError(
                    f"the closure given to {self.name}.step() returned a loss of shape "
                    f"{tuple(loss.shape)}; it must return one number (reduce it, e.g. loss.mean())"
                )
            loss = loss.detach()
            return loss.reshape(()) if loss.dim() else loss
        try:
            return torch.tensor(float(loss))
        except (TypeError, ValueError):
            raise TypeError(
                f"the closure given to {self.name}.step() returned {type(loss).__name__}; it must return "
                "the loss as a tensor or a number"
            ) from None


__all__ = ["NO_GRADIENT", "Closure", "Evaluation", "NonFiniteLossError"]

"""The network's input and output at x_k, captured from the closure: GGN products, per-example gradients.

Generalized Gauss-Newton products :math:`G v = J^\\top H_\\ell J v` (Schraudolph 2002; Martens' slide
"The Gauss-Newton matrix") need the network :math:`f` and its input, not only the scalar loss the
closure returns. :class:`ForwardCapture` is a forward hook on the watched module (in Lightning the
LightningModule, because ``training_step`` usually calls ``self(x)``; in plain PyTorch the model given
to ``optimizer.watch_module(model)``). While armed it records the positional inputs and the output of
each call, and a tensor hook on the output records :math:`e = \\partial L / \\partial z` when the
closure runs its backward. The optimizer arms it for the evaluation at x_k only.

From one recorded call (:meth:`ForwardCapture.batch`) :class:`FunctionalModule` re-evaluates the module
as a function of the optimizer's parameters with :func:`torch.func.functional_call` (parameters the
optimizer does not own and buffers are held fixed; the module's current mode is used, so BatchNorm in
training mode normalises with the batch statistics and dropout draws new masks), which gives

* :func:`~lightning_sqn.curvature.ggn.ggn_matvec`: :math:`v \\mapsto G_K v` for the mean loss over
  the first ``K`` examples (Martens' curvature mini-batch), with the linearisation
  (:func:`torch.func.vjp`) built once and one :func:`torch.func.jvp` plus one pullback per product;
* :func:`fisher_diagonal`: :math:`\\frac1K \\sum_{i<K} \\nabla \\ell_i \\odot \\nabla \\ell_i`, the
  diagonal of the empirical Fisher matrix from per-example gradients (vmapped :func:`torch.func.grad`
  in chunks), the ingredient of Martens' preconditioner.

Everything here is functional (no autograd graph kept by the closure), so it works on the unwrapped
module under DDP; the caller averages the results over ranks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import grad, vmap

from lightning_sqn._flat import FunctionalModule

#: what a user can do when the module's forward was not captured as needed
CAPTURE_HINTS = (
    "In Lightning call the LightningModule itself in training_step (`logits = self(x)`, with forward "
    "running the network), or call `optimizer.watch_module(self.net)` in configure_optimizers for the "
    "submodule that maps the input to the loss input; in plain PyTorch call `optimizer.watch_module(model)` "
    "once after building the optimizer. Or use curvature='hessian' (products from the gradient's graph, "
    "no capture needed) and, without a watched module, preconditioner=False."
)

#: elements of one chunk of per-example gradients (``chunk x n``): 2**25 float32 values are 128 MiB
PER_EXAMPLE_ELEMENTS = 2**25


class CaptureError(RuntimeError):
    """The watched module's forward at x_k was not captured in a usable form (see the message)."""


@dataclass
class CapturedBatch:
    """One recorded forward call of the watched module.

    Attributes:
        inputs: the single positional input ``X`` (detached), batch on dim 0.
        output: ``z = f(X)`` (detached).
        output_grad: ``e = dL/dz`` from the closure's backward (detached), or ``None`` if the backward
            did not reach the output.
    """

    inputs: Tensor
    output: Tensor
    output_grad: Tensor | None

    @property
    def batch_size(self) -> int:
        return int(self.inputs.shape[0])

    def curvature_size(self, fraction: float) -> int:
        """``K = ceil(fraction * B)`` (at least 1): the examples the curvature products use."""
        return max(1, math.ceil(round(fraction * self.batch_size, 9)))


class ForwardCapture:
    """Forward hook recording the inputs and output of ``module`` while armed.

    Args:
        module: the module to watch (its forward hook is registered at once; :meth:`remove` drops it).
    """

    def __init__(self, module: nn.Module) -> None:
        if not isinstance(module, nn.Module):
            raise TypeError(f"watch_module needs a torch.nn.Module, got {type(module).__name__}")
        self.module = module
        self.armed = False
        self._calls: list[tuple[tuple[Any, ...], dict[str, Any], Any]] = []
        self._grads: dict[int, Tensor] = {}
        self._handle = module.register_forward_hook(self._hook, with_kwargs=True)

    def arm(self) -> None:
        """Forget earlier records and record the next calls."""
        self.clear()
        self.armed = True

    def disarm(self) -> None:
        self.armed = False

    def clear(self) -> None:
        self._calls, self._grads = [], {}

    def remove(self) -> None:
        """Remove the hook from the module."""
        self.disarm()
        self.clear()
        self._handle.remove()

    def _hook(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        if not self.armed:
            return
        index = len(self._calls)
        self._calls.append((args, kwargs, output))
        if isinstance(output, Tensor) and output.requires_grad:

            def keep(grad_output: Tensor, index: int = index) -> None:
                self._grads[index] = grad_output.detach()

            output.register_hook(keep)

    def batch(self, what: str) -> CapturedBatch:
        """The single recorded call, validated; ``what`` names the consumer in error messages.

        Raises:
            CaptureError: no call was recorded, more than one, or its input/output is not a single
                batched tensor.
        """
        name = type(self.module).__name__
        if not self._calls:
            raise CaptureError(
                f"{what} needs the input and output of the watched module ({name}) at the current "
                f"parameters, but the closure never called that module. {CAPTURE_HINTS}"
            )
        if len(self._calls) > 1:
            raise CaptureError(
                f"{what} needs one forward call of the watched module ({name}) per closure evaluation, but "
                f"the closure called it {len(self._calls)} times, so the loss is not a function of one "
                f"network output. Watch the submodule that is called once. {CAPTURE_HINTS}"
            )
        args, kwargs, output = self._calls[0]
        if len(args) != 1 or not isinstance(args[0], Tensor) or kwargs:
            kinds = [type(a).__name__ for a in args] + [f"{k}=" for k in kwargs]
            raise CaptureError(
                f"{what} re-evaluates the watched module ({name}) on its captured input, which must be a "
                f"single positional tensor; the closure called it with ({', '.join(kinds)}). {CAPTURE_HINTS}"
            )
        inputs = args[0]
        if not isinstance(output, Tensor):
            raise CaptureError(
                f"{what} needs the watched module ({name}) to return one tensor (the input of the loss), "
                f"got {type(output).__name__}. {CAPTURE_HINTS}"
            )
        if inputs.ndim == 0 or output.ndim == 0 or output.shape[0] != inputs.shape[0]:
            raise CaptureError(
                f"{what} needs batched input and output of the watched module ({name}) with the examples "
                f"on dim 0, got input {tuple(inputs.shape)} and output {tuple(output.shape)}."
            )
        return CapturedBatch(inputs.detach(), output.detach(), self._grads.get(0))


def _linear_layout(fmod: FunctionalModule) -> list[tuple[nn.Linear, int | None, int | None]] | None:
    """``(layer, primal index of its weight, of its bias)`` for every ``nn.Linear`` of the watched module
    when the per-layer rule of :func:`linear_fisher_diagonal` applies: every module that holds parameters
    is exactly ``nn.Linear`` (no subclass, no other layer), no parameter is shared, and no BatchNorm runs
    in training mode (examples would interact). ``None`` otherwise."""
    index = {id(p): i for i, p in enumerate(fmod.flat.params)}
    seen: set[int] = set()
    layers = []
    for module in fmod.module.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training:
            return None
        own = list(module.parameters(recurse=False))
        if not own:
            continue
        if type(module) is not nn.Linear or any(id(p) in seen for p in own):
            return None
        seen.update(id(p) for p in own)
        bias = module.bias
        layers.append((module, index.get(id(module.weight)), None if bias is None else index.get(id(bias))))
    return layers


def linear_fisher_diagonal(fmod: FunctionalModule, inputs: Tensor, output_grads: Tensor) -> Tensor | None:
    """:math:`\\sum_i \\nabla f_i \\odot \\nabla f_i` by the per-layer rule, for networks of ``nn.Linear``
    layers and parameter-free elementwise layers; ``None`` where the rule does not apply.

    For a linear layer :math:`z_l = W_l a_l + b_l` the gradient of the ``i``-th term
    :math:`\\langle f(x_i), e_i \\rangle` is :math:`\\delta_{l,i} a_{l,i}^\\top` (weight) and
    :math:`\\delta_{l,i}` (bias), with :math:`\\delta_{l,i} = \\partial \\langle f(x_i), e_i \\rangle /
    \\partial z_{l,i}`. So the sums of squares are :math:`(\\delta_l \\odot \\delta_l)^\\top (a_l \\odot
    a_l)` and :math:`\\sum_i \\delta_{l,i} \\odot \\delta_{l,i}`: one forward and one backward over all
    examples at once plus one matrix product per layer, instead of one gradient per example (Martens
    computes the squared per-case gradients in the backward pass the same way). It is exact when each
    layer is called once per forward on ``(examples, features)`` inputs and the examples do not interact;
    ``None`` (use the per-example path) when a layer is called several times or on inputs with more
    dimensions, or the module has other parameterised layers (see ``_linear_layout``).

    Args:
        fmod: the module as a function of the optimized parameters.
        inputs: the ``K`` examples.
        output_grads: :math:`e_i`, the module-output gradients of the loss for those examples.

    Returns:
        The flat sum over the ``K`` examples (not scaled), or ``None``.
    """
    layout = _linear_layout(fmod)
    if layout is None:
        return None
    records: dict[int, list[tuple[Tensor, Tensor]]] = {}

    def hook(layer_index: int) -> Callable[..., None]:
        def record(module: nn.Module, args: tuple[Any, ...], out: Tensor) -> None:
            records.setdefault(layer_index, []).append((args[0], out))

        return record

    handles = [layer.register_forward_hook(hook(i)) for i, (layer, _, _) in enumerate(layout)]
    try:
        primals = tuple(p.detach().requires_grad_(True) for p in fmod.primals())
        with torch.enable_grad():
            z = fmod(primals, inputs)
    finally:
        for handle in handles:
            handle.remove()
    calls = [records.get(i, []) for i in range(len(layout))]
    K = inputs.shape[0]
    if any(len(c) != 1 or c[0][0].dim() != 2 or c[0][0].shape[0] != K for c in calls):
        return None  # a layer called twice, or whose rows are not the examples
    # layers with an optimized weight or bias (their outputs depend on it, so they are in the graph)
    wanted = [i for i, (_, w, b) in enumerate(layout) if w is not None or b is not None]
    deltas = torch.autograd.grad(
        (z * output_grads.to(z.dtype)).sum(), [calls[i][0][1] for i in wanted], allow_unused=True
    )
    dtype = fmod.flat.new_zeros().dtype
    squares: list[Tensor | None] = [None] * len(fmod.flat.params)  # None: zero (a layer off the output)
    for i, delta in zip(wanted, deltas, strict=True):
        if delta is None:  # the layer does not reach the output: its gradients are zero
            continue
        _, w_index, b_index = layout[i]
        d2 = delta.detach().to(dtype).square()
        if w_index is not None:
            squares[w_index] = d2.T @ calls[i][0][0].detach().to(dtype).square()
        if b_index is not None:
            squares[b_index] = d2.sum(0)
    return fmod.flat.flatten(squares)


def fisher_diagonal(fmod: FunctionalModule, batch: CapturedBatch, num_examples: int) -> Tensor:
    """Diagonal of the empirical Fisher matrix of the first ``K = num_examples`` examples.

    With the closure's loss :math:`L = \\frac1B \\sum_{i=1}^B \\ell_i` (mean over the ``B`` examples of
    the batch) and :math:`e_i = \\partial L / \\partial z_i` captured from its backward, the gradient of
    the ``i``-th term :math:`f_i = \\ell_i / B` (Martens' ``f = sum_i f_i``) is
    :math:`\\nabla f_i = J_i^\\top e_i`, the gradient of :math:`\\langle f(x_i), e_i \\rangle`; it needs
    neither the targets nor the loss function. Returned is

    .. math::

        D = \\frac1K \\sum_{i<K} \\nabla \\ell_i \\odot \\nabla \\ell_i
          = \\frac{B^2}{K} \\sum_{i<K} \\nabla f_i \\odot \\nabla f_i,

    Martens' ``diag(sum_i grad f_i^2)`` (slide "Our HF method": the preconditioner) for his summed
    objective, rescaled to our mean loss, i.e. on the scale of :math:`G` and the damping
    :math:`\\lambda` for any batch size. Networks of ``nn.Linear`` layers (and parameter-free
    elementwise layers) use the per-layer rule of :func:`linear_fisher_diagonal` (one forward and one
    backward over the K examples); otherwise the per-example gradients are computed by
    ``vmap(grad(...))`` over chunks of examples (``chunk * n <=`` :data:`PER_EXAMPLE_ELEMENTS`), each
    example forwarded alone: this assumes examples do not interact in the forward (no BatchNorm in
    training mode) and the loss is a mean of per-example terms.

    Args:
        fmod: the module as a function of the optimized parameters.
        batch: the captured call (with ``output_grad``).
        num_examples: ``K``.

    Raises:
        CaptureError: if the closure's backward did not reach the captured output.
    """
    if batch.output_grad is None:
        raise CaptureError(
            "the preconditioner needs dL/dz at the watched module's output, but the closure's backward did "
            "not reach it (is the loss computed from the module's output, and does the closure call "
            "backward?). Or pass preconditioner=False."
        )
    B, K = batch.batch_size, num_examples
    X, E = batch.inputs[:K], batch.output_grad[:K]
    fast = linear_fisher_diagonal(fmod, X, E)
    if fast is not None:
        return fast.mul_(B * B / K)
    primals = fmod.primals()

    def inner(ps: tuple[Tensor, ...], x: Tensor, e: Tensor) -> Tensor:
        z = fmod(ps, x.unsqueeze(0))
        return (z * e.unsqueeze(0).to(z.dtype)).sum()

    per_example = vmap(grad(inner), in_dims=(None, 0, 0))
    chunk = max(1, min(K, PER_EXAMPLE_ELEMENTS // max(fmod.flat.numel, 1)))
    total = fmod.flat.new_zeros()
    for start in range(0, K, chunk):
        grads = per_example(primals, X[start : start + chunk], E[start : start + chunk])
        total += fmod.flat.flatten([g.to(total.dtype).pow(2).sum(0) for g in grads])
    return total.mul_(B * B / K)


__all__ = [
    "CAPTURE_HINTS",
    "CaptureError",
    "CapturedBatch",
    "ForwardCapture",
    "FunctionalModule",
    "fisher_diagonal",
    "linear_fisher_diagonal",
]

"""Hessian-vector products of a loss with respect to a flat parameter vector.

For a loss :math:`L(x)` of the flat parameters :math:`x \\in \\mathbb{R}^n` (the parameters in the
order of ``list(module.parameters())``, flattened and concatenated) the Hessian-vector product is the
directional derivative of the gradient,

.. math::
    H v = \\nabla^2 L(x)\\, v = \\frac{\\mathrm{d}}{\\mathrm{d}t} \\nabla L(x + t v) \\Big|_{t=0}
        = \\nabla_x \\big( \\nabla L(x)^\\top v \\big),

computed without forming :math:`H` (Pearlmutter 1994). A block :math:`V = [v_1, \\dots, v_k]` of shape
``(n, k)`` is handled as one batched product, giving :math:`H V` of shape ``(n, k)``.

Two routes:

- :func:`hvp_from_graph`: reverse-over-reverse (double backward) on an already built first-order graph,
  cheapest when the gradient was computed anyway with ``create_graph=True``.
- :func:`hvp_functional`: forward-over-reverse with :mod:`torch.func`, stateless and vmapped over the
  columns of :math:`V`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.func import grad, jvp, vmap

from lightning_sqn._flat import FlatParams, FunctionalModule


def check_block(V: Tensor, n: int) -> None:
    if V.ndim not in (1, 2) or V.shape[0] != n:
        raise ValueError(f"V must have shape (n,) or (n, k) with n = {n}, got {tuple(V.shape)}")


def hvp_from_graph(grads: Sequence[Tensor], params: Sequence[Tensor], V: Tensor) -> Tensor:
    """Hessian-vector products :math:`H V` by double backward through an existing gradient graph.

    With :math:`g(x) = \\nabla L(x)` built with ``create_graph=True``, one backward pass of
    :math:`g^\\top v` gives :math:`\\nabla_x (g^\\top v) = H v` (:math:`H` is symmetric). For a block
    :math:`V` of ``k`` columns the ``k`` backward passes run as one vmapped pass
    (``is_grads_batched=True``). The graph is retained, so the function can be called again on the
    same ``grads``.

    Args:
        grads: :math:`\\nabla L` per parameter, from
            ``torch.autograd.grad(loss, params, create_graph=True)``.
        params: the parameters, in the order that defines the flat layout.
        V: the vector(s), shape ``(n,)`` or ``(n, k)`` (vectors as columns).

    Returns:
        :math:`H V`, with the shape of ``V``, in the parameters' dtype.

    Raises:
        ValueError: if ``grads`` and ``params`` differ in length or ``V`` has the wrong shape.
    """
    params, grads = list(params), list(grads)
    if len(grads) != len(params):
        raise ValueError(f"got {len(grads)} gradients for {len(params)} parameters")
    flat = FlatParams(params)
    n = flat.numel
    check_block(V, n)
    block = V.unsqueeze(1) if V.ndim == 1 else V
    k = block.shape[1]
    dtype = torch.promote_types(params[0].dtype, V.dtype)
    out = torch.zeros(k, n, dtype=dtype, device=V.device)
    # gradients without a graph are constant in x: their Hessian blocks are zero
    live = [i for i, g in enumerate(grads) if g.requires_grad]
    if live:
        vs = flat.unflatten_rows(block.T)
        products = torch.autograd.grad(
            [grads[i] for i in live],
            params,
            grad_outputs=[vs[i] if k > 1 else vs[i][0] for i in live],
            retain_graph=True,
            allow_unused=True,
            is_grads_batched=k > 1,
        )
        flat.flatten_rows(products, out)
    return out[0] if V.ndim == 1 else out.T


def _functional(module: nn.Module, inputs) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    """``x`` (the flat parameters, detached) and ``x -> module(inputs)`` evaluated statelessly.

    Buffers are passed through unchanged, so the function uses the module's current mode: in training
    mode BatchNorm normalizes with the batch statistics (and its running-statistics update is not
    meaningful under :func:`~torch.func.vmap`; use eval mode, ``track_running_stats=False`` or
    :func:`torch.func.replace_all_batch_norm_modules_`).
    """
    fmod = FunctionalModule(module, FlatParams(list(module.parameters())))
    return fmod.flat.gather_params(), lambda flat: fmod.flat_call(flat, inputs)


def hvp_functional(
    module: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    inputs,
    targets,
    V: Tensor,
) -> Tensor:
    """Hessian-vector products :math:`H V` of ``loss_fn(module(inputs), targets)`` by forward-over-reverse.

    With :math:`L(x) = \\ell(f(x, \\text{inputs}), \\text{targets})`, a forward-mode derivative of the
    reverse-mode gradient in direction :math:`v`,

    .. math::
        H v = \\partial_t \\, \\nabla L(x + t v) \\big|_{t=0},

    is one :func:`torch.func.jvp` of :func:`torch.func.grad`, vmapped over the columns of :math:`V`.
    The parameters are ``list(module.parameters())`` in that order (the flat layout); buffers are passed
    through unchanged, so the products use the module's current mode (BatchNorm in training mode uses
    the batch statistics).

    Args:
        module: the network :math:`f`.
        loss_fn: :math:`\\ell(\\text{output}, \\text{targets})`, a scalar.
        inputs: the network input (passed as the single positional argument).
        targets: passed as the second argument of ``loss_fn``.
        V: the vector(s), shape ``(n,)`` or ``(n, k)`` (vectors as columns).

    Returns:
        :math:`H V`, with the shape of ``V``.

    Raises:
        ValueError: if ``V`` has the wrong shape.
    """
    x, forward = _functional(module, inputs)
    check_block(V, x.numel())
    V = V.to(x.dtype)

    gradient = grad(lambda flat, t: loss_fn(forward(flat), t))
    # Floating-point targets enter the jvp as primals with a materialized zero tangent: left implicit,
    # their tangent is an immutable ZeroTensor that the forward-mode rule of mse_loss's backward
    # writes into (RuntimeError "ZeroTensors are immutable", torch 2.14).
    dual_targets = isinstance(targets, Tensor) and targets.is_floating_point()

    def hvp(v: Tensor) -> Tensor:
        if dual_targets:
            return jvp(gradient, (x, targets), (v, torch.zeros_like(targets)))[1]
        return jvp(lambda flat: gradient(flat, targets), (x,), (v,))[1]

    if V.ndim == 1:
        return hvp(V)
    return vmap(hvp, in_dims=1, out_dims=1)(V)

"""Generalized Gauss-Newton (GGN) matrix-vector products.

For a loss :math:`L(x) = \\ell(f(x))` of the network output :math:`z = f(x)` the Hessian splits as

.. math::
    \\nabla^2 L(x) = J^\\top H_\\ell J + \\sum_j \\frac{\\partial \\ell}{\\partial z_j} \\nabla^2 z_j(x),

with :math:`J = \\partial z / \\partial x` and :math:`H_\\ell = \\nabla_z^2 \\ell`. The GGN keeps the first
term (Schraudolph 2002, "Fast curvature matrix-vector products for second-order gradient descent"),

.. math::
    G = J^\\top H_\\ell J,

positive semi-definite whenever :math:`\\ell` is convex in :math:`z`. A product :math:`G v` costs one
forward-mode pass (:math:`J v`), a closed-form :math:`H_\\ell u` and one reverse-mode pass
(:math:`J^\\top w`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn
from torch.func import jvp, vjp, vmap

from lightning_sqn._flat import FlatParams, FunctionalModule
from lightning_sqn.curvature.hvp import check_block

GGNLoss = Literal["cross_entropy", "mse", "bce_with_logits"]
LOSSES: tuple[str, ...] = ("cross_entropy", "mse", "bce_with_logits")


def output_hessian_vp(loss: GGNLoss, z: Tensor, U: Tensor) -> Tensor:
    """:math:`H_\\ell U`: products with the Hessian of the loss w.r.t. the output, in closed form.

    ``U`` has shape ``(k, *z.shape)`` (``k`` directions). Mean reduction as in :mod:`torch.nn.functional`:

    - ``"cross_entropy"`` (classes on dim 1, or dim 0 for an unbatched ``(C,)`` output), with
      :math:`p = \\mathrm{softmax}(z)` per sample and :math:`N` samples (elements of all dims but the
      class dim): :math:`H_\\ell u = (\\mathrm{diag}(p) - p p^\\top) u / N`. Independent of the targets
      (class indices or probabilities summing to one).
    - ``"mse"`` (mean over all :math:`m` elements): :math:`H_\\ell u = 2 u / m`.
    - ``"bce_with_logits"`` (mean over all :math:`m` elements), :math:`s = \\sigma(z)`:
      :math:`H_\\ell u = s (1 - s) u / m`.

    Raises:
        ValueError: for an unknown ``loss``.
    """
    if loss == "cross_entropy":
        dim = 0 if z.ndim == 1 else 1
        n = z.numel() // z.shape[dim]
        p = torch.softmax(z, dim=dim)
        pu = p * U
        return (pu - p * pu.sum(dim=dim + 1, keepdim=True)) / n
    if loss == "mse":
        return 2.0 * U / z.numel()
    if loss == "bce_with_logits":
        s = torch.sigmoid(z)
        return s * (1.0 - s) * U / z.numel()
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")


def ggn_matvec(fmod: FunctionalModule, loss: GGNLoss, inputs: Tensor) -> Callable[[Tensor], Tensor]:
    """:math:`v \\mapsto G v` with :math:`G = J^\\top H_\\ell J` of the mean loss over ``inputs``.

    The reverse-mode linearisation :math:`J^\\top` (:func:`torch.func.vjp`, which keeps the forward's
    activations) is built once here and reused by every product; a product then costs one
    :func:`torch.func.jvp` (the forward with its tangent) and one pullback, and a block ``V`` of shape
    ``(n, k)`` is one vmapped jvp and one vmapped pullback. :math:`H_\\ell` in closed form
    (:func:`output_hessian_vp`; mean reduction over the examples of ``inputs``, so with ``inputs`` the
    first ``K`` examples of the batch this is Martens' curvature mini-batch :math:`G_K`).

    Args:
        fmod: the module as a function of the optimized parameters.
        loss: ``"cross_entropy"``, ``"mse"`` or ``"bce_with_logits"`` (mean reduction).
        inputs: the network input (examples on dim 0).

    Returns:
        ``V -> G V`` for flat vectors ``(n,)`` or blocks ``(n, k)`` (vectors as columns) in the
        optimizer's layout, in its state dtype.

    Raises:
        ValueError: for an unknown ``loss``.
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    flat = fmod.flat
    primals = fmod.primals()

    def forward(*ps: Tensor) -> Tensor:
        return fmod(ps, inputs)

    z, pullback = vjp(forward, *primals)
    z = z.detach()

    def matvec(v: Tensor) -> Tensor:
        _, Jv = jvp(forward, primals, fmod.tangents(v))
        HJv = output_hessian_vp(loss, z, Jv.unsqueeze(0))[0]
        return flat.flatten(pullback(HJv.to(z.dtype)))

    def jv(v: Tensor) -> Tensor:  # inside vmap: uncached views of the batched tangent
        tangents = tuple(t.to(p.dtype) for t, p in zip(flat.unflatten(v), primals, strict=True))
        return jvp(forward, primals, tangents)[1]

    def pull(w: Tensor) -> Tensor:
        return torch.cat([t.reshape(-1).to(flat.dtype) for t in pullback(w.to(z.dtype))])

    def block(V: Tensor) -> Tensor:
        if V.ndim == 1:
            return matvec(V)
        HJV = output_hessian_vp(loss, z, vmap(jv, in_dims=1)(V))  # (k, *z.shape)
        return vmap(pull, out_dims=1)(HJV)  # (n, k)

    return block


def ggn_vp(module: nn.Module, loss: GGNLoss, inputs, targets, V: Tensor) -> Tensor:
    """GGN products :math:`G V = J^\\top H_\\ell J V` for the network ``module`` at its current parameters.

    :func:`ggn_matvec` on ``module`` as a function of ``list(module.parameters())`` (the flat layout;
    a block ``V`` is one vmapped jvp and one vmapped pullback). Buffers are passed through unchanged, so
    the products use the module's current mode.

    Args:
        module: the network :math:`f`; its output is the loss input :math:`z`.
        loss: ``"cross_entropy"``, ``"mse"`` or ``"bce_with_logits"``, each with mean reduction.
        inputs: the network input (passed as the single positional argument).
        targets: the targets; :math:`H_\\ell` of these losses does not depend on them (kept for a uniform
            signature).
        V: the vector(s), shape ``(n,)`` or ``(n, k)`` (vectors as columns).

    Returns:
        :math:`G V`, with the shape of ``V``.

    Raises:
        ValueError: for an unknown ``loss`` or a ``V`` of the wrong shape.
    """
    del targets
    flat = FlatParams(list(module.parameters()))
    products = ggn_matvec(FunctionalModule(module, flat), loss, inputs)  # checks the loss first
    check_block(V, flat.numel)
    return products(V.to(flat.dtype))

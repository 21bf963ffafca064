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

from typing import Literal

import torch
from torch import Tensor, nn
from torch.func import jvp, vjp, vmap

from lightning_sqn.curvature.hvp import _check_block, _flat_call

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


def ggn_vp(module: nn.Module, loss: GGNLoss, inputs, targets, V: Tensor) -> Tensor:
    """GGN products :math:`G V = J^\\top H_\\ell J V` for the network ``module`` at its current parameters.

    :math:`J V` by :func:`torch.func.jvp` (vmapped over the columns of :math:`V`), :math:`H_\\ell` in
    closed form (:func:`output_hessian_vp`), :math:`J^\\top` by one :func:`torch.func.vjp`, also vmapped.
    The parameters are ``list(module.parameters())`` in that order (the flat layout); buffers are passed
    through unchanged, so the products use the module's current mode.

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
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    x, forward = _flat_call(module, inputs)
    _check_block(V, x.numel())
    block = V.to(x.dtype).unsqueeze(1) if V.ndim == 1 else V.to(x.dtype)
    z, pullback = vjp(forward, x)
    z = z.detach()

    def jv(v: Tensor) -> Tensor:
        return jvp(forward, (x,), (v,))[1]

    JV = vmap(jv, in_dims=1)(block)  # (k, *z.shape)
    HJV = output_hessian_vp(loss, z, JV)
    GV = vmap(lambda w: pullback(w)[0], out_dims=1)(HJV)  # (n, k)
    return GV[:, 0] if V.ndim == 1 else GV

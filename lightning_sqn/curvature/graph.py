"""The gradient of one closure evaluation kept with its autograd graph, for Hessian-vector products.

An optimizer that needs products with the true Hessian :math:`H = \\nabla^2 f(x_k)` (option II of the
sampled quasi-Newton methods, Hessian-free, trust-region Newton) asks for one closure evaluation
whose gradient keeps its graph. Products :math:`H V` then cost one batched double backward through
that graph (:func:`~lightning_sqn.curvature.hvp.hvp_from_graph`) and use exactly the forward pass of
that evaluation: the same mini-batch and the same module mode (BatchNorm batch statistics, the same
dropout mask).

Where the graph comes from:

* plain PyTorch: the closure calls ``loss.backward(create_graph=True)`` (the AdaHessian/Sophia
  convention); :func:`take_graph_from_grads` reads the graph from ``p.grad`` and then detaches
  ``p.grad`` to break the parameter/gradient reference cycle that PyTorch warns about;
* Lightning, ``strategy="sqn"``/``"ddp_sqn"``: the strategy's ``backward`` calls
  :func:`torch.autograd.grad` with ``create_graph=True`` when the optimizer asks for it and hands the
  result to the optimizer (:meth:`~lightning_sqn.optim.base.QuasiNewtonOptimizer.keep_graph`); under
  DDP that evaluation runs under ``no_sync`` on the local shard, and the optimizer averages the
  gradient and each block of products over ranks (one all-reduce per block).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_sqn.curvature.hvp import hvp_from_graph
from lightning_sqn.distributed.communicator import Communicator

GRAPH_MISSING = (
    "{name} needs Hessian-vector products, which are formed from the gradient's autograd graph, but the "
    "closure's backward did not keep the graph. In plain PyTorch the closure must call "
    "`loss.backward(create_graph=True)` (as for AdaHessian or Sophia) when the optimizer asks for it "
    "(`optimizer.graph_requested` is True during that call; create_graph=True on every call is "
    "correct too, only slower). In Lightning use Trainer(strategy='sqn') on one device or "
    "strategy='ddp_sqn' for several: they keep the graph for the optimizer without any change to the "
    "LightningModule."
)

LIGHTNING_STRATEGY_NEEDED = (
    "{name} needs Hessian-vector products from the gradient's autograd graph, and the Lightning strategy "
    "{strategy} does not keep that graph in backward. Use Trainer(strategy='sqn') on one device or "
    "strategy='ddp_sqn' for several devices (no change to the LightningModule is needed)."
)


class GradientGraph:
    """Per-parameter gradients that still carry their graph, and the products :math:`H V` they give.

    Args:
        grads: :math:`\\nabla f` per parameter with ``requires_grad`` (from ``create_graph=True``);
            ``None`` for a parameter the loss does not depend on.
        params: the parameters, in the flat layout's order.
        communicator: averages each block of products over ranks when the gradients are the local
            shard's (``None`` on one process).
    """

    def __init__(
        self,
        grads: Sequence[Tensor | None],
        params: Sequence[Tensor],
        communicator: Communicator | None = None,
    ) -> None:
        self.params = list(params)
        self.grads = [
            torch.zeros_like(p) if g is None else g for g, p in zip(grads, self.params, strict=True)
        ]
        self.communicator = communicator
        #: Hessian-vector products formed so far (a block of k counts k)
        self.products = 0

    def hvp(self, V: Tensor, batched: bool | None = None) -> Tensor:
        """:math:`V H` for a block of row vectors ``V`` of shape ``(k, n)`` (or :math:`H v` for ``(n,)``).

        Under several ranks the block is averaged once, so the result is the product with the Hessian
        of the global mean loss.

        Args:
            V: the vectors (rows).
            batched: one vmapped double backward for the block (``True``) or one double backward per
                row (``False``). ``None``: batched except on CPU, where the vmapped backward measured
                1.1-1.2x slower than the loop (``benchmarks/curvature_products.py``).
        """
        if V.ndim == 2 and not (V.device.type != "cpu" if batched is None else batched):
            HV = torch.stack([hvp_from_graph(self.grads, self.params, v) for v in V])
        else:
            HV = hvp_from_graph(self.grads, self.params, V.T if V.ndim == 2 else V)
            HV = HV.T if V.ndim == 2 else HV  # (k, n), a view of the contiguous (k, n) result
        self.products += 1 if V.ndim == 1 else V.shape[0]
        if self.communicator is not None:
            HV = self.communicator.all_reduce_mean(HV)
        return HV.to(V.dtype)

    def release(self) -> None:
        """Drop the graph (frees the saved activations)."""
        self.grads = []


def has_graph(grads: Sequence[Tensor | None]) -> bool:
    """Whether any gradient carries an autograd graph (``requires_grad``)."""
    return any(g is not None and g.requires_grad for g in grads)


def take_graph_from_grads(params: Sequence[Tensor]) -> list[Tensor | None] | None:
    """Read gradients with a graph from ``p.grad`` (``loss.backward(create_graph=True)``).

    Returns the graph-carrying gradients and replaces each ``p.grad`` by its detached value, which
    breaks the parameter -> gradient -> graph -> parameter reference cycle; ``None`` (and ``p.grad``
    untouched) when no gradient has a graph.
    """
    grads = [p.grad for p in params]
    if not has_graph(grads):
        return None
    for p, g in zip(params, grads, strict=True):
        if g is not None:
            p.grad = g.detach()
    return grads


__all__ = [
    "GRAPH_MISSING",
    "LIGHTNING_STRATEGY_NEEDED",
    "GradientGraph",
    "has_graph",
    "take_graph_from_grads",
]

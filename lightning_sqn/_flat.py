"""The only module that knows the parameter layout.

All optimizers in this package treat the parameters of all groups as one vector ``x`` in R^n.
:class:`FlatParams` maps between the list of parameter tensors and flat buffers of length ``n``
(parameters, gradients, steps) with a handful of ``torch._foreach_*`` calls, so no other module
loops over parameters. :class:`FunctionalModule` is a network as a function of those parameters (the
one functional adapter of the package: GGN and functional Hessian products, per-example gradients).

The flat buffers use the *state dtype*: the parameters' dtype, except that low-precision parameters
(float16, bfloat16) get float32 buffers, so curvature pairs and Gram matrices are never formed in
half precision.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def state_dtype(dtypes: Iterable[torch.dtype]) -> torch.dtype:
    """The dtype of flat optimizer buffers for parameters of the given dtypes.

    The promoted dtype of all parameters, raised to float32 when that is a half-precision type.
    """
    dtypes = list(dtypes)
    if not dtypes:
        raise ValueError("state_dtype needs at least one parameter dtype")
    out = dtypes[0]
    for d in dtypes[1:]:
        out = torch.promote_types(out, d)
    if not out.is_floating_point:
        raise ValueError(f"quasi-Newton optimizers need floating-point parameters, got {out}")
    return torch.float32 if out in _LOW_PRECISION else out


class FlatParams:
    """A fixed list of parameters seen as one flat vector.

    Args:
        params: the parameters, in the order that defines the flat layout.

    Raises:
        ValueError: if ``params`` is empty, contains a parameter twice, or spans several devices.
    """

    def __init__(self, params: Sequence[Tensor]) -> None:
        params = list(params)
        if not params:
            raise ValueError("the optimizer got an empty parameter list")
        if len({id(p) for p in params}) != len(params):
            raise ValueError("a parameter appears more than once in the optimizer's parameter groups")
        devices = {p.device for p in params}
        if len(devices) > 1:
            raise ValueError(
                "all parameters must live on one device to form one flat vector, got "
                f"{sorted(map(str, devices))}"
            )
        self.params: list[Tensor] = params
        self.numels: list[int] = [p.numel() for p in params]
        self.numel: int = sum(self.numels)
        self.device: torch.device = params[0].device
        self.dtype: torch.dtype = state_dtype(p.dtype for p in params)
        self._views: dict[tuple, tuple[Tensor, list[Tensor]]] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_views": {}}  # a cache of views, which pickling would turn into copies

    def new_zeros(self, *leading: int) -> Tensor:
        """A zero buffer of shape ``(*leading, n)`` in the state dtype on the parameters' device."""
        return torch.zeros(*leading, self.numel, dtype=self.dtype, device=self.device)

    def views(self, flat: Tensor) -> list[Tensor]:
        """Views of a flat vector shaped like each parameter (no copy).

        The views of the last few buffers asked for are kept, so the optimizers' persistent buffers
        cost no view operations per step.
        """
        key = (flat.data_ptr(), flat.dtype, flat.shape, flat.stride())
        hit = self._views.get(key)
        if hit is not None and hit[0] is flat:
            return hit[1]
        views = [v.view_as(p) for v, p in zip(flat.split(self.numels), self.params, strict=True)]
        if len(self._views) >= 16:
            self._views.clear()
        self._views[key] = (flat, views)
        return views

    def unflatten(self, flat: Tensor) -> list[Tensor]:
        """Views of ``flat`` shaped like each parameter, without the cache of :meth:`views` (for tensors
        inside :mod:`torch.func` transforms, which have no storage to key a cache on)."""
        return [v.view_as(p) for v, p in zip(flat.split(self.numels), self.params, strict=True)]

    def unflatten_rows(self, V: Tensor) -> list[Tensor]:
        """A block ``(k, n)`` of row vectors as one ``(k, *p.shape)`` tensor per parameter, in its dtype."""
        k = V.shape[0]
        chunks = V.split(self.numels, dim=1)
        return [c.reshape(k, *p.shape).to(p.dtype) for c, p in zip(chunks, self.params, strict=True)]

    def flatten_rows(self, tensors: Sequence[Tensor | None], out: Tensor) -> Tensor:
        """Per-parameter ``(k, *p.shape)`` tensors as the rows of ``out`` ``(k, n)`` (``None``: zeros)."""
        k = out.shape[0]
        for v, t in zip(out.split(self.numels, dim=1), tensors, strict=True):
            if t is not None:
                v.copy_(t.reshape(k, -1))
        return out

    @torch.no_grad()
    def gather_params(self, out: Tensor | None = None) -> Tensor:
        """x: the current parameters as one flat vector (written into ``out`` when given)."""
        out = self.new_zeros() if out is None else out
        torch._foreach_copy_(self.views(out), self.params)
        return out

    def gather_grads(self, out: Tensor | None = None) -> Tensor:
        """g: the gradients as one flat vector; a parameter whose ``.grad`` is None counts as zero."""
        return self.flatten([p.grad for p in self.params], out)

    @torch.no_grad()
    def flatten(self, tensors: Sequence[Tensor | None], out: Tensor | None = None) -> Tensor:
        """One flat vector from per-parameter tensors (e.g. ``torch.autograd.grad`` output); None -> 0."""
        out = self.new_zeros() if out is None else out
        pairs = [(v, t) for v, t in zip(self.views(out), tensors, strict=True) if t is not None]
        if len(pairs) < len(self.params):
            out.zero_()
        if pairs:
            dst, src = zip(*pairs, strict=True)
            torch._foreach_copy_(list(dst), list(src))
        return out

    def grad_mask(self) -> Tensor | None:
        """1 on the coordinates of parameters that have a ``.grad``, 0 elsewhere; ``None`` if all have one.

        Directions that are not built from gradients (sampled curvature directions) are restricted
        to these coordinates, so a parameter the loss does not use stays where it is.
        """
        have = [p.grad is not None for p in self.params]
        if all(have):
            return None
        mask = self.new_zeros()
        for v, h in zip(self.views(mask), have, strict=True):
            if h:
                v.fill_(1.0)
        return mask

    @torch.no_grad()
    def set_params(self, flat: Tensor) -> None:
        """Write a flat vector into the parameters (cast to each parameter's dtype)."""
        torch._foreach_copy_(self.params, self.views(flat))

    @torch.no_grad()
    def step_params(self, flat: Tensor, alpha: float = 1.0) -> None:
        """x <- x + alpha flat on the parameters, in place, computed in the state dtype and rounded once to
        each parameter's dtype: the same values as writing x + alpha flat formed in a flat buffer, with
        one pass instead of two."""
        torch._foreach_add_(self.params, self.views(flat), alpha=alpha)


class FunctionalModule:
    """``module`` as a function of the optimizer's parameters, in the flat layout of ``flat``.

    Parameters of ``module`` that the optimizer does not own are held at their current values (the
    curvature then is the principal block of the optimizer's parameters); buffers are passed through.

    Args:
        module: the watched (unwrapped) module.
        flat: the optimizer's flat parameters; each must be a parameter of ``module``.

    Raises:
        ValueError: if an optimized parameter is not a parameter of ``module``.
    """

    def __init__(self, module: nn.Module, flat: FlatParams) -> None:
        index = {id(p): i for i, p in enumerate(flat.params)}
        named = list(module.named_parameters(remove_duplicate=False))  # tied weights under every name
        owned = {id(p) for _, p in named}
        missing = [i for i, p in enumerate(flat.params) if id(p) not in owned]
        if missing:
            raise ValueError(
                f"{len(missing)} of the optimizer's {len(flat.params)} parameter tensors are not parameters "
                f"of the watched module {type(module).__name__}, so the network output does not depend on "
                "them and their Gauss-Newton block is unknown. Watch the module that owns all optimized "
                "parameters, or use curvature='hessian'."
            )
        self.module = module
        self.flat = flat
        #: name -> position of the primal, for every name of an optimized parameter
        self.alias = {n: index[id(p)] for n, p in named if id(p) in index}
        self.fixed = {n: p.detach() for n, p in named if id(p) not in index}
        self.buffers = dict(module.named_buffers())

    def primals(self) -> tuple[Tensor, ...]:
        """The optimized parameters (detached), one tensor per parameter."""
        return tuple(p.detach() for p in self.flat.params)

    def __call__(self, primals: tuple[Tensor, ...], inputs: Tensor) -> Tensor:
        params = dict(self.fixed)
        params.update((name, primals[i]) for name, i in self.alias.items())
        return functional_call(self.module, (params, self.buffers), (inputs,))

    def flat_call(self, x: Tensor, inputs: Tensor) -> Tensor:
        """The module at the flat parameter vector ``x`` (works under :mod:`torch.func` transforms)."""
        return self(tuple(self.flat.unflatten(x)), inputs)

    def tangents(self, v: Tensor) -> tuple[Tensor, ...]:
        """A flat vector as per-parameter tangents in the parameters' dtypes."""
        return tuple(t.to(p.dtype) for t, p in zip(self.flat.views(v), self.flat.params, strict=True))

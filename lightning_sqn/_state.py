"""The state an optimizer is made of, as named parts with one protocol: save, check, load, and undo.

An optimizer lists its stateful components (the curvature model, the stepper, a direction sampler, the
optimizer's own tensors) as :class:`Part` objects. The base class
(:class:`~lightning_sqn.optim.base.QuasiNewtonOptimizer`) then

* writes ``state_dict()`` as one entry per part, checks *every* part of a loaded state before it changes
  anything (``load_state_dict`` is all-or-nothing), and
* wraps each step in a transaction: ``begin()`` before the step (a cheap token: host numbers and
  references; device data that a step overwrites before its last closure call is journaled by the part
  itself), ``commit()`` after it, ``rollback(token)`` if anything raised, which leaves the part exactly as
  it was before the step.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor


class Part(Protocol):
    """A stateful component of an optimizer (see the module docstring)."""

    def state_dict(self) -> dict[str, Any]: ...

    def check_state(self, state: Any) -> None:
        """ValueError naming what differs unless ``state`` can be loaded; changes nothing."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def begin(self) -> Any:
        """Start a step's transaction; the token restores the part."""
        ...

    def commit(self) -> None: ...

    def rollback(self, token: Any) -> None: ...


def require_keys(what: str, state: Any, keys: tuple[str, ...] | list[str]) -> None:
    """ValueError unless ``state`` is a dict holding every key."""
    if not isinstance(state, dict):
        raise ValueError(f"the {what} state must be a dict, got {type(state).__name__}")
    missing = [k for k in keys if k not in state]
    if missing:
        raise ValueError(f"the {what} state lacks {missing}")


def check_tensor(what: str, value: Any, like: Tensor) -> None:
    """ValueError unless ``value`` is a tensor of ``like``'s shape."""
    if not isinstance(value, Tensor) or value.shape != like.shape:
        got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f"{what} must be a tensor of shape {tuple(like.shape)}, got {got}")


def as_number(value: Any, kind: type) -> Any:
    """A saved scalar (Python number or 0-dim tensor) as ``kind`` (float, int or bool)."""
    return kind(value.item() if isinstance(value, Tensor) else value)


class AttributeState:
    """A :class:`Part` made of named attributes of an object: tensors (copied in place on load and
    rollback, so references held elsewhere stay valid) and Python scalars.

    Args:
        owner: the object holding the attributes.
        names: ``{key in the state dict: attribute name}``.
        what: a name for messages.
    """

    def __init__(self, owner: object, names: dict[str, str], what: str) -> None:
        self.owner = owner
        self.names = names
        self.what = what

    def state_dict(self) -> dict[str, Any]:
        return {key: getattr(self.owner, attr) for key, attr in self.names.items()}

    def check_state(self, state: Any) -> None:
        require_keys(self.what, state, list(self.names))
        for key, attr in self.names.items():
            current = getattr(self.owner, attr)
            if isinstance(current, Tensor):
                check_tensor(f"{self.what} '{key}'", state[key], current)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.check_state(state)
        self._set({key: state[key] for key in self.names})

    def _set(self, values: dict[str, Any]) -> None:
        for key, attr in self.names.items():
            current, value = getattr(self.owner, attr), values[key]
            if isinstance(current, Tensor):
                with torch.no_grad():
                    current.copy_(value.to(current))
            elif current is None or value is None:
                setattr(self.owner, attr, value)
            else:
                setattr(self.owner, attr, as_number(value, type(current)))

    def begin(self) -> dict[str, Any]:
        out = {}
        for key, attr in self.names.items():
            value = getattr(self.owner, attr)
            out[key] = value.clone() if isinstance(value, Tensor) else value
        return out

    def commit(self) -> None:
        pass

    def rollback(self, token: dict[str, Any]) -> None:
        self._set(token)


class AttributePart:
    """Mixin: a :class:`Part` whose whole state is the :class:`AttributeState` in ``self._state``."""

    _state: AttributeState

    def state_dict(self) -> dict[str, Any]:
        return self._state.state_dict()

    def check_state(self, state: Any) -> None:
        self._state.check_state(state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._state.load_state_dict(state)

    def begin(self) -> Any:
        return self._state.begin()

    def commit(self) -> None:
        pass

    def rollback(self, token: Any) -> None:
        self._state.rollback(token)


__all__ = ["AttributePart", "AttributeState", "Part", "as_number", "check_tensor", "require_keys"]

"""Parameter groups of the flat-vector optimizers: which options a group may carry, and the learning rate.

All parameters form one vector with one curvature model, so groups may repeat the constructor's
options but not change them; the one exception is ``lr`` for optimizers that have a step length, which
is read from the groups at every step so that learning-rate schedulers act on it. An optimizer without a
learning rate gets groups that answer ``group["lr"]`` (what every torch scheduler reads) with
:class:`NoLearningRateError` instead of a bare ``KeyError: 'lr'``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from lightning.fabric.utilities.exceptions import MisconfigurationException

NO_LEARNING_RATE = (
    "{name} has no learning rate (its steps are sized by a {sizing}), so a learning-rate scheduler "
    "cannot drive it. Remove the scheduler (in Lightning: return only the optimizer from "
    "configure_optimizers)."
)


class NoLearningRateError(MisconfigurationException, KeyError):
    """A learning rate was asked of an optimizer that has none (e.g. by a learning-rate scheduler)."""

    def __str__(self) -> str:  # KeyError would show the message's repr
        return str(self.args[0])


class _GroupWithoutLearningRate(dict):
    """A parameter group whose missing ``lr`` raises :class:`NoLearningRateError` with ``message``."""

    message = NO_LEARNING_RATE

    def __missing__(self, key: Any) -> Any:
        if key in ("lr", "initial_lr"):
            raise NoLearningRateError(self.message)
        raise KeyError(key)


def without_learning_rate(groups: list[dict[str, Any]], message: str) -> list[dict[str, Any]]:
    """The groups as dicts that answer ``group["lr"]`` with :class:`NoLearningRateError` (``message``)."""
    out = []
    for g in groups:
        group = _GroupWithoutLearningRate(g)
        group.message = message
        out.append(group)
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    try:
        return bool(a == b)
    except Exception:  # objects without a usable __eq__ (e.g. tensors)
        return a is b


def check_groups(
    name: str, defaults: Mapping[str, Any], group_options: tuple[str, ...], groups: list[dict[str, Any]]
) -> None:
    """ValueError if a group sets an option differently from the constructor (``defaults``; the
    ``group_options`` excepted), sets one the optimizer ``name`` does not have, or differs from
    another group."""
    first = groups[0]
    allowed = set(defaults) | {"params"}
    if "lr" in group_options:
        allowed.add("initial_lr")  # written by torch's learning-rate schedulers
    for i, group in enumerate(groups):
        for key, value in group.items():
            if key not in allowed:
                raise ValueError(
                    f"{name} has no option {key!r}, but parameter group {i} sets it; its options are "
                    f"{sorted(defaults)}. Remove {key!r} from the group."
                )
            if key == "params":
                continue
            if key in defaults and key not in group_options and not _same(value, defaults[key]):
                # The options are read from the constructor: a group value that differs would be
                # shown in param_groups but silently ignored.
                raise ValueError(
                    f"{name} reads its options from its constructor, not from parameter "
                    f"groups: group {i} sets {key}={value!r} but the optimizer was built with "
                    f"{key}={defaults[key]!r}. Pass {key}={value!r} to the optimizer instead."
                )
            if i > 0 and not _same(value, first.get(key)):
                raise ValueError(
                    f"{name} treats all parameters as one vector with one curvature "
                    f"model, so parameter groups cannot have different options: group {i} sets "
                    f"{key}={value!r} but group 0 has {key}={first.get(key)!r}. Give the option once, "
                    "to the optimizer."
                )


def group_learning_rate(name: str, groups: list[dict[str, Any]]) -> float:
    """The one learning rate of the groups (finite, > 0); ValueError if they differ."""
    lrs = {float(g["lr"]) for g in groups}
    if len(lrs) != 1:
        raise ValueError(
            f"{name} treats all parameters as one vector, so every parameter group must have the same lr; "
            f"the groups have {sorted(lrs)}"
        )
    lr = lrs.pop()
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"{name}: lr must be finite and > 0, the groups hold {lr!r}")
    return lr


__all__ = [
    "NO_LEARNING_RATE",
    "NoLearningRateError",
    "check_groups",
    "group_learning_rate",
    "without_learning_rate",
]

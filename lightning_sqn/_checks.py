"""Argument checks shared by every constructor: one message shape, one exception type.

Each check raises :class:`ValueError` naming the argument, the accepted values and what was given
(with its type when the type is the problem, e.g. a number passed as a string from a config file), and
returns the value converted to the Python type the code uses.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

T = TypeVar("T")


def _got(value: Any) -> str:
    if isinstance(value, bool | int | float) or value is None:
        return repr(value)
    return f"{value!r} (a {type(value).__name__})"


def fail(name: str, allowed: str, value: Any) -> None:
    """Raise the ValueError of every check."""
    raise ValueError(f"{name} must be {allowed}, got {_got(value)}")


def real(
    name: str,
    value: Any,
    ok: Callable[[float], bool] = lambda v: True,
    allowed: str = "a real number",
    *,
    none: bool = False,
    finite: bool = True,
) -> Any:
    """A real number (int or float, not bool) with ``ok(value)``; NaN is always refused, infinities
    unless ``finite=False``; ``None`` passes when ``none``. Returns a float (or None)."""
    if value is None and none:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        fail(name, allowed, value)
    v = float(value)
    if math.isnan(v) or (finite and math.isinf(v)) or not ok(v):
        fail(name, allowed, value)
    return v


def positive(name: str, value: Any, *, none: bool = False, allowed: str | None = None) -> Any:
    """A finite real number > 0 (or None when ``none``)."""
    text = allowed or ("a finite number > 0" + (" or None" if none else ""))
    return real(name, value, lambda v: v > 0, text, none=none)


def integer(name: str, value: Any, minimum: int, *, none: bool = False, allowed: str | None = None) -> Any:
    """An int (not bool) >= ``minimum`` (or None when ``none``)."""
    if value is None and none:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        fail(name, allowed or f"an integer >= {minimum}" + (" or None" if none else ""), value)
    return int(value)


def flag(name: str, value: Any) -> bool:
    """True or False."""
    if not isinstance(value, bool):
        fail(name, "True or False", value)
    return value


def choice(name: str, value: Any, choices: Iterable[T]) -> T:
    """One of ``choices`` (compared with ==; a non-hashable value is refused too)."""
    options = tuple(choices)
    if not isinstance(value, str | int | float | type(None)) or value not in options:
        fail(name, "one of " + ", ".join(repr(c) for c in options), value)
    return value  # type: ignore[return-value]


def instance(name: str, value: Any, cls: type | tuple[type, ...], allowed: str, *, none: bool = False) -> Any:
    """An instance of ``cls`` (or None when ``none``)."""
    if value is None and none:
        return None
    if not isinstance(value, cls):
        fail(name, allowed, value)
    return value


__all__ = ["choice", "fail", "flag", "instance", "integer", "positive", "real"]

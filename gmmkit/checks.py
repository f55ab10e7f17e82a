"""Value checks shared by every configuration: each failure is a :class:`~gmmkit.errors.ConfigError` that
names the field, says what was expected and what was received, and carries the field's name in
``error.field`` (and the rest in ``error.detail``) so the command line can name the flag without reading
the message."""
from __future__ import annotations

import math
import numbers
from typing import Any

from .errors import ConfigError


def fail(name: str, expected: str, received: Any) -> None:
    detail = f"expected {expected}, received {received!r}"
    raise ConfigError(f"{name}: {detail}", field=name, detail=detail)


def is_finite_number(x: Any) -> bool:
    """A real number (numpy's included; not a bool, not None) that is neither NaN nor infinite."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def integer(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        fail(name, "an integer", value)


def non_negative_int(name: str, value: Any) -> None:
    integer(name, value)
    if value < 0:
        fail(name, "0 or more", value)


def positive_int(name: str, value: Any) -> None:
    integer(name, value)
    if value <= 0:
        fail(name, "a positive integer", value)


def positive_float(name: str, value: Any) -> None:
    if not is_finite_number(value) or value <= 0:
        fail(name, "a positive finite number", value)


def non_negative_float(name: str, value: Any) -> None:
    if not is_finite_number(value) or value < 0:
        fail(name, "a finite number >= 0", value)


def one_of(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        fail(name, "one of " + ", ".join(map(str, choices)), value)

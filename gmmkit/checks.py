"""Value checks shared by every configuration: each failure is a :class:`~gmmkit.errors.ConfigError` that
names the field, says what was expected and what was received, and carries the field's name in
``error.field`` (and the rest in ``error.detail``) so the command line can name the flag without reading
the message."""

from __future__ import annotations

import json
import math
import numbers
from typing import Any, Callable, Sequence, TypeVar

from .errors import ConfigError


def fail(name: str, expected: str, received: Any) -> None:
    detail = f"expected {expected}, received {received!r}"
    raise ConfigError(f"{name}: {detail}", field=name, detail=detail)


T = TypeVar("T")


def from_json(text: str, source: str, from_dict: Callable[[Any], T]) -> T:
    """``from_dict(json.loads(text))``: a configuration read from JSON, where bad JSON and a bad field are each
    one :class:`ConfigError` that names ``source`` (a file, or what the text is)."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{source}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    try:
        return from_dict(raw)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}", field=exc.field, detail=exc.detail) from None


def json_object(name: str, raw: Any, known: Sequence[str], prefix: str = "") -> dict:
    """``raw`` when it is a JSON object whose keys are all ``known``; else a :class:`ConfigError` naming ``name``
    (not an object) or ``prefix + key`` (the first unknown key, in sorted order)."""
    if not isinstance(raw, dict):
        fail(name, "a JSON object", type(raw).__name__)
    unknown = sorted(set(raw) - set(known))
    if unknown:
        fail(f"{prefix}{unknown[0]}", "one of " + ", ".join(known), "an unknown key")
    return raw


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

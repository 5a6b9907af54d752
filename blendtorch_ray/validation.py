"""Small validators for the driver-side arguments: times, counts, sizes and choices.

Each validator returns the value (unchanged) when it is allowed and otherwise raises with a
message that names the argument, the bad value, what is allowed and a fix, e.g.::

    LaunchConfig(ready_timeout=-1): must be a number of seconds > 0; pass e.g. ready_timeout=120

``TypeError`` is raised when the value is not of the right kind at all (a bool, a str or None
where a number goes); ``ValueError`` when it is a number outside the allowed set (negative,
zero, not finite, or not an integer where a count goes).

The ``cli_*`` factories make argparse ``type=`` functions: argparse then reports
``argument --items: must be an integer >= 1, got '-3'``, naming the flag.

This module imports only the standard library (no ray, torch or zmq), so that anything on
the driver side can use it.
"""

from __future__ import annotations

import argparse
import math
import numbers
from collections.abc import Mapping
from typing import Any, Callable, Optional, Sequence


def _show(value: Any) -> str:
    """``repr`` of a value, but an integral float reads as an int (``120`` not ``120.0``)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _prefix(name: str, value: Any, owner: str) -> str:
    call = f"{name}={value!r}"
    return f"{owner}({call})" if owner else call


def _fail(exc: type, name: str, value: Any, allowed: str, owner: str, example: Any, hint: str) -> Exception:
    msg = f"{_prefix(name, value, owner)}: must be {allowed}"
    if example is not None:
        msg += f"; pass e.g. {name}={_show(example)}"
    if hint:
        msg += f" ({hint})"
    return exc(msg)


def number(
    name: str,
    value: Any,
    *,
    minimum: Optional[float] = None,
    strict: bool = False,
    integer: bool = False,
    optional: bool = False,
    owner: str = "",
    unit: str = "",
    example: Any = None,
    hint: str = "",
) -> Any:
    """Check that ``value`` is a finite number (or an integer) in an allowed range.

    The building block of the other validators; use those where they fit.

    Args:
        name: The argument's name, as the caller spells it (``"ready_timeout"``).
        value: The value to check.
        minimum: Smallest allowed value (None: no lower bound).
        strict: True: ``value`` must be greater than ``minimum``; False: at least ``minimum``.
        integer: Only integers are allowed (``int`` or a numpy integer; not ``2.0``).
        optional: None is allowed too.
        owner: Who takes the argument, e.g. ``"LaunchConfig"``; shown as ``owner(name=value)``.
        unit: What the number counts, e.g. ``"seconds"`` or ``"MiB"``; shown in the message.
        example: An allowed value to suggest (``pass e.g. name=example``).
        hint: Extra text appended to the message in parentheses.

    Returns:
        ``value``, unchanged.

    Raises:
        TypeError: ``value`` is not a number (e.g. a bool, a str, or None when not optional).
        ValueError: ``value`` is a number but not allowed (out of range, NaN or infinite, or
            not an integer when ``integer`` is set).
    """
    if optional and value is None:
        return value
    kind = "an integer" if integer else (f"a number of {unit}" if unit else "a number")
    if minimum is not None:
        kind += f" {'>' if strict else '>='} {_show(minimum)}"
    allowed = f"None or {kind}" if optional else kind
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _fail(TypeError, name, value, allowed, owner, example, hint)
    if integer and not isinstance(value, numbers.Integral):
        raise _fail(ValueError, name, value, allowed, owner, example, hint)
    if not isinstance(value, numbers.Integral) and not math.isfinite(value):
        raise _fail(ValueError, name, value, allowed, owner, example, hint)
    if minimum is not None and (value <= minimum if strict else value < minimum):
        raise _fail(ValueError, name, value, allowed, owner, example, hint)
    return value


def positive(name: str, value: Any, *, owner: str = "", unit: str = "", example: Any = None, hint: str = "") -> Any:
    """Check that ``value`` is a finite number > 0 (a timeout, a size).

    Args:
        name: The argument's name.
        value: The value to check.
        owner: Who takes the argument, e.g. ``"LaunchConfig"``.
        unit: What the number counts, e.g. ``"seconds"``.
        example: An allowed value to suggest.
        hint: Extra text for the message.

    Returns:
        ``value``, unchanged.

    Raises:
        TypeError: ``value`` is not a number.
        ValueError: ``value`` is <= 0, NaN or infinite.
    """
    return number(name, value, minimum=0, strict=True, owner=owner, unit=unit, example=example, hint=hint)


def non_negative(name: str, value: Any, *, owner: str = "", unit: str = "", example: Any = None, hint: str = "") -> Any:
    """Check that ``value`` is a finite number >= 0 (a delay, a resource amount).

    Args:
        name: The argument's name.
        value: The value to check.
        owner: Who takes the argument, e.g. ``"LaunchConfig"``.
        unit: What the number counts, e.g. ``"seconds"``.
        example: An allowed value to suggest.
        hint: Extra text for the message.

    Returns:
        ``value``, unchanged.

    Raises:
        TypeError: ``value`` is not a number.
        ValueError: ``value`` is < 0, NaN or infinite.
    """
    return number(name, value, minimum=0, owner=owner, unit=unit, example=example, hint=hint)


def optional_positive(name: str, value: Any, *, owner: str = "", unit: str = "", example: Any = None, hint: str = "") -> Any:
    """Check that ``value`` is None or a finite number > 0.

    Args:
        name: The argument's name.
        value: The value to check.
        owner: Who takes the argument, e.g. ``"LaunchConfig"``.
        unit: What the number counts, e.g. ``"MiB"``.
        example: An allowed value to suggest.
        hint: Extra text for the message.

    Returns:
        ``value``, unchanged.

    Raises:
        TypeError: ``value`` is neither None nor a number.
        ValueError: ``value`` is <= 0, NaN or infinite.
    """
    return number(name, value, minimum=0, strict=True, optional=True, owner=owner, unit=unit, example=example, hint=hint)


def integer(name: str, value: Any, *, minimum: Optional[int] = None, optional: bool = False, owner: str = "",
            example: Any = None, hint: str = "") -> Any:
    """Check that ``value`` is an integer >= ``minimum`` (a count, an id, a seed).

    Args:
        name: The argument's name.
        value: The value to check.
        minimum: Smallest allowed value (None: any integer).
        optional: None is allowed too.
        owner: Who takes the argument, e.g. ``"LaunchConfig"``.
        example: An allowed value to suggest.
        hint: Extra text for the message.

    Returns:
        ``value``, unchanged.

    Raises:
        TypeError: ``value`` is not a number (a bool counts as not a number).
        ValueError: ``value`` is not an integer (e.g. ``1.5`` or ``2.0``) or below ``minimum``.
    """
    return number(name, value, minimum=minimum, integer=True, optional=optional, owner=owner, example=example, hint=hint)


def positive_int(name: str, value: Any, *, owner: str = "", example: Any = None, hint: str = "") -> Any:
    """Check that ``value`` is an integer >= 1.

    Args:
        name: The argument's name.
        value: The value to check.
        owner: Who takes the argument, e.g. ``"LaunchConfig"``.
        example: An allowed value to suggest.
        hint: Extra text for the message.

    Returns:
        ``value``, unchanged.

    Raises:
        TypeError: ``value`` is not a number.
        ValueError: ``value`` is not an integer or < 1.
    """
    return integer(name, value, minimum=1, owner=owner, example=example, hint=hint)


def non_negative_int(name: str, value: Any, *, owner: str = "", example: Any = None, hint: str = "") -> Any:
    """Check that ``value`` is an integer >= 0.

    Args:
        name: The argument's name.
        value: The value to check.
        owner: Who takes the argument, e.g. ``"LaunchConfig"``.
        example: An allowed value to suggest.
        hint: Extra text for the message.

    Returns:
        ``value``, unchanged.

    Raises:
        TypeError: ``value`` is not a number.
        ValueError: ``value`` is not an integer or < 0.
    """
    return integer(name, value, minimum=0, owner=owner, example=example, hint=hint)


def optional_positive_int(name: str, value: Any, *, owner: str = "", example: Any = None, hint: str = "") -> Any:
    """Check that ``value`` is None or an integer >= 1.

    Args:
        name: The argument's name.
        value: The value to check.
        owner: Who takes the argument, e.g. ``"LaunchConfig"``.
        example: An allowed value to suggest.
        hint: Extra text for the message.

    Returns:
        ``value``, unchanged.

    Raises:
        TypeError: ``value`` is neither None nor a number.
        ValueError: ``value`` is not an integer or < 1.
    """
    return integer(name, value, minimum=1, optional=True, owner=owner, example=example, hint=hint)


def one_of(name: str, value: Any, choices: Sequence[Any], *, owner: str = "") -> Any:
    """Check that ``value`` is one of ``choices``.

    Args:
        name: The argument's name.
        value: The value to check.
        choices: The allowed values; the first is suggested as the fix.
        owner: Who takes the argument, e.g. ``"LaunchConfig"``.

    Returns:
        ``value``, unchanged.

    Raises:
        ValueError: ``value`` is not one of ``choices``.
    """
    if not any(type(value) is type(c) and value == c for c in choices):
        allowed = "one of " + ", ".join(repr(c) for c in choices)
        raise _fail(ValueError, name, value, allowed, owner, choices[0] if choices else None, "")
    return value


def resource_amounts(name: str, value: Any, *, owner: str = "", example: Any = None) -> Any:
    """Check that ``value`` maps resource names (str) to amounts (finite numbers >= 0).

    Args:
        name: The argument's name, e.g. ``"resources"``.
        value: The mapping to check.
        owner: Who takes the argument, e.g. ``"LaunchConfig"``.
        example: An allowed mapping to suggest, e.g. ``{"blender": 1}``.

    Returns:
        ``value``, unchanged.

    Raises:
        TypeError: ``value`` is not a mapping, a key is not a str or an amount is not a number.
        ValueError: An amount is negative, NaN or infinite.
    """
    allowed = "a dict of resource name (str) -> amount (a number >= 0)"
    if not isinstance(value, Mapping):
        raise _fail(TypeError, name, value, allowed, owner, example, "")
    for key, amount in value.items():
        if not isinstance(key, str):
            raise _fail(TypeError, name, value, allowed + f"; key {key!r} is not a str", owner, example, "")
        non_negative(f"{name}[{key!r}]", amount, owner=owner)
    return value


def stream_options(
    owner: str,
    *,
    max_items: Any = None,
    timeout: Any = 60.0,
    max_batches_in_flight: Any = 4,
    reconnect_timeout: Any = 120.0,
) -> None:
    """Check the arguments shared by the stream readers (``RemoteIterableDataset``,
    ``BlenderLauncher.dataset()``, ``ReadOptions``).

    Args:
        owner: Who takes the arguments, e.g. ``"RemoteIterableDataset"``.
        max_items: None (no limit) or an integer >= 0.
        timeout: None (wait forever) or seconds > 0 without any item.
        max_batches_in_flight: An integer >= 1.
        reconnect_timeout: Seconds > 0 to wait for a lost instance to be recreated.

    Raises:
        TypeError: An argument is not a number (nor None where None is allowed).
        ValueError: An argument is a number outside its allowed range.
    """
    integer("max_items", max_items, minimum=0, optional=True, owner=owner, example=1000,
            hint="None: until every instance finishes")
    optional_positive("timeout", timeout, owner=owner, unit="seconds", example=60, hint="None waits forever")
    positive_int("max_batches_in_flight", max_batches_in_flight, owner=owner, example=4)
    positive("reconnect_timeout", reconnect_timeout, owner=owner, unit="seconds", example=120)


def _cli_type(check: Callable[[Any], Any], parse: Callable[[str], Any], what: str) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            value = parse(text)
            check(value)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        return value

    convert.__name__ = what
    return convert


def cli_int(minimum: int = 1) -> Callable[[str], int]:
    """An argparse ``type=`` function for an integer >= ``minimum``.

    Args:
        minimum: Smallest allowed value.

    Returns:
        A function that parses the flag's text; on a bad value it raises
        ``argparse.ArgumentTypeError``, which argparse reports as
        ``argument --items: must be an integer >= 1, got '-3'``.
    """
    return _cli_type(lambda v: integer("", v, minimum=minimum), int, f"an integer >= {minimum}")


def cli_positive_float(unit: str = "") -> Callable[[str], float]:
    """An argparse ``type=`` function for a finite number > 0.

    Args:
        unit: What the number counts, e.g. ``"seconds"``; shown in the message.

    Returns:
        A function that parses the flag's text; on a bad value it raises
        ``argparse.ArgumentTypeError``, which argparse reports as
        ``argument --timeout: must be a number of seconds > 0, got '-1'``.
    """
    what = (f"a number of {unit}" if unit else "a number") + " > 0"
    return _cli_type(lambda v: positive("", v), float, what)

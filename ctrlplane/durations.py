"""Human-readable durations such as ``30s``, ``5m`` or ``1h30m``, to and from ``timedelta``.

Durations are ``timedelta`` everywhere inside ctrlplane; these two functions are
the edge where text from files, environment variables and flags is turned into
one, and where one is turned back into text for logs.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta
from decimal import ROUND_HALF_EVEN, Decimal

__all__ = ["format_duration", "parse_duration"]

_HINT = "use a number with a unit such as 30s, 5m, 1h or 7d"

# Largest first: the order in which units must appear in a compound and in
# which format_duration writes them.
_UNIT_MICROSECONDS: dict[str, int] = {
    "d": 86_400_000_000,
    "h": 3_600_000_000,
    "m": 60_000_000,
    "s": 1_000_000,
    "ms": 1_000,
    "us": 1,
}
_UNIT_RANK = {unit: rank for rank, unit in enumerate(_UNIT_MICROSECONDS)}

_NUMBER = r"\d+(?:\.\d+)?"
_PLAIN_NUMBER_RE = re.compile(_NUMBER)
# A number and everything up to the next number: the unit is checked against
# the table afterwards, so "30sec" is reported as an unknown unit "sec" rather
# than read as "30s" followed by garbage.
_PART_RE = re.compile(rf"({_NUMBER})([^\d.]*)")


def parse_duration(text: str | int | float | timedelta) -> timedelta:
    """Parse a duration written for humans into a ``timedelta``.

    Accepted forms:

    * a number with a unit: ``500ms``, ``30s``, ``5m``, ``1h``, ``90d`` (also
      ``us`` for microseconds); the number may have a fraction (``1.5h``);
    * a compound with units largest first, each at most once: ``1h30m``,
      ``2d12h``, ``1s500ms``;
    * a bare number of seconds, as text or as a number: ``"30"``, ``30``,
      ``2.5``;
    * a ``timedelta``, returned unchanged.

    Units are lower case; whitespace around the whole value is ignored.

    Args:
        text: The duration to parse.

    Returns:
        The duration, rounded to the nearest microsecond.

    Raises:
        ValueError: The value is empty, negative, too large, not a finite
            number, has an unknown unit or is otherwise malformed. The message
            says which forms are accepted.
        TypeError: The value is neither text, a number nor a ``timedelta``.
    """
    if isinstance(text, timedelta):
        if text < timedelta(0):
            raise ValueError(f"invalid duration {text!r}: must not be negative")
        return text
    # bool is an int, but "health_interval = true" is a mistake, not one second.
    if isinstance(text, bool) or not isinstance(text, str | int | float):
        raise TypeError(
            f"invalid duration {text!r}: expected text such as 30s, 5m, 1h or 7d, "
            "or a number of seconds"
        )
    if isinstance(text, int | float):
        return _from_seconds(text)
    return _from_text(text)


def format_duration(td: timedelta) -> str:
    """Write ``td`` in the form ``parse_duration`` reads, as briefly as possible.

    Units run from days down to microseconds and zero parts are left out, so
    ``timedelta(minutes=90)`` is ``1h30m`` and ``timedelta(milliseconds=500)``
    is ``500ms``. ``parse_duration(format_duration(td)) == td`` for every
    non-negative ``td``.

    Args:
        td: The duration to format.

    Returns:
        The formatted duration: ``0s`` for zero, and a leading ``-`` for a
        negative duration (which ``parse_duration`` rejects, but a log line
        should still show it).
    """
    if td < timedelta(0):
        return "-" + format_duration(-td)
    remaining = (td.days * 86_400 + td.seconds) * 1_000_000 + td.microseconds
    if remaining == 0:
        return "0s"
    parts: list[str] = []
    for unit, size in _UNIT_MICROSECONDS.items():
        count, remaining = divmod(remaining, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def _from_seconds(seconds: int | float) -> timedelta:
    if isinstance(seconds, float) and not math.isfinite(seconds):
        raise ValueError(f"invalid duration {seconds!r}: {_HINT}")
    if seconds < 0:
        raise ValueError(f"invalid duration {seconds!r}: must not be negative; {_HINT}")
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise ValueError(f"invalid duration {seconds!r}: too large") from None


def _from_text(text: str) -> timedelta:
    stripped = text.strip()
    if stripped.startswith("-"):
        raise ValueError(f"invalid duration {text!r}: must not be negative; {_HINT}")
    if _PLAIN_NUMBER_RE.fullmatch(stripped):
        microseconds = Decimal(stripped) * _UNIT_MICROSECONDS["s"]
        return _from_microseconds(microseconds, text)
    if not stripped:
        raise ValueError(f"invalid duration {text!r}: {_HINT}")

    microseconds = Decimal(0)
    last_rank = -1
    pos = 0
    while pos < len(stripped):
        part = _PART_RE.match(stripped, pos)
        if part is None or not part.group(2):
            raise ValueError(f"invalid duration {text!r}: {_HINT}")
        number, unit = part.groups()
        rank = _UNIT_RANK.get(unit)
        if rank is None:
            raise ValueError(
                f"invalid duration {text!r}: unknown unit {unit!r}; "
                "use d, h, m, s, ms or us, as in 30s, 5m, 1h or 7d"
            )
        # Requiring largest-first, each once, keeps one spelling per duration
        # and catches typos such as "30m1h" or "1m1m".
        if rank <= last_rank:
            raise ValueError(
                f"invalid duration {text!r}: write units largest first and each once, as in 1h30m"
            )
        last_rank = rank
        microseconds += Decimal(number) * _UNIT_MICROSECONDS[unit]
        pos = part.end()
    return _from_microseconds(microseconds, text)


def _from_microseconds(microseconds: Decimal, text: str) -> timedelta:
    whole = int(microseconds.to_integral_value(rounding=ROUND_HALF_EVEN))
    try:
        return timedelta(microseconds=whole)
    except OverflowError:
        raise ValueError(f"invalid duration {text!r}: too large") from None

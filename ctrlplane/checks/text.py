"""Bounds on the text a check stores: what a peer sends is kept short, and says so.

A check's message is stored with every result, shown by ``ctrlplane health``
and published in events, and its words may come from the checked service (an
HTTP reason phrase, a gRPC status's details, a command's output). A peer that
answers with 60,000 characters must not make every stored result that long.
"""

from __future__ import annotations

__all__ = ["MESSAGE_LIMIT", "REASON_LIMIT", "bounded"]

MESSAGE_LIMIT = 2048
"""Characters of a check's message kept, the cut marker included."""

REASON_LIMIT = 256
"""Characters of an HTTP reason phrase kept (a real one is a few words)."""


def bounded(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """``text`` if it has at most ``limit`` characters; else its start and a marker.

    The marker says how much was cut, as in ``... [58,000 more characters]``,
    and counts towards ``limit``, so the result never exceeds it.

    Args:
        text: The text to bound.
        limit: The most characters returned.
    """
    if len(text) <= limit:
        return text
    # Room for the longest marker this text could need (it counts what is cut,
    # which is less than the whole), so the result never exceeds ``limit``.
    keep = max(0, limit - len(_marker(len(text))))
    return text[:keep] + _marker(len(text) - keep)


def _marker(cut: int) -> str:
    return f"... [{cut:,} more characters]"

"""Clipping stored and published text: a leaf module (standard library only).

The bus (dead-letter reasons, ``worker.failed`` errors) and the store (run
errors and trigger refs) both keep text that came from outside; both clip it
the same way, with a marker saying how much was cut.
"""

from __future__ import annotations

__all__ = ["clip"]


def clip(text: str, limit: int) -> str:
    """``text``, or its first ``limit`` characters and a marker saying how much was cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... [cut {len(text) - limit} characters]"

"""Shared rules of the JSON Schemas we publish (``ctrlplane schema events|api``)."""

from __future__ import annotations

from typing import Any

_NULL = {"type": "null"}


def without_null(node: Any) -> Any:
    """``node`` with null taken out of every ``anyOf`` (and null defaults dropped).

    msgspec writes ``X | None`` as nullable; the rule of our events and API
    is that a field with no value is absent, never null.
    """
    if isinstance(node, list):
        return [without_null(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: without_null(value) for key, value in node.items()}
    options = out.get("anyOf")
    if isinstance(options, list) and _NULL in options:
        out.pop("anyOf")
        kept = [option for option in options if option != _NULL]
        if len(kept) == 1:
            out = {**kept[0], **out}
        else:
            out["anyOf"] = kept
        if "default" in out and out["default"] is None:
            del out["default"]
    return out

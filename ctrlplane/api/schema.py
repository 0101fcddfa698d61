"""``ctrlplane schema api``: one JSON Schema (draft 2020-12) of the whole control API.

The document describes, per endpoint, an object with its ``subject`` (a
``const``), ``access``, ``request``, ``reply`` and ``error`` schemas, so a
client finds everything with standard keywords only (no vendor keywords: a
strict validator compiles it). Request and reply schemas come from the
Structs, with every duration turned into a number of seconds as on the wire.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import msgspec
from msgspec import inspect

from ctrlplane.api.endpoints import ENDPOINTS, SERVICE_NAME
from ctrlplane.api.errors import CODE_HEADER, MESSAGE_HEADER, ErrorBody
from ctrlplane.bus.subjects import API_VERSION, Subjects
from ctrlplane.schemas import without_null

__all__ = ["DRAFT", "api_schema"]

DRAFT = "https://json-schema.org/draft/2020-12/schema"

_DURATION = "A duration in seconds (a JSON number, fractions allowed)."


def api_schema(subjects: Subjects | None = None) -> dict[str, Any]:
    """The JSON Schema of every endpoint's subject, request, reply and error body.

    Args:
        subjects: Whose subjects to write; the default prefix ``ctrlplane`` by default.
    """
    s = subjects or Subjects()
    types: list[Any] = [ErrorBody]
    for e in ENDPOINTS:
        types += [e.request, e.reply]
    refs, components = msgspec.json.schema_components(types, ref_template="#/$defs/{name}")
    components = {name: without_null(_seconds(schema)) for name, schema in components.items()}
    for struct, names in _timestamp_fields(types).items():
        properties = components.get(struct, {}).get("properties", {})
        for name in names:
            properties[name] = _date_time(properties[name])
    ref = dict(zip([t.__name__ for t in types], refs, strict=True))
    error_ref = ref[ErrorBody.__name__]
    endpoints: dict[str, Any] = {}
    for e in ENDPOINTS:
        endpoints[e.name] = {
            "type": "object",
            "description": e.description,
            "properties": {
                "subject": {"const": s.api(e.name)},
                "access": {"enum": ["admin"] if e.mutating else ["observer", "admin"]},
                "answers": {"const": "every process" if e.scatter else "one process"},
                "request": ref[e.request.__name__],
                "reply": ref[e.reply.__name__],
                "error": error_ref,
            },
        }
    return {
        "$schema": DRAFT,
        "title": f"{SERVICE_NAME} control API {API_VERSION}",
        "description": (
            f"NATS micro service {SERVICE_NAME!r}: send a request (JSON object; an empty body "
            f"is {{}}) to the endpoint's subject. A success answers the reply schema; an error "
            f"sets the {MESSAGE_HEADER} and {CODE_HEADER} headers and answers the error schema. "
            "Durations are seconds (numbers); timestamps are RFC 3339."
        ),
        "$comment": (
            "properties.<endpoint> describes one endpoint: its subject, who may call it, "
            "how many processes answer, and its request, reply and error bodies."
        ),
        "type": "object",
        "properties": endpoints,
        "$defs": components,
    }


def _timestamp_fields(types: list[Any]) -> dict[str, set[str]]:
    """Struct name to the fields that hold a ``datetime`` (alone, optional or in a list).

    msgspec writes ``format: date-time`` only for datetimes declared
    timezone-aware; ours are all aware (UTC) but not all declared so, and a
    plain string cannot be told from a timestamp in the generated schema.
    """
    found: dict[str, set[str]] = {}
    seen: set[type] = set()

    def holds_datetime(t: Any) -> bool:
        if isinstance(t, inspect.DateTimeType):
            return True
        if isinstance(t, inspect.UnionType):
            return any(holds_datetime(u) for u in t.types)
        if isinstance(t, inspect.ListType):
            return holds_datetime(t.item_type)
        return False

    def visit(t: Any) -> None:
        if isinstance(t, inspect.StructType):
            if t.cls in seen:
                return
            seen.add(t.cls)
            for f in t.fields:
                if holds_datetime(f.type):
                    found.setdefault(t.cls.__name__, set()).add(f.encode_name)
                visit(f.type)
        elif isinstance(t, inspect.UnionType):
            for u in t.types:
                visit(u)
        elif isinstance(t, inspect.ListType | inspect.SetType | inspect.FrozenSetType):
            visit(t.item_type)
        elif isinstance(t, inspect.DictType):
            visit(t.value_type)
        elif isinstance(t, inspect.VarTupleType):
            visit(t.item_type)
        elif isinstance(t, inspect.TupleType):
            for u in t.item_types:
                visit(u)

    for t in inspect.multi_type_info(types):
        visit(t)
    return found


def _date_time(schema: Any) -> Any:
    """A field's schema with ``format: date-time`` on its string form(s)."""
    if isinstance(schema, dict):
        if schema.get("type") == "string":
            return {**schema, "format": "date-time"}
        return {k: _date_time(v) if k in ("anyOf", "items") else v for k, v in schema.items()}
    if isinstance(schema, list):
        return [_date_time(s) for s in schema]
    return schema


def _seconds(schema: Any) -> Any:
    """``schema`` with msgspec's ISO 8601 duration strings made numbers of seconds."""
    if isinstance(schema, list):
        return [_seconds(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    if schema.get("type") == "string" and schema.get("format") == "duration":
        out: dict[str, Any] = {"type": "number", "description": _DURATION}
        if "default" in schema:
            default = msgspec.json.decode(msgspec.json.encode(schema["default"]), type=timedelta)
            out["default"] = default.total_seconds()
        if "description" in schema:
            out["description"] = f"{schema['description']} {_DURATION}"
        return out
    return {k: _seconds(v) for k, v in schema.items()}

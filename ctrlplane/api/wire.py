"""The control API's JSON: durations as seconds (JSON numbers), timestamps RFC 3339.

Inside ctrlplane durations are ``timedelta``; msgspec would write them as
ISO 8601 strings. Events carry float seconds, so the API does too: this module
is the edge where one is turned into the other, both ways, and where a
request body is checked against its Struct (an empty body is ``{}``).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, TypeVar

import msgspec
from msgspec import inspect

from ctrlplane.api.errors import BadRequestError
from ctrlplane.bus.codec import decode
from ctrlplane.bus.errors import DecodeError

__all__ = ["decode_body", "encode_body", "to_wire"]

T = TypeVar("T")

_encoder = msgspec.json.Encoder()


def to_wire(value: object) -> Any:
    """``value`` as JSON-ready builtins, every ``timedelta`` as float seconds and
    every field with no value (None) left out: absent, never null, as in events."""
    return _seconds(msgspec.to_builtins(value, builtin_types=(timedelta,)))


def encode_body(value: object) -> bytes:
    """The JSON of a reply (or a request), durations in seconds."""
    return _encoder.encode(to_wire(value))


def _seconds(value: Any) -> Any:
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, dict):
        return {k: _seconds(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_seconds(v) for v in value]
    return value


def decode_body(payload: bytes, type_: type[T], subject: str) -> T:
    """Decode a request (or reply) body as ``type_``; an empty body is ``{}``.

    Durations must be JSON numbers of seconds; anything else where one is
    expected, an unknown field (request Structs forbid them), a value out of
    range, or bytes that are not one JSON object, is a bad request.

    Raises:
        BadRequestError: with msgspec's reason, the path included.
    """
    if not payload.strip():
        payload = b"{}"
    try:
        raw = decode(payload, dict[str, Any], subject)
    except DecodeError as exc:
        raise BadRequestError(subject, exc.reason) from None
    try:
        converted = _durations(raw, inspect.type_info(type_), "$")
        result: T = msgspec.convert(converted, type_)
    except BadRequestError:
        raise
    except msgspec.ValidationError as exc:
        raise BadRequestError(subject, str(exc)) from None
    except Exception as exc:  # untrusted input: RecursionError, OverflowError, ...
        raise BadRequestError(subject, f"{type(exc).__name__}: {exc}") from None
    return result


def _durations(value: Any, info: inspect.Type, path: str) -> Any:
    """``value`` with every number where ``info`` wants a ``timedelta`` made one.

    A string there is refused: the API has one duration encoding, seconds.
    """
    if isinstance(info, inspect.TimeDeltaType):
        if isinstance(value, bool) or not isinstance(value, int | float):
            if isinstance(value, str):
                raise msgspec.ValidationError(
                    f"Expected a duration in seconds (a JSON number), got `str` - at `{path}`"
                )
            return value  # msgspec names the wrong type
        try:
            return timedelta(seconds=value)
        except OverflowError:
            raise msgspec.ValidationError(
                f"duration of {value} seconds is out of range - at `{path}`"
            ) from None
    if isinstance(info, inspect.UnionType):
        for t in info.types:
            if isinstance(t, inspect.TimeDeltaType) and isinstance(value, int | float | str):
                return _durations(value, t, path)
        for t in info.types:
            if isinstance(t, inspect.StructType | inspect.DataclassType) and isinstance(
                value, dict
            ):
                return _durations(value, t, path)
            if isinstance(t, inspect.ListType) and isinstance(value, list):
                return _durations(value, t, path)
        return value
    if isinstance(info, inspect.StructType | inspect.DataclassType) and isinstance(value, dict):
        fields = {f.encode_name: f.type for f in info.fields}
        return {
            k: _durations(v, fields[k], f"{path}.{k}") if k in fields else v
            for k, v in value.items()
        }
    if isinstance(info, inspect.ListType | inspect.SetType | inspect.FrozenSetType) and isinstance(
        value, list
    ):
        return [_durations(v, info.item_type, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(info, inspect.DictType) and isinstance(value, dict):
        return {k: _durations(v, info.value_type, f"{path}.{k}") for k, v in value.items()}
    return value

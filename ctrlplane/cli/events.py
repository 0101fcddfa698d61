"""``ctrlplane events`` (read the event stream) and ``ctrlplane schema events``."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import click

from ctrlplane.bus.subjects import is_valid_event_pattern
from ctrlplane.cli.common import (
    EXIT_CONFIG,
    connection_options,
    echo_json,
    fail,
    json_option,
    load,
    print_table,
    with_bus,
)
from ctrlplane.cli.terminal import visible
from ctrlplane.durations import parse_duration
from ctrlplane.errors import CtrlplaneError

if TYPE_CHECKING:
    from nats.aio.msg import Msg

    from ctrlplane.bus.connection import Bus

DEFAULT_SINCE = "1h"
FETCH_WAIT = 1.0
"""Seconds one fetch waits for events; with --follow, a quiet one just fetches again."""


@click.command()
@connection_options
@click.option("--follow", "-F", is_flag=True, help="Keep printing new events until Ctrl-C.")
@click.option(
    "--type",
    "pattern",
    default=">",
    show_default=True,
    help="Event type, with wildcards * and >; a type without a wildcard matches itself and "
    "every type under it (health matches health.failed).",
)
@click.option(
    "--instance",
    default=None,
    help="Only events about this instance (its name or id).",
)
@click.option(
    "--since",
    default=None,
    help=f"How far back to start, e.g. 10m (default {DEFAULT_SINCE}; "
    "with --follow and no --since, from now).",
)
@json_option
def events(
    config_path: Path | None,
    nats_url: str | None,
    data_dir: Path | None,
    follow: bool,
    pattern: str,
    instance: str | None,
    since: str | None,
    as_json: bool,
) -> None:
    """Print events from the event stream, oldest first."""
    if not is_valid_event_pattern(pattern):
        fail(f"--type {pattern!r} is not an event type pattern", EXIT_CONFIG)
    start: datetime | None = None
    if since is not None or not follow:
        try:
            start = datetime.now(UTC) - parse_duration(since or DEFAULT_SINCE)
        except ValueError as exc:
            fail(f"--since: {exc}", EXIT_CONFIG)
    import nats.js.errors
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    config = load(config_path, nats_url=nats_url, data_dir=data_dir)

    async def read(bus: Bus) -> None:
        s = bus.subjects
        filters = [s.event(p) for p in type_filters(pattern)]
        try:
            # Created without a name (the server picks one) and then bound:
            # the observer role may create only such consumers, never a named
            # one that could rewrite a worker's.
            consumer = await bus.js.add_consumer(
                s.events_stream,
                ConsumerConfig(
                    filter_subject=filters[0] if len(filters) == 1 else None,
                    filter_subjects=filters if len(filters) > 1 else None,
                    deliver_policy=DeliverPolicy.BY_START_TIME if start else DeliverPolicy.NEW,
                    opt_start_time=start,
                    ack_policy=AckPolicy.NONE,
                    # The server drops this consumer soon after we are gone.
                    inactive_threshold=30,
                ),
            )
            sub = await bus.js.pull_subscribe_bind(consumer.name, stream=s.events_stream)
        except nats.js.errors.NotFoundError:
            raise CtrlplaneError(
                f"no event stream {s.events_stream} on this NATS: has `ctrlplane run` run here?"
            ) from None
        try:
            await print_events(sub, follow=follow, as_json=as_json, instance=instance)
        finally:
            await sub.unsubscribe()

    with_bus(config, read)


def type_filters(pattern: str) -> list[str]:
    """The event types ``--type pattern`` reads: a pattern with a wildcard as it is,
    a plain type as itself and everything under it (``health``: ``health``, ``health.>``)."""
    tokens = pattern.split(".")
    if "*" in tokens or ">" in tokens:
        return [pattern]
    return [pattern, f"{pattern}.>"]


HEADER = ["TIME", "TYPE", "SUBJECT", "SOURCE", "DATA"]
FOLLOW_WIDTHS = (32, 24, 20, 24)
"""Column widths while following, when the widest cell is not known in advance."""


class _Fetcher(Protocol):
    async def fetch(self, batch: int, timeout: float | None) -> list[Msg]: ...  # noqa: ASYNC109


async def print_events(
    sub: _Fetcher, *, follow: bool, as_json: bool, instance: str | None = None
) -> None:
    """Print what ``sub`` fetches until it has no more or, with ``follow``, until cancelled.

    As a table: without ``follow`` aligned to the widest cell once all are read;
    with it, in fixed widths as events come. Only events about ``instance``
    (its name or id), when given.
    """
    rows: list[list[str]] = []
    if follow and not as_json:
        _echo_fixed(HEADER)
    while True:
        try:
            msgs = await sub.fetch(256, timeout=FETCH_WAIT)
        # nats-py raises its own TimeoutError or, when the wait runs out
        # between its two pull requests, the builtin one (asyncio's); the
        # former derives from the latter.
        except TimeoutError:
            if follow:
                continue
            break
        for msg in msgs:
            row = _row(msg.subject, msg.data, instance)
            if row is None:
                continue
            if as_json:
                # The payload as published: already JSON.
                echo_json(msg.data.decode(errors="replace"))
            elif follow:
                _echo_fixed(row)
            else:
                rows.append(row)
            sys.stdout.flush()
        if not follow and msgs[-1].metadata.num_pending == 0:
            break
    if not as_json:
        print_table(HEADER, rows)


def _row(subject: str, payload: bytes, instance: str | None) -> list[str] | None:
    """The table row of one event, or None when it is not about ``instance``."""
    from ctrlplane.bus.codec import decode_event
    from ctrlplane.bus.errors import DecodeError

    try:
        ev = decode_event(payload, subject)
    except DecodeError as exc:
        if instance is not None:
            return None
        return ["-", subject.split(".events.", 1)[-1], "-", "-", f"undecodable: {exc.reason}"]
    if instance is not None and instance not in (ev.subject, ev.instance_id):
        return None
    data = json.dumps(ev.data, separators=(",", ":"), default=str)
    # The CloudEvents subject (an instance's name, a hostname) reads
    # better than an instance id; older events have only the id.
    about = ev.subject or ev.instance_id or "-"
    return [ev.time.isoformat(), ev.type, about, ev.source, data]


def _echo_fixed(row: list[str]) -> None:
    cells = [visible(c) for c in row]
    padded = [c.ljust(w) for c, w in zip(cells, FOLLOW_WIDTHS, strict=False)]
    click.echo("  ".join([*padded, *cells[len(FOLLOW_WIDTHS) :]]).rstrip())


@click.group()
def schema() -> None:
    """Print JSON Schemas of what ctrlplane publishes."""


@schema.command(name="events")
def schema_events() -> None:
    """The JSON Schema (draft 2020-12) of every event: the CloudEvents 1.0
    envelope, each built-in type tied to the schema of its data."""
    from ctrlplane.events import event_schema

    echo_json(json.dumps(event_schema(), indent=2, sort_keys=True))


@schema.command(name="api")
@click.option(
    "--prefix",
    default="ctrlplane",
    show_default=True,
    help="The subject prefix to write the endpoints' subjects with.",
)
def schema_api(prefix: str) -> None:
    """The JSON Schema of the control API: each endpoint's subject, request, reply and error."""
    from ctrlplane.api.schema import api_schema
    from ctrlplane.bus.subjects import Subjects

    try:
        subjects = Subjects(prefix)
    except ValueError as exc:
        fail(f"--prefix: {exc}", EXIT_CONFIG)
    echo_json(json.dumps(api_schema(subjects), indent=2, sort_keys=True))

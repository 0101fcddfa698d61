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
    echo,
    echo_json,
    fail,
    json_option,
    load,
    with_bus,
)
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
    "--type", "pattern", default=">", show_default=True, help="Event type; wildcards * and >."
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
        try:
            # Created without a name (the server picks one) and then bound:
            # the observer role may create only such consumers, never a named
            # one that could rewrite a worker's.
            consumer = await bus.js.add_consumer(
                s.events_stream,
                ConsumerConfig(
                    filter_subject=s.event(pattern),
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
            await print_events(sub, follow=follow, as_json=as_json)
        finally:
            await sub.unsubscribe()

    with_bus(config, read)


class _Fetcher(Protocol):
    async def fetch(self, batch: int, timeout: float | None) -> list[Msg]: ...  # noqa: ASYNC109


async def print_events(sub: _Fetcher, *, follow: bool, as_json: bool) -> None:
    """Print what ``sub`` fetches until it has no more or, with ``follow``, until cancelled."""
    while True:
        try:
            msgs = await sub.fetch(256, timeout=FETCH_WAIT)
        # nats-py raises its own TimeoutError or, when the wait runs out
        # between its two pull requests, the builtin one (asyncio's); the
        # former derives from the latter.
        except TimeoutError:
            if follow:
                continue
            return
        for msg in msgs:
            _print(msg.subject, msg.data, as_json)
        if not follow and msgs[-1].metadata.num_pending == 0:
            return


def _print(subject: str, payload: bytes, as_json: bool) -> None:
    if as_json:
        # The payload as published: already JSON.
        echo_json(payload.decode(errors="replace"))
    else:
        from ctrlplane.bus.codec import decode_event
        from ctrlplane.bus.errors import DecodeError

        try:
            ev = decode_event(payload, subject)
        except DecodeError as exc:
            echo(f"{subject}: undecodable: {exc.reason}")
        else:
            data = json.dumps(ev.data, separators=(",", ":"), default=str)
            # The CloudEvents subject (an instance's name, a hostname) reads
            # better than an instance id; older events have only the id.
            about = ev.subject or ev.instance_id or "-"
            echo(f"{ev.time.isoformat()}  {ev.type:<20} {about:<16} {ev.source}  {data}")
    sys.stdout.flush()


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

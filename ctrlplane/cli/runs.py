"""``ctrlplane runs``: the run history the workers record in ``worker_runs``."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import click

from ctrlplane.cli.common import (
    EXIT_CONFIG,
    ago,
    ask,
    connection_options,
    echo_json,
    fail,
    json_option,
    load,
    print_table,
)
from ctrlplane.durations import format_duration, parse_duration
from ctrlplane.limits import MAX_LIMIT, MAX_SINCE

DEFAULT_SINCE = "1h"
OUTCOMES = ("ok", "error", "timeout", "cancelled", "skipped", "retry", "dead_lettered")
"""The values of ``ctrlplane.store.runs.Outcome``, spelt out: ``--help`` must not
load the store (a test checks that they agree)."""
ERROR_WIDTH = 60
"""Characters of a run's error the table shows (``--json`` has all of it)."""


def since_option(text: str) -> timedelta:
    """``--since`` as a look-back: a duration (``10m``, ``2h``) from zero to 36500 days."""
    try:
        window = parse_duration(text)
    except ValueError as exc:
        fail(f"--since: {exc}", EXIT_CONFIG)
    if window > MAX_SINCE:
        fail(f"--since: must be at most {format_duration(MAX_SINCE)}, got {text!r}", EXIT_CONFIG)
    return window


def _took(duration: timedelta | None) -> str:
    if duration is None:
        return "-"
    return format_duration(timedelta(milliseconds=round(duration.total_seconds() * 1000)))


@click.command()
@click.argument("worker", required=False)
@click.option(
    "--since",
    default=DEFAULT_SINCE,
    show_default=True,
    help="Runs started this long ago or later, e.g. 10m, 2h, 7d.",
)
@click.option(
    "--outcome",
    type=click.Choice(OUTCOMES),
    help="Only runs that ended so.",
)
@click.option("--limit", type=click.IntRange(min=1, max=MAX_LIMIT), default=100, show_default=True)
@connection_options
@json_option
def runs(
    worker: str | None,
    since: str,
    outcome: str | None,
    limit: int,
    config_path: Path | None,
    nats_url: str | None,
    data_dir: Path | None,
    as_json: bool,
) -> None:
    """List worker runs, newest first: process, trigger, start, duration, outcome, error."""

    from ctrlplane.api import RunsReply, RunsRequest
    from ctrlplane.api.wire import encode_body
    from ctrlplane.store.runs import Outcome

    window = since_option(since)
    config = load(config_path, nats_url=nats_url, data_dir=data_dir)
    body = RunsRequest(
        worker=worker,
        since=window,
        outcome=None if outcome is None else Outcome(outcome),
        limit=limit,
    )
    reply = ask(config, "runs", body, RunsReply)
    if as_json:
        echo_json(encode_body(reply.runs).decode())
        return
    print_table(
        ["STARTED", "WORKER", "PROCESS", "TRIGGER", "REF", "ATTEMPT", "TOOK", "OUTCOME", "ERROR"],
        [
            [
                ago(r.started),
                r.worker,
                r.process,
                r.trigger.value,
                r.ref or "-",
                str(r.attempt),
                _took(r.duration),
                r.outcome.value,
                # One line: a traceback's first line says what went wrong.
                (r.error or "").split("\n", 1)[0][:ERROR_WIDTH],
            ]
            for r in reply.runs
        ],
    )

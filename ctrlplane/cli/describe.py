"""``ctrlplane describe instance NAME``: one instance in full, like ``kubectl describe``."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ctrlplane.cli.common import (
    EXIT_CONFIG,
    ago,
    ask,
    connection_options,
    echo,
    echo_json,
    fail,
    json_option,
    load,
)
from ctrlplane.cli.terminal import visible
from ctrlplane.durations import format_duration

if TYPE_CHECKING:
    from ctrlplane.api.messages import DescribeReply

DEFAULT_EVENTS = 10
INDENT = "  "


@click.group()
def describe() -> None:
    """Show one thing in full: its spec, its state and what happened to it lately."""


@describe.command(name="instance")
@click.argument("name")
@click.option(
    "--events",
    "events",
    type=click.IntRange(min=0, max=100),
    default=DEFAULT_EVENTS,
    show_default=True,
    help="How many of its newest events to show.",
)
@connection_options
@json_option
def describe_instance(
    name: str,
    events: int,
    config_path: Path | None,
    nats_url: str | None,
    data_dir: Path | None,
    as_json: bool,
) -> None:
    """Instance NAME (or id): spec, node, state, process and uptime, restarts,
    checks with their last results, its newest deployment and its recent events."""
    from ctrlplane.api.messages import DescribeReply, DescribeRequest
    from ctrlplane.api.wire import encode_body

    config = load(config_path, nats_url=nats_url, data_dir=data_dir)
    try:
        body = DescribeRequest(instance=name, events=events)
    except ValueError as exc:
        fail(str(exc), EXIT_CONFIG)
    # An unknown name is a 404 naming the closest one: ask prints it and exits 1.
    reply = ask(config, "describe", body, DescribeReply)
    if as_json:
        echo_json(encode_body(reply).decode())
        return
    for line in render(reply, now=datetime.now(UTC)):
        echo(line)


def render(d: DescribeReply, *, now: datetime) -> list[str]:
    """The human form: labelled fields, then sections with aligned tables."""
    out = _fields(
        [
            ("Name", d.name),
            ("ID", d.id),
            ("Provider", d.provider),
            ("Node", d.node or "-"),
            ("State", d.state.value + (f" ({d.state_error})" if d.state_error else "")),
            ("Desired", d.desired.value),
            ("Health", d.health.value),
            ("PID", "-" if d.pid is None else str(d.pid)),
            ("Started", _when(d.started, now)),
            ("Uptime", "-" if d.uptime is None else format_duration(_whole(d.uptime))),
            ("Restarts", _restarts(d, now)),
            ("Created", _when(d.created, now)),
            ("Updated", _when(d.updated, now)),
        ]
    )
    spec = d.spec
    out.append("Spec:")
    out += _fields(
        [
            ("Command", json.dumps(spec.command)),
            ("Env", ", ".join(f"{k}={v}" for k, v in sorted(spec.env.items())) or "-"),
            ("Cwd", spec.cwd or "-"),
            ("Ports", ", ".join(str(p) for p in spec.ports) or "-"),
            ("Metrics URL", spec.metrics_url or "-"),
            ("Spec hash", d.spec_hash),
        ],
        indent=INDENT,
    )
    out.append("Deployment:")
    if d.deployment is None:
        out.append(f"{INDENT}<none>")
    else:
        dep = d.deployment
        out += _fields(
            [
                ("ID", dep.id),
                ("State", dep.state.value),
                ("Spec hash", dep.spec_hash),
                ("Started", _when(dep.started, now)),
                ("Finished", _when(dep.finished, now)),
                ("Error", dep.error or "-"),
            ],
            indent=INDENT,
        )
    out.append("Checks:")
    out += _table(
        ["NAME", "TYPE", "STATUS", "LATENCY", "CHECKED", "CHANGED", "PASSES", "FAILS", "OUTPUT"],
        [
            [
                c.check,
                c.type,
                c.status.value,
                _millis(c.last_latency),
                ago(c.last_checked),
                ago(c.changed),
                str(c.consecutive_passes),
                str(c.consecutive_failures),
                # The last column: the output or error in full.
                c.last_message or "",
            ]
            for c in d.checks
        ],
    )
    out.append("Events:")
    out += _table(
        ["TIME", "TYPE", "SOURCE", "DATA"],
        [
            [
                ago(e.time),
                e.type,
                e.source,
                json.dumps(e.data, separators=(",", ":"), default=str),
            ]
            for e in d.events
        ],
    )
    return out


def _restarts(d: DescribeReply, now: datetime) -> str:
    if d.last_restart is None:
        return str(d.restarts)
    return f"{d.restarts} (last {_when(d.last_restart, now)})"


def _fields(pairs: list[tuple[str, str]], *, indent: str = "") -> list[str]:
    width = max(len(label) for label, _ in pairs) + 1
    return [f"{indent}{(label + ':').ljust(width)}  {visible(value)}" for label, value in pairs]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    if not rows:
        return [f"{INDENT}<none>"]
    cells = [[visible(c) for c in row] for row in rows]
    widths = [max(len(c) for c in col) for col in zip(header, *cells, strict=False)]
    return [
        (INDENT + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False))).rstrip()
        for row in [header, *cells]
    ]


def _when(at: datetime | None, now: datetime) -> str:
    if at is None:
        return "-"
    return f"{at.isoformat(timespec='seconds')} ({_ago(at, now)})"


def _ago(at: datetime, now: datetime) -> str:
    delta = (at - now).total_seconds()
    text = format_duration(timedelta(seconds=round(abs(delta))))
    return f"in {text}" if delta > 0 else f"{text} ago"


def _whole(td: timedelta) -> timedelta:
    return timedelta(seconds=round(td.total_seconds()))


def _millis(td: timedelta | None) -> str:
    return "-" if td is None else f"{td.total_seconds() * 1000:.0f}ms"

"""``ctrlplane telemetry``: an instance's latest resource snapshot and metrics."""

from __future__ import annotations

from datetime import timedelta
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
    print_table,
)
from ctrlplane.durations import format_duration, parse_duration
from ctrlplane.limits import MAX_SINCE

if TYPE_CHECKING:
    from ctrlplane.store.telemetry import Metric, ResourceSnapshot

DEFAULT_SINCE = "10m"


@click.command()
@click.argument("instance")
@click.option(
    "--since",
    default=DEFAULT_SINCE,
    show_default=True,
    help="Show metrics collected within this long, e.g. 1h.",
)
@connection_options
@json_option
def telemetry(
    instance: str,
    since: str,
    config_path: Path | None,
    nats_url: str | None,
    data_dir: Path | None,
    as_json: bool,
) -> None:
    """INSTANCE's latest resource snapshot and the latest value of each metric.

    INSTANCE is a name or an id. A metric is one series: a name and its labels.
    """
    try:
        window = parse_duration(since)
    except ValueError as exc:
        fail(f"--since: {exc}", EXIT_CONFIG)
    if window <= timedelta(0):
        fail(f"--since: must be greater than zero, got {since!r}", EXIT_CONFIG)
    if window > MAX_SINCE:
        fail(f"--since: must be at most {format_duration(MAX_SINCE)}, got {since!r}", EXIT_CONFIG)

    from ctrlplane.api import TelemetryReply, TelemetryRequest
    from ctrlplane.api.wire import encode_body

    config = load(config_path, nats_url=nats_url, data_dir=data_dir)
    body = TelemetryRequest(instance=instance, since=window)
    reply = ask(config, "telemetry", body, TelemetryReply)
    if as_json:
        shown = {
            "instance": reply.instance,
            "instance_id": reply.instance_id,
            "snapshot": reply.snapshot,
            "metrics": reply.metrics,
        }
        echo_json(encode_body(shown).decode())
        return
    echo(f"instance {reply.instance} ({reply.instance_id})")
    echo(_snapshot(reply.snapshot))
    if not reply.metrics:
        echo(f"no metrics in the last {since}")
        return
    echo()
    print_table(
        ["METRIC", "TYPE", "VALUE", "COLLECTED"],
        [[_series(m), m.type.value, _number(m.value), ago(m.time)] for m in reply.metrics],
    )


def _snapshot(s: ResourceSnapshot | None) -> str:
    if s is None:
        return "no resource snapshot yet"
    parts = [
        f"{s.processes} process{'es' if s.processes != 1 else ''}",
        f"cpu {s.cpu_percent:.1f}%",
        f"memory {_bytes(s.memory_rss)}",
        f"{s.threads} thread{'s' if s.threads != 1 else ''}",
    ]
    if s.open_files is not None:
        parts.append(f"{s.open_files} open files")
    if s.read_bytes is not None and s.write_bytes is not None:
        parts.append(f"read {_bytes(s.read_bytes)}, written {_bytes(s.write_bytes)}")
    return f"resources ({ago(s.time)}): {', '.join(parts)}"


def _series(m: Metric) -> str:
    """``name{key="value",...}``, as Prometheus writes a series."""
    if not m.labels:
        return m.name
    import msgspec

    labels = ",".join(f"{k}={msgspec.json.encode(v).decode()}" for k, v in sorted(m.labels.items()))
    return f"{m.name}{{{labels}}}"


def _number(value: float) -> str:
    return format(value, ".15g")


def _bytes(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    size = n / 1024
    for unit in ("KiB", "MiB"):
        if size < 1024:
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"

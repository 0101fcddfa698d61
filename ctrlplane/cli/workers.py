"""``ctrlplane workers``: every worker of every running process."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ctrlplane.cli.common import (
    ago,
    connection_options,
    echo_json,
    fail,
    json_option,
    load,
    print_table,
    with_bus,
)
from ctrlplane.durations import format_duration

if TYPE_CHECKING:
    from ctrlplane.actors.control import WorkersReply
    from ctrlplane.actors.info import WorkerInfo
    from ctrlplane.bus.connection import Bus


@click.command()
@connection_options
@json_option
@click.option(
    "--wait", type=float, default=2.0, show_default=True, help="Seconds to wait for answers."
)
def workers(
    config_path: Path | None,
    nats_url: str | None,
    data_dir: Path | None,
    as_json: bool,
    wait: float,
) -> None:
    """List every worker of every running process on that NATS."""

    from ctrlplane.api.client import list_workers
    from ctrlplane.api.wire import encode_body

    config = load(config_path, nats_url=nats_url, data_dir=data_dir)

    async def ask(bus: Bus) -> list[WorkersReply]:
        return await list_workers(bus, within=timedelta(seconds=wait))

    replies = with_bus(config, ask)
    infos = [w for r in replies for w in r.workers]
    if as_json:
        echo_json(encode_body(infos).decode())
        return
    if not replies:
        fail("no ctrlplane process answered on this NATS")
    print_table(
        [
            "PROCESS",
            "WORKER",
            "KIND",
            "SCOPE",
            "INTERVAL",
            "SCHEDULE",
            "RUNNING",
            "PAUSED",
            "RUNS",
            "ERRORS",
            "DEAD LETTERS",
            "LAST RUN",
            "NEXT RUN",
            "LAST ERROR",
        ],
        [
            [
                w.process,
                w.name,
                w.kind.value,
                # A node-scoped worker runs once per node: say whose runs this is.
                w.scope.value if w.node is None else f"{w.scope.value}:{w.node}",
                format_duration(w.interval) if w.interval else "-",
                _schedule(w),
                "yes" if w.running else "no",
                "yes" if w.paused else "no",
                str(w.run_count),
                _errors(w),
                # Refused (poison) messages are no failed runs, but an
                # operator must see a worker that keeps refusing them.
                str(w.dead_letter_count),
                ago(w.last_run),
                _next_run(w.next_run),
                (w.last_error or "")[:60],
            ]
            for w in infos
        ],
    )


def _next_run(when: datetime | None) -> str:
    """``in 4s``, or ``due`` for a tick due now or overdue (never ``0s ago``)."""
    if when is not None and (when - datetime.now(UTC)).total_seconds() < 0.5:
        return "due"
    return ago(when)


def _schedule(w: WorkerInfo) -> str:
    """``30 2 * * * Europe/Berlin`` for a worker on a cron schedule, else ``-``."""
    if w.schedule is None:
        return "-"
    return f"{w.schedule} {w.timezone or 'UTC'}"


def _errors(w: WorkerInfo) -> str:
    """The count of failed runs and, once there is one, when the last was:
    LAST ERROR is empty again after a success, the count is not."""
    if w.error_count and w.last_error_at is not None:
        return f"{w.error_count} (last {ago(w.last_error_at)})"
    return str(w.error_count)

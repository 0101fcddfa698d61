"""``ctrlplane deployments``: each start of an instance on a new spec, and how it went."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import click
import msgspec

from ctrlplane.api import DeploymentsReply, DeploymentsRequest, request
from ctrlplane.bus.connection import Bus
from ctrlplane.cli.common import ago, connection_options, json_option, load, print_table, with_bus
from ctrlplane.durations import format_duration

READ_WAIT = 10.0


def _took(started: datetime, finished: datetime | None) -> str:
    if finished is None:
        return "-"
    millis = round((finished - started).total_seconds() * 1000)
    return format_duration(timedelta(milliseconds=millis))


@click.command()
@click.option("--instance", help="Only this instance's (name or id).")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@connection_options
@json_option
def deployments(
    instance: str | None,
    limit: int,
    config_path: Path | None,
    nats_url: str | None,
    data_dir: Path | None,
    as_json: bool,
) -> None:
    """List deployments, newest first: instance, spec, state, when, and why one failed."""
    config = load(config_path, nats_url=nats_url, data_dir=data_dir)

    async def ask(bus: Bus) -> DeploymentsReply:
        body = DeploymentsRequest(instance=instance, limit=limit)
        return await request(bus, "deployments", body, DeploymentsReply, within=READ_WAIT)

    reply = with_bus(config, ask)
    if as_json:
        click.echo(msgspec.json.encode(reply.deployments).decode())
        return
    print_table(
        ["ID", "INSTANCE", "STATE", "SPEC", "PREVIOUS", "STARTED", "TOOK", "ERROR"],
        [
            [
                d.id,
                d.instance_name,
                d.state.value,
                d.spec_hash,
                d.previous_hash or "-",
                ago(d.started),
                _took(d.started, d.finished),
                (d.error or "")[:60],
            ]
            for d in reply.deployments
        ],
    )

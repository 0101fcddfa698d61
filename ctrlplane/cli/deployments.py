"""``ctrlplane deployments``: each start of an instance on a new spec, and how it went."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import click

from ctrlplane.cli.common import (
    ago,
    ask,
    connection_options,
    echo_json,
    json_option,
    load,
    print_table,
)
from ctrlplane.durations import format_duration
from ctrlplane.limits import MAX_LIMIT


def _took(started: datetime, finished: datetime | None) -> str:
    if finished is None:
        return "-"
    millis = round((finished - started).total_seconds() * 1000)
    return format_duration(timedelta(milliseconds=millis))


@click.command()
@click.option("--instance", help="Only this instance's (name or id).")
@click.option("--limit", type=click.IntRange(min=1, max=MAX_LIMIT), default=50, show_default=True)
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

    from ctrlplane.api import DeploymentsReply, DeploymentsRequest
    from ctrlplane.api.wire import encode_body

    config = load(config_path, nats_url=nats_url, data_dir=data_dir)

    body = DeploymentsRequest(instance=instance, limit=limit)
    reply = ask(config, "deployments", body, DeploymentsReply)
    if as_json:
        echo_json(encode_body(reply.deployments).decode())
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
                # The last column: the error in full, however long.
                d.error or "",
            ]
            for d in reply.deployments
        ],
    )

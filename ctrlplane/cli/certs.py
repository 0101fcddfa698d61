"""``ctrlplane certs``: each domain, its current certificate and how long it has left."""

from __future__ import annotations

from datetime import timedelta
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


def _left(left: timedelta | None) -> str:
    if left is None:
        return "-"
    if left <= timedelta(0):
        return "expired"
    return format_duration(timedelta(seconds=round(left.total_seconds())))


@click.command()
@connection_options
@json_option
def certs(
    config_path: Path | None, nats_url: str | None, data_dir: Path | None, as_json: bool
) -> None:
    """List domains with their certificate: issuer, serial, expiry and time left."""

    from ctrlplane.api import CertsReply
    from ctrlplane.api.wire import encode_body

    config = load(config_path, nats_url=nats_url, data_dir=data_dir)
    reply = ask(config, "certs", {}, CertsReply)
    if as_json:
        echo_json(encode_body(reply.certs).decode())
        return
    print_table(
        ["HOSTNAME", "INSTANCE", "ISSUER", "SERIAL", "NOT AFTER", "LEFT", "RENEWS", "ERROR"],
        [
            [
                c.hostname,
                c.instance,
                c.issuer,
                (c.serial or "-")[:16],
                "-" if c.not_after is None else c.not_after.strftime("%Y-%m-%d %H:%M:%S"),
                _left(c.time_left),
                ago(c.renew_at) if c.auto_renew else "off",
                "" if c.last_error is None else f"({c.failures}x) {c.last_error}"[:60],
            ]
            for c in reply.certs
        ],
    )

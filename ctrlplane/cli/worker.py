"""``ctrlplane worker pause|resume|run NAME``: steer one worker in the whole cluster."""

from __future__ import annotations

import getpass
import socket
from pathlib import Path

import click

from ctrlplane.cli.common import ago, ask, connection_options, echo, echo_json, json_option, load


@click.group()
def worker() -> None:
    """Pause, resume or run one worker now, in the whole cluster (admin only)."""


def _requester() -> str:
    """``user@host``: who paused a worker, as the controls keep it."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name (a container's arbitrary uid)
        user = "unknown"
    return f"{user}@{socket.gethostname()}"[:200]


def _control(
    endpoint: str,
    name: str,
    config_path: Path | None,
    nats_url: str | None,
    data_dir: Path | None,
    as_json: bool,
) -> None:
    from ctrlplane.api import WorkerControlReply, WorkerControlRequest
    from ctrlplane.api.wire import encode_body

    config = load(config_path, nats_url=nats_url, data_dir=data_dir)
    try:
        body = WorkerControlRequest(worker=name, by=_requester())
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="NAME") from None
    reply = ask(config, endpoint, body, WorkerControlReply)
    if as_json:
        echo_json(encode_body(reply).decode())
        return
    state = "paused" if reply.paused else "running"
    if reply.changed:
        echo(f"{reply.worker}: {state}")
    elif reply.by is not None:
        echo(f"{reply.worker}: already {state} (since {ago(reply.at)}, by {reply.by})")
    else:
        echo(f"{reply.worker}: already {state}")


@worker.command()
@click.argument("name")
@connection_options
@json_option
def pause(
    name: str,
    config_path: Path | None,
    nats_url: str | None,
    data_dir: Path | None,
    as_json: bool,
) -> None:
    """Pause worker NAME everywhere, until resumed (restarts keep it paused).

    Its ticks are acknowledged and recorded as skipped (reason "paused"); an
    event-driven worker stops pulling and its events wait in the stream. A run
    in progress finishes.
    """
    _control("worker_pause", name, config_path, nats_url, data_dir, as_json)


@worker.command()
@click.argument("name")
@connection_options
@json_option
def resume(
    name: str,
    config_path: Path | None,
    nats_url: str | None,
    data_dir: Path | None,
    as_json: bool,
) -> None:
    """Resume worker NAME everywhere; events that waited are handled."""
    _control("worker_resume", name, config_path, nats_url, data_dir, as_json)


@worker.command(name="run")
@click.argument("name")
@click.option(
    "--node", help="For a node-scoped worker: run on this node only (default: every live node)."
)
@connection_options
@json_option
def run_now(
    name: str,
    node: str | None,
    config_path: Path | None,
    nats_url: str | None,
    data_dir: Path | None,
    as_json: bool,
) -> None:
    """Run periodic worker NAME once more now, after its current run if one is going.

    The run is recorded with trigger "manual" and completes no slot: the
    next tick runs as usual. A paused or event-driven worker is refused.
    """
    from ctrlplane.api import WorkerRunReply, WorkerRunRequest
    from ctrlplane.api.wire import encode_body

    config = load(config_path, nats_url=nats_url, data_dir=data_dir)
    try:
        body = WorkerRunRequest(worker=name, node=node, by=_requester())
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    reply = ask(config, "worker_run", body, WorkerRunReply)
    if as_json:
        echo_json(encode_body(reply).decode())
        return
    where = f" on {', '.join(reply.nodes)}" if reply.nodes else ""
    echo(f"{reply.worker}: run requested{where} (ref {', '.join(reply.refs)})")

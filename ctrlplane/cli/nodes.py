"""``ctrlplane nodes``: the cluster's nodes, their processes and instances."""

from __future__ import annotations

from pathlib import Path

import click

from ctrlplane.cli.common import (
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


@click.command()
@connection_options
@json_option
@click.option(
    "--check",
    "check",
    metavar="NODE",
    help="Exit 0 if NODE is live, 1 if not (a container health check).",
)
def nodes(
    config_path: Path | None,
    nats_url: str | None,
    data_dir: Path | None,
    as_json: bool,
    check: str | None,
) -> None:
    """List the cluster's nodes: live or dead, processes, last heartbeat, instances, store.

    A node is live while one of its processes heartbeats within
    ``node_timeout``; a dead node is listed for an hour after its last beat.
    """
    config = load(config_path, nats_url=nats_url, data_dir=data_dir)

    from ctrlplane.api import NodesReply
    from ctrlplane.api.wire import encode_body

    reply = ask(config, "nodes", {}, NodesReply)
    if check is not None:
        found = next((n for n in reply.nodes if n.name == check), None)
        if found is None or not found.live:
            fail(f"node {check!r} is {'dead' if found else 'not in the cluster'}")
        echo(f"node {check!r} is live")
        return
    if as_json:
        echo_json(encode_body(reply).decode())
        return
    print_table(
        ["NODE", "STATE", "PROCESSES", "LAST HEARTBEAT", "INSTANCES", "STORE"],
        [
            [
                n.name,
                "live" if n.live else "dead",
                ", ".join(
                    p.process + ("" if p.live else " (stopped)" if p.stopped else " (silent)")
                    for p in n.processes
                ),
                ago(n.last_heartbeat),
                str(n.instances),
                ", ".join(n.store_ids),
            ]
            for n in reply.nodes
        ],
    )

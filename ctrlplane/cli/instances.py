"""``ctrlplane apply``, ``instances`` and ``health``: declared instances and how they fare."""

from __future__ import annotations

from pathlib import Path

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
from ctrlplane.errors import ConfigError

# Applying starts and stops processes: give it time.
APPLY_WAIT = 120.0


@click.command()
@click.option(
    "-f",
    "--file",
    "file",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="A TOML file with [[instances]] (and [[domains]]), as in the config file.",
)
@connection_options
@json_option
def apply(
    file: Path, config_path: Path | None, nats_url: str | None, data_dir: Path | None, as_json: bool
) -> None:
    """Make the instances exactly those FILE declares: create, update, remove.

    If FILE has a ``domains`` list, the domains too; without one they are left
    as they are. Idempotent: applying the same file twice changes nothing the
    second time.
    """

    from ctrlplane.api import ApplyReply, ApplyRequest
    from ctrlplane.api.wire import encode_body, to_wire
    from ctrlplane.config import load_config

    try:
        loaded = load_config(file, env={})
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)
    declared, domains = loaded.instances, loaded.domains
    if declared is None:
        fail(f"{file} declares no instances: add [[instances]] tables", EXIT_CONFIG)
    config = load(config_path, nats_url=nats_url, data_dir=data_dir)

    body = ApplyRequest(instances=declared, domains=domains)
    reply = ask(config, "apply", body, ApplyReply, within=APPLY_WAIT)
    result = reply.result
    assert result is not None
    if as_json:
        shown = to_wire(result)
        if reply.domains is not None:
            shown["domains"] = to_wire(reply.domains)
        echo_json(encode_body(shown).decode())
    else:
        for verb, names in (
            ("created", result.created),
            ("updated", result.updated),
            ("removed", result.removed),
            ("unchanged", result.unchanged),
        ):
            for name in names:
                echo(f"{name} {verb}")
        if reply.domains is not None:
            for verb, hostnames in (
                ("created", reply.domains.created),
                ("updated", reply.domains.updated),
                ("removed", reply.domains.removed),
                ("unchanged", reply.domains.unchanged),
            ):
                for hostname in hostnames:
                    echo(f"domain {hostname} {verb}")
        for error in result.errors:
            echo(f"error: {error}", err=True)
    if result.errors:
        raise SystemExit(1)


@click.command()
@connection_options
@json_option
def instances(
    config_path: Path | None, nats_url: str | None, data_dir: Path | None, as_json: bool
) -> None:
    """List instances with their recorded and desired state, their health and their node."""
    config = load(config_path, nats_url=nats_url, data_dir=data_dir)

    from ctrlplane.api import InstancesReply
    from ctrlplane.api.wire import encode_body

    reply = ask(config, "instances", {}, InstancesReply)
    if as_json:
        echo_json(encode_body(reply.instances).decode())
        return
    print_table(
        ["NAME", "STATE", "DESIRED", "HEALTH", "PROVIDER", "NODE", "PID", "UPDATED", "ERROR"],
        [
            [
                i.name,
                i.state,
                i.desired,
                i.health.value,
                i.provider,
                i.node or "-",
                pid_of(i.provider, i.handle),
                ago(i.updated),
                # The last column: the error in full, however long.
                i.state_error or "",
            ]
            for i in reply.instances
        ],
    )


@click.command()
@connection_options
@json_option
def health(
    config_path: Path | None, nats_url: str | None, data_dir: Path | None, as_json: bool
) -> None:
    """Per instance and check: the status, the last result and when it last changed."""
    config = load(config_path, nats_url=nats_url, data_dir=data_dir)

    from ctrlplane.api import HealthReply
    from ctrlplane.api.wire import encode_body

    reply = ask(config, "health", {}, HealthReply)
    if as_json:
        echo_json(encode_body(reply.checks).decode())
        return
    print_table(
        ["INSTANCE", "CHECK", "TYPE", "STATUS", "LATENCY", "CHECKED", "CHANGED", "MESSAGE"],
        [
            [
                c.instance,
                c.check,
                c.type,
                c.status.value,
                f"{c.last_latency.total_seconds() * 1000:.0f}ms" if c.last_latency else "-",
                ago(c.last_checked),
                ago(c.changed),
                (c.last_message or "")[:60],
            ]
            for c in reply.checks
        ],
    )


def pid_of(provider: str, handle: str | None) -> str:
    """The process id in a ``process`` instance's handle (``<pid>:<start>``), else ``-``."""
    if provider != "process" or handle is None:
        return "-"
    pid = handle.partition(":")[0]
    return pid if pid.isdigit() else "-"

"""``ctrlplane apply``, ``instances`` and ``health``: declared instances and how they fare."""

from __future__ import annotations

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
from ctrlplane.errors import ConfigError

if TYPE_CHECKING:
    from ctrlplane.api.messages import ApplyReply
    from ctrlplane.plan import FieldChange

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
@click.option(
    "--dry-run",
    is_flag=True,
    help="Change nothing: print what would be created, updated and removed, and each "
    "changed field (old -> new).",
)
@connection_options
@json_option
def apply(
    file: Path,
    dry_run: bool,
    config_path: Path | None,
    nats_url: str | None,
    data_dir: Path | None,
    as_json: bool,
) -> None:
    """Make the instances exactly those FILE declares: create, update, remove.

    If FILE has a ``domains`` list, the domains too; without one they are left
    as they are. Idempotent: applying the same file twice changes nothing the
    second time. With --dry-run, nothing is changed and nothing published.
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

    body = ApplyRequest(instances=declared, domains=domains, dry_run=dry_run)
    reply = ask(config, "apply", body, ApplyReply, within=APPLY_WAIT)
    result = reply.result
    assert result is not None
    if dry_run:
        print_plan(reply, as_json=as_json)
        return
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


def print_plan(reply: ApplyReply, *, as_json: bool) -> None:
    """Print what a dry run found: each instance's (and domain's) action, the
    fields that would change as ``field: old -> new``, and a count."""
    from ctrlplane.api.wire import encode_body

    if as_json:
        echo_json(encode_body(reply).decode())
        return
    plan = reply.plan
    if plan is None:
        # Requests forbid unknown fields, so a control plane without dry runs
        # refuses one (a 400): an answer without a plan is not a dry run's.
        fail("the control plane answered the dry run without a plan")
    for i in plan.instances:
        echo(f"{i.name}: {i.action.value}")
        _echo_changes(i.changes)
    for d in plan.domains or []:
        echo(f"domain {d.hostname}: {d.action.value}")
        _echo_changes(d.changes)
    r = reply.result
    echo(
        f"dry run: {len(r.created)} to create, {len(r.updated)} to update, "
        f"{len(r.removed)} to remove, {len(r.unchanged)} unchanged; nothing was changed"
    )


def _echo_changes(changes: list[FieldChange]) -> None:
    for c in changes:
        echo(f"  {c.field}: {c.old or '(absent)'} -> {c.new or '(absent)'}")


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

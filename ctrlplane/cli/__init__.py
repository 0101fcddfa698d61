"""The ``ctrlplane`` command."""

from __future__ import annotations

import logging

import click

from ctrlplane.cli.certs import certs
from ctrlplane.cli.completion import completion
from ctrlplane.cli.credentials import credentials, nats_config
from ctrlplane.cli.deployments import deployments
from ctrlplane.cli.describe import describe
from ctrlplane.cli.dlq import dlq
from ctrlplane.cli.events import events, schema
from ctrlplane.cli.instances import apply, health, instances
from ctrlplane.cli.nodes import nodes
from ctrlplane.cli.run import run
from ctrlplane.cli.runs import runs
from ctrlplane.cli.telemetry import telemetry
from ctrlplane.cli.worker import worker
from ctrlplane.cli.workers import workers

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ctrlplane-workers", prog_name="ctrlplane")
def main() -> None:
    """ctrlplane workers: the background-worker runtime of a control plane, on NATS."""
    # Logs go to stderr, so that stdout carries only what a command prints
    # (JSON for --json); `run` raises the level to info.
    from ctrlplane.logs import configure_logging

    configure_logging("console", logging.WARNING)


for command in (
    run,
    workers,
    apply,
    instances,
    health,
    nodes,
    telemetry,
    deployments,
    runs,
    dlq,
    certs,
    events,
    schema,
    credentials,
    nats_config,
    completion,
    describe,
):
    main.add_command(command)
main.add_command(worker)

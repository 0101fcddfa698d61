"""What every ``ctrlplane`` command shares: options, errors, the NATS connection, tables."""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from ctrlplane.cli.terminal import visible, visible_json
from ctrlplane.durations import format_duration
from ctrlplane.errors import ConfigError, CtrlplaneError, WorkerLoadError

if TYPE_CHECKING:
    from ctrlplane.bus.connection import Bus
    from ctrlplane.config import Config
    from ctrlplane.security import Role

# The runtime (NATS, the API, the config's validation) is imported by the
# functions that use it, so that `ctrlplane --help` and a typo in a command
# line cost no more than click.

T = TypeVar("T")
R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])

# Exit codes: 2 for bad input (as click uses for usage errors), 1 for a
# failure at run time.
EXIT_CONFIG = 2
EXIT_FAILURE = 1


def echo(line: str = "", *, err: bool = False) -> None:
    """Print one line that may hold data from outside, control characters made visible."""
    click.echo(visible(line), err=err)


def echo_json(text: str) -> None:
    """Print JSON that may hold data from outside, control characters as JSON escapes."""
    click.echo(visible_json(text))


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    """Print ``ctrlplane: message`` to stderr and exit with ``code``."""
    echo(f"ctrlplane: {message}", err=True)
    sys.exit(code)


def load(config: Path | None, **overrides: object) -> Config:
    """Load the configuration, or exit 2 with the field that is wrong."""
    from ctrlplane.config import load_config

    try:
        return load_config(config, overrides=overrides)
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)


config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="CTRLPLANE_CONFIG",
    help="TOML config file (env: CTRLPLANE_CONFIG).",
)
nats_option = click.option(
    "--nats-url",
    help="NATS to use instead of the embedded server (env: CTRLPLANE_NATS_URL).",
)
data_dir_option = click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Where the database and the embedded server live (env: CTRLPLANE_DATA_DIR).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON, not a table.")


def connection_options(f: F) -> F:
    """``--config``, ``--nats-url`` and ``--data-dir``: how a client command finds NATS."""
    return config_option(nats_option(data_dir_option(f)))


def run_async(coro: Coroutine[Any, Any, T], *, exit_if_abandoned: bool = False) -> T:
    """Run ``coro``, turning our errors into one clear line and a non-zero exit.

    Args:
        coro: The command's work.
        exit_if_abandoned: When a task or thread ignores cancellation at the
            end, end the process at once (``os._exit``) with the exit code it
            would have had, instead of letting the interpreter wait for it
            without limit. For ``run``, whose control plane is stopped (store
            closed, server stopped) by the time the loop closes.
    """
    from ctrlplane.actors.errors import ActorError
    from ctrlplane.bus.errors import BusError
    from ctrlplane.cli.loop import Loop
    from ctrlplane.store.errors import StoreError

    loop = Loop()
    message: str | None = None
    code = 0
    try:
        result = loop.run(coro)
    except (ConfigError, WorkerLoadError) as exc:
        # A worker the config names that cannot be loaded is bad input too.
        message, code = str(exc), EXIT_CONFIG
    except (CtrlplaneError, BusError, StoreError, ActorError) as exc:
        message, code = str(exc), EXIT_FAILURE
    except KeyboardInterrupt:
        message, code = "interrupted", 130
    except BaseException:
        if not loop.close() and exit_if_abandoned:
            traceback.print_exc()
            _exit_now(EXIT_FAILURE)
        raise
    clean = loop.close()
    if message is not None:
        echo(f"ctrlplane: {message}", err=True)
    if not clean and exit_if_abandoned:
        _exit_now(code)
    if message is not None:
        sys.exit(code)
    return result


def _exit_now(code: int) -> NoReturn:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


async def connect(config: Config, role: Role | None = None) -> Bus:
    """Connect to the configured NATS, or find the embedded server via the data dir.

    On the embedded server the command connects as ``role``: ``observer`` for
    reading, ``admin`` for changing things. With ``nats_url`` it uses the
    credentials configured for it.
    """
    from ctrlplane.bus.connection import Bus
    from ctrlplane.bus.server import read_server_info
    from ctrlplane.bus.subjects import Subjects
    from ctrlplane.security import Role, nats_url

    bus = Bus(Subjects(config.subject_prefix), name="ctrlplane-cli")
    url = nats_url(config)
    if url is None:
        info = read_server_info(config.data_dir)
        if info is None:
            raise CtrlplaneError(
                f"no embedded nats-server is running for data dir {config.data_dir}: "
                "start one with `ctrlplane run`, or pass --nats-url"
            )
        url = info.role_url((role or Role.OBSERVER).value)
    # A client command says within seconds that NATS is not there.
    timeout = min(config.connect_timeout, CLIENT_CONNECT_TIMEOUT)
    await bus.connect(url, connect_timeout=timeout)
    return bus


CLIENT_CONNECT_TIMEOUT = timedelta(seconds=3)
"""The longest a client command (not ``run``) tries to reach NATS."""


def with_bus(
    config: Config,
    action: Callable[[Bus], Coroutine[Any, Any, T]],
    role: Role | None = None,
) -> T:
    """Connect as ``role`` (``observer`` by default), run ``action(bus)``, close;
    errors end the command with a message."""

    async def go() -> T:
        bus = await connect(config, role)
        try:
            return await action(bus)
        finally:
            await bus.close()

    return run_async(go())


READ_WAIT = 10.0
"""Seconds a reading command waits for a process to answer."""


def ask(
    config: Config, name: str, body: object, reply_type: type[R], within: float = READ_WAIT
) -> R:
    """Send the control request ``<prefix>.api.v1.<name>`` and return the answer;
    no answer or an error answer ends the command with a message.

    A mutating endpoint is asked as ``admin``, any other as ``observer``.
    """

    from ctrlplane.api import request
    from ctrlplane.security import MUTATING_ENDPOINTS, Role

    async def send(bus: Bus) -> R:
        return await request(bus, name, body, reply_type, within=within)

    role = Role.ADMIN if name in MUTATING_ENDPOINTS else Role.OBSERVER
    return with_bus(config, send, role)


def ago(when: datetime | None) -> str:
    """``5s ago`` / ``in 1m`` / ``-``."""
    if when is None:
        return "-"
    delta = (when - datetime.now(UTC)).total_seconds()
    text = format_duration(timedelta(seconds=round(abs(delta))))
    return f"in {text}" if delta > 0 else f"{text} ago"


def print_table(header: list[str], rows: list[list[str]]) -> None:
    """Columns padded to their widest cell, control characters in cells made visible."""
    rows = [[visible(str(c)) for c in row] for row in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    for row in [header, *rows]:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)).rstrip())

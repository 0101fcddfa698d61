"""``ctrlplane credentials`` and ``ctrlplane nats-config``: the NATS identities of the roles."""

from __future__ import annotations

import secrets
from pathlib import Path

import click

from ctrlplane.bus.errors import ServerError
from ctrlplane.bus.subjects import Subjects
from ctrlplane.cli.common import EXIT_CONFIG, config_option, data_dir_option, fail, load
from ctrlplane.files import private_dir, write_private
from ctrlplane.security import (
    ROLES,
    Role,
    SecurityError,
    authorization_block,
    read_credentials,
    write_credentials,
)


@click.command()
@click.argument("role", type=click.Choice(ROLES))
@config_option
@data_dir_option
def credentials(role: str, config_path: Path | None, data_dir: Path | None) -> None:
    """Print ROLE's NATS URL, password included, for the embedded server of the data dir.

    For other services on this host: `observer` reads events and the read-only
    API, `publisher` publishes events. Treat the output as a secret.
    """
    from ctrlplane.bus.server import read_server_info

    config = load(config_path, data_dir=data_dir)
    try:
        info = read_server_info(config.data_dir)
        if info is None:
            fail(
                f"no embedded nats-server is running for data dir {config.data_dir}: "
                "start one with `ctrlplane run`"
            )
        click.echo(info.role_url(role))
    except ServerError as exc:
        fail(str(exc))


@click.command("nats-config")
@config_option
@click.option("--prefix", help="Subject prefix (default: the config's subject_prefix).")
@click.option(
    "--out-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Directory for one credentials file per role (user:password, mode 0600); "
    "existing files there are reused.",
)
@click.option(
    "--publisher-event-type",
    "event_types",
    multiple=True,
    help="An event type (wildcards allowed) the publisher may publish; repeat. "
    "Default: the config's publisher_event_types, else all.",
)
@click.option(
    "--conf-out",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write the block into this file (mode 0600) instead of printing it, "
    "for a nats-server config to include.",
)
def nats_config(
    config_path: Path | None,
    prefix: str | None,
    out_dir: Path | None,
    event_types: tuple[str, ...],
    conf_out: Path | None,
) -> None:
    """Print the nats-server `authorization` block for an external NATS.

    Put it in the server's config file; point each replica at the `service`
    file in --out-dir with `nats_credentials` (or CTRLPLANE_NATS_CREDENTIALS).
    Without --out-dir the passwords are only in the printed block.
    """
    config = load(config_path, subject_prefix=prefix)
    types = list(event_types) if event_types else config.publisher_event_types
    subjects = Subjects(config.subject_prefix)
    try:
        passwords = {role: _secret(out_dir, Role(role)) for role in ROLES}
        block = authorization_block(subjects, passwords, publisher_event_types=types)
    except SecurityError as exc:
        fail(str(exc), EXIT_CONFIG)
    if out_dir is not None:
        try:
            for role, password in passwords.items():
                write_credentials(out_dir, Role(role), password)
        except (OSError, ValueError) as exc:
            fail(f"cannot write credentials into {out_dir}: {exc}")
    if conf_out is None:
        click.echo(block, nl=False)
        return
    try:
        private_dir(conf_out.parent)
        write_private(conf_out, block.encode())
    except (OSError, ValueError) as exc:
        fail(f"cannot write {conf_out}: {exc}")


def _secret(out_dir: Path | None, role: Role) -> str:
    """The role's password kept in ``out_dir``, or a new random one."""
    if out_dir is not None and (out_dir / role.value).exists():
        user, password = read_credentials(out_dir / role.value)
        if user != role.value:
            raise SecurityError(f"{out_dir / role.value} is for user {user!r}, not {role.value!r}")
        return password
    return secrets.token_urlsafe(32)

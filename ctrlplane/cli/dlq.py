"""``ctrlplane dlq``: the dead letters kept for each worker, read through the service."""

from __future__ import annotations

from pathlib import Path

import click

from ctrlplane.cli.common import (
    ago,
    ask,
    connection_options,
    echo,
    echo_json,
    json_option,
    load,
    print_table,
)
from ctrlplane.limits import MAX_LIMIT

REASON_WIDTH = 60
"""Characters of a reason the table shows (``--json`` and ``dlq show`` have all of it)."""


@click.group()
def dlq() -> None:
    """Dead letters: messages a worker gave up on; list, show, replay or purge them."""


@dlq.command(name="list")
@click.argument("worker", required=False)
@click.option("--limit", type=click.IntRange(min=1, max=MAX_LIMIT), default=100, show_default=True)
@connection_options
@json_option
def dlq_list(
    worker: str | None,
    limit: int,
    config_path: Path | None,
    nats_url: str | None,
    data_dir: Path | None,
    as_json: bool,
) -> None:
    """List dead letters, newest first: ID (for `dlq show`), worker, subject, reason, attempts."""
    from ctrlplane.api import DlqListReply, DlqListRequest
    from ctrlplane.api.wire import encode_body

    config = load(config_path, nats_url=nats_url, data_dir=data_dir)
    reply = ask(config, "dlq_list", DlqListRequest(worker=worker, limit=limit), DlqListReply)
    if as_json:
        echo_json(encode_body(reply.letters).decode())
        return
    print_table(
        ["ID", "WORKER", "SUBJECT", "ATTEMPTS", "WHEN", "REASON"],
        [
            [
                str(d.id),
                d.worker,
                d.subject,
                str(d.attempts),
                ago(d.time),
                d.reason.split("\n", 1)[0][:REASON_WIDTH],
            ]
            for d in reply.letters
        ],
    )


@dlq.command(name="show")
@click.argument("id", type=click.IntRange(min=1))
@connection_options
@json_option
def dlq_show(
    id: int,
    config_path: Path | None,
    nats_url: str | None,
    data_dir: Path | None,
    as_json: bool,
) -> None:
    """Show one dead letter whole, its payload included."""
    from ctrlplane.api import DlqShowReply, DlqShowRequest
    from ctrlplane.api.wire import encode_body

    config = load(config_path, nats_url=nats_url, data_dir=data_dir)
    reply = ask(config, "dlq_show", DlqShowRequest(id=id), DlqShowReply)
    if as_json:
        echo_json(encode_body(reply).decode())
        return
    letter = reply.letter
    fields = [
        ("id", str(reply.id)),
        ("worker", letter.worker),
        ("subject", letter.subject),
        ("time", letter.time.isoformat()),
        ("attempts", str(letter.attempts)),
        ("stream", f"{letter.stream or '-'} #{letter.stream_seq or '-'}"),
        ("size", "-" if letter.size is None else str(letter.size)),
        ("truncated", "yes" if letter.truncated else "no"),
    ]
    print_table(["FIELD", "VALUE"], [[k, v] for k, v in fields])
    echo("reason:")
    echo(letter.reason)
    if letter.payload is not None:
        echo("payload:")
        echo(letter.payload)
    elif letter.payload_base64 is not None:
        echo("payload (base64, not UTF-8):")
        echo(letter.payload_base64)


@dlq.command(name="purge")
@click.option("--worker", help="Only this worker's dead letters (default: every worker's).")
@click.option("--yes", is_flag=True, help="Really remove them (required).")
@connection_options
def dlq_purge(
    worker: str | None,
    yes: bool,
    config_path: Path | None,
    nats_url: str | None,
    data_dir: Path | None,
) -> None:
    """Remove dead letters for good (admin only)."""
    from ctrlplane.api import DlqPurgeReply, DlqPurgeRequest

    if not yes:
        raise click.UsageError("dlq purge removes dead letters for good: add --yes")
    config = load(config_path, nats_url=nats_url, data_dir=data_dir)
    reply = ask(config, "dlq_purge", DlqPurgeRequest(worker=worker), DlqPurgeReply)
    echo(f"purged {reply.purged} dead letter{'' if reply.purged == 1 else 's'}")


REPLAY_WAIT = 60.0
"""Seconds ``dlq replay`` waits for its answer (a whole worker's batch may take a while)."""


@dlq.command(name="replay")
@click.argument("id", type=click.IntRange(min=1), required=False)
@click.option("--worker", help="Replay this worker's dead letters (with --all).")
@click.option(
    "--all", "every", is_flag=True, help="With --worker: every dead letter it has, oldest first."
)
@connection_options
@json_option
def dlq_replay(
    id: int | None,
    worker: str | None,
    every: bool,
    config_path: Path | None,
    nats_url: str | None,
    data_dir: Path | None,
    as_json: bool,
) -> None:
    """Deliver dead letters again to the worker that gave up on them, and to no
    other subscriber (admin only): `dlq replay ID`, or `dlq replay --worker W --all`.

    Each letter is removed once its replay is stored; one that fails again
    becomes a new dead letter. Ticks are not replayed (the next slot runs).
    """
    from ctrlplane.api import DlqReplayReply, DlqReplayRequest
    from ctrlplane.api.wire import encode_body

    if id is not None and (worker is not None or every):
        raise click.UsageError("give an ID, or --worker W --all, not both")
    if id is None and worker is None:
        raise click.UsageError("give the ID of a dead letter, or --worker W --all")
    if id is None and not every:
        raise click.UsageError(f"add --all to replay every dead letter of {worker}")
    config = load(config_path, nats_url=nats_url, data_dir=data_dir)
    body = DlqReplayRequest(id=id, worker=worker, every=every)
    reply = ask(config, "dlq_replay", body, DlqReplayReply, within=REPLAY_WAIT)
    if as_json:
        echo_json(encode_body(reply).decode())
        return
    ids = ", ".join(str(i) for i in reply.ids)
    echo(f"replayed {reply.replayed} dead letter{'' if reply.replayed == 1 else 's'}")
    if ids:
        echo(f"  ids: {ids}")
    for skipped in reply.skipped:
        echo(f"skipped {skipped.id}: {skipped.reason}")
    if reply.left:
        echo(f"{reply.left} more left: run it again to replay them")

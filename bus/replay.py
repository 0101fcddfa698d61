"""Replaying a dead letter: the message sent back to the one worker that gave up on it.

A replay is published on ``<prefix>.replay.<worker>`` (kept by the replay
stream until that worker's replay consumer takes it), never on the original
event subject: every subscriber of that subject would see the event again.
The original subject travels in a header, so the worker decodes the payload
exactly as it first did, and a replay that fails again is dead-lettered with
that subject, ready to be replayed once more.
"""

from __future__ import annotations

import base64
import binascii

from msgspec import Struct
from nats.aio.msg import Msg

from ctrlplane.bus.messages import DeadLetter
from ctrlplane.bus.subjects import Subjects

__all__ = [
    "REPLAY_OF_HEADER",
    "SUBJECT_HEADER",
    "Replay",
    "replay_of",
    "replay_refusal",
    "replayed_subject",
    "to_replay",
]

SUBJECT_HEADER = "Ctrlplane-Replay-Subject"
"""The header of a replay that names the subject the message first arrived on."""
REPLAY_OF_HEADER = "Ctrlplane-Replay-Of"
"""The header of a replay that names the dead letter (its id) it replays."""
TICK_REFUSAL = "a tick is not replayed: the worker's next slot runs in its place"


class Replay(Struct, frozen=True, kw_only=True):
    """A dead letter made ready to publish to its worker again.

    Attributes:
        subject: ``<prefix>.replay.<worker>`` (``.<node>`` for a node-scoped worker).
        payload: The original payload, byte for byte.
        headers: The original subject, the letter's id, and a ``Nats-Msg-Id``
            of ``replay/<id>``: a replay of one letter asked twice within the
            stream's duplicate window (a retry after a lost answer) is kept once.
        consumer: The durable consumer that will take it (it must exist, or
            no process runs the worker and the replay would wait unread).
    """

    subject: str
    payload: bytes
    headers: dict[str, str]
    consumer: str


def replay_refusal(letter: DeadLetter, subjects: Subjects) -> str | None:
    """Why ``letter`` cannot be replayed, or None when it can.

    A tick is refused: its slot's time has passed, and running it late would
    compete with the slot that runs next. A letter keeping only a prefix of
    its payload is refused too: its worker would see a message cut short.
    """
    if letter.subject.startswith(subjects.tick("")):
        return TICK_REFUSAL
    if not letter.subject.startswith(subjects.event("")):
        return f"{letter.subject} is not an event subject of this control plane"
    if letter.truncated:
        where = f" (the whole message was #{letter.stream_seq} of {letter.stream})"
        return (
            f"only the first part of its {letter.size} bytes was kept{where}: "
            "a replay would deliver a message cut short"
        )
    if letter.payload is None:
        if letter.payload_base64 is None:
            return "it keeps no payload"
        try:
            base64.b64decode(letter.payload_base64, validate=True)
        except (binascii.Error, ValueError):
            return "its payload_base64 is not base64"
    return None


def to_replay(letter: DeadLetter, letter_id: int, subjects: Subjects) -> Replay:
    """The replay of ``letter`` (id ``letter_id``); check :func:`replay_refusal` first."""
    from ctrlplane.bus.connection import MSG_ID

    if letter.payload is not None:
        payload = letter.payload.encode("utf-8")
    else:
        payload = base64.b64decode(letter.payload_base64 or "", validate=True)
    return Replay(
        subject=subjects.replay(letter.worker, letter.node),
        payload=payload,
        headers={
            SUBJECT_HEADER: letter.subject,
            REPLAY_OF_HEADER: str(letter_id),
            MSG_ID: f"replay/{letter_id}",
        },
        consumer=subjects.replay_consumer(letter.worker, letter.node),
    )


def replayed_subject(msg: Msg) -> str | None:
    """The subject a replayed message first arrived on (None when it does not say)."""
    headers = msg.headers
    return headers.get(SUBJECT_HEADER) if headers else None


def replay_of(msg: Msg) -> int | None:
    """The id of the dead letter ``msg`` replays, if it is a replay that says so."""
    headers = msg.headers
    value = headers.get(REPLAY_OF_HEADER) if headers else None
    try:
        return int(value) if value else None
    except ValueError:
        return None

"""What a JetStream delivery says about itself: attempt, sequences, ids."""

from __future__ import annotations

import nats.errors
from nats.aio.msg import Msg

from ctrlplane.bus.connection import MSG_ID


def attempt_of(msg: Msg) -> int:
    """The delivery count, read straight from the ack subject.

    nats-py's ``msg.metadata`` parses the whole subject (and a timestamp) to
    give it; on the hot path the one token is enough. ``$JS.ACK.<stream>.
    <consumer>.<delivered>...`` (v1) or ``$JS.ACK.<domain>.<hash>.<stream>.
    <consumer>.<delivered>...`` (v2).
    """
    tokens = (msg.reply or "").split(".")
    try:
        if len(tokens) == 9:
            return int(tokens[4])
        if len(tokens) >= 11:
            return int(tokens[6])
    except ValueError:
        pass
    return 1


def consumer_seq(msg: Msg) -> int | None:
    try:
        return int(msg.metadata.sequence.consumer)
    except (ValueError, nats.errors.Error, AttributeError, IndexError):
        return None


def pending_after(msg: Msg) -> int:
    try:
        return int(msg.metadata.num_pending)
    except (ValueError, nats.errors.Error, AttributeError, IndexError):
        return 0


def stream_seq(msg: Msg) -> int | None:
    try:
        return int(msg.metadata.sequence.stream)
    except (ValueError, nats.errors.Error, AttributeError, IndexError):
        return None


def msg_id(msg: Msg) -> str | None:
    headers = msg.headers
    return headers.get(MSG_ID) if headers else None


def stream_of(msg: Msg) -> str | None:
    try:
        return str(msg.metadata.stream)
    except (ValueError, nats.errors.Error, AttributeError, IndexError):
        return None

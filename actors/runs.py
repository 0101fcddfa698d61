"""What a run is recorded as: its trigger, its outcome and its id.

The runtime's own vocabulary. A :class:`~ctrlplane.actors.types.RunRecorder`
(the store's ``RunStore``, say) receives them as plain strings: both are
``StrEnum``, so their values are what is written, and the store needs
nothing from ``actors`` to write or read them.
"""

from __future__ import annotations

import itertools
import os
import secrets
from enum import StrEnum


class Outcome(StrEnum):
    """How a run ended."""

    OK = "ok"
    ERROR = "error"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"
    """A stale tick coalesced into a newer one."""
    RETRY = "retry"
    """The worker asked to be retried later."""
    DEAD_LETTERED = "dead_lettered"
    """The message could not be handled and went to the dead-letter subject."""


class Trigger(StrEnum):
    """What started a run."""

    TICK = "tick"
    EVENT = "event"
    ONCE = "once"
    MANUAL = "manual"
    """An operator asked for a run now (``ctrlplane worker run``)."""


def new_run_id(now: float) -> str:
    """A unique run id that sorts by time.

    Time first keeps inserts at the end of the primary-key index instead of
    scattering them, as random ids would; the random tail keeps ids from two
    processes apart.
    """
    return f"{int(now * 1_000_000):014x}{_origin}{next(_sequence) & 0xFFFFFF:06x}"


def _new_origin() -> None:
    global _origin, _sequence
    _origin = secrets.token_hex(4)
    _sequence = itertools.count()


_origin = ""
_sequence = itertools.count()
_new_origin()
# A forked child must not repeat its parent's ids.
os.register_at_fork(after_in_child=_new_origin)

"""The ``workers`` endpoint of the control API: every process answers for its own workers.

The endpoint itself is served by :mod:`ctrlplane.api` (a NATS micro service,
in a queue group of its own per process, so a request reaches them all);
this module holds its messages and the answer (the asking side, which gathers
answers, is :func:`ctrlplane.api.client.list_workers`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from msgspec import Struct

from ctrlplane.actors.info import WorkerInfo

if TYPE_CHECKING:
    # The answering side only: `ctrlplane workers` asks, and need not load the runtime.
    from ctrlplane.actors.scheduler import Scheduler


class WorkersRequest(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Every process's workers: no parameters."""


class WorkersReply(Struct, frozen=True, kw_only=True):
    """One process's answer to ``<prefix>.api.v1.workers``."""

    process: str
    workers: list[WorkerInfo]


def workers_reply(scheduler: Scheduler) -> WorkersReply:
    """This process's answer: its id and its workers."""
    return WorkersReply(process=scheduler.process, workers=scheduler.workers())

"""The built-in ``process`` collector: what an instance's process tree uses, read with psutil."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import psutil

from ctrlplane.store.instances import Instance
from ctrlplane.store.telemetry import Metric, ResourceSnapshot
from ctrlplane.telemetry.errors import CollectorError, InstanceGoneError
from ctrlplane.types import Provider

__all__ = ["ProcessCollector"]

# How often the handles of instances whose processes are all gone (stopped
# or destroyed instances, which are no longer collected) are forgotten.
_PRUNE_EVERY = 600.0


@dataclass(frozen=True)
class _Usage:
    """One process's share of a snapshot; ``None`` where it cannot be read."""

    cpu_percent: float
    memory_rss: int
    threads: int
    open_files: int | None
    read_bytes: int | None
    write_bytes: int | None


def _open_files(process: psutil.Process) -> int | None:
    # File descriptors, not psutil's open_files(): that lists regular files
    # only, and reads every descriptor's link and position to do so.
    num_fds = getattr(process, "num_fds", None) or getattr(process, "num_handles", None)
    if num_fds is None:
        return None
    try:
        return int(num_fds())
    except psutil.AccessDenied:
        return None


def _io(process: psutil.Process) -> tuple[int | None, int | None]:
    io_counters = getattr(process, "io_counters", None)  # not on macOS
    if io_counters is None:
        return None, None
    try:
        io = io_counters()
    except (psutil.AccessDenied, NotImplementedError):
        return None, None
    return int(io.read_bytes), int(io.write_bytes)


def _usage(process: psutil.Process) -> _Usage:
    with process.oneshot():
        cpu = process.cpu_percent(interval=None)
        rss = process.memory_info().rss
        threads = process.num_threads()
        read, write = _io(process)
        return _Usage(
            cpu_percent=cpu,
            memory_rss=int(rss),
            threads=int(threads),
            open_files=_open_files(process),
            read_bytes=read,
            write_bytes=write,
        )


def _total(values: list[int | None]) -> int | None:
    """The sum, or ``None`` when any part is unknown: a partial sum would mislead."""
    if any(v is None for v in values):
        return None
    return sum(v for v in values if v is not None)


def _sample(
    pids: list[int], known: dict[int, psutil.Process]
) -> tuple[list[_Usage], dict[int, psutil.Process]]:
    """Read each of ``pids``, reusing the handles of the previous run; runs in a thread."""
    usages: list[_Usage] = []
    kept: dict[int, psutil.Process] = {}
    for pid in pids:
        try:
            process = known.get(pid)
            # is_running() compares creation times: a reused pid gets a new handle.
            if process is None or not process.is_running():
                process = psutil.Process(pid)
            usages.append(_usage(process))
        except psutil.NoSuchProcess:  # exited since the provider listed it (zombies too)
            continue
        kept[pid] = process
    return usages, kept


class ProcessCollector:
    """Resource snapshots of each instance's process tree, as its provider lists it.

    A snapshot sums, over the instance's processes (``provider.pids``): CPU
    percent, resident memory, threads, open file descriptors, and bytes read
    from and written to storage where the platform tells (not on macOS).
    Processes that exit while they are being read are left out.

    CPU percent is use *since the previous look*, so psutil needs two looks
    at a process: the collector keeps each process's psutil handle between
    runs. A process's first snapshot therefore counts 0.0 for it (a new
    instance, or a collector that just started, reports 0.0); from the second
    run on the figure is real, in percent of one CPU (above 100 on several).

    An instance whose provider lists no running process (it has exited, and
    the reconciler is yet to notice) raises :class:`InstanceGoneError`: a gap
    in its telemetry, not a failure. An unknown provider is an error of this
    collector for that instance.

    Args:
        providers: The providers, by name.
    """

    name = "process"

    def __init__(self, providers: Mapping[str, Provider]) -> None:
        self._providers = providers
        # Per instance id, the psutil handle of each of its processes.
        self._trees: dict[str, dict[int, psutil.Process]] = {}
        self._pruned = time.monotonic()

    async def collect_metrics(self, instance: Instance) -> list[Metric]:
        """None: this collector gives resource snapshots only."""
        return []

    async def collect_resources(self, instance: Instance) -> ResourceSnapshot:
        """A snapshot of the instance's process tree.

        Raises:
            InstanceGoneError: the provider lists no running process.
            CollectorError: the provider is unknown.
        """
        provider = self._providers.get(instance.provider)
        if provider is None:
            reason = f"unknown provider {instance.provider!r}"
            raise CollectorError(self.name, instance.name, reason)
        pids = await provider.pids(instance)
        self._prune()
        known = self._trees.get(instance.id, {})
        usages, kept = await asyncio.to_thread(_sample, pids, known)
        taken = datetime.now(UTC)
        if not usages:
            self._trees.pop(instance.id, None)
            raise InstanceGoneError(
                self.name, instance.name, "no running process (has the instance exited?)"
            )
        self._trees[instance.id] = kept
        return ResourceSnapshot(
            processes=len(usages),
            cpu_percent=round(sum(u.cpu_percent for u in usages), 2),
            memory_rss=sum(u.memory_rss for u in usages),
            threads=sum(u.threads for u in usages),
            open_files=_total([u.open_files for u in usages]),
            read_bytes=_total([u.read_bytes for u in usages]),
            write_bytes=_total([u.write_bytes for u in usages]),
            time=taken,
        )

    def _prune(self) -> None:
        now = time.monotonic()
        if now - self._pruned < _PRUNE_EVERY:
            return
        self._pruned = now
        for instance_id, tree in list(self._trees.items()):
            if not any(p.is_running() for p in tree.values()):
                del self._trees[instance_id]

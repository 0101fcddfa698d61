"""The built-in ``process`` provider: instances are OS processes on this host.

Each instance runs from its argv (never through a shell) in a session of its
own, so it outlives a restart of the control plane, with stdin from /dev/null
and stdout and stderr appended to ``<data_dir>/instances/<name>/output.log``.

Its handle is ``"<pid>:<start>"``, where ``start`` is when the process began in
clock ticks since boot (field 22 of ``/proc/<pid>/stat``; elsewhere psutil's
creation time). A pid alone would be mistaken for whatever process reuses it
after the instance is gone; pid and start together name one incarnation, which
is how another control-plane process, or this one after a restart, recognises
the instance. Ticks since boot, unlike an epoch timestamp, do not move when the
clock is set.

Its instances are host-bound: a handle means something only on the host that
started it. Each start also writes ``instances/<name>/handle`` (instance id and
handle), this host's own record of what it runs, which outlives a restart of
the control plane and whatever the shared store says later: a node whose
instance was moved away while it was silent finds and stops its copy with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import structlog

from ctrlplane.files import private_dir
from ctrlplane.providers.errors import ProviderError
from ctrlplane.store.instances import Instance, InstanceState
from ctrlplane.types import Observation

__all__ = ["ProcessProvider", "started_at"]

log = structlog.get_logger("ctrlplane.providers.process")

# How often stop() looks whether the processes are gone yet.
_POLL = 0.02
# How long stop() waits for SIGKILLed processes to disappear: the kernel is
# quick, but a process in uninterruptible sleep dies only when it wakes.
_KILL_WAIT = 2.0
# This host's record of an instance's process, in the instance's folder.
_HANDLE_FILE = "handle"
# Above this many instances, status() reads /proc in a thread.
_INLINE_STATUS = 32

_LINUX = sys.platform.startswith("linux")


@dataclass(frozen=True)
class _Seen:
    """One look at a pid: which incarnation holds it and whether it has exited."""

    start: str
    zombie: bool


def _probe(pid: int) -> _Seen | None:
    """What holds ``pid`` now; ``None`` when no process (not even a zombie) does."""
    if _LINUX:
        try:
            with open(f"/proc/{pid}/stat", "rb") as file:
                stat = file.read()
        except (FileNotFoundError, ProcessLookupError):
            return None
        # The command name in parentheses may hold spaces and ')': split after the last one.
        fields = stat.rpartition(b")")[2].split()
        # fields[0] is field 3 (state); starttime is field 22.
        return _Seen(start=fields[19].decode(), zombie=fields[0] in (b"Z", b"X"))
    try:
        process = psutil.Process(pid)
        return _Seen(
            start=repr(process.create_time()), zombie=process.status() == psutil.STATUS_ZOMBIE
        )
    except psutil.NoSuchProcess:
        return None


def _parse_handle(handle: str) -> tuple[int, str] | None:
    pid, sep, start = handle.partition(":")
    if not sep or not pid.isdigit() or int(pid) <= 0 or not start:
        return None
    return int(pid), start


def _incarnation(handle: str | None) -> tuple[int, str] | None:
    """The pid of ``handle`` if that very process still runs (and has not exited)."""
    parsed = None if handle is None else _parse_handle(handle)
    if parsed is None:
        return None
    seen = _probe(parsed[0])
    if seen is None or seen.start != parsed[1] or seen.zombie:
        return None
    return parsed


def started_at(handle: str | None) -> datetime | None:
    """When the process ``handle`` names started, if that very process still
    runs on this host; None otherwise (exited, another incarnation, another host).

    The handle's own start field is the kernel's (clock ticks since boot on
    Linux), so the time is read from the live process instead.
    """
    found = _incarnation(handle)
    if found is None:
        return None
    try:
        return datetime.fromtimestamp(psutil.Process(found[0]).create_time(), UTC)
    except (psutil.Error, OverflowError, OSError, ValueError):
        return None


def _running(process: psutil.Process) -> bool:
    # is_running() compares the creation time, so a reused pid reads as gone;
    # it is True for zombies, which have exited all the same.
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def _gone(family: list[psutil.Process], within: float) -> bool:
    """Wait up to ``within`` seconds for every process of ``family`` to exit."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        if not any(_running(p) for p in family):
            return True
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(_POLL)


def _exit_observation(code: int, stopped: bool) -> Observation:
    """How a child of ours that exited with ``code`` (``-N``: signal N) is seen."""
    if code < 0:
        try:
            how = f"killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"killed by signal {-code}"
    else:
        how = f"exited with code {code}"
    if code == 0:
        return Observation(state=InstanceState.STOPPED, detail=how)
    if stopped:
        # We asked it to stop: however it went, that is not a failure.
        return Observation(state=InstanceState.STOPPED, detail=f"stopped ({how})")
    return Observation(state=InstanceState.FAILED, detail=how)


@dataclass
class _Child:
    """A process this provider started: its exit code is ours to read."""

    instance_id: str
    popen: subprocess.Popen[bytes]
    stopped: bool = False


def executable_problem(command: Sequence[str], allowed: Sequence[str]) -> str | None:
    """Why ``command`` may not run under the allow-list ``allowed``, or None if it may.

    An empty ``allowed`` allows everything. Names are looked up on ``PATH``
    and symbolic links followed on both sides, so ``python3`` matches
    ``/usr/bin/python3`` when that is what ``PATH`` finds.
    """
    if not allowed:
        return None
    if not command:
        return "the command is empty"
    executable = command[0]
    if "/" in executable and not os.path.isabs(executable):
        return f"executable {executable!r} is a relative path; use an absolute one"
    found = _resolve(executable)
    if found is None or found not in {_resolve(a) for a in allowed}:
        return (
            f"executable {executable!r} is not allowed (process_executables: {', '.join(allowed)})"
        )
    return None


def _resolve(executable: str) -> str | None:
    path = shutil.which(executable)
    return None if path is None else os.path.realpath(path)


class ProcessProvider:
    """Runs instances as OS processes on this host, as the control plane's user.

    Args:
        data_dir: The control plane's data directory; each instance gets the
            folder ``instances/<name>/`` (mode 0700) for its output log and,
            unless its spec names one, as its working directory.
        executables: The only executables it runs (``process_executables``);
            empty runs any.
    """

    name = "process"
    host_bound = True
    """Its instances are processes of the host that started them."""

    def __init__(self, data_dir: Path, *, executables: Sequence[str] = ()) -> None:
        self._executables = tuple(executables)
        self._root = Path(data_dir) / "instances"
        # The processes started here, by handle: polling them reads their exit
        # code and reaps them, so none lingers as a zombie.
        self._children: dict[str, _Child] = {}

    def log_path(self, instance: Instance) -> Path:
        """Where the output of ``instance`` goes."""
        return self._folder(instance) / "output.log"

    async def start(self, instance: Instance) -> str:
        """Start ``instance`` and return its handle ``"<pid>:<start>"``.

        If its handle already names a running process, that process is kept
        and its handle returned: like :meth:`stop`, starting is idempotent. A
        process that exits at once is not an error here; :meth:`status` tells.

        Raises:
            ProviderError: the command is empty, the executable is missing or
                not executable, or the folder or working directory is unusable.
        """
        spec = instance.spec
        if instance.handle is not None and _incarnation(instance.handle) is not None:
            return instance.handle
        if not spec.command:
            raise ProviderError(instance.name, "the command is empty")
        # Checked at apply too; here for instances recorded before the allow-list.
        refused = executable_problem(spec.command, self._executables)
        if refused is not None:
            raise ProviderError(instance.name, refused)
        folder = self._folder(instance)
        try:
            private_dir(self._root)
            private_dir(folder)
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ProviderError(instance.name, f"cannot create {folder}: {reason}") from exc
        cwd = Path(spec.cwd) if spec.cwd else folder
        if not cwd.is_dir():
            raise ProviderError(instance.name, f"working directory {cwd} is not a directory")
        log = folder / "output.log"
        try:
            log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise ProviderError(instance.name, f"cannot open {log}: {exc.strerror}") from exc
        try:
            # Inline, not in a thread: a caller that times out and cancels us must
            # not leave a process running that nothing tracks. vfork and exec
            # take about a millisecond.
            popen = subprocess.Popen(  # noqa: ASYNC220
                spec.command,
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env={**os.environ, **spec.env},
                start_new_session=True,
            )
        except (OSError, ValueError) as exc:
            raise ProviderError(instance.name, _start_failure(spec.command[0], cwd, exc)) from exc
        finally:
            os.close(log_fd)
        # Not yet polled, the child is at worst a zombie: its start time is readable.
        seen = _probe(popen.pid)
        if seen is None:
            popen.kill()
            popen.wait()
            raise ProviderError(instance.name, f"process {popen.pid} vanished before it was seen")
        handle = f"{popen.pid}:{seen.start}"
        self._forget_exited(instance.id)
        self._children[handle] = _Child(instance_id=instance.id, popen=popen)
        self._remember(folder, instance.id, handle)
        return handle

    async def local_instances(self) -> dict[str, str]:
        """Instance id to handle of every process this host started that still runs,
        whatever the store records now (another node's handle, or no instance).

        A node uses it to find its own copies of instances placed elsewhere,
        or removed, while it was silent, and to re-adopt one placed back on it.
        """
        return await asyncio.to_thread(self._local)

    async def stop_local(self, instance_id: str, grace: timedelta) -> None:
        """Stop this host's process of the instance ``instance_id``, if one runs,
        as :meth:`stop` does; the store need not know the instance any more."""
        handle = (await self.local_instances()).get(instance_id)
        if handle is not None:
            await self._stop(handle, grace)

    def _local(self) -> dict[str, str]:
        found: dict[str, str] = {}
        try:
            folders = list(self._root.iterdir())
        except OSError:
            return found  # nothing started on this host yet
        for folder in folders:
            try:
                record = (folder / _HANDLE_FILE).read_text()
            except (OSError, UnicodeDecodeError):
                continue
            instance_id, _, handle = record.strip().partition(" ")
            if instance_id and _incarnation(handle) is not None:
                found[instance_id] = handle
        return found

    def _remember(self, folder: Path, instance_id: str, handle: str) -> None:
        """Write this host's record of the instance's process (atomically)."""
        temporary = folder / f".{_HANDLE_FILE}.tmp"
        try:
            temporary.write_text(f"{instance_id} {handle}\n")
            os.replace(temporary, folder / _HANDLE_FILE)
        except OSError as exc:
            # The process runs and the store will hold its handle: only the
            # clean-up after a failover depends on this record.
            log.warning("cannot record the handle", folder=str(folder), error=str(exc))

    async def status(self, instances: Sequence[Instance]) -> dict[str, Observation]:
        """What each instance's handle names now, keyed by instance id.

        ``running`` when the handle's process is alive; ``stopped`` when it never
        started, exited with code 0, was stopped, or is gone (or its pid now
        belongs to another process); ``failed`` when a process started here
        exited with another code or was killed by a signal nobody asked for.
        The exit code of a process started by another control-plane process
        cannot be known: it is reported ``stopped``.
        """
        if len(instances) > _INLINE_STATUS:
            return await asyncio.to_thread(self._observe_all, instances)
        return self._observe_all(instances)

    async def stop(self, instance: Instance, grace: timedelta) -> None:
        """Stop ``instance``: SIGTERM, then SIGKILL after ``grace``. Idempotent.

        Signals go to the instance's process group and to any descendant that
        left it, and only after the handle is checked to name the very process
        started for the instance, so a reused pid is never signalled. Returns
        when they are all gone, or about two seconds after the SIGKILL.
        """
        if instance.handle is not None:
            await self._stop(instance.handle, grace)

    async def _stop(self, handle: str, grace: timedelta) -> None:
        child = self._children.get(handle)
        if child is not None and child.popen.poll() is not None:
            return
        parsed = _incarnation(handle)
        if parsed is None:
            return
        family = await asyncio.to_thread(self._family, handle)
        if not family:
            return
        if child is not None:
            child.stopped = True
        self._signal(parsed, family, signal.SIGTERM)
        if not await _gone(family, within=grace.total_seconds()):
            self._signal(parsed, family, signal.SIGKILL)
            await _gone(family, within=_KILL_WAIT)
        if child is not None:
            # It has exited (or is stuck beyond SIGKILL): reap it if we can.
            child.popen.poll()

    async def pids(self, instance: Instance) -> list[int]:
        """The instance's process and all its descendants; empty unless it runs."""
        family = await asyncio.to_thread(self._family, instance.handle)
        return [p.pid for p in family]

    def _folder(self, instance: Instance) -> Path:
        name = instance.name
        if name in ("", ".", "..") or "/" in name or "\0" in name:
            raise ProviderError(name, "the name cannot be used as a folder name")
        return self._root / name

    def _forget_exited(self, instance_id: str) -> None:
        for handle, child in list(self._children.items()):
            if child.instance_id == instance_id and child.popen.poll() is not None:
                del self._children[handle]

    def _observe_all(self, instances: Sequence[Instance]) -> dict[str, Observation]:
        return {instance.id: self._observe(instance.handle) for instance in instances}

    def _observe(self, handle: str | None) -> Observation:
        if handle is None:
            return Observation(state=InstanceState.STOPPED, detail="never started")
        parsed = _parse_handle(handle)
        if parsed is None:
            return Observation(
                state=InstanceState.STOPPED, detail=f"not a process handle: {handle!r}"
            )
        child = self._children.get(handle)
        if child is not None:
            code = child.popen.poll()
            if code is None:
                return Observation(state=InstanceState.RUNNING)
            return _exit_observation(code, child.stopped)
        pid, start = parsed
        seen = _probe(pid)
        if seen is None:
            return Observation(state=InstanceState.STOPPED, detail=f"no process {pid}: exited")
        if seen.start != start:
            return Observation(
                state=InstanceState.STOPPED,
                detail=f"pid reused: {pid} is now another process",
            )
        if seen.zombie:
            return Observation(state=InstanceState.STOPPED, detail=f"process {pid} exited")
        return Observation(state=InstanceState.RUNNING)

    def _family(self, handle: str | None) -> list[psutil.Process]:
        """The handle's process, then its descendants; empty unless it runs."""
        parsed = _incarnation(handle)
        if parsed is None:
            return []
        try:
            leader = psutil.Process(parsed[0])
            family = [leader, *leader.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []
        # Alive before and after psutil looked: the process it looked at was ours.
        if _incarnation(handle) is None:
            return []
        return family

    @staticmethod
    def _signal(incarnation: tuple[int, str], family: list[psutil.Process], sig: int) -> None:
        pid, start = incarnation
        seen = _probe(pid)
        # The leader, alive or an unreaped zombie, still holds its pid, and with
        # it the process group's id: the group is the instance's.
        group_is_ours = seen is not None and seen.start == start
        if group_is_ours:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, sig)
        for process in family:
            try:
                if group_is_ours and os.getpgid(process.pid) == pid:
                    continue  # Signalled with the group: once is enough.
                # psutil checks the creation time before it signals.
                process.send_signal(sig)
            except (ProcessLookupError, psutil.NoSuchProcess, psutil.AccessDenied):
                pass


def _start_failure(executable: str, cwd: Path, exc: OSError | ValueError) -> str:
    if isinstance(exc, ValueError):
        # An argument or environment variable with a NUL byte or "=" in its name.
        return f"cannot start {executable!r}: {exc}"
    if exc.filename is not None and str(exc.filename) == str(cwd):
        return f"cannot enter working directory {cwd}: {exc.strerror}"
    if isinstance(exc, FileNotFoundError) and "/" not in executable:
        return f"cannot execute {executable!r}: not found on PATH"
    return f"cannot execute {executable!r}: {exc.strerror or exc}"

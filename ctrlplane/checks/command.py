"""The ``command`` check: run an argv, never through a shell; exit code 0 passes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess

from ctrlplane.checks.text import bounded
from ctrlplane.store.health import CheckSpec, Outcome
from ctrlplane.store.instances import Instance
from ctrlplane.types import Probe

# How much of the combined stdout and stderr the message keeps (the end of it).
OUTPUT_LIMIT = 1024
# After the command exits, how long its output may take to arrive.
_DRAIN_GRACE = 0.5


def _unknown(reason: str) -> Probe:
    return Probe(outcome=Outcome.UNKNOWN, message=bounded(f"command check: {reason}"))


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # nothing left in the group
        os.killpg(pgid, signal.SIGKILL)


class _Protocol(asyncio.SubprocessProtocol):
    """Keeps the last ``OUTPUT_LIMIT`` bytes of output and says when the process exits."""

    def __init__(self) -> None:
        self.tail = bytearray()
        self.exited = asyncio.Event()
        self.output_closed = asyncio.Event()

    def pipe_data_received(self, fd: int, data: bytes | bytearray) -> None:
        self.tail += data
        del self.tail[: -OUTPUT_LIMIT - 1]  # one byte more, to know it was cut

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        self.output_closed.set()

    def process_exited(self) -> None:
        self.exited.set()


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _describe(code: int, tail: bytearray) -> str:
    head = f"killed by {_signal_name(-code)}" if code < 0 else f"exit {code}"
    text = tail[-OUTPUT_LIMIT:].decode("utf-8", "replace").strip()
    if len(tail) > OUTPUT_LIMIT:
        text = "..." + text
    return bounded(f"{head}: {text}" if text else head)


class CommandChecker:
    """Runs ``spec.command`` (an argv) and passes when it exits with 0.

    The argv goes to ``exec`` as it is: no shell, so ``;``, ``|`` or ``$(...)``
    in an argument are plain characters, and the executable is looked up on
    ``PATH``. The command inherits the control plane's environment and working
    directory; stdin is ``/dev/null``; stdout and stderr are merged and the
    last ``OUTPUT_LIMIT`` bytes of them end the message ("exit 3: <tail>").

    The command runs in a process group of its own. When it is cancelled (the
    caller enforces ``spec.timeout``) the whole group is killed and the command
    reaped before the cancellation goes on; when it exits, whatever it left
    running in its group is killed too.
    """

    type: str = "command"

    async def check(self, spec: CheckSpec, instance: Instance) -> Probe:
        """Run the command once."""
        argv = spec.command
        if not argv:
            return _unknown("needs a non-empty 'command' list")
        if not argv[0]:
            return _unknown("the executable name is empty")
        if any("\0" in arg for arg in argv):
            return _unknown("an argument contains a NUL character")
        loop = asyncio.get_running_loop()
        try:
            transport, protocol = await loop.subprocess_exec(
                _Protocol,
                *argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except FileNotFoundError:
            return _unknown(f"{argv[0]!r}: no such executable")
        except PermissionError:
            return _unknown(f"{argv[0]!r}: permission denied")
        except OSError as exc:
            return _unknown(f"cannot run {argv[0]!r}: {exc.strerror or exc}")
        # Process.wait() would not do: on Python 3.11 it also waits for the
        # pipes to close, which a process the command left behind can delay.
        pid = transport.get_pid()
        try:
            await protocol.exited.wait()
            # Whatever the command left running in its group goes too, so
            # that nothing holds the pipe open and nothing outlives a check.
            _kill_group(pid)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_DRAIN_GRACE):
                    await protocol.output_closed.wait()
        finally:
            try:
                if transport.get_returncode() is None:  # cancelled: kill it all and reap
                    _kill_group(pid)
                    await protocol.exited.wait()
            finally:
                transport.close()
        code = transport.get_returncode()
        assert code is not None  # the process has exited
        outcome = Outcome.PASS if code == 0 else Outcome.FAIL
        return Probe(outcome=outcome, message=_describe(code, protocol.tail))

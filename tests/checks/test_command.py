"""The command checker against real commands: output, exit codes, timeouts, leftovers."""

from __future__ import annotations

import asyncio
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from ctrlplane.checks import (
    CommandChecker,
)
from ctrlplane.checks.command import OUTPUT_LIMIT
from ctrlplane.store.health import Outcome
from ctrlplane.types import Probe
from tests.checks.helpers import INSTANCE, PY, children, gone, spec
from tests.helpers import wait_for

# --- command ----------------------------------------------------------------------


async def test_command_passes_on_exit_0() -> None:
    probe = await CommandChecker().check(
        spec("command", command=[PY, "-c", "print('hi')"]), INSTANCE
    )
    assert probe == Probe(outcome=Outcome.PASS, message="exit 0: hi")


async def test_command_fails_with_exit_code_and_output() -> None:
    code = "import sys; print('out'); sys.stdout.flush(); sys.exit('boom')"
    probe = await CommandChecker().check(spec("command", command=[PY, "-c", code]), INSTANCE)
    assert probe == Probe(outcome=Outcome.FAIL, message="exit 1: out\nboom")
    probe = await CommandChecker().check(
        spec("command", command=[PY, "-c", "raise SystemExit(3)"]), INSTANCE
    )
    assert probe == Probe(outcome=Outcome.FAIL, message="exit 3")


async def test_command_killed_by_a_signal_fails() -> None:
    code = "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"
    probe = await CommandChecker().check(spec("command", command=[PY, "-c", code]), INSTANCE)
    assert probe == Probe(outcome=Outcome.FAIL, message="killed by SIGTERM")


async def test_command_keeps_only_the_tail_of_the_output() -> None:
    code = "print('x' * 100_000 + 'END')"
    probe = await CommandChecker().check(spec("command", command=[PY, "-c", code]), INSTANCE)
    assert probe.outcome == Outcome.PASS
    assert probe.message.startswith("exit 0: ...x") and probe.message.endswith("xEND")
    assert len(probe.message) <= len("exit 0: ...") + OUTPUT_LIMIT


async def test_command_arguments_never_reach_a_shell(tmp_path: Path) -> None:
    literal = f"a; touch {tmp_path}/y $(touch {tmp_path}/z) `touch {tmp_path}/w` | cat"
    argv = [PY, "-c", "import sys; print(sys.argv[1])", literal]
    probe = await CommandChecker().check(spec("command", command=argv), INSTANCE)
    assert probe == Probe(outcome=Outcome.PASS, message=f"exit 0: {literal}")
    assert _names(tmp_path) == []


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


async def test_command_timed_out_is_killed_and_reaped() -> None:
    before = children()
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await CommandChecker().check(spec("command", command=["sleep", "30"]), INSTANCE)
    assert time.monotonic() - started < 2
    # Not even a zombie: the check reaped its child before letting the timeout through.
    assert children() - before == set()


async def test_command_cancelled_kills_its_process_group(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    code = textwrap.dedent(
        """
        import os, subprocess, sys, time
        child = subprocess.Popen(["sleep", "30"])
        open(sys.argv[1] + ".tmp", "w").write(f"{os.getpid()} {child.pid}")
        os.rename(sys.argv[1] + ".tmp", sys.argv[1])
        time.sleep(30)
        """
    )
    task = asyncio.create_task(
        CommandChecker().check(spec("command", command=[PY, "-c", code, str(pids)]), INSTANCE)
    )
    await wait_for(pids.exists, within=5)
    command_pid, grandchild_pid = map(int, pids.read_text().split())
    assert not gone(grandchild_pid)
    task.cancel()
    await asyncio.wait({task}, timeout=5)
    assert task.cancelled()
    assert not psutil.pid_exists(command_pid)
    await wait_for(lambda: gone(grandchild_pid), within=2)


async def test_command_leftovers_are_killed_when_it_exits() -> None:
    # The background sleep inherits stdout: left alone it would hold the pipe open for 30 s.
    code = "import subprocess; print(subprocess.Popen(['sleep', '30']).pid)"
    async with asyncio.timeout(5):
        probe = await CommandChecker().check(spec("command", command=[PY, "-c", code]), INSTANCE)
    assert probe.outcome == Outcome.PASS
    leftover = int(probe.message.removeprefix("exit 0: "))
    await wait_for(lambda: gone(leftover), within=2)

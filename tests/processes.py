"""Running ``ctrlplane`` as a user would: the installed console script, in its own process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def ctrlplane_bin() -> str:
    """The ``ctrlplane`` console script of the Python running the tests."""
    candidate = Path(sys.executable).parent / "ctrlplane"
    return str(candidate) if candidate.exists() else "ctrlplane"


def env_for(log_dir: Path | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CTRLPLANE_")}
    # The test workers live in tests/sample_workers.py.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    if log_dir is not None:
        env["CTRLPLANE_TEST_LOG_DIR"] = str(log_dir)
    env.update(extra)
    return env


def run_cli(
    args: Sequence[str], env: dict[str, str], timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """Run a short ``ctrlplane`` command to completion."""
    return subprocess.run(
        [ctrlplane_bin(), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@contextmanager
def started(
    args: Sequence[str], env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Start a long-running ``ctrlplane`` command; kill it if the test leaves it running."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [ctrlplane_bin(), *args], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def stop(proc: subprocess.Popen[bytes], timeout: float = 15) -> int:
    """SIGTERM, as an init system would, and wait for the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=timeout)

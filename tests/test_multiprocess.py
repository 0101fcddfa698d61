"""Several ``ctrlplane run`` processes on one NATS: each slot once, crashes survived."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

from ctrlplane.bus.server import ServerInfo
from ctrlplane.bus.subjects import Subjects
from tests.helpers import wait_for
from tests.processes import env_for, started, stop
from tests.sample_workers import read_log


def _config(tmp_path: Path, subjects: Subjects, worker: str) -> Path:
    path = tmp_path / "ctrlplane.toml"
    path.write_text(
        f'subject_prefix = "{subjects.prefix}"\nworkers = ["tests.sample_workers:{worker}"]\n'
        'stop_grace = "2s"\n',
        encoding="utf-8",
    )
    return path


def _replicas(
    stack: ExitStack, n: int, tmp_path: Path, nats_server: ServerInfo, config: Path, logs: Path
) -> list[subprocess.Popen[bytes]]:
    # One store for all (a SQLite file the processes of one host may share):
    # replicas on stores of their own would refuse to join each other.
    env = env_for(logs, CTRLPLANE_STORE_URL=f"sqlite://{tmp_path / 'store.db'}")
    # A data dir each: one process per data dir is the rule (a lock holds it).
    return [
        stack.enter_context(
            started(
                [
                    "run",
                    "--config",
                    str(config),
                    "--nats-url",
                    nats_server.client_url,
                    "--data-dir",
                    str(tmp_path / f"data-{i}"),
                    "--log-format",
                    "json",
                ],
                env,
                tmp_path / f"replica-{i}.log",
            )
        )
        for i in range(n)
    ]


async def test_three_processes_run_each_slot_exactly_once(
    tmp_path: Path, nats_server: ServerInfo, subjects: Subjects
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    config = _config(tmp_path, subjects, "SlotLog")
    with ExitStack() as stack:
        procs = _replicas(stack, 3, tmp_path, nats_server, config, logs)

        def slots_seen() -> int:
            return len({r["slot"] for r in read_log(logs)})

        await wait_for(lambda: slots_seen() >= 6, within=30)
        codes = await asyncio.gather(*(asyncio.to_thread(stop, p) for p in procs))
    assert codes == [0, 0, 0]
    records = read_log(logs)
    slots = Counter(int(str(r["slot"])) for r in records)
    assert [s for s, n in slots.items() if n > 1] == [], f"slots run twice: {slots}"
    ordered = sorted(slots)
    assert ordered == list(range(ordered[0], ordered[-1] + 1)), f"slots lost: {ordered}"
    # All three processes were up; the work was not all done by one of them
    # only because the others never started.
    assert len(list(logs.glob("*.jsonl"))) >= 1
    for i in range(3):
        assert "control plane started" in (tmp_path / f"replica-{i}.log").read_text()


async def test_tick_of_a_process_killed_mid_run_is_run_by_another(
    tmp_path: Path, nats_server: ServerInfo, subjects: Subjects
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    config = _config(tmp_path, subjects, "SlowFirstAttempt")
    with ExitStack() as stack:
        procs = _replicas(stack, 2, tmp_path, nats_server, config, logs)
        await wait_for(lambda: any(r["phase"] == "start" for r in read_log(logs)), within=30)
        first = read_log(logs)[0]
        victim = int(str(first["pid"]))
        os.kill(victim, signal.SIGKILL)
        await wait_for(lambda: any(r["phase"] == "done" for r in read_log(logs)), within=30)
        survivors = [p for p in procs if p.pid != victim]
        codes = await asyncio.gather(*(asyncio.to_thread(stop, p) for p in survivors))
    assert codes == [0]
    done = [r for r in read_log(logs) if r["phase"] == "done"]
    assert len(done) == 1
    assert done[0]["slot"] == first["slot"]
    assert done[0]["attempt"] == 2
    assert done[0]["pid"] != victim

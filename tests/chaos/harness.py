"""Real nats-server and real ``ctrlplane run`` processes, killed on a plan; shared by the
chaos tests and ``bench/chaos.py``.

Every replica has its own data dir (one process per data dir), so its own
SQLite file; a killed replica is restarted on the same data dir. The harness
writes ``kill``, ``exit``, ``nats-down`` and ``nats-up`` lines into the run
log the workers write to (see ``tests/chaos/workers.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import msgspec

from ctrlplane.actors.spec import spec_of
from ctrlplane.bus.server import EmbeddedServer, ServerInfo
from tests.chaos.analysis import Report, Row, RunLog, Schedule, analyse, parse_run_log
from tests.chaos.workers import BEATS, RUN_LOG_ENV, append, beat_refs
from tests.processes import ctrlplane_bin, env_for

STOP_GRACE_S = 2.0
START_TIMEOUT_S = 60.0
BUILTIN_WORKERS = (
    "reconciler",
    "health_runner",
    "telemetry_collector",
    "gc",
    "cert_renewer",
    "remediator",
    "audit_recorder",
)


def note(ev: str, **fields: object) -> None:
    """A harness line in the run log."""
    append({"ev": ev, "t": time.time(), **fields})


class Nats:
    """A nats-server on a data dir that can be SIGKILLed and restarted on the same port."""

    def __init__(self, data_dir: Path) -> None:
        self._data_dir = data_dir
        self._server = EmbeddedServer(data_dir)
        self.info: ServerInfo | None = None
        self.port = 0

    @property
    def url(self) -> str:
        assert self.info is not None
        return self.info.client_url

    async def start(self) -> None:
        self._server = EmbeddedServer(self._data_dir, port=self.port)
        self.info = await self._server.start()
        self.port = int(self.info.url.rsplit(":", 1)[1])

    async def kill(self) -> None:
        assert self.info is not None
        note("nats-down", pid=self.info.pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.info.pid, signal.SIGKILL)
        await self._server.stop()

    async def restart(self) -> None:
        await self.start()
        note("nats-up")

    async def stop(self) -> None:
        await self._server.stop()


class Replica:
    """One ``ctrlplane run`` process on its own data dir, restartable.

    Every replica of a cluster uses the one store ``store`` (a SQLite file
    the processes of one host may share): replicas on stores of their own
    would refuse to join each other.
    """

    def __init__(
        self, name: str, root: Path, config: Path, env: dict[str, str], store: Path
    ) -> None:
        self.name = name
        self.data_dir = root / name
        self.store = store
        self.log = root / f"{name}.log"
        self._config = config
        self._env = {**env, "CTRLPLANE_STORE_URL": f"sqlite://{store}"}
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self.exit_seconds: list[float] = []
        self.exit_codes: list[int] = []

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, nats_url: str) -> None:
        self._log_offset = self.log.stat().st_size if self.log.exists() else 0
        args = [
            ctrlplane_bin(),
            "run",
            "--config",
            str(self._config),
            "--nats-url",
            nats_url,
            "--data-dir",
            str(self.data_dir),
            "--log-format",
            "json",
        ]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(args, env=self._env, stdout=out, stderr=subprocess.STDOUT)

    def log_text(self, since_start: bool = False) -> str:
        if not self.log.exists():
            return ""
        with open(self.log, "rb") as f:
            f.seek(self._log_offset if since_start else 0)
            return f.read().decode(errors="replace")

    def started(self) -> bool:
        return "control plane started" in self.log_text(since_start=True)

    async def wait_started(self, within: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + within
        while not self.started():
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited: {self.log_text(True)[-2000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} did not start within {within:g}s")
            await asyncio.sleep(0.05)

    async def kill(self) -> None:
        """SIGKILL, as an OOM killer or a power cut would."""
        if self.proc is None or self.proc.poll() is not None:
            return
        note("kill", pid=self.proc.pid)
        self.proc.kill()
        await asyncio.to_thread(self.proc.wait, 10)
        note("exit", pid=self.proc.pid)

    async def terminate(self, limit: float = 30.0) -> None:
        """SIGTERM and time the exit; SIGKILL after ``limit`` seconds."""
        if self.proc is None or self.proc.poll() is not None:
            return
        proc = self.proc
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.to_thread(proc.wait, limit)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = await asyncio.to_thread(proc.wait, 10)
        self.exit_seconds.append(time.monotonic() - sent)
        self.exit_codes.append(code)
        note("exit", pid=proc.pid)

    def reap(self) -> None:
        """Kill a process the test left running (cleanup only)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def integrity(self) -> str:
        return integrity_check(self.store)

    def log_events(self, event: str) -> list[dict[str, object]]:
        """The JSON log records of every incarnation whose ``event`` is ``event``."""
        found = []
        for line in self.log_text().splitlines():
            with contextlib.suppress(ValueError):
                rec = json.loads(line)
                if isinstance(rec, dict) and rec.get("event") == event:
                    found.append(rec)
        return found


def read_rows(db: Path) -> list[Row]:
    """Every ``worker_runs`` row of one SQLite file (none when the file is missing)."""
    if not db.exists():
        return []
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as conn:
        return [
            Row(id=i, worker=w, trigger_ref=ref, attempt=a, outcome=o)
            for i, w, ref, a, o in conn.execute(
                "SELECT id, worker, trigger_ref, attempt, outcome FROM worker_runs"
            )
        ]


def integrity_check(db: Path) -> str:
    """``PRAGMA integrity_check`` of one SQLite file: ``ok`` when sound."""
    if not db.exists():
        return "missing"
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as conn:
        return "; ".join(str(r[0]) for r in conn.execute("PRAGMA integrity_check"))


def write_config(path: Path, prefix: str, workers: Sequence[str]) -> Path:
    names = ", ".join(json.dumps(w) for w in workers)
    disabled = ", ".join(json.dumps(w) for w in BUILTIN_WORKERS)
    path.write_text(
        f'subject_prefix = "{prefix}"\n'
        f"workers = [{names}]\n"
        f"disabled_workers = [{disabled}]\n"
        f'stop_grace = "{STOP_GRACE_S:g}s"\n',
        encoding="utf-8",
    )
    return path


def beat_schedules(count: int) -> list[Schedule]:
    out = []
    for i in range(count):
        spec = spec_of(BEATS[f"BEAT_{i:02d}"])
        out.append(
            Schedule(
                worker=spec.name,
                interval_s=spec.interval_s,
                offset_s=spec.offset.total_seconds(),
            )
        )
    return out


class Cluster:
    """A nats-server and named replicas under ``root``, all stopped on exit.

    Use ``async with Cluster(root, workers) as c:``; the run log path is put in
    this process's environment too, so :func:`note` writes to it.
    """

    def __init__(self, root: Path, workers: Sequence[str]) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.run_log = root / "runs.jsonl"
        self.run_log.touch()
        self.store = root / "store.db"
        self.prefix = f"chaos{uuid.uuid4().hex[:8]}"
        self.config = write_config(root / "ctrlplane.toml", self.prefix, workers)
        self.env = env_for(None, **{RUN_LOG_ENV: str(self.run_log)})
        self.nats = Nats(root / "nats")
        self.replicas: dict[str, Replica] = {}
        self._saved_env: str | None = None

    async def __aenter__(self) -> Cluster:
        self._saved_env = os.environ.get(RUN_LOG_ENV)
        os.environ[RUN_LOG_ENV] = str(self.run_log)
        _reset_log_fd()
        await self.nats.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            for replica in self.replicas.values():
                replica.reap()
            await self.nats.stop()
        finally:
            if self._saved_env is None:
                os.environ.pop(RUN_LOG_ENV, None)
            else:
                os.environ[RUN_LOG_ENV] = self._saved_env
            _reset_log_fd()

    def replica(self, name: str, env: dict[str, str] | None = None) -> Replica:
        rep = Replica(name, self.root, self.config, env or self.env, self.store)
        self.replicas[name] = rep
        return rep

    async def start(self, names: Sequence[str], url: str | None = None) -> list[Replica]:
        reps = [self.replicas.get(n) or self.replica(n) for n in names]
        for rep in reps:
            rep.start(url or self.nats.url)
        await asyncio.gather(*(rep.wait_started() for rep in reps))
        return reps

    async def stop_all(self) -> None:
        """SIGTERM every live replica at once, timing each exit."""
        live = [r for r in self.replicas.values() if r.proc is not None]
        # A replica still starting is given the time to finish first: the exit
        # bound is about stopping a running process.
        with contextlib.suppress(AssertionError):
            await asyncio.gather(*(r.wait_started(30) for r in live if r.proc.poll() is None))  # type: ignore[union-attr]
        await asyncio.gather(*(r.terminate() for r in live))

    def read_log(self) -> RunLog:
        return parse_run_log(self.run_log.read_text(encoding="utf-8").splitlines())

    def rows(self) -> list[Row]:
        return read_rows(self.store)

    def integrity(self) -> dict[str, str]:
        return {"store": integrity_check(self.store)}

    def exit_seconds(self) -> list[float]:
        return [s for rep in self.replicas.values() for s in rep.exit_seconds]


def _reset_log_fd() -> None:
    from tests.chaos import workers

    if workers._fd is not None:
        os.close(workers._fd)
        workers._fd = None


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    """A beat run: ``replicas`` x ``beats`` workers at 1 s for ``seconds``, with faults."""

    replicas: int = 3
    beats: int = 20
    seconds: float = 40.0
    replica_kills: int = 0
    nats_restarts: int = 0
    nats_down_s: float = 2.0


class Result(msgspec.Struct, kw_only=True):
    """What a plan measured."""

    report: Report
    integrity: dict[str, str]
    exit_seconds: list[float]
    exit_codes: list[int]


def fault_times(plan: Plan, t0: float) -> list[tuple[float, str]]:
    """When each fault happens: spread evenly over the window, NATS restarts between kills.

    Each fault is shifted by a different fraction of a second, so that faults
    do not all land at the same phase of the 1 s slots.
    """
    faults: list[tuple[float, str]] = []
    span = plan.seconds - 5.0
    for i in range(plan.replica_kills):
        jitter = (i * 0.618) % 1.0
        faults.append((t0 + 2.0 + jitter + span * (i + 0.5) / plan.replica_kills, "replica"))
    for i in range(plan.nats_restarts):
        jitter = (i * 0.382) % 1.0
        faults.append((t0 + 2.0 + jitter + span * (i + 0.25) / plan.nats_restarts, "nats"))
    return sorted(faults)


async def run_plan(root: Path, plan: Plan, *, progress: bool = False) -> Result:
    """Run ``plan`` against real processes and analyse what happened."""
    names = [f"r{i}" for i in range(plan.replicas)]
    async with Cluster(root, beat_refs(plan.beats)) as cluster:
        await cluster.start(names)
        t0 = time.time() + 1.0
        t1 = t0 + plan.seconds
        victim = 0
        for at, what in fault_times(plan, t0):
            await asyncio.sleep(max(0.0, at - time.time()))
            if what == "replica":
                rep = cluster.replicas[names[victim % len(names)]]
                victim += 1
                await rep.kill()
                rep.start(cluster.nats.url)
            else:
                await cluster.nats.kill()
                await asyncio.sleep(plan.nats_down_s)
                await cluster.nats.restart()
            if progress:
                print(f"  {at - t0:6.1f} s  {what} fault", flush=True)
        # Runs of the window's last slots end within an interval and a hold.
        await asyncio.sleep(max(0.0, t1 + 1.5 - time.time()))
        await cluster.stop_all()
        report = analyse(cluster.read_log(), cluster.rows(), beat_schedules(plan.beats), t0, t1)
        return Result(
            report=report,
            integrity=cluster.integrity(),
            exit_seconds=cluster.exit_seconds(),
            exit_codes=[c for rep in cluster.replicas.values() for c in rep.exit_codes],
        )

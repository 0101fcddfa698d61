"""What the chaos suite measures, as pure functions of the run log and the run rows.

Inputs:

* the shared run log (see ``tests/chaos/workers.py``): ``start`` and ``end``
  lines of every run, written by the workers, and ``kill``, ``exit``,
  ``nats-down`` and ``nats-up`` lines written by the harness;
* the ``worker_runs`` rows of every process's SQLite file.

Outputs (:class:`Report`): slots expected in the window, slots run to
completion more than once (duplicates), overlapping runs of one worker,
slots lost outside broker downtime, slots coalesced (a ``skipped`` row),
completed runs with no row, handover times after a replica kill and
recovery times after a broker restart.

A run whose process was killed within :data:`RERUN_EXCUSE_S` after it
logged its end may not have reached the runtime's books: the runtime saw a
process die mid-run, and running it again is allowed (DESIGN: "a run whose
process dies mid-run is run again"). So is a run whose process was killed
before the run's own row was written: its message is acked only after that
row commits, so it is delivered again (events are at least once). Such reruns
are counted apart (``reruns_after_kill``), never as duplicates; scenarios
that kill at a known point after the run's record (the ack proxy) pass
``excuse_s=0``, and their victim's row exists, so nothing excuses a rerun.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence

import msgspec

RERUN_EXCUSE_S = 0.1


class Run(msgspec.Struct, frozen=True, kw_only=True):
    """One run as the worker logged it; ``end`` is None when it never finished."""

    worker: str
    ref: str
    slot: int | None
    run_id: str
    attempt: int
    pid: int
    start: float
    end: float | None
    aborted: float | None = None
    """When the run was cancelled (timeout, stop) without completing."""


class Row(msgspec.Struct, frozen=True, kw_only=True):
    """One ``worker_runs`` row."""

    id: str
    worker: str
    trigger_ref: str | None
    attempt: int
    outcome: str


class Schedule(msgspec.Struct, frozen=True, kw_only=True):
    """A periodic worker's slots: slot ``k`` starts at ``k * interval + offset``."""

    worker: str
    interval_s: float
    offset_s: float

    def slot_start(self, slot: int) -> float:
        return slot * self.interval_s + self.offset_s

    def ref(self, slot: int) -> str:
        return f"{self.worker}/{slot}"


class Outage(msgspec.Struct, frozen=True, kw_only=True):
    """The broker was killed at ``down`` and running again at ``up``."""

    down: float
    up: float


class RunLog(msgspec.Struct, frozen=True, kw_only=True):
    """The run log, parsed."""

    runs: list[Run]
    kills: list[tuple[int, float]]
    """``(pid, time)`` of every SIGKILL, by the harness or the ack proxy."""
    exits: list[tuple[int, float]]
    """``(pid, time)`` at which the harness saw a process gone."""
    outages: list[Outage]


def parse_run_log(lines: Iterable[str]) -> RunLog:
    """Pair ``start`` and ``end`` lines by run id; collect kills, exits and outages."""
    starts: dict[str, dict[str, object]] = {}
    ends: dict[str, float] = {}
    aborts: dict[str, float] = {}
    kills: list[tuple[int, float]] = []
    exits: list[tuple[int, float]] = []
    downs: list[float] = []
    ups: list[float] = []
    for line in lines:
        if not line.strip():
            continue
        rec = json.loads(line)
        ev = rec["ev"]
        if ev == "start":
            starts[rec["run"]] = rec
        elif ev == "end":
            ends[rec["run"]] = float(rec["t"])
        elif ev == "abort":
            aborts[rec["run"]] = float(rec["t"])
        elif ev == "kill":
            kills.append((int(rec["pid"]), float(rec["t"])))
        elif ev == "exit":
            exits.append((int(rec["pid"]), float(rec["t"])))
        elif ev == "nats-down":
            downs.append(float(rec["t"]))
        elif ev == "nats-up":
            ups.append(float(rec["t"]))
    runs = [
        Run(
            worker=str(rec["w"]),
            ref=str(rec["ref"]),
            slot=None if rec["slot"] is None else int(str(rec["slot"])),
            run_id=run_id,
            attempt=int(str(rec["a"])),
            pid=int(str(rec["pid"])),
            start=float(str(rec["t"])),
            end=ends.get(run_id),
            aborted=aborts.get(run_id),
        )
        for run_id, rec in starts.items()
    ]
    runs.sort(key=lambda r: r.start)
    outages = [Outage(down=d, up=u) for d, u in zip(sorted(downs), sorted(ups), strict=False)]
    return RunLog(runs=runs, kills=sorted(kills), exits=sorted(exits), outages=outages)


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


def _first_after(events: Sequence[tuple[int, float]], pid: int, t: float) -> float | None:
    times = [at for p, at in events if p == pid and at >= t]
    return min(times) if times else None


def _kill_of(kills: Sequence[tuple[int, float]], pid: int) -> float | None:
    """When ``pid`` was SIGKILLed, if it was. A kill is noted just before the
    signal is sent, and a process may log a few more lines while it lands,
    so every line of a killed process counts as before its kill."""
    times = [at for p, at in kills if p == pid]
    return min(times) if times else None


def killed_soon_after(run: Run, kills: Sequence[tuple[int, float]], excuse_s: float) -> bool:
    """Whether ``run``'s process was SIGKILLed within ``excuse_s`` of its end
    (or while it ran)."""
    if run.end is None:
        return False
    kill = _kill_of(kills, run.pid)
    return kill is not None and kill - run.end <= excuse_s


def unrecorded_when_killed(
    run: Run, kills: Sequence[tuple[int, float]], recorded: set[str]
) -> bool:
    """Whether ``run``'s process was SIGKILLed after its end before its own
    ``worker_runs`` row was written: a message is acked only after its row
    commits, so such a message was never acked and is delivered again."""
    if run.end is None or run.run_id in recorded:
        return False
    return _kill_of(kills, run.pid) is not None


def duplicates(
    runs: Sequence[Run],
    kills: Sequence[tuple[int, float]],
    excuse_s: float = RERUN_EXCUSE_S,
    recorded: set[str] | None = None,
) -> tuple[dict[str, list[Run]], dict[str, list[Run]]]:
    """Refs completed more than once: ``(duplicates, reruns_after_kill)``.

    A second completion is excused (a rerun after kill) when every earlier
    completion of the ref was killed within ``excuse_s`` of its end, or was
    killed before its own row was written (``recorded``: the run ids that
    have a row).
    """
    done: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        if run.end is not None:
            done[run.ref].append(run)
    dups: dict[str, list[Run]] = {}
    reruns: dict[str, list[Run]] = {}
    for ref, completed in done.items():
        if len(completed) < 2:
            continue
        completed.sort(key=lambda r: r.start)
        earlier = completed[:-1]
        if all(
            killed_soon_after(r, kills, excuse_s)
            or (recorded is not None and unrecorded_when_killed(r, kills, recorded))
            for r in earlier
        ):
            reruns[ref] = completed
        else:
            dups[ref] = completed
    return dups, reruns


def effective_end(run: Run, log: RunLog) -> float:
    """When ``run`` stopped: its end or abort, else its process's kill or exit, else never."""
    if run.end is not None:
        return run.end
    if run.aborted is not None:
        return run.aborted
    candidates = (
        _first_after(log.kills, run.pid, run.start),
        _first_after(log.exits, run.pid, run.start),
    )
    bounds = [t for t in candidates if t is not None]
    return min(bounds) if bounds else math.inf


def overlaps(log: RunLog, workers: Iterable[str] | None = None) -> list[tuple[Run, Run]]:
    """Pairs ``(earlier, later)`` of runs of one worker where the later started first."""
    wanted = None if workers is None else set(workers)
    by_worker: dict[str, list[Run]] = defaultdict(list)
    for run in log.runs:
        if wanted is None or run.worker in wanted:
            by_worker[run.worker].append(run)
    found: list[tuple[Run, Run]] = []
    for runs in by_worker.values():
        runs.sort(key=lambda r: r.start)
        holder: Run | None = None
        holder_end = -math.inf
        for run in runs:
            if holder is not None and run.start < holder_end:
                found.append((holder, run))
            end = effective_end(run, log)
            if end > holder_end:
                holder, holder_end = run, end
    return found


def expected_slots(schedule: Schedule, t0: float, t1: float) -> list[int]:
    """Slots whose start lies in ``[t0, t1)``."""
    first = math.ceil((t0 - schedule.offset_s) / schedule.interval_s)
    slots = []
    slot = first
    while schedule.slot_start(slot) < t1:
        if schedule.slot_start(slot) >= t0:
            slots.append(slot)
        slot += 1
    return slots


def recovered_at(runs: Sequence[Run], after: float) -> float | None:
    """When the first run after ``after`` started (any worker, any process)."""
    starts = [r.start for r in runs if r.start > after]
    return min(starts) if starts else None


def broker_downtime(log: RunLog, t1: float) -> list[tuple[float, float]]:
    """Each outage from the kill until the first run after the restart."""
    spans = []
    for outage in log.outages:
        back = recovered_at(log.runs, outage.up)
        spans.append((outage.down, t1 if back is None else back))
    return spans


def classify_slots(
    schedules: Sequence[Schedule],
    log: RunLog,
    rows: Sequence[Row],
    t0: float,
    t1: float,
) -> tuple[list[str], list[str], list[str], int]:
    """The window's slots: ``(lost, coalesced, in_downtime, expected)``.

    A slot is done when a run of it completed. Otherwise it is coalesced when
    a ``skipped`` row names it, in downtime when it started during a broker
    outage (up to one interval after the first run that followed it), and
    lost when none of these holds.
    """
    done = {r.ref for r in log.runs if r.end is not None}
    skipped = {r.trigger_ref for r in rows if r.outcome == "skipped" and r.trigger_ref}
    spans = broker_downtime(log, t1)
    lost: list[str] = []
    coalesced: list[str] = []
    down: list[str] = []
    expected = 0
    for schedule in schedules:
        for slot in expected_slots(schedule, t0, t1):
            expected += 1
            ref = schedule.ref(slot)
            start = schedule.slot_start(slot)
            if ref in done:
                continue
            if ref in skipped:
                coalesced.append(ref)
            elif any(a <= start <= b + schedule.interval_s for a, b in spans):
                down.append(ref)
            else:
                lost.append(ref)
    return lost, coalesced, down, expected


def missing_rows(log: RunLog, rows: Sequence[Row]) -> list[Run]:
    """Completed runs that left no trace in ``worker_runs``.

    A run of a process that was SIGKILLed may lose its own row (the batch was
    not written), but then its message was not acknowledged either, so the
    ref must have an ``ok`` row from its rerun, or from the process that
    skipped its redelivery and wrote the record the ledger kept; only a run
    killed within :data:`RERUN_EXCUSE_S` of its end, whose slot was then
    coalesced, may leave none. A run of a process that was
    not killed must have its own row (same run id, or same ref and attempt).
    """
    ids = {r.id for r in rows}
    ok_refs = {r.trigger_ref for r in rows if r.outcome == "ok"}
    skipped_refs = {r.trigger_ref for r in rows if r.outcome == "skipped"}
    ok_attempts = {(r.trigger_ref, r.attempt) for r in rows if r.outcome == "ok"}
    killed = {pid for pid, _ in log.kills}
    missing = []
    for run in log.runs:
        if run.end is None or run.run_id in ids:
            continue
        if run.pid in killed:
            # Killed within moments of its end, the run may not have reached
            # the runtime's books (its slot's completion not yet written):
            # its redelivered tick, stale by then, is coalesced instead.
            unseen = run.ref in skipped_refs and killed_soon_after(run, log.kills, RERUN_EXCUSE_S)
            if run.ref not in ok_refs and not unseen:
                missing.append(run)
        elif (run.ref, run.attempt) not in ok_attempts:
            missing.append(run)
    return missing


def handover_times(log: RunLog, workers: Iterable[str]) -> list[float]:
    """For each replica kill: the longest wait until each worker's next run started."""
    names = list(workers)
    times = []
    for _, killed in log.kills:
        waits = []
        for name in names:
            nxt = [r.start for r in log.runs if r.worker == name and r.start > killed]
            if nxt:
                waits.append(min(nxt) - killed)
        if waits:
            times.append(max(waits))
    return times


def recovery_times(log: RunLog) -> list[float]:
    """For each broker restart: from the restart to the first run after it."""
    out = []
    for outage in log.outages:
        back = recovered_at(log.runs, outage.up)
        if back is not None:
            out.append(back - outage.up)
    return out


class Report(msgspec.Struct, kw_only=True):
    """Every figure of one chaos run."""

    slots: int
    completed_runs: int
    duplicates: int
    reruns_after_kill: int
    overlaps: int
    lost: int
    coalesced: int
    in_downtime: int
    missing_rows: int
    handover_s: list[float]
    recovery_s: list[float]
    examples: dict[str, list[str]]

    def broken(self) -> list[str]:
        """The promises that did not hold, one sentence each."""
        out = []
        if self.duplicates:
            ex = self.examples["duplicates"]
            out.append(f"{self.duplicates} slots ran to completion twice, e.g. {ex}")
        if self.overlaps:
            out.append(f"{self.overlaps} overlapping runs, e.g. {self.examples['overlaps']}")
        if self.lost:
            out.append(f"{self.lost} slots lost outside downtime, e.g. {self.examples['lost']}")
        if self.missing_rows:
            ex = self.examples["missing_rows"]
            out.append(f"{self.missing_rows} completed runs without a worker_runs row, e.g. {ex}")
        return out

    def table(self) -> str:
        """The figures as aligned ``name  value`` lines."""
        hand = self.handover_s
        rec = self.recovery_s
        lines = [
            ("slots", str(self.slots)),
            ("completed runs", str(self.completed_runs)),
            ("duplicates", str(self.duplicates)),
            ("reruns after kill", str(self.reruns_after_kill)),
            ("overlaps", str(self.overlaps)),
            ("lost", str(self.lost)),
            ("coalesced", str(self.coalesced)),
            ("in broker downtime", str(self.in_downtime)),
            ("rows missing", str(self.missing_rows)),
            (
                "handover p50/max",
                f"{percentile(hand, 50):.2f} s / {max(hand, default=math.nan):.2f} s"
                f" ({len(hand)} kills)",
            ),
            (
                "NATS recovery",
                ", ".join(f"{r:.2f} s" for r in rec) or "-",
            ),
        ]
        return "\n".join(f"{name:<20}{value}" for name, value in lines)


def analyse(
    log: RunLog,
    rows: Sequence[Row],
    schedules: Sequence[Schedule],
    t0: float,
    t1: float,
    *,
    excuse_s: float = RERUN_EXCUSE_S,
    overlap_workers: Iterable[str] | None = None,
) -> Report:
    """Everything in one :class:`Report`.

    Overlaps are checked for ``overlap_workers`` (default: the scheduled
    workers); event workers may run concurrently in several processes.
    """
    names = [s.worker for s in schedules]
    dups, reruns = duplicates(log.runs, log.kills, excuse_s, {r.id for r in rows})
    over = overlaps(log, names if overlap_workers is None else overlap_workers)
    lost, coalesced, down, expected = classify_slots(schedules, log, rows, t0, t1)
    missing = missing_rows(log, rows)
    return Report(
        slots=expected,
        completed_runs=sum(1 for r in log.runs if r.end is not None),
        duplicates=len(dups),
        reruns_after_kill=len(reruns),
        overlaps=len(over),
        lost=len(lost),
        coalesced=len(coalesced),
        in_downtime=len(down),
        missing_rows=len(missing),
        handover_s=handover_times(log, names),
        recovery_s=recovery_times(log),
        examples={
            "duplicates": [
                f"{ref}: " + ", ".join(f"pid {r.pid} attempt {r.attempt}" for r in rs)
                for ref, rs in list(dups.items())[:5]
            ],
            "overlaps": [
                f"{a.ref} (pid {a.pid}) and {b.ref} (pid {b.pid}, {b.start - a.start:.2f} s later)"
                for a, b in over[:5]
            ],
            "lost": lost[:5],
            "missing_rows": [f"{r.ref} (pid {r.pid})" for r in missing[:5]],
        },
    )

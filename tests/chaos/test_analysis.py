"""The chaos analysis on hand-made run logs: no servers, no processes."""

from __future__ import annotations

import json
import math

import msgspec

from tests.chaos.analysis import (
    Outage,
    Row,
    Run,
    RunLog,
    Schedule,
    analyse,
    classify_slots,
    duplicates,
    expected_slots,
    missing_rows,
    overlaps,
    parse_run_log,
    percentile,
)

BEAT = Schedule(worker="w", interval_s=1.0, offset_s=0.25)


def _run(
    slot: int, pid: int, start: float, end: float | None, attempt: int = 1, worker: str = "w"
) -> Run:
    return Run(
        worker=worker,
        ref=f"{worker}/{slot}",
        slot=slot,
        run_id=f"{worker}-{slot}-{pid}-{attempt}",
        attempt=attempt,
        pid=pid,
        start=start,
        end=end,
    )


def _log(
    runs: list[Run],
    kills: list[tuple[int, float]] | None = None,
    exits: list[tuple[int, float]] | None = None,
) -> RunLog:
    return RunLog(runs=runs, kills=kills or [], exits=exits or [], outages=[])


def _row(run: Run, outcome: str = "ok") -> Row:
    return Row(
        id=run.run_id, worker=run.worker, trigger_ref=run.ref, attempt=run.attempt, outcome=outcome
    )


def test_parse_pairs_start_and_end_by_run_id() -> None:
    lines = [
        {"ev": "start", "w": "w", "ref": "w/1", "slot": 1, "run": "a", "a": 1, "pid": 7, "t": 1.0},
        {"ev": "start", "w": "w", "ref": "w/2", "slot": 2, "run": "b", "a": 1, "pid": 8, "t": 2.0},
        {"ev": "end", "w": "w", "ref": "w/1", "slot": 1, "run": "a", "a": 1, "pid": 7, "t": 1.2},
        {"ev": "abort", "w": "w", "ref": "w/2", "slot": 2, "run": "b", "a": 1, "pid": 8, "t": 2.05},
        {"ev": "kill", "pid": 8, "t": 2.1},
        {"ev": "exit", "pid": 8, "t": 2.2},
        {"ev": "nats-down", "t": 3.0},
        {"ev": "nats-up", "t": 5.0},
    ]
    log = parse_run_log([json.dumps(x) for x in lines] + [""])
    assert [(r.ref, r.end, r.aborted) for r in log.runs] == [
        ("w/1", 1.2, None),
        ("w/2", None, 2.05),
    ]
    assert log.kills == [(8, 2.1)]
    assert log.exits == [(8, 2.2)]
    assert [(o.down, o.up) for o in log.outages] == [(3.0, 5.0)]


def test_a_slot_completed_twice_is_a_duplicate() -> None:
    first = _run(1, pid=1, start=1.3, end=1.5)
    again = _run(1, pid=2, start=4.0, end=4.2, attempt=2)
    dups, reruns = duplicates([first, again], kills=[])
    assert list(dups) == ["w/1"]
    assert reruns == {}


def test_a_rerun_after_a_kill_right_after_the_end_is_excused_but_not_later() -> None:
    first = _run(1, pid=1, start=1.3, end=1.5)
    again = _run(1, pid=2, start=4.0, end=4.2, attempt=2)
    dups, reruns = duplicates([first, again], kills=[(1, 1.55)])
    assert (list(dups), list(reruns)) == ([], ["w/1"])
    dups, reruns = duplicates([first, again], kills=[(1, 1.55)], excuse_s=0.0)
    assert (list(dups), list(reruns)) == (["w/1"], [])
    dups, _ = duplicates([first, again], kills=[(1, 3.0)])
    assert list(dups) == ["w/1"]


def test_a_rerun_after_a_kill_before_the_record_is_excused_but_not_after() -> None:
    first = _run(1, pid=1, start=1.3, end=1.5)
    again = _run(1, pid=2, start=4.0, end=4.2, attempt=2)
    # Killed a second after the end, its row never written: never acked.
    dups, reruns = duplicates([first, again], kills=[(1, 2.5)], recorded={again.run_id})
    assert (list(dups), list(reruns)) == ([], ["w/1"])
    # Its row was written: the ack followed, a second run is a duplicate.
    recorded = {first.run_id, again.run_id}
    dups, reruns = duplicates([first, again], kills=[(1, 2.5)], recorded=recorded)
    assert (list(dups), list(reruns)) == (["w/1"], [])
    # Not killed at all: a duplicate, row or none.
    dups, _ = duplicates([first, again], kills=[], recorded={again.run_id})
    assert list(dups) == ["w/1"]


def test_an_unfinished_run_is_no_duplicate() -> None:
    dups, reruns = duplicates(
        [_run(1, 1, 1.3, None), _run(1, 2, 4.0, 4.2, attempt=2)], kills=[(1, 2.0)]
    )
    assert dups == reruns == {}


def test_overlaps_of_one_worker_across_processes() -> None:
    a = _run(1, pid=1, start=1.0, end=3.0)
    b = _run(2, pid=2, start=2.0, end=2.2)
    c = _run(3, pid=2, start=3.0, end=3.2)
    other = _run(1, pid=2, start=1.5, end=1.7, worker="v")
    found = overlaps(_log([a, b, c, other]))
    assert [(x.ref, y.ref) for x, y in found] == [("w/1", "w/2")]


def test_an_unfinished_run_lasts_until_its_process_is_killed_or_exits() -> None:
    held = _run(1, pid=1, start=1.0, end=None)
    later = _run(2, pid=2, start=2.0, end=2.2)
    assert overlaps(_log([held, later], kills=[(1, 1.5)])) == []
    assert len(overlaps(_log([held, later], kills=[(1, 2.5)]))) == 1
    assert overlaps(_log([held, later], exits=[(1, 1.9)])) == []
    cancelled = msgspec.structs.replace(held, aborted=1.8)
    assert overlaps(_log([cancelled, later])) == []
    assert len(overlaps(_log([held, later]))) == 1


def test_expected_slots_start_inside_the_window() -> None:
    # Slots start at k + 0.25.
    assert expected_slots(BEAT, 10.0, 13.0) == [10, 11, 12]
    assert expected_slots(BEAT, 10.25, 12.25) == [10, 11]


def test_slots_are_done_coalesced_in_downtime_or_lost() -> None:
    runs = [_run(10, 1, 10.3, 10.5), _run(14, 1, 14.3, 14.5), _run(16, 1, 16.3, 16.5)]
    skipped = Row(id="s", worker="w", trigger_ref="w/11", attempt=1, outcome="skipped")
    log = RunLog(runs=runs, kills=[], exits=[], outages=[])
    lost, coalesced, down, expected = classify_slots([BEAT], log, [skipped], 10.0, 17.0)
    assert expected == 7
    assert coalesced == ["w/11"]
    assert down == []
    assert lost == ["w/12", "w/13", "w/15"]

    log = RunLog(runs=runs, kills=[], exits=[], outages=[Outage(down=11.9, up=13.5)])
    lost, coalesced, down, _ = classify_slots([BEAT], log, [skipped], 10.0, 17.0)
    # Down from 11.9 until the first run after the restart (14.3), plus an interval.
    assert down == ["w/12", "w/13", "w/15"]
    assert lost == []


def test_missing_rows() -> None:
    clean = _run(1, pid=1, start=1.0, end=1.2)
    killed = _run(2, pid=2, start=2.0, end=2.2)
    rerun = _run(2, pid=3, start=5.0, end=5.2, attempt=2)
    log = _log([clean, killed, rerun], kills=[(2, 2.3)])
    # The killed process's own row may be lost when the rerun recorded the slot.
    assert missing_rows(log, [_row(clean), _row(rerun)]) == []
    assert missing_rows(log, [_row(clean)]) == [killed, rerun]
    assert missing_rows(log, [_row(rerun)]) == [clean]
    # A row under another id but with the same ref and attempt counts.
    other_id = Row(id="x", worker="w", trigger_ref="w/1", attempt=1, outcome="ok")
    assert missing_rows(log, [other_id, _row(rerun)]) == []


def test_a_run_killed_at_its_end_may_leave_only_a_coalesced_slot() -> None:
    at_end = _run(2, pid=2, start=2.0, end=2.2)
    skipped = Row(id="s", worker="w", trigger_ref="w/2", attempt=2, outcome="skipped")
    # Killed 50 ms after its end: its completion may never have been written.
    assert missing_rows(_log([at_end], kills=[(2, 2.25)]), [skipped]) == []
    # Killed a second later: it had been recorded in the ledger; a row is owed.
    assert missing_rows(_log([at_end], kills=[(2, 3.2)]), [skipped]) == [at_end]
    # Nothing at all for the slot: missing either way.
    assert missing_rows(_log([at_end], kills=[(2, 2.25)]), []) == [at_end]


def test_analyse_reports_handover_and_recovery() -> None:

    runs = [_run(k, 1 if k < 13 else 2, k + 0.3, k + 0.5) for k in range(10, 17) if k != 13]
    log = RunLog(runs=runs, kills=[(1, 12.9)], exits=[], outages=[Outage(down=14.9, up=15.0)])
    report = analyse(log, [_row(r) for r in runs], [BEAT], 10.0, 17.0)
    assert report.broken() == [f"1 slots lost outside downtime, e.g. {['w/13']}"]
    assert report.slots == 7
    assert report.handover_s == [14.3 - 12.9]
    assert math.isclose(report.recovery_s[0], 15.3 - 15.0)
    assert "handover p50/max" in report.table()


def test_percentile_is_nearest_rank() -> None:
    assert percentile([3.0, 1.0, 2.0, 4.0], 50) == 2.0
    assert percentile([1.0, 2.0], 99) == 2.0
    assert math.isnan(percentile([], 50))

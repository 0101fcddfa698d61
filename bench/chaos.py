"""Chaos, the long version: replicas SIGKILLed and nats-server restarted while 1 s workers run.

What is measured
    ``--replicas`` ``ctrlplane run`` processes (default 3), each on its own
    data dir, run ``--beats`` periodic workers (default 20) at 1 s, each run
    lasting 0.2 s, against one nats-server started here (temporary
    directory, 127.0.0.1, ephemeral port, token). Over ``--seconds``
    (default 180) the harness SIGKILLs a replica ``--kills`` times (default
    15; round robin, restarted at once on the same data dir) and SIGKILLs
    nats-server ``--nats-restarts`` times (default 3; restarted after
    ``--nats-down`` seconds on the same port and store). Then every replica
    gets SIGTERM.

    The workers log every run's start and end to one shared append-only
    file; the analysis (``tests/chaos/analysis.py``, the chaos suite's) reads
    it with every replica's ``worker_runs`` rows.

Figures
    slots (of the window), duplicates (slots run to completion twice),
    reruns after kill (the earlier completion's process was SIGKILLed within
    0.1 s of its end: allowed), overlaps (two runs of one worker at once),
    lost (no run, no ``skipped`` row, outside broker downtime), coalesced
    (``skipped`` rows), in broker downtime, rows missing (a completed run
    without a ``worker_runs`` row), handover time p50/max (per replica kill,
    until every worker ran again), NATS recovery time (from the restart to
    the first run), and the exit time on SIGTERM (bound: stop_grace + 1 s).

Run::

    python bench/chaos.py                          # 180 s, 15 kills, 3 NATS restarts
    python bench/chaos.py --seconds 60 --kills 5 --nats-restarts 1

The last line printed is a JSON object with every figure. ``--check`` exits
1 when a promise is broken.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgspec

from tests.chaos.harness import STOP_GRACE_S, Plan, Result, run_plan


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=180.0, help="measured window")
    parser.add_argument("--kills", type=int, default=15, help="replica SIGKILLs")
    parser.add_argument("--nats-restarts", type=int, default=3, help="nats-server SIGKILLs")
    parser.add_argument("--nats-down", type=float, default=2.0, help="seconds NATS stays down")
    parser.add_argument("--replicas", type=int, default=3, help="ctrlplane run processes")
    parser.add_argument("--beats", type=int, default=20, help="1 s workers (at most 20)")
    parser.add_argument("--check", action="store_true", help="exit 1 if a promise is broken")
    args = parser.parse_args(argv)
    if args.seconds < 10 or args.replicas < 2 or not 1 <= args.beats <= 20:
        parser.error("need --seconds >= 10, --replicas >= 2 and 1 <= --beats <= 20")
    if args.kills < 0 or args.nats_restarts < 0:
        parser.error("--kills and --nats-restarts cannot be negative")
    return args


async def _run(plan: Plan, root: Path) -> Result:
    task = asyncio.current_task()
    if task is not None:
        # SIGTERM cancels, so the harness's finally blocks stop every process.
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await run_plan(root, plan, progress=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = Plan(
        replicas=args.replicas,
        beats=args.beats,
        seconds=args.seconds,
        replica_kills=args.kills,
        nats_restarts=args.nats_restarts,
        nats_down_s=args.nats_down,
    )
    print(
        f"chaos: {plan.replicas} replicas x {plan.beats} workers at 1 s for {plan.seconds:g} s, "
        f"{plan.replica_kills} replica kills, {plan.nats_restarts} NATS restarts, "
        f"{os.cpu_count()} CPUs",
        flush=True,
    )
    try:
        with tempfile.TemporaryDirectory(prefix="ctrlplane-chaos-") as name:
            result = asyncio.run(_run(plan, Path(name)))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; processes and server stopped", file=sys.stderr)
        return 130
    report = result.report
    print(report.table())
    exits = result.exit_seconds
    bound = STOP_GRACE_S + 1
    print(
        f"{'exit on SIGTERM':<20}max {max(exits, default=0):.2f} s (bound {bound:g} s), "
        f"codes {sorted(set(result.exit_codes))}"
    )
    print(f"{'integrity_check':<20}{sorted(set(result.integrity.values()))}")
    for line in report.broken():
        print(f"BROKEN: {line}")
    figures = {"bench": "chaos", "plan": msgspec.to_builtins(plan)}
    print(json.dumps({**figures, **msgspec.to_builtins(result)}))
    held = (
        not report.broken()
        and set(result.integrity.values()) == {"ok"}
        and max(exits, default=0) <= bound
    )
    return 1 if args.check and not held else 0


if __name__ == "__main__":
    sys.exit(main())

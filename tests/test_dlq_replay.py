"""``ctrlplane dlq replay``: a dead letter goes back to the worker that gave up
on it, and to no other subscriber; one that fails again is a new letter."""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import msgspec
import nats
import nats.errors
import pytest

from ctrlplane.actors import RunContext, Scheduler
from ctrlplane.api import DlqListReply, DlqReplayReply, DlqReplayRequest, RunsReply, request
from ctrlplane.api.deadletters import get_letter, list_letters, replay_letter
from ctrlplane.api.errors import NotFoundError
from ctrlplane.bus import Event
from ctrlplane.bus.connection import MSG_ID, Bus
from ctrlplane.bus.messages import DeadLetter
from ctrlplane.bus.replay import (
    REPLAY_OF_HEADER,
    SUBJECT_HEADER,
    TICK_REFUSAL,
    replay_refusal,
    to_replay,
)
from ctrlplane.bus.server import ServerInfo, read_server_info
from ctrlplane.bus.subjects import Subjects
from tests.helpers import dead_letters, wait_for
from tests.processes import env_for, run_cli, started
from tests.sample_workers import read_log

S = Subjects()
WORKER = "fails-until-fixed"

# --------------------------------------------------------------------------
# The pure parts.


def _letter(**fields: Any) -> DeadLetter:
    base: dict[str, Any] = {
        "worker": WORKER,
        "subject": S.event("test.fail"),
        "reason": "boom",
        "payload": '{"n": 7}',
    }
    return DeadLetter(**{**base, **fields})


def test_a_replay_goes_to_the_worker_alone_with_its_first_subject() -> None:
    replay = to_replay(_letter(), 12, S)
    assert replay.subject == "ctrlplane.replay.fails-until-fixed"
    assert replay.consumer == "replay-fails-until-fixed"
    assert replay.payload == b'{"n": 7}'
    assert replay.headers == {
        SUBJECT_HEADER: "ctrlplane.events.test.fail",
        REPLAY_OF_HEADER: "12",
        MSG_ID: "replay/12",
    }
    on_node = to_replay(_letter(node="node-a"), 3, S)
    assert on_node.subject == "ctrlplane.replay.fails-until-fixed.node-a"
    assert on_node.consumer == "replay-fails-until-fixed@node-a"
    raw = bytes([0xFF, 0x00, 0x7B])
    binary = _letter(payload=None, payload_base64=base64.b64encode(raw).decode())
    assert replay_refusal(binary, S) is None
    assert to_replay(binary, 4, S).payload == raw


def test_what_is_not_replayed_says_why() -> None:
    assert replay_refusal(_letter(), S) is None
    assert replay_refusal(_letter(subject=S.tick("gc")), S) == TICK_REFUSAL
    assert "is not an event subject" in (replay_refusal(_letter(subject="other.x"), S) or "")
    cut = _letter(truncated=True, size=2_000_000, stream="CTRLPLANE_EVENTS", stream_seq=9)
    assert "#9 of CTRLPLANE_EVENTS" in (replay_refusal(cut, S) or "")
    assert replay_refusal(_letter(payload=None), S) == "it keeps no payload"
    assert "not base64" in (replay_refusal(_letter(payload=None, payload_base64="*"), S) or "")


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"{}", "give the id of a dead letter, or a worker with all"),
        (b'{"worker": "w"}', "needs all: true"),
        (b'{"id": 3, "worker": "w", "all": true}', "not both"),
        (b'{"id": 0}', "ids start at 1"),
        (b'{"worker": "a.*", "all": true}', "is not a worker name"),
    ],
)
def test_a_replay_request_has_one_of_two_forms(body: bytes, says: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=says):
        msgspec.json.decode(body, type=DlqReplayRequest)


def test_the_two_forms_decode() -> None:
    assert msgspec.json.decode(b'{"id": 3}', type=DlqReplayRequest).id == 3
    every = msgspec.json.decode(b'{"worker": "w", "all": true}', type=DlqReplayRequest)
    assert every.worker == "w" and every.every


def test_bad_replay_options_are_refused_before_sending() -> None:
    for args, says in (
        (["dlq", "replay"], "give the ID of a dead letter, or --worker W --all"),
        (["dlq", "replay", "--worker", WORKER], "add --all"),
        (["dlq", "replay", "3", "--worker", WORKER, "--all"], "not both"),
        (["dlq", "replay", "--all"], "give the ID"),
        (["dlq", "replay", "0"], "ID"),
    ):
        result = run_cli([*args, "--nats-url", "nats://127.0.0.1:1"], env_for())
        assert result.returncode == 2, (args, result.stderr)
        assert says in result.stderr and "Traceback" not in result.stderr, (args, result.stderr)


# --------------------------------------------------------------------------
# Against a real NATS.


async def test_a_replay_failing_again_is_kept_beside_the_letter_of_the_same_seq(bus: Bus) -> None:
    # A replay keeps its first subject, and its sequence in the replay stream
    # may be that of another message of the subject: the de-duplication id
    # of a dead letter tells the streams apart, so neither is dropped.
    s = bus.subjects
    await bus.ensure_streams(duplicate_window=timedelta(minutes=2))
    worker = "dedup-probe"
    for stream in (s.events_stream, s.replay_stream):
        await bus.publish_dead_letter(
            _letter(worker=worker, stream=stream, stream_seq=5, reason=f"from {stream}")
        )
    kept = await dead_letters(bus, worker)
    assert [d.reason for d in kept] == [f"from {s.events_stream}", f"from {s.replay_stream}"]


class FailsOnNodeA:
    """A node-scoped event worker that fails on node-a while ``broken`` holds."""

    name = "node-fails"
    interval = timedelta(0)
    subscriptions = ("thing.*",)
    scope = "node"
    max_attempts = 1

    def __init__(self, node: str, seen: list[tuple[str, str]], broken: list[bool]) -> None:
        self._node = node
        self._seen = seen
        self._broken = broken

    async def run(self, ctx: RunContext) -> None:
        assert ctx.event is not None
        if self._node == "node-a" and self._broken[0]:
            raise RuntimeError("node-a is broken")
        self._seen.append((self._node, ctx.event.id))


async def test_a_node_scoped_letter_goes_back_to_its_node_alone(
    nats_server: ServerInfo, subjects: Subjects
) -> None:
    seen: list[tuple[str, str]] = []
    broken = [True]
    buses = [Bus(subjects, name=node) for node in ("node-a", "node-b")]
    schedulers = []
    try:
        for bus, node in zip(buses, ("node-a", "node-b"), strict=True):
            await bus.connect(nats_server.client_url)
            scheduler = Scheduler(bus, process=f"{node}-p", node=node)
            scheduler.register(FailsOnNodeA(node, seen, broken))
            schedulers.append(scheduler)
        await asyncio.gather(*(s.start() for s in schedulers))
        event = Event(type="thing.happened", source="test")
        await buses[0].publish_event(event)
        await wait_for(lambda: seen == [("node-b", event.id)], within=30)

        async def kept() -> bool:
            return len(await dead_letters(buses[0], "node-fails")) == 1

        await wait_for(kept, within=30)
        ((seq, letter),) = await list_letters(buses[0], "node-fails", 10)
        assert letter.node == "node-a" and letter.replay_of is None
        broken[0] = False
        await replay_letter(buses[0], seq)
        await wait_for(lambda: len(seen) == 2, within=30)
        assert seen == [("node-b", event.id), ("node-a", event.id)]
        with pytest.raises(NotFoundError):
            await get_letter(buses[0], seq)
        await asyncio.sleep(0.5)  # room for a wrong extra delivery to show
        assert len(seen) == 2
    finally:
        await asyncio.gather(*(s.stop(grace=timedelta(seconds=1)) for s in schedulers))
        for bus in buses:
            await bus.close()


async def test_only_a_replay_says_which_subject_it_came_from(
    nats_server: ServerInfo, subjects: Subjects
) -> None:
    # Any event publisher can set the header on an event: its dead letter
    # keeps the subject the event really arrived on.
    bus = Bus(subjects)
    await bus.connect(nats_server.client_url)
    scheduler = Scheduler(bus, process="p", node="node-a")
    scheduler.register(FailsOnNodeA("node-a", [], [True]))
    try:
        await scheduler.start()
        forged = {SUBJECT_HEADER: subjects.event("other.thing"), REPLAY_OF_HEADER: "1"}
        event = Event(type="thing.forged", source="test")
        payload = msgspec.json.encode(event)
        await bus.js.publish(subjects.event("thing.forged"), payload, headers=forged)

        async def kept() -> bool:
            return len(await dead_letters(bus, "node-fails")) == 1

        await wait_for(kept, within=30)
        ((_, letter),) = await list_letters(bus, "node-fails", 10)
        assert letter.subject == subjects.event("thing.forged") and letter.replay_of is None
        assert letter.stream == subjects.events_stream
    finally:
        await scheduler.stop(grace=timedelta(seconds=1))
        await bus.close()


# --------------------------------------------------------------------------
# Against a real `ctrlplane run`, through the CLI.


async def _cli(args: list[str], env: dict[str, str]) -> Any:
    result = await asyncio.to_thread(run_cli, args, env)
    assert result.returncode == 0, (args, result.stderr)
    return result


async def test_replay_reaches_the_worker_alone_and_a_failure_is_kept_again(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    config = tmp_path / "ctrlplane.toml"
    config.write_text(
        'workers = ["tests.sample_workers:FailsUntilFixed", "tests.sample_workers:SeesFail",'
        ' "tests.sample_workers:SlotLog"]\n',
        encoding="utf-8",
    )
    env = env_for(tmp_path)
    at = ["--data-dir", str(data)]
    fixed = tmp_path / "fixed"

    def runs_of(n: int, worker: str = WORKER) -> list[dict[str, object]]:
        return [r for r in read_log(tmp_path) if r["worker"] == worker and r.get("n") == n]

    with started(["run", "--config", str(config), *at], env, tmp_path / "run.log"):
        await wait_for(lambda: read_server_info(data) is not None, within=30)
        info = read_server_info(data)
        assert info is not None
        bus = Bus(S)
        await bus.connect(info.role_url("service"))
        try:

            async def answers() -> bool:
                try:
                    await request(bus, "runs", {}, RunsReply, within=1)
                except Exception:
                    return False
                return True

            await wait_for(answers, within=30, interval=0.2)

            async def letters(worker: str = WORKER) -> list[Any]:
                reply = await request(bus, "dlq_list", {"worker": worker}, DlqListReply, within=5)
                return reply.letters

            async def count_is(n: int) -> bool:
                return len(await letters()) == n

            # -- one event, dead-lettered by one worker, run fine by the other
            await bus.publish_event(Event(type="test.fail", source="test", data={"n": 7}))
            await wait_for(lambda: count_is(1), within=30, interval=0.2)
            (first,) = await letters()
            assert [r["attempt"] for r in runs_of(7)] == [1, 2]

            # -- replayed while the fault is still there: a new letter, the old one gone
            replayed = await _cli(["dlq", "replay", str(first.id), *at], env)
            assert replayed.stdout.splitlines() == ["replayed 1 dead letter", f"  ids: {first.id}"]
            await wait_for(lambda: len(runs_of(7)) == 4, within=30, interval=0.2)
            await wait_for(lambda: count_is(1), within=30, interval=0.2)
            (again,) = await letters()
            assert again.id > first.id and again.attempts == 2 and again.replay_of == first.id
            assert again.subject == S.event("test.fail") and "boom on n=7" in again.reason
            whole = await get_letter(bus, again.id)
            assert whole.replay_of == first.id and whole.stream == S.replay_stream
            assert json.loads(whole.payload or "")["data"] == {"n": 7}
            with pytest.raises(NotFoundError):
                await get_letter(bus, first.id)
            assert [r["attempt"] for r in runs_of(7)] == [1, 2, 1, 2]

            # -- fixed, replayed: run once, by that worker only
            fixed.touch()
            await _cli(["dlq", "replay", str(again.id), *at], env)
            await wait_for(lambda: len(runs_of(7)) == 5, within=30, interval=0.2)
            assert runs_of(7)[-1]["ok"] is True
            await wait_for(lambda: count_is(0), within=30, interval=0.2)

            # -- a whole worker's letters, with --all
            fixed.unlink()
            for n in (8, 9):
                await bus.publish_event(Event(type="test.fail", source="test", data={"n": n}))
            await wait_for(lambda: count_is(2), within=30, interval=0.2)
            two = sorted(d.id for d in await letters())
            fixed.touch()
            every = await _cli(["dlq", "replay", "--worker", WORKER, "--all", "--json", *at], env)
            assert json.loads(every.stdout) == {"replayed": 2, "ids": two, "skipped": [], "left": 0}
            for n in (8, 9):

                def ran(n: int = n) -> bool:
                    return len(runs_of(n)) == 3

                await wait_for(ran, within=30, interval=0.2)
                assert [r["ok"] for r in runs_of(n)] == [False, False, True]
            await wait_for(lambda: count_is(0), within=30, interval=0.2)

            # -- a malformed tick is dead-lettered, and not replayed
            await bus.nc.publish(S.tick("slot-log"), b"not a tick")

            async def tick_kept() -> bool:
                return len(await letters("slot-log")) == 1

            await wait_for(tick_kept, within=30, interval=0.2)
            (tick,) = await letters("slot-log")
            refused = await asyncio.to_thread(run_cli, ["dlq", "replay", str(tick.id), *at], env)
            assert refused.returncode == 1 and TICK_REFUSAL in refused.stderr, refused.stderr
            skipped = await _cli(["dlq", "replay", "--worker", "slot-log", "--all", *at], env)
            assert skipped.stdout.splitlines() == [
                "replayed 0 dead letters",
                f"skipped {tick.id}: {TICK_REFUSAL}",
            ]
            assert [d.id for d in await letters("slot-log")] == [tick.id]

            # -- no process runs the worker: refused, the letter kept
            await bus.publish_dead_letter(_letter(worker="ghost"))
            (ghost,) = await letters("ghost")
            nobody = await asyncio.to_thread(run_cli, ["dlq", "replay", str(ghost.id), *at], env)
            assert nobody.returncode == 1 and "no process runs ghost's replays" in nobody.stderr
            assert [d.id for d in await letters("ghost")] == [ghost.id]

            # -- an observer may list dead letters, not replay them
            observer = await nats.connect(info.role_url("observer"))
            try:
                with pytest.raises(nats.errors.TimeoutError):
                    await observer.request(
                        S.api("dlq_replay"), json.dumps({"id": ghost.id}).encode(), timeout=2
                    )
            finally:
                await observer.close()
            assert [d.id for d in await letters("ghost")] == [ghost.id]
            admin = Bus(S)
            await admin.connect(info.role_url("admin"))
            try:
                with pytest.raises(Exception, match="no process runs ghost's replays"):
                    await request(admin, "dlq_replay", {"id": ghost.id}, DlqReplayReply, within=5)
            finally:
                await admin.close()
        finally:
            await bus.close()

    # The other subscriber ran each event once: replays never reached it.
    assert [r["n"] for r in read_log(tmp_path) if r["worker"] == "sees-fail"] == [7, 8, 9]
    assert [r["attempt"] for r in runs_of(7)] == [1, 2, 1, 2, 1]

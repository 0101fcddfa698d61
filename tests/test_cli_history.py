"""``ctrlplane runs`` and ``ctrlplane dlq`` against a real ``ctrlplane run`` process."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import jsonschema
from referencing import Registry, Resource

from ctrlplane.api import DlqListReply, RunsReply, request
from ctrlplane.bus import Event
from ctrlplane.bus.connection import Bus
from ctrlplane.bus.server import read_server_info
from ctrlplane.bus.subjects import Subjects
from ctrlplane.cli.runs import ERROR_WIDTH, OUTCOMES
from ctrlplane.store.runs import Outcome
from tests.helpers import wait_for
from tests.processes import env_for, run_cli, started

SCHEMA_ID = "urn:test:ctrlplane-api"


def _valid(schema: dict[str, Any], endpoint: str, answer: object) -> list[str]:
    registry: Registry[Any] = Registry().with_resource(SCHEMA_ID, Resource.from_contents(schema))
    validator = jsonschema.Draft202012Validator(
        {"$ref": f"{SCHEMA_ID}#/properties/{endpoint}/properties/reply"}, registry=registry
    )
    return [e.message for e in validator.iter_errors(answer)]


async def _cli(args: list[str], env: dict[str, str]) -> Any:
    result = await asyncio.to_thread(run_cli, args, env)
    assert result.returncode == 0, (args, result.stderr)
    return result


async def test_runs_and_dead_letters_of_a_failing_worker(tmp_path: Path) -> None:
    data = tmp_path / "data"
    config = tmp_path / "ctrlplane.toml"
    config.write_text('workers = ["tests.sample_workers:FailsOnEvent"]\n', encoding="utf-8")
    env = env_for(tmp_path)
    at = ["--data-dir", str(data)]
    with started(["run", "--config", str(config), *at], env, tmp_path / "run.log"):
        await wait_for(lambda: read_server_info(data) is not None, within=30)
        info = read_server_info(data)
        assert info is not None
        bus = Bus(Subjects())
        await bus.connect(info.role_url("service"))
        try:
            # Once the API answers, the workers' consumers exist (the scheduler
            # starts first): an event published now reaches the worker.
            async def answers() -> bool:
                try:
                    await request(bus, "runs", {}, RunsReply, within=1)
                except Exception:
                    return False
                return True

            await wait_for(answers, within=30, interval=0.2)
            await bus.publish_event(Event(type="test.fail", source="test", data={"n": 7}))

            async def dead_lettered() -> bool:
                reply = await request(bus, "dlq_list", {}, DlqListReply, within=5)
                return len(reply.letters) == 1

            # Two tries, a one-second backoff between them.
            await wait_for(dead_lettered, within=30, interval=0.2)
        finally:
            await bus.close()

        schema = json.loads((await _cli(["schema", "api"], env)).stdout)
        runs = json.loads((await _cli(["runs", "fails-on-event", "--json", *at], env)).stdout)
        assert _valid(schema, "runs", {"runs": runs}) == []
        assert [r["outcome"] for r in runs] == ["dead_lettered", "error"]  # newest first
        failed = runs[1]
        assert "RuntimeError: boom on n=7" in failed["error"]
        assert failed["trigger"] == "event" and failed["attempt"] == 1
        assert failed["duration"] >= 0 and "ref" in failed
        assert "gave up after 2 attempts" in runs[0]["error"]
        only = await _cli(["runs", "--outcome", "error", "--json", *at], env)
        assert [r["id"] for r in json.loads(only.stdout)] == [failed["id"]]
        none = await _cli(["runs", "nosuch", "--json", *at], env)
        assert json.loads(none.stdout) == []
        table = (await _cli(["runs", "--since", "10m", *at], env)).stdout.splitlines()
        assert table[0].split() == [
            "STARTED", "WORKER", "PROCESS", "TRIGGER", "REF", "ATTEMPT", "TOOK", "OUTCOME", "ERROR",
        ]  # fmt: skip
        assert any("fails-on-event" in line and " error " in line for line in table[1:])
        assert all(len(line) < 200 + ERROR_WIDTH for line in table)

        letters = json.loads((await _cli(["dlq", "list", "--json", *at], env)).stdout)
        assert _valid(schema, "dlq_list", {"letters": letters}) == []
        (letter,) = letters
        assert letter["worker"] == "fails-on-event" and letter["attempts"] == 2
        assert "boom on n=7" in letter["reason"]
        listed = (await _cli(["dlq", "list", "fails-on-event", *at], env)).stdout.splitlines()
        assert listed[0].split() == ["ID", "WORKER", "SUBJECT", "ATTEMPTS", "WHEN", "REASON"]
        assert listed[1].split()[:2] == [str(letter["id"]), "fails-on-event"]
        show = ["dlq", "show", str(letter["id"])]
        shown = json.loads((await _cli([*show, "--json", *at], env)).stdout)
        assert _valid(schema, "dlq_show", shown) == []
        assert json.loads(shown["letter"]["payload"])["data"] == {"n": 7}
        text = (await _cli([*show, *at], env)).stdout
        assert "payload:" in text and '"n":7' in text.replace(" ", "")

        refused = await asyncio.to_thread(run_cli, ["dlq", "purge", *at], env)
        assert refused.returncode != 0 and "--yes" in refused.stderr
        missing = await asyncio.to_thread(run_cli, ["dlq", "show", "9999", *at], env)
        assert missing.returncode != 0 and "9999" in missing.stderr
        purged = await _cli(["dlq", "purge", "--worker", "fails-on-event", "--yes", *at], env)
        assert purged.stdout.strip() == "purged 1 dead letter"
        assert json.loads((await _cli(["dlq", "list", "--json", *at], env)).stdout) == []


def test_bad_options_are_refused_before_sending() -> None:
    for args, says in (
        (["runs", "--since", "40000d"], "--since: must be at most 36500d"),
        (["runs", "--since", "soon"], "--since:"),
        (["runs", "--outcome", "fine"], "'fine' is not one of"),
        (["runs", "--limit", "0"], "--limit"),
        (["dlq", "list", "--limit", "20000"], "--limit"),
        (["dlq", "show", "0"], "ID"),
    ):
        result = run_cli([*args, "--nats-url", "nats://127.0.0.1:1"], env_for())
        assert result.returncode == 2, (args, result.stderr)
        assert says in result.stderr and "Traceback" not in result.stderr, (args, result.stderr)


def test_the_outcome_choices_are_the_stores_outcomes() -> None:
    assert tuple(o.value for o in Outcome) == OUTCOMES

"""Loading, replacing and closing checkers; malformed checks of every type."""

from __future__ import annotations

import pickle
from datetime import timedelta
from importlib.metadata import EntryPoint
from typing import Any

import pytest

import ctrlplane.checks.registry
import ctrlplane.plugins
from ctrlplane.checks import (
    CheckerLoadError,
    builtin_checkers,
    close_checkers,
    load_checkers,
)
from ctrlplane.store.health import CheckSpec, Outcome
from ctrlplane.store.instances import Instance
from ctrlplane.types import Checker, Probe
from tests.checks.helpers import INSTANCE, spec

# --- malformed checks of every type -----------------------------------------------

_URL = "http://127.0.0.1:1/"


@pytest.mark.parametrize(
    ("type", "fields"),
    [
        ("http", {}),
        ("http", {"target": ""}),
        ("http", {"target": "ftp://example.com/"}),
        ("http", {"target": "not a url"}),
        ("http", {"target": "http://"}),
        ("http", {"target": "http://[bad/"}),
        ("http", {"target": "http://127.0.0.1:99999/"}),
        ("http", {"target": "http://127.0.0.1:0/"}),
        ("http", {"target": _URL, "method": "GE T"}),
        ("http", {"target": _URL, "expected_status": (300, 200)}),
        ("http", {"target": _URL, "timeout": timedelta(0)}),
        ("tcp", {}),
        ("tcp", {"target": "localhost"}),
        ("tcp", {"target": "localhost:http"}),
        ("tcp", {"target": "localhost:70000"}),
        ("tcp", {"target": "::1:80"}),
        ("tcp", {"target": "http://localhost:80"}),
        ("tcp", {"target": "a..b:80"}),
        ("command", {}),
        ("command", {"command": []}),
        ("command", {"command": [""]}),
        ("command", {"command": ["definitely-not-a-command-7f3a"]}),
        ("command", {"command": ["/nonexistent/bin/check"]}),
        ("command", {"command": ["/"]}),
        ("command", {"command": ["echo", "a\0b"]}),
        ("grpc", {}),
        ("grpc", {"target": "localhost"}),
        ("grpc", {"target": "localhost:99999"}),
        ("grpc", {"target": "127.0.0.1:1", "timeout": timedelta(0)}),
    ],
)
async def test_malformed_checks_are_unknown_with_a_reason(
    type: str, fields: dict[str, Any]
) -> None:
    checkers = builtin_checkers()
    try:
        probe = await checkers[type].check(spec(type, **fields), INSTANCE)
    finally:
        await close_checkers(checkers)
    assert probe.outcome == Outcome.UNKNOWN
    assert probe.message.startswith(f"{type} check") and len(probe.message) > 20


# --- registry ---------------------------------------------------------------------


class EchoChecker:
    type: str = "echo"

    def __init__(self) -> None:
        self.closed = False

    async def check(self, spec: CheckSpec, instance: Instance) -> Probe:
        return Probe(outcome=Outcome.PASS, message=spec.target or "")

    async def close(self) -> None:
        self.closed = True


class SyncCloseChecker(EchoChecker):
    type: str = "sync-close"

    def close(self) -> None:  # type: ignore[override]
        self.closed = True


class FailingCloseChecker(EchoChecker):
    type: str = "failing-close"

    async def close(self) -> None:
        raise RuntimeError("cannot close")


class NoCloseChecker:
    type: str = "no-close"

    async def check(self, spec: CheckSpec, instance: Instance) -> Probe:
        return Probe(outcome=Outcome.PASS)


class HttpOverride(EchoChecker):
    type: str = "http"


class SyncChecker:
    type: str = "sync"

    def check(self, spec: CheckSpec, instance: Instance) -> Probe:
        return Probe(outcome=Outcome.PASS)


class UntypedChecker:
    type: str = ""

    async def check(self, spec: CheckSpec, instance: Instance) -> Probe:
        return Probe(outcome=Outcome.PASS)


class BrokenChecker(EchoChecker):
    def __init__(self) -> None:
        raise RuntimeError("no config")


def make_echo() -> EchoChecker:
    return EchoChecker()


ECHO = EchoChecker()
NOT_A_CHECKER = object()


def _entry_points(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    eps = [
        EntryPoint(name=name, value=value, group=ctrlplane.checks.registry.ENTRY_POINT_GROUP)
        for name, value in values.items()
    ]

    def fake(*, group: str) -> list[EntryPoint]:
        assert group == ctrlplane.checks.registry.ENTRY_POINT_GROUP
        return eps

    monkeypatch.setattr(ctrlplane.plugins, "entry_points", fake)


def test_builtin_checkers() -> None:
    checkers = builtin_checkers()
    assert sorted(checkers) == ["command", "grpc", "http", "tcp"]
    for name, checker in checkers.items():
        assert isinstance(checker, Checker) and checker.type == name


@pytest.mark.parametrize("value", ["EchoChecker", "make_echo", "ECHO"])
async def test_load_checkers_from_entry_points(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    _entry_points(monkeypatch, echo=f"tests.checks.test_registry:{value}")
    checkers = load_checkers()
    assert sorted(checkers) == ["command", "echo", "grpc", "http", "tcp"]
    assert isinstance(checkers["echo"], EchoChecker)
    probe = await checkers["echo"].check(spec("echo", target="hello"), INSTANCE)
    assert probe == Probe(outcome=Outcome.PASS, message="hello")


def test_a_plugin_replaces_a_builtin(monkeypatch: pytest.MonkeyPatch) -> None:
    _entry_points(monkeypatch, http="tests.checks.test_registry:HttpOverride")
    assert isinstance(load_checkers()["http"], HttpOverride)


@pytest.mark.parametrize(
    ("values", "bad", "reason"),
    [
        ({"gone": "tests.no_such_module:Checker"}, "gone", "cannot load"),
        ({"missing": "tests.checks.test_registry:NoSuchChecker"}, "missing", "cannot load"),
        ({"object": "tests.checks.test_registry:NOT_A_CHECKER"}, "object", "is not a checker"),
        ({"sync": "tests.checks.test_registry:SyncChecker"}, "sync", "async"),
        ({"untyped": "tests.checks.test_registry:UntypedChecker"}, "untyped", "non-empty string"),
        ({"broken": "tests.checks.test_registry:BrokenChecker"}, "broken", "no config"),
        (
            {
                "echo": "tests.checks.test_registry:EchoChecker",
                "echo2": "tests.checks.test_registry:make_echo",
            },
            "echo2",
            "provided by entry point 'echo'",
        ),
    ],
)
def test_a_broken_entry_point_is_named(
    monkeypatch: pytest.MonkeyPatch, values: dict[str, str], bad: str, reason: str
) -> None:
    _entry_points(monkeypatch, **values)
    with pytest.raises(CheckerLoadError, match=reason) as caught:
        load_checkers()
    assert caught.value.ref.startswith(f"entry point {bad!r} (")
    assert str(caught.value).startswith(f"checker entry point {bad!r}")
    copy = pickle.loads(pickle.dumps(caught.value))
    assert (copy.ref, copy.reason) == (caught.value.ref, caught.value.reason)


async def test_close_checkers_closes_each_once_and_survives_failures() -> None:
    echo, sync = EchoChecker(), SyncCloseChecker()
    checkers: dict[str, Checker] = {
        "failing": FailingCloseChecker(),
        "echo": echo,
        "alias": echo,
        "sync": sync,
        "none": NoCloseChecker(),
    }
    await close_checkers(checkers)
    assert echo.closed and sync.closed
    other = EchoChecker()
    await close_checkers([other])
    assert other.closed

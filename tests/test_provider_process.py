"""The process provider against real processes, and the provider registry.

Every process a test starts is killed by the ``runner`` fixture, whatever the
test did, and reaped through the provider so no zombie or ResourceWarning
outlives the test.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import stat
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from pathlib import Path

import msgspec
import psutil
import pytest
import pytest_asyncio

from ctrlplane.providers import (
    ProcessProvider,
    ProviderError,
    ProviderLoadError,
    host_bound,
    load_providers,
)
from ctrlplane.store.instances import Instance, InstanceState
from ctrlplane.types import Observation, Provider
from tests import helpers
from tests.helpers import wait_for

PY = sys.executable
SLEEPER = [PY, "-c", "import time; time.sleep(60)"]
# Ignores SIGTERM, and says so once it does: only then is a SIGTERM sure to be ignored.
STUBBORN = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('ready', flush=True); time.sleep(60)"
)


def make_instance(
    command: list[str],
    *,
    name: str = "web",
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    handle: str | None = None,
) -> Instance:
    """A stopped instance record for ``command``; the provider starts it."""
    return helpers.make_instance(
        name,
        command,
        state=InstanceState.STOPPED,
        env=env,
        cwd=None if cwd is None else str(cwd),
        handle=handle,
    )


def pid_of(instance: Instance) -> int:
    assert instance.handle is not None
    return int(instance.handle.split(":")[0])


def running(process: psutil.Process) -> bool:
    """Alive and not a zombie: an exited orphan may wait for a reaper that never comes."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class Runner:
    """Starts instances through a provider and remembers every process to kill."""

    def __init__(self, provider: ProcessProvider) -> None:
        self.provider = provider
        self.instances: list[Instance] = []
        self.processes: list[psutil.Process] = []

    async def start(self, instance: Instance) -> Instance:
        handle = await self.provider.start(instance)
        started = msgspec.structs.replace(instance, handle=handle)
        self.instances.append(started)
        self.track(pid_of(started))
        return started

    def track(self, pid: int) -> None:
        with contextlib.suppress(psutil.NoSuchProcess):
            self.processes.append(psutil.Process(pid))

    async def observe(self, instance: Instance) -> Observation:
        return (await self.provider.status([instance]))[instance.id]

    async def until_exited(self, instance: Instance) -> Observation:
        async def exited() -> bool:
            return (await self.observe(instance)).state != InstanceState.RUNNING

        await wait_for(exited, within=5)
        return await self.observe(instance)

    async def cleanup(self) -> None:
        victims = list(self.processes)
        for process in self.processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                victims.extend(process.children(recursive=True))
        for process in victims:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()  # psutil checks the pid still names this process
        await wait_for(lambda: not any(running(p) for p in victims), within=5)
        # Polling reaps the provider's own children.
        await self.provider.status(self.instances)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest_asyncio.fixture
async def runner(data_dir: Path) -> AsyncIterator[Runner]:
    r = Runner(ProcessProvider(data_dir))
    try:
        yield r
    finally:
        await r.cleanup()


async def wait_for_text(path: Path, text: str) -> None:
    await wait_for(lambda: path.exists() and text in path.read_text(), within=5)


# Starting and observing


@contextlib.contextmanager
def stdin_from_a_pipe() -> Iterator[None]:
    """Our fd 0 a pipe for a while: a child that inherits it would not have /dev/null."""
    read, write = os.pipe()
    saved = os.dup(0)
    os.dup2(read, 0)
    try:
        yield
    finally:
        os.dup2(saved, 0)
        for fd in (saved, read, write):
            os.close(fd)


async def test_start_runs_the_argv_in_a_session_of_its_own(runner: Runner, data_dir: Path) -> None:
    with stdin_from_a_pipe():
        instance = await runner.start(make_instance(SLEEPER))

    assert instance.handle is not None and re.fullmatch(r"\d+:\d+", instance.handle)
    pid = pid_of(instance)
    # Popen returns when exec closes its error pipe, which the kernel does
    # before it lays out the new argv: until then /proc/<pid>/cmdline reads
    # empty, for as long as a loaded machine leaves the child waiting.
    await wait_for(lambda: psutil.Process(pid).cmdline() != [], within=10)
    assert psutil.Process(pid).cmdline() == SLEEPER
    assert os.getsid(pid) == pid and os.getpgid(pid) == pid
    assert os.readlink(f"/proc/{pid}/fd/0") == "/dev/null"
    log = data_dir / "instances" / "web" / "output.log"
    assert os.readlink(f"/proc/{pid}/fd/1") == str(log)
    assert stat.S_IMODE(log.parent.stat().st_mode) == 0o700
    assert await runner.observe(instance) == Observation(state=InstanceState.RUNNING)
    assert await runner.provider.pids(instance) == [pid]


async def test_start_keeps_a_running_process(runner: Runner) -> None:
    instance = await runner.start(make_instance(SLEEPER))

    again = await runner.start(instance)

    assert again.handle == instance.handle
    assert await runner.observe(instance) == Observation(state=InstanceState.RUNNING)


async def test_output_and_errors_are_appended_to_the_log(runner: Runner) -> None:
    script = "import sys; print('to stdout', flush=True); print('to stderr', file=sys.stderr)"
    instance = make_instance([PY, "-c", script])
    for _ in range(2):
        await runner.until_exited(await runner.start(instance))

    log = runner.provider.log_path(instance).read_text()
    assert log.count("to stdout") == 2 and log.count("to stderr") == 2
    assert stat.S_IMODE(runner.provider.log_path(instance).stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("code", "observation"),
    [
        (0, Observation(state=InstanceState.STOPPED, detail="exited with code 0")),
        (3, Observation(state=InstanceState.FAILED, detail="exited with code 3")),
    ],
)
async def test_exit_code_decides_stopped_or_failed(
    runner: Runner, code: int, observation: Observation
) -> None:
    instance = await runner.start(make_instance([PY, "-c", f"raise SystemExit({code})"]))

    assert await runner.until_exited(instance) == observation


async def test_killed_from_outside_is_failed(runner: Runner, data_dir: Path) -> None:
    instance = await runner.start(make_instance(SLEEPER))

    os.kill(pid_of(instance), signal.SIGKILL)

    observed = await runner.until_exited(instance)
    assert observed == Observation(state=InstanceState.FAILED, detail="killed by SIGKILL")
    # Another control-plane process cannot know the exit code, only that it is gone.
    after_restart = (await ProcessProvider(data_dir).status([instance]))[instance.id]
    assert after_restart.state == InstanceState.STOPPED


async def test_never_started_and_malformed_handles_are_stopped(runner: Runner) -> None:
    never = make_instance(SLEEPER)
    garbage = make_instance(SLEEPER, handle="not-a-handle")

    observed = await runner.provider.status([never, garbage])

    assert observed[never.id] == Observation(state=InstanceState.STOPPED, detail="never started")
    assert observed[garbage.id].state == InstanceState.STOPPED
    assert "not-a-handle" in observed[garbage.id].detail
    for instance in (never, garbage):
        await runner.provider.stop(instance, timedelta(0))
        assert await runner.provider.pids(instance) == []


async def test_status_of_many_instances(runner: Runner) -> None:
    alive = await runner.start(make_instance(SLEEPER))
    idle = [make_instance(SLEEPER, name=f"idle{i}") for i in range(40)]

    observed = await runner.provider.status([alive, *idle])

    assert observed[alive.id].state == InstanceState.RUNNING
    assert {observed[i.id].state for i in idle} == {InstanceState.STOPPED}
    assert len(observed) == 41


# After a restart of the control plane


async def test_a_new_provider_recognises_a_running_process(runner: Runner, data_dir: Path) -> None:
    instance = await runner.start(make_instance(SLEEPER))
    restarted = ProcessProvider(data_dir)

    assert (await restarted.status([instance]))[instance.id].state == InstanceState.RUNNING
    assert await restarted.pids(instance) == [pid_of(instance)]

    began = time.monotonic()
    await restarted.stop(instance, timedelta(seconds=5))
    # The process is not its child: as a zombie it counts as gone, no grace is waited out.
    assert time.monotonic() - began < 2
    assert (await restarted.status([instance]))[instance.id].state == InstanceState.STOPPED
    # Its parent, which did not ask, sees the SIGTERM as a failure.
    assert await runner.until_exited(instance) == Observation(
        state=InstanceState.FAILED, detail="killed by SIGTERM"
    )


async def test_this_host_remembers_what_it_started_whatever_the_store_says(
    runner: Runner, data_dir: Path
) -> None:
    instance = await runner.start(make_instance(SLEEPER))
    exited = await runner.start(make_instance([PY, "-c", "pass"], name="brief"))
    await runner.until_exited(exited)
    assert instance.handle is not None
    # Another node took the instance over, or it was removed: the store no
    # longer holds our handle. A new provider (a restarted control plane)
    # still finds what this host runs, and only that.
    restarted = ProcessProvider(data_dir)

    assert restarted.host_bound is True
    assert await restarted.local_instances() == {instance.id: instance.handle}
    # Another host's data dir has no record of it.
    assert await ProcessProvider(data_dir.parent / "b").local_instances() == {}

    await restarted.stop_local("i-unknown", timedelta(0))
    assert await restarted.local_instances() == {instance.id: instance.handle}
    await restarted.stop_local(instance.id, timedelta(seconds=2))
    assert await restarted.local_instances() == {}
    await runner.until_exited(instance)


async def test_a_reused_pid_is_neither_running_nor_signalled(
    runner: Runner, data_dir: Path
) -> None:
    victim = await runner.start(make_instance(SLEEPER))
    assert victim.handle is not None
    pid, start = victim.handle.split(":")
    forged = make_instance(SLEEPER, name="ghost", handle=f"{pid}:{int(start) + 1}")

    for provider in (runner.provider, ProcessProvider(data_dir)):
        observed = (await provider.status([forged]))[forged.id]
        assert observed.state == InstanceState.STOPPED and "pid reused" in observed.detail
        assert await provider.pids(forged) == []
        await provider.stop(forged, timedelta(0))

    assert running(psutil.Process(int(pid)))
    assert await runner.observe(victim) == Observation(state=InstanceState.RUNNING)


# Stopping


async def test_stop_is_idempotent_and_reports_stopped(runner: Runner) -> None:
    instance = await runner.start(make_instance(SLEEPER))

    began = time.monotonic()
    await runner.provider.stop(instance, timedelta(seconds=5))
    assert time.monotonic() - began < 2
    assert not running(runner.processes[0])
    stopped = Observation(state=InstanceState.STOPPED, detail="stopped (killed by SIGTERM)")
    assert await runner.observe(instance) == stopped
    await runner.provider.stop(instance, timedelta(seconds=5))
    assert await runner.observe(instance) == stopped


async def test_stop_kills_what_ignores_sigterm_after_the_grace(runner: Runner) -> None:
    instance = await runner.start(make_instance([PY, "-c", STUBBORN]))
    await wait_for_text(runner.provider.log_path(instance), "ready")

    began = time.monotonic()
    await runner.provider.stop(instance, timedelta(milliseconds=300))

    assert time.monotonic() - began >= 0.3
    assert not running(runner.processes[0])
    assert await runner.observe(instance) == Observation(
        state=InstanceState.STOPPED, detail="stopped (killed by SIGKILL)"
    )


async def test_stop_kills_the_descendants(runner: Runner) -> None:
    # A grandchild in the group that ignores SIGTERM, and one that left for a session of its own.
    script = f"""
import json, os, subprocess, sys, time
kid = subprocess.Popen([sys.executable, "-c", {STUBBORN!r}])
loner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                         start_new_session=True)
with open("pids.tmp", "w") as f:
    json.dump([kid.pid, loner.pid], f)
os.replace("pids.tmp", "pids.json")
time.sleep(60)
"""
    instance = await runner.start(make_instance([PY, "-c", script]))
    folder = runner.provider.log_path(instance).parent
    await wait_for(lambda: (folder / "pids.json").exists(), within=5)
    grandchildren = json.loads((folder / "pids.json").read_text())
    for pid in grandchildren:
        runner.track(pid)
    await wait_for_text(runner.provider.log_path(instance), "ready")
    assert set(await runner.provider.pids(instance)) == {pid_of(instance), *grandchildren}

    began = time.monotonic()
    await runner.provider.stop(instance, timedelta(milliseconds=300))

    assert time.monotonic() - began >= 0.3
    assert not any(running(p) for p in runner.processes)
    assert (await runner.observe(instance)).state == InstanceState.STOPPED


# What reaches the program


async def test_shell_metacharacters_reach_the_program_literally(
    runner: Runner, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    args = ["; touch hacked", "$(touch hacked)", "`touch hacked`", "a b", "*", "> out", "$HOME"]
    script = "import json, sys; print(json.dumps(sys.argv[1:]))"
    instance = await runner.start(make_instance([PY, "-c", script, *args], cwd=work))

    assert (await runner.until_exited(instance)).detail == "exited with code 0"
    assert json.loads(runner.provider.log_path(instance).read_text()) == args
    assert list(work.iterdir()) == []


async def test_env_and_cwd_are_honoured(
    runner: Runner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CP_TEST_INHERITED", "from the parent")
    monkeypatch.setenv("CP_TEST_OVERRIDDEN", "from the parent")
    work = tmp_path / "work"
    work.mkdir()
    script = (
        "import json, os; print(json.dumps([os.getcwd(), os.environ.get('CP_TEST_INHERITED'), "
        "os.environ.get('CP_TEST_OVERRIDDEN'), os.environ.get('CP_TEST_NEW')]))"
    )
    env = {"CP_TEST_OVERRIDDEN": "from the spec", "CP_TEST_NEW": "new; $(x)"}
    instance = await runner.start(make_instance([PY, "-c", script], env=env, cwd=work))

    await runner.until_exited(instance)
    assert json.loads(runner.provider.log_path(instance).read_text()) == [
        str(work),
        "from the parent",
        "from the spec",
        "new; $(x)",
    ]


async def test_the_default_cwd_is_the_instance_folder(runner: Runner, data_dir: Path) -> None:
    script = "import os; print(os.getcwd())"
    instance = await runner.start(make_instance([PY, "-c", script], name="api"))

    await runner.until_exited(instance)
    folder = data_dir / "instances" / "api"
    assert runner.provider.log_path(instance).read_text().strip() == str(folder)


# What cannot start


@pytest.mark.parametrize("executable", ["/nonexistent/bin/tool", "ctrlplane-no-such-tool"])
async def test_a_missing_executable_is_a_provider_error(runner: Runner, executable: str) -> None:
    with pytest.raises(ProviderError) as caught:
        await runner.start(make_instance([executable, "--flag"]))

    assert executable in str(caught.value)
    assert caught.value.instance == "web"


async def test_a_file_that_is_not_executable_is_a_provider_error(
    runner: Runner, tmp_path: Path
) -> None:
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)

    with pytest.raises(ProviderError, match="Permission denied") as caught:
        await runner.start(make_instance([str(script)]))
    assert str(script) in str(caught.value)


async def test_a_missing_cwd_is_a_provider_error(runner: Runner, tmp_path: Path) -> None:
    missing = tmp_path / "missing"

    with pytest.raises(ProviderError, match=re.escape(str(missing))):
        await runner.start(make_instance(SLEEPER, cwd=missing))


@pytest.mark.parametrize(("command", "name"), [([], "web"), (SLEEPER, ".."), (SLEEPER, "a/b")])
async def test_an_empty_command_or_a_bad_name_is_a_provider_error(
    runner: Runner, command: list[str], name: str
) -> None:
    with pytest.raises(ProviderError) as caught:
        await runner.start(make_instance(command, name=name))
    assert caught.value.instance == name


# The registry


FAKE_MODULE = """
from pathlib import Path


class Fake:
    name = "fake"

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir

    async def start(self, instance):
        return "x"

    async def stop(self, instance, grace):
        return None

    async def status(self, instances):
        return {}

    async def pids(self, instance):
        return []


def make_other(data_dir):
    provider = Fake(data_dir)
    provider.name = "other"
    return provider


ready = Fake(Path("/ready"))
ready.name = "ready"


class Duplicate(Fake):
    name = "process"


class SyncStart(Fake):
    name = "sync"

    def start(self, instance):
        return "x"


class Exploding(Fake):
    def __init__(self, data_dir):
        raise RuntimeError("boom")


class BoundWithoutHandles(Fake):
    name = "bound"
    host_bound = True


not_a_provider = 42
"""

Declare = Callable[..., None]


@pytest.fixture
def declare(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Declare]:
    """Declares ``ctrlplane.providers`` entry points, ``(name, attr of FAKE_MODULE)``,
    in a distribution on sys.path, as an installed plugin package would."""
    module = f"ctrlplane_test_providers_{uuid.uuid4().hex[:8]}"
    site = tmp_path / "site"
    dist = site / f"{module}-0.1.dist-info"
    dist.mkdir(parents=True)
    (site / f"{module}.py").write_text(FAKE_MODULE)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    monkeypatch.syspath_prepend(str(site))

    def write(*entries: tuple[str, str]) -> None:
        lines = "".join(f"{name} = {module}:{attr}\n" for name, attr in entries)
        (dist / "entry_points.txt").write_text(f"[ctrlplane.providers]\n{lines}")

    try:
        yield write
    finally:
        sys.modules.pop(module, None)


def test_load_providers_without_plugins(data_dir: Path) -> None:
    typed: Provider = ProcessProvider(data_dir)  # mypy checks that it fits the Protocol
    assert typed.name == "process"

    providers = load_providers(data_dir)

    assert isinstance(providers["process"], ProcessProvider)
    assert isinstance(providers["process"], Provider)


def test_load_providers_from_entry_points(declare: Declare, data_dir: Path) -> None:
    declare(("fake", "Fake"), ("other", "make_other"), ("ready", "ready"))

    providers = load_providers(data_dir)

    assert {"process", "fake", "other", "ready"} <= set(providers)
    assert isinstance(providers["process"], ProcessProvider)
    # Host-bound only when a provider says so: the process provider does, Fake does not.
    assert host_bound(providers["process"]) is providers["process"]
    assert host_bound(providers["fake"]) is None and host_bound(None) is None
    assert getattr(providers["fake"], "data_dir", None) == data_dir
    assert getattr(providers["other"], "data_dir", None) == data_dir
    assert getattr(providers["ready"], "data_dir", None) == Path("/ready")


@pytest.mark.parametrize(
    ("attr", "reason"),
    [
        ("Missing", "cannot load"),
        ("Duplicate", "'process' is already taken"),
        ("not_a_provider", "is not a provider"),
        ("Exploding", "calling it with the data dir failed"),
        ("SyncStart", "'start' must be an async method"),
        ("BoundWithoutHandles", "needs async 'local_instances' and 'stop_local'"),
    ],
)
def test_a_broken_entry_point_is_named(
    declare: Declare, data_dir: Path, attr: str, reason: str
) -> None:
    declare(("broken", attr))

    with pytest.raises(ProviderLoadError, match=re.escape(reason)) as caught:
        load_providers(data_dir)
    assert isinstance(caught.value, ProviderError)
    assert "'broken'" in str(caught.value) and attr in str(caught.value)

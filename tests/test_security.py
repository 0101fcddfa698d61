"""Roles on a real nats-server: what each may do, and what the server refuses."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import msgspec
import nats
import nats.errors
import pytest
import pytest_asyncio
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from ctrlplane import Config, ControlPlane
from ctrlplane.actors import RunContext
from ctrlplane.api import (
    SERVICE_NAME,
    ApplyReply,
    ApplyRequest,
    DlqListReply,
    DlqPurgeReply,
    DlqShowReply,
    DlqShowRequest,
    InstancesReply,
    RemoteError,
    request,
)
from ctrlplane.bus import DeadLetter, Event
from ctrlplane.bus.codec import encode
from ctrlplane.bus.connection import Bus
from ctrlplane.bus.server import EmbeddedServer, find_binary
from ctrlplane.bus.subjects import Subjects
from ctrlplane.declarations import InstanceDecl
from ctrlplane.errors import CtrlplaneError
from ctrlplane.providers.process import executable_problem
from ctrlplane.security import (
    MUTATING_ENDPOINTS,
    READ_ENDPOINTS,
    ROLES,
    Role,
    SecurityError,
    authorization_block,
    embedded_authorization,
    permissions,
    read_credentials,
    with_credentials,
)
from tests.helpers import wait_for

REFUSED = 2.0
"""Seconds a request the server refused is given to (not) answer."""


# --------------------------------------------------------------------------
# The pure parts.


def test_observer_and_publisher_may_not_publish_apply_or_ticks() -> None:
    s = Subjects("acme")
    for role in (Role.OBSERVER, Role.PUBLISHER):
        allowed = permissions(role, s).publish
        assert s.api("apply") not in allowed
        assert not any(
            p in ("acme.>", "acme.api.>", "acme.tick.*", "acme.tick.>", ">") for p in allowed
        )
        assert not any(p.startswith(("acme.tick", "$JS.ACK", "$KV")) for p in allowed)


def test_observer_calls_only_read_endpoints_and_creates_only_unnamed_event_consumers() -> None:
    s = Subjects("acme")
    allowed = permissions(Role.OBSERVER, s).publish
    assert [p for p in allowed if p.startswith("acme.")] == [s.api(n) for n in READ_ENDPOINTS]
    js = [p for p in allowed if p.startswith("$JS.")]
    assert all(s.events_stream in p or p == "$JS.API.INFO" for p in js)
    assert "$JS.API.CONSUMER.CREATE.ACME_EVENTS" in js
    assert not any("DELETE" in p or "DURABLE" in p or "CREATE.ACME_EVENTS." in p for p in js)


def test_admin_adds_only_the_mutating_endpoints_to_the_observer() -> None:
    s = Subjects("acme")
    admin = set(permissions(Role.ADMIN, s).publish)
    observer = set(permissions(Role.OBSERVER, s).publish)
    assert admin - observer == {s.api(n) for n in MUTATING_ENDPOINTS}


def test_publisher_may_be_limited_to_event_types() -> None:
    s = Subjects("acme")
    assert permissions(Role.PUBLISHER, s).publish == ("acme.events.>",)
    limited = permissions(Role.PUBLISHER, s, event_types=["usage.*", "build.done"])
    assert limited.publish == ("acme.events.usage.*", "acme.events.build.done")
    with pytest.raises(SecurityError, match="not an event type pattern"):
        permissions(Role.PUBLISHER, s, event_types=["a b"])


def test_every_role_but_publisher_may_discover_the_api_service() -> None:
    s = Subjects("acme")
    service = permissions(Role.SERVICE, s)
    assert "$SRV.>" in service.subscribe and "$SRV.>" in service.publish
    for role in (Role.OBSERVER, Role.ADMIN):
        assert "$SRV.>" in permissions(role, s).publish
    publisher = permissions(Role.PUBLISHER, s)
    assert not any(p.startswith("$SRV") for p in publisher.publish + publisher.subscribe)


def test_service_is_confined_to_its_prefix_on_core_subjects() -> None:
    perms = permissions(Role.SERVICE, Subjects("acme.prod"))
    core = [p for p in perms.publish + perms.subscribe if not p.startswith(("$", "_INBOX."))]
    assert set(core) == {"acme.prod.>"}


def test_authorization_block_is_valid_nats_server_config(tmp_path: Path) -> None:
    secrets = {role: f"{role}-{uuid.uuid4().hex}" for role in ROLES}
    block = authorization_block(Subjects("acme"), secrets, publisher_event_types=["usage.*"])
    for role, secret in secrets.items():
        assert f'user: "{role}"' in block
        assert f'password: "{secret}"' in block
    config = tmp_path / "nats.conf"
    config.write_text(f"port: -1\n{block}")
    checked = subprocess.run(
        [find_binary(), "-t", "-c", str(config)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stderr + checked.stdout


def test_authorization_block_refuses_unknown_roles() -> None:
    with pytest.raises(SecurityError, match="unknown role 'root'"):
        authorization_block(Subjects("acme"), {"root": "x" * 20})


def test_credentials_are_read_from_either_form(tmp_path: Path) -> None:
    secret = "A" * 32
    plain = tmp_path / "plain"
    plain.write_text(f"service:{secret}\n")
    url = tmp_path / "url"
    url.write_text(f"nats://service:{secret}@127.0.0.1:4222\n")
    assert read_credentials(plain) == ("service", secret)
    assert read_credentials(url) == ("service", secret)
    (tmp_path / "bad").write_text("just-a-token-without-user\n")
    with pytest.raises(SecurityError, match="holds no credentials"):
        read_credentials(tmp_path / "bad")
    assert with_credentials("nats://a:1, nats://old:pw@b:2", "u", "p") == (
        "nats://u:p@a:1,nats://u:p@b:2"
    )


# --------------------------------------------------------------------------
# On a real server, under a control plane that started it (as `ctrlplane run`).


class Recorder:
    """An event worker that keeps what it is given."""

    name = "usage-recorder"
    interval = timedelta(0)
    subscriptions = ("usage.*",)

    def __init__(self) -> None:
        self.seen: list[Event] = []

    async def run(self, ctx: RunContext) -> None:
        assert ctx.event is not None
        self.seen.append(ctx.event)


@dataclass
class Plane:
    cp: ControlPlane
    recorder: Recorder
    subjects: Subjects
    data_dir: Path

    def url(self, role: Role) -> str:
        server = self.cp.server
        assert server is not None
        return server.info.role_url(role.value)


@pytest_asyncio.fixture
async def plane(tmp_path: Path) -> AsyncIterator[Plane]:
    """A control plane on its own embedded server, as `ctrlplane run` starts it."""
    subjects = Subjects(f"sec{uuid.uuid4().hex[:8]}")
    config = Config(
        data_dir=tmp_path / "data",
        subject_prefix=subjects.prefix,
        stop_grace=timedelta(seconds=2),
        publisher_event_types=["usage.*"],
        disabled_workers=["remediator"],
    )
    cp = ControlPlane(config, load_plugins=False)
    recorder = Recorder()
    cp.register(recorder)
    await cp.start()
    try:
        yield Plane(cp, recorder, subjects, config.data_dir)
    finally:
        await cp.stop()


@dataclass
class Client_:
    nc: Client
    errors: list[str] = field(default_factory=list)
    refused: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait_refused(self, fragment: str) -> None:
        """The server said "Permissions Violation" about ``fragment``."""

        def said() -> bool:
            return any("permissions violation" in e.lower() and fragment in e for e in self.errors)

        await wait_for(said, within=5)


async def connect_as(url: str) -> Client_:
    holder: list[Client_] = []

    async def on_error(exc: Exception) -> None:
        holder[0].errors.append(str(exc))
        holder[0].refused.set()

    nc = await nats.connect(url, allow_reconnect=False, error_cb=on_error)
    client = Client_(nc)
    holder.append(client)
    return client


def marker_decl(marker: Path) -> InstanceDecl:
    # If this ever ran, the marker file would exist.
    return InstanceDecl(name="evil", command=["sh", "-c", f"touch {marker}; exec sleep 30"])


async def assert_apply_refused(plane: Plane, role: Role, tmp_path: Path) -> None:
    client = await connect_as(plane.url(role))
    marker = tmp_path / f"ran-as-{role.value}"
    subject = plane.subjects.api("apply")
    try:
        with pytest.raises(nats.errors.TimeoutError):
            await client.nc.request(
                subject, encode(ApplyRequest(instances=[marker_decl(marker)])), timeout=REFUSED
            )
        await client.wait_refused(subject)
    finally:
        await client.nc.close()
    assert not marker.exists()
    assert await plane.cp.store.instances.all() == []


async def test_observer_and_publisher_cannot_apply(plane: Plane, tmp_path: Path) -> None:
    for role in (Role.OBSERVER, Role.PUBLISHER):
        await assert_apply_refused(plane, role, tmp_path)


@pytest.mark.parametrize("node", [None, "node-a"])
async def test_observer_and_publisher_cannot_publish_ticks(plane: Plane, node: str | None) -> None:
    # Cluster ticks, and a node's ticks (tick.<worker>.<node>) alike.
    tick = plane.subjects.tick("nobody", node)
    for role in (Role.OBSERVER, Role.PUBLISHER):
        client = await connect_as(plane.url(role))
        try:
            await client.nc.publish(tick, b"{}")
            await client.nc.flush()
            await client.wait_refused(tick)
        finally:
            await client.nc.close()
    # Nothing reached the tick stream from them.
    service = await connect_as(plane.url(Role.SERVICE))
    try:
        js = service.nc.jetstream()
        info = await js.stream_info(plane.subjects.ticks_stream, subjects_filter=tick)
        assert not (info.state.subjects or {}).get(tick)
    finally:
        await service.nc.close()


async def test_observer_reads_events_and_read_only_endpoints(plane: Plane) -> None:
    event = Event(type="usage.reported", source="test", data={"n": 1})
    client = await connect_as(plane.url(Role.OBSERVER))
    try:
        live: asyncio.Queue[Msg] = asyncio.Queue()
        await client.nc.subscribe(plane.subjects.event("usage.*"), cb=live.put)
        bus = Bus(plane.subjects)
        await bus.connect(plane.url(Role.OBSERVER))
        try:
            reply = await request(bus, "instances", {}, InstancesReply, within=5)
            assert reply.instances == []
            # Discovery, as `nats micro info ctrlplane` does it.
            found = await bus.nc.request(f"$SRV.INFO.{SERVICE_NAME}", b"", timeout=5)
            info = json.loads(found.data)
            assert info["metadata"]["subject_prefix"] == plane.subjects.prefix
            assert plane.subjects.api("apply") in [e["subject"] for e in info["endpoints"]]
            # apply is refused to the observer by the server (no answer, a
            # permissions error), not by the service.
            with pytest.raises(nats.errors.TimeoutError):
                await bus.nc.request(plane.subjects.api("apply"), b"{}", timeout=REFUSED)
            await plane.cp.bus.publish_event(event)
            async with asyncio.timeout(5):
                got = await live.get()
            assert event.id.encode() in got.data
            # From the stream, through an ephemeral consumer (as `ctrlplane events`).
            consumer = await bus.js.add_consumer(
                plane.subjects.events_stream,
                ConsumerConfig(
                    filter_subject=plane.subjects.event("usage.*"),
                    deliver_policy=DeliverPolicy.ALL,
                    ack_policy=AckPolicy.NONE,
                    inactive_threshold=30,
                ),
            )
            assert consumer.name is not None
            sub = await bus.js.pull_subscribe_bind(
                consumer.name, stream=plane.subjects.events_stream
            )
            messages = await sub.fetch(1, timeout=5)
            assert event.id.encode() in messages[0].data
            # A named consumer could rewrite a worker's: refused.
            with pytest.raises(nats.errors.TimeoutError):
                await bus.js.add_consumer(
                    plane.subjects.events_stream,
                    ConsumerConfig(durable_name="events-usage-recorder", filter_subject=">"),
                    timeout=REFUSED,
                )
        finally:
            await bus.close()
    finally:
        await client.nc.close()
    assert client.errors == []


async def test_observer_reads_dead_letters_through_the_service_but_cannot_purge(
    plane: Plane,
) -> None:
    s = plane.subjects
    letter = DeadLetter(worker="usage-recorder", subject=s.event("usage.x"), reason="gave up")
    await plane.cp.bus.publish_dead_letter(letter)
    client = await connect_as(plane.url(Role.OBSERVER))
    observer = Bus(s)
    await observer.connect(plane.url(Role.OBSERVER))
    try:
        # The DLQ stream itself is closed to the observer: the service reads it.
        listed = await request(observer, "dlq_list", {}, DlqListReply, within=5)
        ((seq, worker),) = [(d.id, d.worker) for d in listed.letters]
        assert worker == "usage-recorder"
        shown = await request(observer, "dlq_show", DlqShowRequest(id=seq), DlqShowReply, within=5)
        assert shown.letter.reason == "gave up"
        purge = s.api("dlq_purge")
        with pytest.raises(nats.errors.TimeoutError):
            await client.nc.request(purge, b"{}", timeout=REFUSED)
        await client.wait_refused(purge)
        assert len((await request(observer, "dlq_list", {}, DlqListReply, within=5)).letters) == 1
    finally:
        await observer.close()
        await client.nc.close()
    admin = Bus(s)
    await admin.connect(plane.url(Role.ADMIN))
    try:
        purged = await request(admin, "dlq_purge", {}, DlqPurgeReply, within=5)
        assert purged.purged == 1
        assert (await request(admin, "dlq_list", {}, DlqListReply, within=5)).letters == []
    finally:
        await admin.close()


async def test_publisher_publishes_allowed_events_a_worker_sees(plane: Plane) -> None:
    bus = Bus(plane.subjects)
    await bus.connect(plane.url(Role.PUBLISHER))
    try:
        event = Event(type="usage.reported", source="billing", data={"n": 2})
        await bus.publish_event(event)
        await wait_for(lambda: any(e.id == event.id for e in plane.recorder.seen))
    finally:
        await bus.close()
    # An event type it was not given, and a read endpoint: refused.
    client = await connect_as(plane.url(Role.PUBLISHER))
    try:
        other = plane.subjects.event("instance.deleted")
        await client.nc.publish(other, b"{}")
        await client.nc.flush()
        await client.wait_refused(other)
        with pytest.raises(nats.errors.TimeoutError):
            await client.nc.request(plane.subjects.api("instances"), b"{}", timeout=REFUSED)
        await client.wait_refused(plane.subjects.api("instances"))
        with pytest.raises(nats.errors.TimeoutError):
            await client.nc.request(f"$SRV.PING.{SERVICE_NAME}", b"", timeout=REFUSED)
        await client.wait_refused("$srv.ping")  # nats-py lowercases the error text
    finally:
        await client.nc.close()


async def test_admin_applies_and_the_service_runs_it(plane: Plane, tmp_path: Path) -> None:
    marker = tmp_path / "ran-as-admin"
    bus = Bus(plane.subjects)
    await bus.connect(plane.url(Role.ADMIN))
    try:
        reply = await request(
            bus, "apply", ApplyRequest(instances=[marker_decl(marker)]), ApplyReply, within=20
        )
        assert reply.result is not None and reply.result.created == ["evil"]
        await wait_for(marker.exists)
        reply = await request(bus, "apply", ApplyRequest(instances=[]), ApplyReply, within=20)
        assert reply.result is not None and reply.result.removed == ["evil"]
    finally:
        await bus.close()


async def test_secrets_stay_out_of_argv_and_the_server_log(plane: Plane) -> None:
    server = plane.cp.server
    assert server is not None and server.pid is not None
    cmdline = await asyncio.to_thread(Path(f"/proc/{server.pid}/cmdline").read_bytes)
    log = await asyncio.to_thread((plane.data_dir / "nats/nats-server.log").read_text)
    for secret in server.info.secrets.values():
        assert secret.encode() not in cmdline
        assert secret not in log
        assert secret not in repr(server.info)


async def test_deleting_a_credentials_file_rotates_that_password(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = EmbeddedServer(
        data, roles=ROLES, authorization=embedded_authorization(Subjects("rot"))
    )
    first = await server.start()
    await server.stop()
    (data / "nats/credentials/observer").unlink()
    second = await server.start()
    try:
        assert second.secrets["observer"] != first.secrets["observer"]
        assert second.secrets["admin"] == first.secrets["admin"]
        old = second.url.replace("nats://", f"nats://observer:{first.secrets['observer']}@")
        nc = Client()
        try:
            with pytest.raises(nats.errors.Error, match="Authorization Violation"):
                await nc.connect(old, allow_reconnect=False, error_cb=_ignore)
        finally:
            await nc.close()
        fresh = await nats.connect(second.role_url("observer"), allow_reconnect=False)
        await fresh.close()
    finally:
        await server.stop()


def test_executable_allow_list_follows_path_and_links() -> None:
    sleep = shutil.which("sleep")
    assert sleep is not None
    assert executable_problem(["sleep", "1"], [sleep]) is None
    assert executable_problem(["sleep", "1"], []) is None
    assert executable_problem(["sh", "-c", "x"], [sleep]) is not None
    assert "relative path" in (executable_problem(["./sleep"], [sleep]) or "")
    assert "not allowed" in (executable_problem(["no-such-binary-here"], [sleep]) or "")


async def test_a_wrong_password_is_refused(plane: Plane) -> None:
    url = plane.url(Role.ADMIN).replace("admin:", "observer:")
    nc = Client()
    try:
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await nc.connect(url, allow_reconnect=False, error_cb=_ignore)
    finally:
        # nats-py leaves the socket open after a refused connect until close().
        await nc.close()


async def _ignore(exc: Exception) -> None:
    return None


# --------------------------------------------------------------------------
# Refusals the control plane makes itself, whoever asks.


async def test_api_apply_false_refuses_apply(config: Config, bus: Bus, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    cp = ControlPlane(msgspec.structs.replace(config, api_apply=False), load_plugins=False)
    await cp.start()
    await cp.bus.nc.flush()  # its API subscriptions have reached the server
    try:
        with pytest.raises(RemoteError, match=r"api_apply = false") as refused:
            await request(
                bus, "apply", ApplyRequest(instances=[marker_decl(marker)]), ApplyReply, within=10
            )
        assert refused.value.code == 403
        reply = await request(bus, "instances", {}, InstancesReply, within=10)
        assert reply.instances == []
    finally:
        await cp.stop()
    assert not marker.exists()


async def test_executable_allow_list_refuses_other_commands(
    config: Config, bus: Bus, tmp_path: Path
) -> None:

    sleep = shutil.which("sleep")
    assert sleep is not None
    marker = tmp_path / "ran"
    allowed = msgspec.structs.replace(config, process_executables=[sleep])
    cp = ControlPlane(allowed, load_plugins=False)
    await cp.start()
    await cp.bus.nc.flush()  # its API subscriptions have reached the server
    try:
        with pytest.raises(CtrlplaneError, match=r"executable 'sh' is not allowed"):
            await request(
                bus, "apply", ApplyRequest(instances=[marker_decl(marker)]), ApplyReply, within=10
            )
        assert await cp.store.instances.all() == []
        ok = InstanceDecl(name="nap", command=["sleep", "30"])
        reply = await request(bus, "apply", ApplyRequest(instances=[ok]), ApplyReply, within=20)
        assert reply.result is not None and reply.result.created == ["nap"], reply
        reply = await request(bus, "apply", ApplyRequest(instances=[]), ApplyReply, within=20)
        assert reply.result is not None and reply.result.removed == ["nap"]
    finally:
        await cp.stop()
    assert not marker.exists()

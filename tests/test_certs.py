"""Certificates: the local CA, the file router and the CertRenewer (ACME: test_acme.py)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
from cryptography import x509

from ctrlplane import Config, ControlPlane
from ctrlplane.api import CertsReply, request
from ctrlplane.bus import Bus, Event
from ctrlplane.bus.server import ServerInfo
from ctrlplane.bus.subjects import Subjects
from ctrlplane.certs import FileRouter, IssueError, LocalCA
from ctrlplane.certs.issuer import Issued, matches
from ctrlplane.certs.renewal import jitter, renewal_time
from ctrlplane.certs.router import RouteNotFoundError
from ctrlplane.declarations import InstanceDecl
from ctrlplane.domains import DomainDecl
from ctrlplane.store import Store
from ctrlplane.store.certs import Certificate, Domain
from ctrlplane.workers.cert_renewer import CertRenewer, CertRenewError
from tests.helpers import subscribe_events, tick_context, wait_for
from tests.processes import env_for, run_cli

PEBBLE = Path("/usr/bin/pebble")
CHALLTESTSRV = Path("/usr/bin/pebble-challtestsrv")
HOST = "app.example.test"


# ------------------------------------------------------------------ helpers


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


class FlakyIssuer:
    """The local CA, except while ``broken``."""

    name = "local"

    def __init__(self, inner: LocalCA) -> None:
        self.inner = inner
        self.broken = False
        self.calls = 0

    async def issue(self, hostname: str, lifetime: timedelta) -> Issued:
        self.calls += 1
        if self.broken:
            raise IssueError(hostname, self.name, "CA unreachable")
        return await self.inner.issue(hostname, lifetime)


def _domain(hostname: str = HOST, *, issuer: str = "local", **kw: timedelta) -> Domain:
    return Domain(
        hostname=hostname,
        instance="web",
        issuer=issuer,
        cert_lifetime=kw.get("cert_lifetime", timedelta(hours=1)),
        renew_before=kw.get("renew_before", timedelta(minutes=10)),
    )


def _read(path: str) -> bytes:
    with open(path, "rb") as file:
        return file.read()


def _types(events: list[Event]) -> list[str]:
    return [e.type for e in events]


# ------------------------------------------------------------------ local CA and router


async def test_local_ca_issues_from_one_private_ca_and_the_router_installs_it(
    tmp_path: Path,
) -> None:
    ca = LocalCA(tmp_path / "certs" / "ca")
    router = FileRouter(tmp_path, {"local": ca})
    cert = await router.provision_cert(_domain(cert_lifetime=timedelta(hours=2)))

    assert (ca.directory / "ca.key").stat().st_mode & 0o777 == 0o600
    host = tmp_path / "certs" / "domains" / HOST
    current = host / "current"
    assert current.is_symlink() and os.readlink(current) == cert.serial
    for name in ("cert.pem", "chain.pem", "fullchain.pem", "key.pem"):
        assert (current / name).is_file()
    assert (current / "key.pem").stat().st_mode & 0o777 == 0o600
    leaf = x509.load_pem_x509_certificate((current / "cert.pem").read_bytes())
    leaf.verify_directly_issued_by(ca.certificate())
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [HOST]
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == timedelta(hours=2)
    assert (cert.not_before, cert.not_after) == (
        leaf.not_valid_before_utc,
        leaf.not_valid_after_utc,
    )
    assert matches((current / "cert.pem").read_bytes(), (current / "key.pem").read_bytes())
    assert cert.cert_path == str(host / cert.serial / "cert.pem")

    # A second CA object on the same folder (another process) signs with the same CA.
    again = await FileRouter(tmp_path, {"local": LocalCA(ca.directory)}).provision_cert(_domain())
    assert again.serial != cert.serial
    x509.load_pem_x509_certificate(_read(again.cert_path)).verify_directly_issued_by(
        ca.certificate()
    )
    third = await router.provision_cert(_domain())
    # The current and the one before stay (a reader may be on it); older ones go.
    assert sorted(p.name for p in host.iterdir() if not p.name.startswith(".")) == sorted(
        ["current", again.serial, third.serial]
    )


async def test_router_routes_table(tmp_path: Path) -> None:
    router = FileRouter(tmp_path, {"local": LocalCA(tmp_path / "certs" / "ca")})
    await router.add_route("api.example.test", "api")
    await router.add_domain(_domain())
    # No TLS files in the table before there are files.
    assert {(r.hostname, r.instance, r.cert) for r in await router.routes()} == {
        ("api.example.test", "api", None),
        (HOST, "web", None),
    }
    await router.provision_cert(_domain())
    await router.add_domain(_domain())
    await router.update_route("api.example.test", "api2")
    routes = {r.hostname: r for r in await router.routes()}
    assert routes["api.example.test"].instance == "api2"
    tls = routes[HOST]
    assert tls.cert is not None and tls.key is not None
    assert matches(_read(tls.cert), _read(tls.key))
    on_disk = json.loads((tmp_path / "routes.json").read_text())
    assert [r["hostname"] for r in on_disk["routes"]] == ["api.example.test", HOST]
    assert (tmp_path / "routes.json").stat().st_mode & 0o777 == 0o600

    with pytest.raises(RouteNotFoundError):
        await router.update_route("nope.example.test", "x")
    await router.remove_route("api.example.test")
    await router.remove_domain(HOST)
    assert await router.routes() == []
    assert not (tmp_path / "certs" / "domains" / HOST).exists()
    with pytest.raises(IssueError, match="set acme_directory"):
        await router.provision_cert(_domain(issuer="acme"))


def test_renewal_time_is_a_third_of_the_lifetime_or_renew_before_less_a_fixed_jitter() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    cert = Certificate(
        serial="1",
        hostname=HOST,
        issuer="local",
        not_before=now,
        not_after=now + timedelta(days=90),
        cert_path="c",
        key_path="k",
    )
    lifetime = timedelta(days=90)
    short = _domain(renew_before=timedelta(days=10))
    long = _domain(renew_before=timedelta(days=45))
    j = jitter(HOST, lifetime)
    assert timedelta(0) < j <= lifetime * 0.05
    assert jitter(HOST, lifetime) == j  # deterministic
    assert jitter("other.example.test", lifetime) != j
    assert renewal_time(cert, short) == now + timedelta(days=60) - j
    assert renewal_time(cert, long) == now + timedelta(days=45) - j


# ------------------------------------------------------------------ the renewer


async def test_a_failing_issuer_backs_off_and_recovers(tmp_path: Path, store: Store) -> None:
    issuer = FlakyIssuer(LocalCA(tmp_path / "certs" / "ca"))
    router = FileRouter(tmp_path, {"local": issuer})
    clock = Clock()
    t0 = clock.now
    renewer = CertRenewer(
        store,
        router,
        interval=timedelta(seconds=1),
        backoff=timedelta(seconds=1),
        max_backoff=timedelta(seconds=4),
        clock=clock,
    )
    await store.domains.sync([_domain()])
    published: list[Event] = []

    issuer.broken = True
    waits = []
    for _ in range(4):
        with pytest.raises(CertRenewError, match=f"{HOST}: .*CA unreachable"):
            await renewer.run(tick_context("cert_renewer", published))
        domain = await store.domains.get(HOST)
        assert domain.next_attempt is not None
        waits.append((domain.next_attempt - clock.now).total_seconds())
        # Inside the back-off nothing is tried, and a run is no failure.
        calls = issuer.calls
        clock.now += timedelta(milliseconds=500)
        await renewer.run(tick_context("cert_renewer", published))
        assert issuer.calls == calls
        clock.now = domain.next_attempt
    assert waits == [1, 2, 4, 4]  # doubling, capped
    assert domain.failures == 4 and domain.last_error and "CA unreachable" in domain.last_error
    failed = [e for e in published if e.type == "cert.renewal_failed"]
    assert [e.data["failures"] for e in failed] == [1, 2, 3, 4]
    assert "not_after" not in failed[0].data  # absent, never null
    assert datetime.fromisoformat(failed[0].data["next_attempt"]) == t0 + timedelta(seconds=1)
    assert "cert.expiring" not in _types(published)  # no certificate to expire yet

    issuer.broken = False
    published.clear()
    await renewer.run(tick_context("cert_renewer", published))
    assert _types(published) == ["cert.provisioned"]
    domain = await store.domains.get(HOST)
    assert (domain.failures, domain.next_attempt, domain.last_error) == (0, None, None)
    first = await store.certificates.current(HOST)
    assert first is not None and published[0].data["serial"] == first.serial

    # Not due: nothing happens.
    published.clear()
    await renewer.run(tick_context("cert_renewer", published))
    assert published == [] and issuer.calls == 5

    # Due, and the CA breaks: a failure, then `expiring` while backing off.
    clock.now = renewal_time(first, domain) + timedelta(seconds=1)
    issuer.broken = True
    with pytest.raises(CertRenewError):
        await renewer.run(tick_context("cert_renewer", published))
    clock.now += timedelta(milliseconds=500)
    await renewer.run(tick_context("cert_renewer", published))
    assert _types(published) == ["cert.renewal_failed", "cert.expiring"]
    assert datetime.fromisoformat(published[0].data["not_after"]) == first.not_after
    expiring = published[1].data
    assert expiring["serial"] == first.serial
    assert "backing off after 1 failures" in expiring["reason"]
    assert expiring["time_left"] == (first.not_after - clock.now).total_seconds() > 0

    # Recovers: renewed, back-off reset, the new certificate is current.
    issuer.broken = False
    clock.now += timedelta(seconds=1)
    published.clear()
    await renewer.run(tick_context("cert_renewer", published))
    assert _types(published) == ["cert.renewed"]
    second = await store.certificates.current(HOST)
    assert second is not None and second.serial != first.serial
    assert published[0].data["previous_serial"] == first.serial
    assert (await store.domains.get(HOST)).failures == 0
    assert os.readlink(tmp_path / "certs" / "domains" / HOST / "current") == second.serial


async def test_auto_renew_off_only_warns(tmp_path: Path, store: Store) -> None:
    router = FileRouter(tmp_path, {"local": LocalCA(tmp_path / "certs" / "ca")})
    clock = Clock()
    renewer = CertRenewer(store, router, clock=clock)
    domain = msgspec.structs.replace(_domain(), auto_renew=False)
    await store.domains.sync([domain])
    published: list[Event] = []
    # A first certificate is still provisioned.
    await renewer.run(tick_context("cert_renewer", published))
    cert = await store.certificates.current(HOST)
    assert cert is not None and _types(published) == ["cert.provisioned"]
    clock.now = cert.not_after - timedelta(seconds=1)
    await renewer.run(tick_context("cert_renewer", published))
    assert _types(published) == ["cert.provisioned", "cert.expiring"]
    assert published[1].data["reason"] == "auto_renew is off"
    assert (await store.certificates.current(HOST)) == cert


# ------------------------------------------------------------------ end to end


@dataclass
class _Reads:
    count: int = 0
    bad: list[str] = field(default_factory=list)
    serials: set[str] = field(default_factory=set)


def _read_loop(host: Path, stop: threading.Event, reads: _Reads) -> None:
    """Read the current certificate and key as a proxy would: resolve ``current`` once."""
    while not stop.is_set():
        folder = Path(os.path.realpath(host / "current"))
        try:
            cert = (folder / "cert.pem").read_bytes()
            key = (folder / "key.pem").read_bytes()
            full = (folder / "fullchain.pem").read_bytes()
            if not matches(cert, key) or not full.startswith(cert):
                reads.bad.append(f"{folder.name}: key and cert do not match")
        except Exception as exc:
            reads.bad.append(f"{folder.name}: {exc!r}")
        reads.count += 1
        reads.serials.add(folder.name)
        time.sleep(0.001)


async def test_short_lived_certificates_are_renewed_before_expiry_and_swapped_atomically(
    config: Config, nats_server: ServerInfo, subjects: Subjects, bus: Bus
) -> None:
    cfg = msgspec.structs.replace(
        config,
        cert_renew_interval=timedelta(milliseconds=250),
        instances=[
            msgspec.convert(
                {
                    "name": "web",
                    "command": [sys.executable, "-c", "pass"],
                    "desired_state": "stopped",
                },
                InstanceDecl,
            )
        ],
        domains=[
            DomainDecl(
                hostname=HOST,
                instance="web",
                cert_lifetime=timedelta(seconds=4),
                renew_before=timedelta(seconds=1),
            )
        ],
    )
    nc, seen = await subscribe_events(nats_server, subjects.event("cert.*"))
    host = cfg.data_dir / "certs" / "domains" / HOST
    stop = threading.Event()
    reads = _Reads()
    reader: threading.Thread | None = None
    cp = ControlPlane(cfg, load_plugins=False)
    await cp.start()
    try:
        await wait_for(lambda: "cert.provisioned" in _types(seen), within=10)
        reader = threading.Thread(target=_read_loop, args=(host, stop, reads), daemon=True)
        reader.start()
        received: list[tuple[datetime, Event]] = []

        def renewals() -> bool:
            for e in seen:
                if e.type == "cert.renewed" and all(e is not r for _, r in received):
                    received.append((datetime.now(UTC), e))
            return len(received) >= 2

        await wait_for(renewals, within=15, interval=0.01)
        stop.set()
        reader.join(5)

        issued = {e.data["serial"]: e.data for e in seen if e.type.startswith("cert.")}
        domain = await cp.store.domains.get(HOST)
        for at, event in received:
            previous = await _cert(cp.store, event.data["previous_serial"])
            assert at < previous.not_after, "renewed only after the old certificate expired"
            assert at >= renewal_time(previous, domain), "renewed before it was due"
            assert event.data["serial"] in issued
        assert "cert.renewal_failed" not in _types(seen)
        assert reads.bad == [] and reads.count > 50
        assert len(reads.serials) >= 2, "the reader never saw a renewal"

        reply = await request(bus, "certs", {}, CertsReply, within=5)
        [view] = reply.certs
        current = await cp.store.certificates.current(HOST)
        assert current is not None
        assert (view.hostname, view.instance, view.issuer, view.serial) == (
            HOST,
            "web",
            "local",
            current.serial,
        )
        assert view.time_left is not None and view.time_left <= timedelta(seconds=4)
        routes = json.loads((cfg.data_dir / "routes.json").read_text())["routes"]
        assert routes == [
            {
                "hostname": HOST,
                "instance": "web",
                "cert": str(host / "current" / "fullchain.pem"),
                "key": str(host / "current" / "key.pem"),
            }
        ]
        web = await cp.store.instances.get("web")
        assert all(e.instance_id == web.id for e in seen)
    finally:
        stop.set()
        if reader is not None:
            reader.join(5)
        await cp.stop()
        await nc.close()


async def _cert(store: Store, serial: str) -> Certificate:
    for cert in await store.certificates.history(HOST):
        if cert.serial == serial:
            return cert
    raise AssertionError(f"no certificate {serial}")


async def test_cli_apply_domains_and_list_certs(
    config: Config, nats_server: ServerInfo, subjects: Subjects
) -> None:
    cfg = msgspec.structs.replace(config, cert_renew_interval=timedelta(hours=1))
    cp = ControlPlane(cfg, load_plugins=False)
    env = env_for(
        CTRLPLANE_SUBJECT_PREFIX=subjects.prefix, CTRLPLANE_NATS_URL=nats_server.client_url
    )
    file = cfg.data_dir.parent / "apply.toml"

    def write(*hostnames: str) -> None:
        text = f'[[instances]]\nname = "web"\ncommand = ["{sys.executable}", "-c", "pass"]\n'
        text += 'desired_state = "stopped"\n'
        text += "domains = []\n" if not hostnames else ""
        for h in hostnames:
            text += f'\n[[domains]]\nhostname = "{h}"\ninstance = "web"\ncert_lifetime = "2h"\n'
            text += 'renew_before = "1h"\n'
        file.write_text(text)

    async def cli(*args: str) -> str:
        result = await asyncio.to_thread(run_cli, list(args), env)
        assert result.returncode == 0, result.stderr
        return result.stdout

    await cp.start()
    try:
        write(HOST, "api.example.test")
        out = await cli("apply", "-f", str(file))
        assert sorted(out.splitlines()) == [
            "domain api.example.test created",
            f"domain {HOST} created",
            "web created",
        ]

        async def both_issued() -> bool:
            listed = json.loads(await cli("certs", "--json"))
            return len(listed) == 2 and all(c["serial"] for c in listed)

        # The renewer provisions on domain.created, long before its next tick.
        await wait_for(both_issued, within=15, interval=0.3)
        table = await cli("certs")
        assert table.splitlines()[0].split()[:4] == ["HOSTNAME", "INSTANCE", "ISSUER", "SERIAL"]
        assert HOST in table and "local" in table and "1h" in table

        write(HOST)
        out = await cli("apply", "-f", str(file), "--json")
        assert json.loads(out)["domains"]["removed"] == ["api.example.test"]
        assert [c["hostname"] for c in json.loads(await cli("certs", "--json"))] == [HOST]
        assert not (cfg.data_dir / "certs" / "domains" / "api.example.test").exists()

        file.write_text(file.read_text().replace('instance = "web"', 'instance = "nope"'))
        result = await asyncio.to_thread(run_cli, ["apply", "-f", str(file)], env)
        # Refused while reading the file (a config error, exit 2), before
        # anything is sent to the control plane.
        assert result.returncode == 2 and "domains[0].instance" in result.stderr
    finally:
        await cp.stop()

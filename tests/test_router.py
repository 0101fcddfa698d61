"""The file router's layout on disk: certificates of domains apart from the CA,
an older layout moved, and a routes table that never names a deleted file."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import threading
from datetime import timedelta
from pathlib import Path

import pytest

from ctrlplane.bus import Event
from ctrlplane.certs import FileRouter, HostnameError, LocalCA
from ctrlplane.store import Store
from ctrlplane.store.certs import Certificate, Domain
from ctrlplane.workers.cert_renewer import CertRenewer
from tests.helpers import tick_context

HOST = "app.example.test"


def _domain(hostname: str = HOST) -> Domain:
    return Domain(
        hostname=hostname,
        instance="web",
        issuer="local",
        cert_lifetime=timedelta(hours=1),
        renew_before=timedelta(minutes=10),
    )


def _router(data_dir: Path) -> FileRouter:
    return FileRouter(data_dir, {"local": LocalCA(data_dir / "certs" / "ca")})


def _named_paths(data_dir: Path) -> list[str]:
    try:
        table = json.loads((data_dir / "routes.json").read_text())
    except FileNotFoundError:
        return []
    return [p for r in table["routes"] for p in (r["cert"], r["key"]) if p is not None]


def _missing(data_dir: Path) -> list[str]:
    return [p for p in _named_paths(data_dir) if not Path(p).exists()]


@pytest.mark.parametrize("hostname", ["ca", "acme", "domains", "localhost"])
async def test_a_domain_cannot_take_the_folder_of_the_ca_or_the_acme_account(
    tmp_path: Path, hostname: str
) -> None:
    router = _router(tmp_path)
    await router.provision_cert(_domain())
    ca_key = tmp_path / "certs" / "ca" / "ca.key"
    ca_key_bytes = ca_key.read_bytes()
    account = tmp_path / "certs" / "acme" / "account.key"
    account.parent.mkdir(mode=0o700)
    account.write_bytes(b"account")

    for _ in range(3):  # enough certificates that pruning would have run
        with pytest.raises(HostnameError, match="single-label"):
            await router.provision_cert(_domain(hostname))
    with pytest.raises(HostnameError):
        await router.add_domain(_domain(hostname))
    await router.remove_domain(hostname)

    assert ca_key.read_bytes() == ca_key_bytes
    assert account.read_bytes() == b"account"
    assert (tmp_path / "certs" / "domains" / HOST / "current").is_symlink()


async def test_removing_a_domain_deletes_only_under_certs_domains(tmp_path: Path) -> None:
    router = _router(tmp_path)
    await router.provision_cert(_domain())
    await router.remove_domain(HOST)
    assert not (tmp_path / "certs" / "domains" / HOST).exists()
    assert sorted(p.name for p in (tmp_path / "certs").iterdir()) == ["ca", "domains"]
    assert (tmp_path / "certs" / "ca" / "ca.key").exists()


async def test_an_older_layout_is_moved_under_certs_domains_on_first_use(tmp_path: Path) -> None:
    # Build the layout of the previous version: certs/<hostname>, routes.json naming it.
    older = _router(tmp_path)
    cert = await older.provision_cert(_domain())
    await older.add_domain(_domain())
    new_home = tmp_path / "certs" / "domains" / HOST
    old_home = tmp_path / "certs" / HOST
    os.rename(new_home, old_home)
    (tmp_path / "certs" / "domains").rmdir()
    table = (tmp_path / "routes.json").read_text()
    (tmp_path / "routes.json").write_text(table.replace(str(new_home), str(old_home)))
    assert all(p.startswith(str(old_home)) for p in _named_paths(tmp_path))

    router = _router(tmp_path)
    await router.add_route("api.example.test", "api")

    assert not old_home.exists()
    assert os.readlink(new_home / "current") == cert.serial
    paths = _named_paths(tmp_path)
    assert paths == [
        str(new_home / "current" / "fullchain.pem"),
        str(new_home / "current" / "key.pem"),
    ]
    assert _missing(tmp_path) == []
    assert (tmp_path / "certs" / "ca" / "ca.key").exists()


async def test_routes_json_never_names_a_deleted_file_while_domains_come_and_go(
    tmp_path: Path,
) -> None:
    router = _router(tmp_path)
    missing: list[list[str]] = []
    done = threading.Event()

    def watch() -> None:
        # As a proxy that must also open the files would: under the router's lock.
        while not done.is_set():
            with open(router.lock_path, "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                gone = _missing(tmp_path)
                fcntl.flock(lock, fcntl.LOCK_UN)
            if gone:
                missing.append(gone)

    async def renew() -> None:
        # What the CertRenewer does: a certificate, then the route over TLS.
        await router.provision_cert(_domain())
        await router.add_domain(_domain())

    await router.add_domain(_domain())
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for _ in range(50):
            await router.add_domain(_domain())
            await asyncio.gather(renew(), router.remove_domain(HOST))
            gone = _missing(tmp_path)
            assert not gone, f"routes.json names deleted files: {gone}"
    finally:
        done.set()
        watcher.join(timeout=10)
    assert not missing, f"routes.json named deleted files: {missing[:3]}"


class _RemovedWhileIssuing(FileRouter):
    """A router whose domain is removed, as ``apply`` removes it, while a certificate is issued."""

    def __init__(self, data_dir: Path, store: Store) -> None:
        super().__init__(data_dir, {"local": LocalCA(data_dir / "certs" / "ca")})
        self.store = store

    async def provision_cert(self, domain: Domain) -> Certificate:
        cert = await super().provision_cert(domain)
        await self.store.domains.sync([])
        await self.remove_domain(domain.hostname)
        return cert


async def test_a_renewal_racing_a_removal_leaves_the_domain_unrouted(
    tmp_path: Path, store: Store
) -> None:
    router = _RemovedWhileIssuing(tmp_path, store)
    await store.domains.sync([_domain()])
    renewer = CertRenewer(store, router, interval=timedelta(hours=1))
    published: list[Event] = []

    ctx = tick_context("cert_renewer", published)
    await renewer.run(ctx)

    assert await router.routes() == []
    assert not (tmp_path / "certs" / "domains" / HOST).exists()
    assert published == []
    assert await store.certificates.current(HOST) is None

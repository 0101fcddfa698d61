"""The built-in router: PEM files and a routes table on disk, for a reverse proxy to load.

Layout under the data directory::

    routes.json                         hostname -> instance, and the TLS files
    certs/<hostname>/<serial>/          one folder per certificate, never changed
        cert.pem  chain.pem  fullchain.pem  key.pem (0600)
    certs/<hostname>/current -> <serial>

A new certificate is written whole into a folder of its own, which is then
renamed into place, and only then is the ``current`` symlink swapped, with one
``rename(2)``. So a reader that resolves ``current`` once (``realpath``,
``openat`` on the folder, or a proxy that reloads) and reads both files
through what it resolved always gets a key and a certificate that match, and
never a half-written file. The folder replaced last stays, so a reader that
resolved it just before the swap can still finish; older ones are deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path

import msgspec
from cryptography import x509
from msgspec import Struct, field

from ctrlplane.bus.private import private_dir, write_private
from ctrlplane.certs.issuer import CertError, Issued, IssueError, Issuer, matches, serial_hex
from ctrlplane.store.certs import Certificate, Domain

ROUTES_FILE = "routes.json"
CERTS_DIR = "certs"
CURRENT = "current"
_LOCK = ".lock"
# Leftovers of a write that died half-way are deleted once surely abandoned.
_STALE_AFTER_S = 3600.0


class Route(Struct, frozen=True, kw_only=True):
    """One entry of ``routes.json``.

    Attributes:
        hostname: The name requests arrive for.
        instance: The instance they go to.
        cert: The certificate and its chain (``current/fullchain.pem``), for TLS.
        key: Its private key (``current/key.pem``).
    """

    hostname: str
    instance: str
    cert: str | None = None
    key: str | None = None


class RouteTable(Struct, kw_only=True):
    """The whole of ``routes.json``."""

    routes: list[Route] = field(default_factory=list)


class RouteNotFoundError(CertError):
    """No route has that hostname."""

    def __init__(self, hostname: str) -> None:
        self.hostname = hostname
        super().__init__(f"router: no route for {hostname!r}")


class FileRouter:
    """Writes certificates and routes where a reverse proxy can load them.

    Args:
        data_dir: The control plane's data directory.
        issuers: Issuers by name (``local``, ``acme``); a domain names its own.
    """

    name = "file"

    def __init__(self, data_dir: Path, issuers: Mapping[str, Issuer]) -> None:
        self.data_dir = data_dir
        self.issuers = dict(issuers)
        self.routes_path = data_dir / ROUTES_FILE

    def cert_dir(self, hostname: str) -> Path:
        """The folder of ``hostname``'s certificates (``*`` of a wildcard spelt ``_wildcard``)."""
        return self.data_dir / CERTS_DIR / hostname.replace("*", "_wildcard")

    async def routes(self) -> list[Route]:
        """The routes table as it is on disk, by hostname."""
        return await asyncio.to_thread(lambda: self._read().routes)

    async def add_route(self, hostname: str, instance: str) -> None:
        """Route ``hostname`` to ``instance`` (plain, unless it is a domain too). Idempotent."""
        await asyncio.to_thread(self._change, hostname, instance, tls=None)

    async def update_route(self, hostname: str, instance: str) -> None:
        """Route ``hostname`` to another instance.

        Raises:
            RouteNotFoundError: there is no route for ``hostname``.
        """
        await asyncio.to_thread(self._change, hostname, instance, tls=None, must_exist=True)

    async def remove_route(self, hostname: str) -> None:
        """Stop routing ``hostname``; its certificates stay. Idempotent."""
        await asyncio.to_thread(self._change, hostname, None, tls=None)

    async def add_domain(self, domain: Domain) -> None:
        """Route ``domain``, over TLS with the files of its current certificate once it
        has one (call again after :meth:`provision_cert`). Idempotent."""
        await asyncio.to_thread(self._change, domain.hostname, domain.instance, tls=True)

    async def remove_domain(self, hostname: str) -> None:
        """Stop routing ``hostname`` and delete its certificates. Idempotent."""
        await asyncio.to_thread(self._change, hostname, None, tls=None)
        await asyncio.to_thread(shutil.rmtree, self.cert_dir(hostname), True)

    async def provision_cert(self, domain: Domain) -> Certificate:
        """Have the domain's issuer issue a certificate and install it as ``current``.

        Raises:
            IssueError: the issuer is unknown or failed; the files are untouched.
        """
        issuer = self.issuers.get(domain.issuer)
        if issuer is None:
            known = ", ".join(sorted(self.issuers)) or "none"
            hint = " (set acme_directory)" if domain.issuer == "acme" else ""
            raise IssueError(
                domain.hostname, domain.issuer, f"no such issuer{hint}; configured: {known}"
            )
        issued = await issuer.issue(domain.hostname, domain.cert_lifetime)
        return await asyncio.to_thread(self._install, domain, issued)

    def _install(self, domain: Domain, issued: Issued) -> Certificate:
        if not matches(issued.cert_pem, issued.key_pem):
            raise IssueError(domain.hostname, domain.issuer, "the key does not match the cert")
        leaf = x509.load_pem_x509_certificate(issued.cert_pem)
        host = self.cert_dir(domain.hostname)
        private_dir(host)
        with _locked(host / _LOCK):
            return self._swap(host, domain, issued, leaf)

    def _swap(
        self, host: Path, domain: Domain, issued: Issued, leaf: x509.Certificate
    ) -> Certificate:
        serial = serial_hex(leaf)
        version = host / serial
        if not version.exists():
            staging = Path(tempfile.mkdtemp(dir=host, prefix=".new-"))
            try:
                write_private(staging / "key.pem", issued.key_pem)
                write_private(staging / "cert.pem", issued.cert_pem)
                write_private(staging / "chain.pem", issued.chain_pem)
                write_private(staging / "fullchain.pem", issued.cert_pem + issued.chain_pem)
                os.rename(staging, version)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        previous = _readlink(host / CURRENT)
        link = host / f".{CURRENT}-{secrets.token_hex(4)}"
        os.symlink(serial, link)
        os.replace(link, host / CURRENT)  # the one atomic step readers see
        _fsync_dir(host)
        _prune(host, keep={serial, previous})
        return Certificate(
            serial=serial,
            hostname=domain.hostname,
            issuer=domain.issuer,
            not_before=leaf.not_valid_before_utc,
            not_after=leaf.not_valid_after_utc,
            cert_path=str(version / "cert.pem"),
            key_path=str(version / "key.pem"),
            chain_path=str(version / "chain.pem"),
            issued=datetime.now(UTC),
        )

    def _read(self) -> RouteTable:
        try:
            return msgspec.json.decode(self.routes_path.read_bytes(), type=RouteTable)
        except FileNotFoundError:
            return RouteTable()

    def _change(
        self, hostname: str, instance: str | None, *, tls: bool | None, must_exist: bool = False
    ) -> None:
        """Set (``instance``) or remove (``None``) one route, under a lock across processes."""
        with _locked(self.data_dir / f".{ROUTES_FILE}.lock"):
            table = self._read()
            routes = {r.hostname: r for r in table.routes}
            old = routes.get(hostname)
            if must_exist and old is None:
                raise RouteNotFoundError(hostname)
            if instance is None:
                routes.pop(hostname, None)
            else:
                secure = tls if tls is not None else old is not None and old.cert is not None
                current = self.cert_dir(hostname) / CURRENT
                # No TLS files in the table before there are files: a proxy
                # would refuse the whole configuration.
                secure = secure and current.exists()
                routes[hostname] = Route(
                    hostname=hostname,
                    instance=instance,
                    cert=str(current / "fullchain.pem") if secure else None,
                    key=str(current / "key.pem") if secure else None,
                )
            new = RouteTable(routes=sorted(routes.values(), key=lambda r: r.hostname))
            if new != table:
                write_private(self.routes_path, msgspec.json.format(msgspec.json.encode(new)))


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock across processes (and threads: each opens its own file)."""
    private_dir(path.parent)
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _readlink(path: Path) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _prune(host: Path, keep: set[str | None]) -> None:
    """Delete the certificates before the previous one, and abandoned leftovers."""
    now = time.time()
    for entry in host.iterdir():
        if entry.name in (CURRENT, _LOCK) or entry.name in keep:
            continue
        if entry.name.startswith("."):
            with contextlib.suppress(FileNotFoundError):
                if now - entry.lstat().st_mtime < _STALE_AFTER_S:
                    continue
        if entry.is_symlink() or entry.is_file():
            entry.unlink(missing_ok=True)
        else:
            shutil.rmtree(entry, ignore_errors=True)

"""The built-in router: PEM files and a routes table on disk, for a reverse proxy to load.

Layout under the data directory::

    routes.json                         hostname -> instance, and the TLS files
    certs/ca/                           the local CA (LocalCA)
    certs/acme/                         the ACME account key and http-01 webroot
    certs/domains/<hostname>/<serial>/  one folder per certificate, never changed
        cert.pem  chain.pem  fullchain.pem  key.pem (0600)
    certs/domains/<hostname>/current -> <serial>

Certificates of domains live under ``certs/domains`` only, so no hostname can
name the CA's or the ACME account's folder, and the router deletes nothing
outside it. A layout of an older version (``certs/<hostname>``) is moved there
on first use.

A new certificate is written whole into a folder of its own, which is then
renamed into place, and only then is the ``current`` symlink swapped, with one
``rename(2)``. So a reader that resolves ``current`` once (``realpath``,
``openat`` on the folder, or a proxy that reloads) and reads both files
through what it resolved always gets a key and a certificate that match, and
never a half-written file. The folder replaced last stays, so a reader that
resolved it just before the swap can still finish; older ones are deleted.

Every change (a route, a certificate installed, a domain's folder deleted)
happens under one lock across processes, ``.routes.json.lock``, and
``routes.json`` is replaced whole (a temporary file and ``rename(2)``), naming
only TLS files that exist at that moment: a proxy that loads it never finds a
path to a deleted file. A reader that must also resolve the files before a
removal may hold the same lock (``flock``) while it reads.
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
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path

import msgspec
from cryptography import x509
from msgspec import Struct, field

from ctrlplane.certs.issuer import CertError, Issued, IssueError, Issuer, matches, serial_hex
from ctrlplane.files import private_dir, write_private
from ctrlplane.hostnames import hostname_problem
from ctrlplane.store.certs import Certificate, Domain

ROUTES_FILE = "routes.json"
CERTS_DIR = "certs"
DOMAINS_DIR = "domains"
CA_DIR = "ca"
ACME_DIR = "acme"
CURRENT = "current"
# The per-host lock of older versions; left alone where it exists.
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


class HostnameError(CertError):
    """A hostname the router refuses: it would name no certificate, or a folder not its own.

    Attributes:
        hostname: The hostname.
        reason: Why it is refused.
    """

    def __init__(self, hostname: str, reason: str) -> None:
        self.hostname = hostname
        self.reason = reason
        super().__init__(f"router: {reason}")

    def __reduce__(self) -> tuple[type[HostnameError], tuple[str, str]]:
        return type(self), (self.hostname, self.reason)


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
        self.lock_path = data_dir / f".{ROUTES_FILE}.lock"
        self._domains = data_dir / CERTS_DIR / DOMAINS_DIR
        self._migrated = False

    def cert_dir(self, hostname: str) -> Path:
        """The folder of ``hostname``'s certificates (``*`` of a wildcard spelt ``_wildcard``).

        Raises:
            HostnameError: ``hostname`` is not a valid domain hostname.
        """
        problem = hostname_problem(hostname)
        if problem is not None:
            raise HostnameError(hostname, problem)
        return self._domains / hostname.replace("*", "_wildcard")

    async def routes(self) -> list[Route]:
        """The routes table as it is on disk, by hostname."""
        return await asyncio.to_thread(lambda: self._read().routes)

    async def add_route(self, hostname: str, instance: str) -> None:
        """Route ``hostname`` to ``instance`` (plain, unless it is a domain too). Idempotent.

        Raises:
            HostnameError: ``hostname`` is not a valid domain hostname.
        """
        self.cert_dir(hostname)
        await asyncio.to_thread(self._change, hostname, instance, tls=None)

    async def update_route(self, hostname: str, instance: str) -> None:
        """Route ``hostname`` to another instance.

        Raises:
            RouteNotFoundError: there is no route for ``hostname``.
            HostnameError: ``hostname`` is not a valid domain hostname.
        """
        self.cert_dir(hostname)
        await asyncio.to_thread(self._change, hostname, instance, tls=None, must_exist=True)

    async def remove_route(self, hostname: str) -> None:
        """Stop routing ``hostname``; its certificates stay. Idempotent."""
        await asyncio.to_thread(self._change, hostname, None, tls=None)

    async def add_domain(self, domain: Domain) -> None:
        """Route ``domain``, over TLS with the files of its current certificate once it
        has one (call again after :meth:`provision_cert`). Idempotent.

        Raises:
            HostnameError: the domain's hostname is not valid.
        """
        self.cert_dir(domain.hostname)
        await asyncio.to_thread(self._change, domain.hostname, domain.instance, tls=True)

    async def remove_domain(self, hostname: str) -> None:
        """Stop routing ``hostname`` and delete its certificates. Idempotent.

        The route goes first and the folder after, under the one lock, so
        ``routes.json`` never names a deleted file. Nothing outside
        ``certs/domains`` is ever deleted: a hostname that is not valid (one an
        older version accepted) only loses its route.
        """
        await asyncio.to_thread(self._remove_domain, hostname)

    def _remove_domain(self, hostname: str) -> None:
        with self._lock():
            self._change_locked(hostname, None, tls=None)
            if hostname_problem(hostname) is None:
                shutil.rmtree(self.cert_dir(hostname), ignore_errors=True)

    async def provision_cert(self, domain: Domain) -> Certificate:
        """Have the domain's issuer issue a certificate and install it as ``current``.

        Raises:
            IssueError: the issuer is unknown or failed; the files are untouched.
            HostnameError: the domain's hostname is not valid; nothing is issued.
        """
        self.cert_dir(domain.hostname)
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
        with self._lock():
            private_dir(host)
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
        """Set (``instance``) or remove (``None``) one route, under the lock."""
        with self._lock():
            self._change_locked(hostname, instance, tls=tls, must_exist=must_exist)

    def _change_locked(
        self, hostname: str, instance: str | None, *, tls: bool | None, must_exist: bool = False
    ) -> None:
        table = self._read()
        routes = {r.hostname: r for r in table.routes}
        old = routes.get(hostname)
        if must_exist and old is None:
            raise RouteNotFoundError(hostname)
        if instance is None:
            routes.pop(hostname, None)
        else:
            secure = tls if tls is not None else old is not None and old.cert is not None
            routes[hostname] = self._route(hostname, instance, secure=secure)
        self._write(table, routes.values())

    def _route(self, hostname: str, instance: str, *, secure: bool) -> Route:
        """A route over TLS only when its files exist: a proxy would refuse the
        whole table if one path were missing."""
        if secure and hostname_problem(hostname) is None:
            current = self.cert_dir(hostname) / CURRENT
            if (current / "fullchain.pem").exists() and (current / "key.pem").exists():
                return Route(
                    hostname=hostname,
                    instance=instance,
                    cert=str(current / "fullchain.pem"),
                    key=str(current / "key.pem"),
                )
        return Route(hostname=hostname, instance=instance)

    def _write(self, before: RouteTable, routes: Iterable[Route]) -> None:
        """Replace ``routes.json`` whole, every TLS path checked again as it is written."""
        checked = [self._route(r.hostname, r.instance, secure=r.cert is not None) for r in routes]
        new = RouteTable(routes=sorted(checked, key=lambda r: r.hostname))
        if new != before:
            write_private(self.routes_path, msgspec.json.format(msgspec.json.encode(new)))

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        with _locked(self.lock_path):
            if not self._migrated:
                self._migrate()
                self._migrated = True
            yield

    def _migrate(self) -> None:
        """Move the certificates of an older layout (``certs/<hostname>``) to ``certs/domains``.

        Only folders holding a ``current`` link and named as a valid hostname
        move; the CA's and the ACME account's folders are never touched.
        """
        certs = self.data_dir / CERTS_DIR
        try:
            entries = list(certs.iterdir())
        except FileNotFoundError:
            return
        moved = False
        for entry in entries:
            name = entry.name
            if name in (CA_DIR, ACME_DIR, DOMAINS_DIR) or name.startswith("."):
                continue
            hostname = name.replace("_wildcard", "*")
            if hostname_problem(hostname) is not None or entry.is_symlink():
                continue
            if not entry.is_dir() or not (entry / CURRENT).is_symlink():
                continue
            private_dir(self._domains)
            target = self._domains / name
            if not target.exists():
                os.rename(entry, target)  # ``current`` is relative: it still resolves
                moved = True
        if moved:
            table = self._read()
            self._write(table, table.routes)


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

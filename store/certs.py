"""Domains and their TLS certificates: what is declared, what was issued, how renewals fare."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from msgspec import Struct, field

from ctrlplane.store.errors import StoreError

if TYPE_CHECKING:
    # Annotations only: this module's records are imported by the config and
    # the actors, which must not pay for the database driver.
    from ctrlplane.store.types import Database, Row
    from ctrlplane.store.writer import BatchWriter


class Domain(Struct, frozen=True, kw_only=True):
    """A hostname whose certificate is kept valid, and how its renewals fare.

    Attributes:
        hostname: The name on the certificate.
        instance: The name of the instance it routes to.
        issuer: Who issues its certificates (``local``, ``acme`` or a plugin's).
        cert_lifetime: How long a certificate is asked to be valid (where the
            issuer lets the asker choose, as the local CA does).
        renew_before: Renew at the latest this long before expiry.
        auto_renew: Whether the CertRenewer renews it.
        failures: Failed attempts in a row since the last success.
        next_attempt: No attempt before this time (the back-off); ``None`` for
            no back-off.
        last_error: Why the last attempt failed.
    """

    hostname: str
    instance: str
    issuer: str
    cert_lifetime: timedelta
    renew_before: timedelta
    auto_renew: bool = True
    failures: int = 0
    next_attempt: datetime | None = None
    last_error: str | None = None

    def same_declaration(self, other: Domain) -> bool:
        """Whether ``other`` declares the same thing (back-off state aside)."""
        return _declared(self) == _declared(other)


class Certificate(Struct, frozen=True, kw_only=True):
    """A certificate issued for a domain, and where its PEM files are.

    Attributes:
        serial: The serial number, lowercase hex.
        hostname: The domain it was issued for.
        issuer: Who issued it.
        not_before: Valid from.
        not_after: Valid until.
        cert_path: The leaf certificate (PEM).
        key_path: Its private key (PEM, mode 0600).
        chain_path: The issuer chain (PEM), if any.
        issued: When it was recorded.
    """

    serial: str
    hostname: str
    issuer: str
    not_before: datetime
    not_after: datetime
    cert_path: str
    key_path: str
    chain_path: str | None = None
    issued: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def lifetime(self) -> timedelta:
        """How long it is valid in all."""
        return self.not_after - self.not_before


class DomainSync(Struct, frozen=True, kw_only=True):
    """What :meth:`DomainStore.sync` changed, by hostname."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)


class DomainNotFoundError(StoreError):
    """No domain has that hostname."""

    def __init__(self, hostname: str) -> None:
        self.hostname = hostname
        super().__init__(f"store: no domain {hostname!r}")


def _declared(d: Domain) -> tuple[object, ...]:
    return (d.hostname, d.instance, d.issuer, d.cert_lifetime, d.renew_before, d.auto_renew)


def _ts(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def _dt(value: object) -> datetime:
    return datetime.fromtimestamp(float(str(value)), UTC)


_DOMAIN_COLUMNS = (
    "hostname, instance_name, issuer, cert_lifetime, renew_before, auto_renew, "
    "failures, next_attempt, last_error"
)
_CERT_COLUMNS = (
    "serial, hostname, issuer, not_before, not_after, cert_path, key_path, chain_path, issued"
)
# A serial recorded again: the newer record wins, updated in place.
_CERT_UPSERT = "ON CONFLICT (serial) DO UPDATE SET " + ", ".join(
    f"{c} = excluded.{c}" for c in _CERT_COLUMNS.split(", ") if c != "serial"
)


def _domain(row: Row) -> Domain:
    r = tuple(row)
    return Domain(
        hostname=str(r[0]),
        instance=str(r[1]),
        issuer=str(r[2]),
        cert_lifetime=timedelta(seconds=float(str(r[3]))),
        renew_before=timedelta(seconds=float(str(r[4]))),
        auto_renew=bool(r[5]),
        failures=int(str(r[6])),
        next_attempt=None if r[7] is None else _dt(r[7]),
        last_error=None if r[8] is None else str(r[8]),
    )


def _certificate(row: Row) -> Certificate:
    r = tuple(row)
    return Certificate(
        serial=str(r[0]),
        hostname=str(r[1]),
        issuer=str(r[2]),
        not_before=_dt(r[3]),
        not_after=_dt(r[4]),
        cert_path=str(r[5]),
        key_path=str(r[6]),
        chain_path=None if r[7] is None else str(r[7]),
        issued=_dt(r[8]),
    )


class DomainStore:
    """Reads and writes domains, with their renewal back-off.

    Writes are transactions of their own: a failure and its back-off must be
    on disk before the event that tells of it is published.
    """

    def __init__(self, db: Database, writer: BatchWriter) -> None:
        self._db = db
        self._writer = writer

    async def all(self) -> list[Domain]:
        """Every domain, by hostname."""
        rows = await self._db.fetch(f"SELECT {_DOMAIN_COLUMNS} FROM domains ORDER BY hostname")
        return [_domain(r) for r in rows]

    async def get(self, hostname: str) -> Domain:
        """The domain ``hostname``.

        Raises:
            DomainNotFoundError: there is none.
        """
        row = await self._db.fetchone(
            f"SELECT {_DOMAIN_COLUMNS} FROM domains WHERE hostname = ?", (hostname,)
        )
        if row is None:
            raise DomainNotFoundError(hostname)
        return _domain(row)

    async def sync(self, domains: Sequence[Domain]) -> DomainSync:
        """Make the recorded domains exactly ``domains``: create, update, remove.

        Only the declared fields are compared; the back-off of a domain whose
        issuer is unchanged is kept. A removed domain's certificate records go
        with it. Idempotent, and one transaction.
        """
        result = DomainSync()
        async with self._writer.transaction() as db:
            rows = await db.fetch(f"SELECT {_DOMAIN_COLUMNS} FROM domains")
            existing = {d.hostname: d for d in map(_domain, rows)}
            for d in domains:
                current = existing.pop(d.hostname, None)
                if current is None:
                    await db.execute(
                        f"INSERT INTO domains ({_DOMAIN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, 0, "
                        "NULL, NULL)",
                        _declared_row(d),
                    )
                    result.created.append(d.hostname)
                elif current.same_declaration(d):
                    result.unchanged.append(d.hostname)
                else:
                    await db.execute(
                        "UPDATE domains SET instance_name = ?, issuer = ?, cert_lifetime = ?, "
                        "renew_before = ?, auto_renew = ? WHERE hostname = ?",
                        (*_declared_row(d)[1:], d.hostname),
                    )
                    if current.issuer != d.issuer:
                        # Another issuer's failures say nothing about this one.
                        await db.execute(
                            "UPDATE domains SET failures = 0, next_attempt = NULL, "
                            "last_error = NULL WHERE hostname = ?",
                            (d.hostname,),
                        )
                    result.updated.append(d.hostname)
            for gone in existing:
                await db.execute("DELETE FROM domains WHERE hostname = ?", (gone,))
                await db.execute("DELETE FROM certificates WHERE hostname = ?", (gone,))
                result.removed.append(gone)
        return result

    async def record_failure(
        self, hostname: str, *, failures: int, next_attempt: datetime, error: str
    ) -> None:
        """Record a failed attempt: ``failures`` in a row, none again before ``next_attempt``."""
        async with self._writer.transaction() as db:
            await db.execute(
                "UPDATE domains SET failures = ?, next_attempt = ?, last_error = ? "
                "WHERE hostname = ?",
                (failures, next_attempt.timestamp(), error, hostname),
            )

    async def record_success(self, hostname: str) -> None:
        """Reset the back-off after a certificate was issued."""
        async with self._writer.transaction() as db:
            await db.execute(
                "UPDATE domains SET failures = 0, next_attempt = NULL, last_error = NULL "
                "WHERE hostname = ?",
                (hostname,),
            )


def _declared_row(d: Domain) -> tuple[object, ...]:
    return (
        d.hostname,
        d.instance,
        d.issuer,
        d.cert_lifetime.total_seconds(),
        d.renew_before.total_seconds(),
        int(d.auto_renew),
    )


class CertificateStore:
    """Records issued certificates; a hostname's current one is the one valid longest."""

    def __init__(self, db: Database, writer: BatchWriter) -> None:
        self._db = db
        self._writer = writer

    async def add(self, cert: Certificate) -> None:
        """Record ``cert`` (again, if its serial is known: the newer record wins)."""
        async with self._writer.transaction() as db:
            await db.execute(
                f"INSERT INTO certificates ({_CERT_COLUMNS}) "
                f"VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) {_CERT_UPSERT}",
                (
                    cert.serial,
                    cert.hostname,
                    cert.issuer,
                    cert.not_before.timestamp(),
                    cert.not_after.timestamp(),
                    cert.cert_path,
                    cert.key_path,
                    cert.chain_path,
                    cert.issued.timestamp(),
                ),
            )

    async def current(self, hostname: str) -> Certificate | None:
        """The certificate of ``hostname`` with the newest ``not_after``; ``None`` if none."""
        row = await self._db.fetchone(
            f"SELECT {_CERT_COLUMNS} FROM certificates WHERE hostname = ? "
            "ORDER BY not_after DESC, issued DESC LIMIT 1",
            (hostname,),
        )
        return None if row is None else _certificate(row)

    async def all_current(self) -> dict[str, Certificate]:
        """The current certificate of every hostname that has one."""
        # The first of each hostname in current()'s order, in one statement.
        rows = await self._db.fetch(
            f"SELECT {_CERT_COLUMNS} FROM (SELECT {_CERT_COLUMNS}, row_number() OVER "
            "(PARTITION BY hostname ORDER BY not_after DESC, issued DESC) AS newest "
            "FROM certificates) AS ranked WHERE newest = 1"
        )
        return {c.hostname: c for c in map(_certificate, rows)}

    async def history(self, hostname: str) -> list[Certificate]:
        """Every recorded certificate of ``hostname``, newest ``not_after`` first."""
        rows = await self._db.fetch(
            f"SELECT {_CERT_COLUMNS} FROM certificates WHERE hostname = ? "
            "ORDER BY not_after DESC, issued DESC",
            (hostname,),
        )
        return [_certificate(r) for r in rows]

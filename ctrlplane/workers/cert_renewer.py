"""CertRenewer: keeps every domain's certificate valid, renewing well before it expires."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from ctrlplane.actors.context import RunContext
from ctrlplane.bus.messages import Event
from ctrlplane.certs.renewal import renewal_time
from ctrlplane.errors import PartialFailure
from ctrlplane.events import CertExpiring, CertIssued, CertRenewalFailed, data_of
from ctrlplane.store.certs import Certificate, Domain, DomainNotFoundError
from ctrlplane.store.db import Store
from ctrlplane.types import Router

DEFAULT_INTERVAL = timedelta(hours=1)


class CertRenewError(PartialFailure):
    """Some domains could not get a certificate; the others were seen to."""

    what = "certificates not renewed"


def backoff(failures: int, base: timedelta, cap: timedelta) -> timedelta:
    """How long to wait after ``failures`` failed attempts in a row: doubling, capped."""
    return min(base * (1 << min(max(failures - 1, 0), 32)), cap)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class CertRenewer:
    """Provisions a certificate for every domain that has none and renews those due.

    It runs every ``interval`` and at once when a domain is created or updated
    (``domain.created``, ``domain.updated``). A certificate is due when less
    than a third of its lifetime is left or ``renew_before`` is reached, less a
    per-domain jitter (:mod:`ctrlplane.certs.renewal`). The router issues and
    installs it (atomically); it is recorded and ``cert.provisioned`` or
    ``cert.renewed`` is published. A
    failure publishes ``cert.renewal_failed`` and is retried after a back-off
    that doubles from ``backoff`` up to ``max_backoff`` (kept in the store, so it
    holds across processes) and resets after a success, or after the
    ``retry_after`` of the error when that is longer (an ACME CA's rate limit
    and its ``Retry-After``); a due certificate
    inside its back-off, or with ``auto_renew`` off, publishes ``cert.expiring``.
    One domain's failure does not stop the others; the run then fails, naming it.

    Args:
        store: The open store.
        router: Issues and installs certificates.
        interval: How often to look.
        backoff: The wait after a first failure.
        max_backoff: The longest wait between attempts.
        issue_timeout: How long one issuance may take.
        clock: The current time (injectable for tests).
    """

    name = "cert_renewer"
    subscriptions = ("domain.created", "domain.updated")

    def __init__(
        self,
        store: Store,
        router: Router,
        *,
        interval: timedelta = DEFAULT_INTERVAL,
        backoff: timedelta = timedelta(minutes=5),
        max_backoff: timedelta = timedelta(hours=6),
        issue_timeout: timedelta = timedelta(minutes=5),
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.interval = interval
        self.timeout = max(interval, issue_timeout)
        self._store = store
        self._router = router
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._issue_timeout = issue_timeout
        self._clock = clock

    async def run(self, ctx: RunContext) -> None:
        domains = await self._store.domains.all()
        if ctx.event is not None:
            domains = [d for d in domains if d.hostname == ctx.event.data.get("hostname")]
        failures: dict[str, str] = {}
        for domain in domains:
            try:
                error = await self.renew(ctx, domain)
            except Exception as exc:  # the store or the router: the other domains still run
                error = f"{type(exc).__name__}: {exc}"
            if error is not None:
                failures[domain.hostname] = error
        if failures:
            raise CertRenewError(failures)

    async def renew(self, ctx: RunContext, domain: Domain) -> str | None:
        """See to one domain; returns why it failed, or ``None``."""
        now = self._clock()
        current = await self._store.certificates.current(domain.hostname)
        if current is not None:
            # Idempotent: keeps the routes table whole if it was lost or edited.
            if not await self._route(domain):
                return None
            if now < renewal_time(current, domain):
                return None
            if not domain.auto_renew:
                await self._expiring(ctx, domain, current, now, "auto_renew is off")
                return None
        if domain.next_attempt is not None and now < domain.next_attempt:
            if current is not None:
                reason = f"backing off after {domain.failures} failures: {domain.last_error}"
                await self._expiring(ctx, domain, current, now, reason)
            return None
        try:
            async with asyncio.timeout(self._issue_timeout.total_seconds()):
                cert = await self._router.provision_cert(domain)
        except Exception as exc:  # a router plugin may raise anything
            error = str(exc) or type(exc).__name__
            if isinstance(exc, TimeoutError):
                error = f"timed out after {self._issue_timeout.total_seconds():g}s"
            # A CA's rate limit (``RateLimitedError``) says when asking again is any use.
            wait = getattr(exc, "retry_after", None)
            await self._failed(
                ctx, domain, current, now, error, wait if isinstance(wait, timedelta) else None
            )
            return error
        if not await self._route(domain):
            return None
        await self._store.certificates.add(cert)
        if domain.failures or domain.next_attempt is not None:
            await self._store.domains.record_success(domain.hostname)
        kind = "cert.provisioned" if current is None else "cert.renewed"
        ctx.log.info(kind, hostname=domain.hostname, serial=cert.serial, not_after=cert.not_after)
        data = CertIssued(
            hostname=domain.hostname,
            instance=domain.instance,
            issuer=cert.issuer,
            serial=cert.serial,
            not_before=cert.not_before,
            not_after=cert.not_after,
            previous_serial=None if current is None else current.serial,
        )
        await self._emit(ctx, kind, domain, data_of(data))
        return None

    async def _route(self, domain: Domain) -> bool:
        """Route ``domain``, unless it was removed meanwhile; whether it is routed.

        ``apply`` removes a domain from the store, then from the router. Routing
        first and reading the store after means one of the two sees the other,
        so a renewal that races a removal never leaves the removed domain routed.
        """
        await self._router.add_domain(domain)
        try:
            await self._store.domains.get(domain.hostname)
        except DomainNotFoundError:
            await self._router.remove_domain(domain.hostname)
            return False
        return True

    async def _failed(
        self,
        ctx: RunContext,
        domain: Domain,
        current: Certificate | None,
        now: datetime,
        error: str,
        retry_after: timedelta | None = None,
    ) -> None:
        failures = domain.failures + 1
        wait = backoff(failures, self._backoff, self._max_backoff)
        next_attempt = now + max(wait, retry_after or wait)
        await self._store.domains.record_failure(
            domain.hostname, failures=failures, next_attempt=next_attempt, error=error
        )
        ctx.log.warning("certificate not issued", hostname=domain.hostname, error=error)
        data = CertRenewalFailed(
            hostname=domain.hostname,
            instance=domain.instance,
            issuer=domain.issuer,
            error=error,
            failures=failures,
            next_attempt=next_attempt,
            not_after=None if current is None else current.not_after,
        )
        await self._emit(ctx, "cert.renewal_failed", domain, data_of(data))

    async def _expiring(
        self, ctx: RunContext, domain: Domain, current: Certificate, now: datetime, reason: str
    ) -> None:
        data = CertExpiring(
            hostname=domain.hostname,
            instance=domain.instance,
            issuer=current.issuer,
            serial=current.serial,
            not_after=current.not_after,
            time_left=(current.not_after - now).total_seconds(),
            reason=reason,
            next_attempt=domain.next_attempt,
        )
        await self._emit(ctx, "cert.expiring", domain, data_of(data))

    async def _emit(
        self, ctx: RunContext, type_: str, domain: Domain, data: dict[str, object]
    ) -> None:
        instance = await self._store.instances.find(domain.instance)
        await ctx.publish(
            Event(
                type=type_,
                source=self.name,
                subject=domain.hostname,
                instance_id=None if instance is None else instance.id,
                data=data,
            )
        )

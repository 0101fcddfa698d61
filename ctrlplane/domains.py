"""Declared domains: hostnames whose TLS certificates the CertRenewer keeps valid."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from datetime import timedelta
from typing import TYPE_CHECKING

from msgspec import Struct

from ctrlplane.bus.messages import Event
from ctrlplane.errors import CtrlplaneError
from ctrlplane.events import DomainChange, data_of
from ctrlplane.hostnames import hostname_problem
from ctrlplane.store.certs import Domain, DomainSync
from ctrlplane.types import Router

if TYPE_CHECKING:
    from ctrlplane.store.db import Store

ISSUERS = ("local", "acme")

Publish = Callable[[Event], Awaitable[int]]


class DomainError(CtrlplaneError):
    """Declared domains are invalid and were not applied."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("domains: " + "; ".join(f"{field}: {why}" for field, why in problems))


class DomainDecl(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One ``[[domains]]`` table.

    Attributes:
        hostname: The name on the certificate, e.g. ``app.example.test``.
        instance: The instance the domain routes to.
        issuer: ``local`` (the control plane's own CA) or ``acme`` (RFC 8555).
        cert_lifetime: How long a certificate the local CA issues is valid.
        renew_before: Renew at the latest this long before expiry.
        auto_renew: Whether the CertRenewer renews it.
    """

    hostname: str
    instance: str
    issuer: str = "local"
    cert_lifetime: timedelta = timedelta(days=90)
    renew_before: timedelta = timedelta(days=30)
    auto_renew: bool = True

    def domain(self) -> Domain:
        """The domain as the store records it, with no renewal back-off yet."""
        return Domain(
            hostname=self.hostname,
            instance=self.instance,
            issuer=self.issuer,
            cert_lifetime=self.cert_lifetime,
            renew_before=self.renew_before,
            auto_renew=self.auto_renew,
        )


def domain_problems(
    decls: list[DomainDecl], instances: Collection[str] | None = None
) -> list[tuple[str, str]]:
    """What is wrong with ``decls``, as (field path, reason) pairs.

    Args:
        decls: The declared domains.
        instances: The names of the declared instances, when known: each
            domain must route to one of them.
    """
    problems: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    for i, d in enumerate(decls):
        at = f"domains[{i}]"
        problem = hostname_problem(d.hostname)
        if problem is not None:
            problems.append((f"{at}.hostname", problem))
        if d.hostname in seen:
            first = f"domains[{seen[d.hostname]}]"
            problems.append((f"{at}.hostname", f"{d.hostname!r} is already declared as {first}"))
        seen.setdefault(d.hostname, i)
        if instances is not None and d.instance not in instances:
            problems.append(
                (f"{at}.instance", f"{d.instance!r} is not one of the declared instances")
            )
        if d.issuer not in ISSUERS:
            problems.append((f"{at}.issuer", f"{d.issuer!r}: use one of {', '.join(ISSUERS)}"))
        if d.cert_lifetime <= timedelta(0):
            problems.append((f"{at}.cert_lifetime", "must be greater than zero"))
        if not timedelta(0) <= d.renew_before < d.cert_lifetime:
            problems.append(
                (f"{at}.renew_before", "must be at least zero and shorter than cert_lifetime")
            )
    return problems


async def apply_domains(
    store: Store,
    router: Router,
    decls: list[DomainDecl],
    publish: Publish,
    *,
    source: str,
    instances: Collection[str] | None = None,
) -> DomainSync:
    """Make the recorded domains exactly ``decls``, route them, and tell of each change.

    Created and updated domains are routed at once (over TLS as soon as they
    have a certificate: the CertRenewer provisions it on the
    ``domain.created`` or ``domain.updated`` event this publishes); removed
    ones are unrouted and their certificates deleted. Idempotent.

    Args:
        store: The open store.
        router: The router to tell.
        decls: Every domain that should exist.
        publish: How to publish ``domain.*`` events.
        source: The ``source`` of those events.
        instances: The declared instance names, when known, to check against.

    Raises:
        DomainError: ``decls`` are invalid; nothing was changed.
    """
    problems = domain_problems(decls, instances)
    if problems:
        raise DomainError(problems)
    before = {d.hostname: d for d in await store.domains.all()}
    result = await store.domains.sync([d.domain() for d in decls])
    after = {d.hostname: d.domain() for d in decls}
    changes = [
        *(("created", after[h]) for h in result.created),
        *(("updated", after[h]) for h in result.updated),
        *(("removed", before[h]) for h in result.removed if h in before),
    ]
    for kind, domain in changes:
        if kind == "removed":
            await router.remove_domain(domain.hostname)
        else:
            await router.add_domain(domain)
        instance = await store.instances.find(domain.instance)
        data = DomainChange(
            hostname=domain.hostname, instance=domain.instance, issuer=domain.issuer
        )
        await publish(
            Event(
                type=f"domain.{kind}",
                source=source,
                subject=domain.hostname,
                instance_id=None if instance is None else instance.id,
                data=data_of(data),
            )
        )
    return result

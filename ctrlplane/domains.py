"""Declared domains: hostnames whose TLS certificates the CertRenewer keeps valid."""

from __future__ import annotations

import re
from datetime import timedelta

from msgspec import Struct

_HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
)
ISSUERS = ("local", "acme")


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


def domain_problems(decls: list[DomainDecl]) -> list[tuple[str, str]]:
    """What is wrong with ``decls``, as (field path, reason) pairs."""
    problems: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    for i, d in enumerate(decls):
        at = f"domains[{i}]"
        if not _HOSTNAME_RE.match(d.hostname):
            problems.append((f"{at}.hostname", f"{d.hostname!r} is not a lowercase DNS name"))
        if d.hostname in seen:
            first = f"domains[{seen[d.hostname]}]"
            problems.append((f"{at}.hostname", f"{d.hostname!r} is already declared as {first}"))
        seen.setdefault(d.hostname, i)
        if d.issuer not in ISSUERS:
            problems.append((f"{at}.issuer", f"{d.issuer!r}: use one of {', '.join(ISSUERS)}"))
        if d.cert_lifetime <= timedelta(0):
            problems.append((f"{at}.cert_lifetime", "must be greater than zero"))
        if not timedelta(0) <= d.renew_before < d.cert_lifetime:
            problems.append(
                (f"{at}.renew_before", "must be at least zero and shorter than cert_lifetime")
            )
    return problems

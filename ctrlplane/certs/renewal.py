"""When a certificate is due for renewal.

In the certs package, not with the CertRenewer worker, because the API shows it
too (``ctrlplane certs``' RENEWS column): both must agree, and the API must not
import a worker for it.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

from ctrlplane.store.certs import Certificate, Domain

JITTER = 0.05
"""At most this fraction of a certificate's lifetime is taken off its renewal time."""


def jitter(hostname: str, lifetime: timedelta) -> timedelta:
    """A fixed share of up to :data:`JITTER` of ``lifetime``, from a hash of ``hostname``.

    Deterministic, so every process (and every run) agrees on it; different
    per name, so certificates issued together are not all renewed together.
    """
    share = int.from_bytes(hashlib.sha256(hostname.encode()).digest()[:8], "big") / 2**64
    return lifetime * (JITTER * share)


def renewal_time(cert: Certificate, domain: Domain) -> datetime:
    """When ``cert`` is due: a third of its lifetime or ``renew_before`` before it expires,
    whichever comes first, less :func:`jitter`."""
    window = max(cert.lifetime / 3, domain.renew_before)
    return cert.not_after - window - jitter(domain.hostname, cert.lifetime)

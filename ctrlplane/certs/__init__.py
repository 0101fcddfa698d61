"""TLS certificates for declared domains: issuers (a local CA, ACME) and the file router."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ctrlplane.lazy import lazy_exports

if TYPE_CHECKING:
    from ctrlplane.certs.acme import (
        AcmeError,
        AcmeIssuer,
        RateLimitedError,
    )
    from ctrlplane.certs.http01 import Http01Responder
    from ctrlplane.certs.issuer import (
        CertError,
        Issued,
        IssueError,
        Issuer,
    )
    from ctrlplane.certs.local_ca import LocalCA
    from ctrlplane.certs.router import (
        FileRouter,
        HostnameError,
        Route,
        RouteNotFoundError,
    )

__all__ = [
    "AcmeError",
    "AcmeIssuer",
    "CertError",
    "FileRouter",
    "HostnameError",
    "Http01Responder",
    "IssueError",
    "Issued",
    "Issuer",
    "LocalCA",
    "RateLimitedError",
    "Route",
    "RouteNotFoundError",
]

# Each name is imported on first use (PEP 562), so that importing this package
# pays only for what the caller touches.
_EXPORTS = {
    "RateLimitedError": "ctrlplane.certs.acme",
    "AcmeError": "ctrlplane.certs.acme",
    "AcmeIssuer": "ctrlplane.certs.acme",
    "Http01Responder": "ctrlplane.certs.http01",
    "CertError": "ctrlplane.certs.issuer",
    "Issued": "ctrlplane.certs.issuer",
    "IssueError": "ctrlplane.certs.issuer",
    "Issuer": "ctrlplane.certs.issuer",
    "LocalCA": "ctrlplane.certs.local_ca",
    "FileRouter": "ctrlplane.certs.router",
    "HostnameError": "ctrlplane.certs.router",
    "Route": "ctrlplane.certs.router",
    "RouteNotFoundError": "ctrlplane.certs.router",
}

if not TYPE_CHECKING:
    # Hidden from mypy, which reads the imports above and so still rejects a
    # misspelt name instead of typing it as Any.
    __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)

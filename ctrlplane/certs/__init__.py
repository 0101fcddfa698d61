"""TLS certificates for declared domains: issuers (a local CA, ACME) and the file router."""

from ctrlplane.certs.acme import AcmeError, AcmeIssuer, RateLimitedError
from ctrlplane.certs.http01 import Http01Responder
from ctrlplane.certs.issuer import CertError, Issued, IssueError, Issuer
from ctrlplane.certs.local_ca import LocalCA
from ctrlplane.certs.router import FileRouter, HostnameError, Route, RouteNotFoundError

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

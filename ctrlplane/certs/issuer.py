"""What an issuer hands back, the shape of an issuer, and how to read its PEM."""

from __future__ import annotations

from datetime import timedelta
from typing import Protocol, runtime_checkable

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from msgspec import Struct

from ctrlplane.errors import CtrlplaneError


class CertError(CtrlplaneError):
    """Base class of the errors of ``ctrlplane.certs``."""


class IssueError(CertError):
    """An issuer could not issue a certificate.

    Attributes:
        hostname: The name the certificate was for.
        issuer: The issuer that failed.
        reason: What went wrong.
    """

    def __init__(self, hostname: str, issuer: str, reason: str) -> None:
        self.hostname = hostname
        self.issuer = issuer
        self.reason = reason
        super().__init__(f"certs: {issuer} could not issue for {hostname!r}: {reason}")

    def __reduce__(self) -> tuple[type[IssueError], tuple[str, str, str]]:
        return type(self), (self.hostname, self.issuer, self.reason)


class Issued(Struct, frozen=True, kw_only=True):
    """A freshly issued certificate, as PEM.

    Attributes:
        key_pem: The private key (PKCS#8, unencrypted).
        cert_pem: The leaf certificate.
        chain_pem: The certificates that link the leaf to a root, leaf's
            issuer first; empty when there are none.
    """

    key_pem: bytes
    cert_pem: bytes
    chain_pem: bytes = b""


@runtime_checkable
class Issuer(Protocol):
    """Issues certificates for one hostname at a time."""

    name: str

    async def issue(self, hostname: str, lifetime: timedelta) -> Issued:
        """A new key and a certificate for ``hostname``.

        ``lifetime`` is what is asked for; an issuer that decides for itself
        (ACME) may give another.

        Raises:
            IssueError: naming the hostname and what went wrong.
        """
        ...


def new_key() -> ec.EllipticCurvePrivateKey:
    """A new P-256 key: small, fast, accepted by every ACME CA and TLS client."""
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def split_chain(pem: bytes) -> tuple[bytes, bytes]:
    """Split a PEM chain (leaf first, as ACME sends it) into the leaf and the rest."""
    certs = x509.load_pem_x509_certificates(pem)
    return cert_pem(certs[0]), b"".join(cert_pem(c) for c in certs[1:])


def serial_hex(cert: x509.Certificate) -> str:
    """The serial as lowercase hex, as ``openssl x509 -serial`` shows it (less the case)."""
    return format(cert.serial_number, "x")


def matches(cert: bytes, key: bytes) -> bool:
    """Whether the PEM private ``key`` belongs to the PEM certificate ``cert``."""
    public = x509.load_pem_x509_certificate(cert).public_key()
    private = serialization.load_pem_private_key(key, password=None)
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return public.public_bytes(*spki) == private.public_key().public_bytes(*spki)

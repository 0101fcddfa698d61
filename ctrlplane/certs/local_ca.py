"""A certificate authority of the control plane's own, for names no public CA will sign."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ctrlplane.certs.issuer import Issued, IssueError, cert_pem, key_pem, new_key
from ctrlplane.files import private_dir, write_private

CA_LIFETIME = timedelta(days=3650)
KEY_FILE = "ca.key"
CERT_FILE = "ca.pem"


class LocalCA:
    """Issues leaf certificates from a CA kept under ``directory``.

    The CA (a P-256 key, mode 0600, and a self-signed certificate valid ten
    years) is made on first use. Processes sharing the directory agree on
    one: each builds its own in a temporary folder and renames it into place,
    and whoever loses the race loads the winner's.

    Trust ``<directory>/ca.pem`` in the clients of the instances it serves.

    Args:
        directory: Where the CA lives, ``<data_dir>/certs/ca`` by default.
    """

    name = "local"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate] | None = None

    @property
    def cert_path(self) -> Path:
        """The CA certificate (PEM), for clients to trust."""
        return self.directory / CERT_FILE

    async def issue(self, hostname: str, lifetime: timedelta) -> Issued:
        """A new key and a certificate for ``hostname``, valid ``lifetime`` from now."""
        try:
            return await asyncio.to_thread(self._issue, hostname, lifetime)
        except (OSError, ValueError) as exc:
            raise IssueError(hostname, self.name, f"{type(exc).__name__}: {exc}") from exc

    def certificate(self) -> x509.Certificate:
        """The CA certificate, creating the CA if there is none yet."""
        return self._load_or_create()[1]

    def _issue(self, hostname: str, lifetime: timedelta) -> Issued:
        ca_key, ca_cert = self._load_or_create()
        key = new_key()
        # Whole seconds: X.509 times carry no fractions, and a short lifetime
        # must not come out a second short.
        now = datetime.now(UTC).replace(microsecond=0)
        not_after = min(now + lifetime, ca_cert.not_valid_after_utc)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(ca_key, hashes.SHA256())
        )
        return Issued(key_pem=key_pem(key), cert_pem=cert_pem(cert), chain_pem=cert_pem(ca_cert))

    def _load_or_create(self) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        if self._ca is None:
            if not (self.directory / KEY_FILE).exists():
                self._create()
            key = serialization.load_pem_private_key(
                (self.directory / KEY_FILE).read_bytes(), password=None
            )
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise ValueError(f"{self.directory / KEY_FILE} does not hold an EC key")
            cert = x509.load_pem_x509_certificate((self.directory / CERT_FILE).read_bytes())
            self._ca = key, cert
        return self._ca

    def _create(self) -> None:
        private_dir(self.directory.parent)
        staging = Path(tempfile.mkdtemp(dir=self.directory.parent, prefix=".ca-"))
        try:
            key = new_key()
            now = datetime.now(UTC).replace(microsecond=0)
            name = x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ctrlplane"),
                    x509.NameAttribute(
                        NameOID.COMMON_NAME, f"ctrlplane local CA {now:%Y-%m-%d %H:%M:%S}"
                    ),
                ]
            )
            ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
            cert = (
                x509.CertificateBuilder()
                .subject_name(name)
                .issuer_name(name)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - timedelta(minutes=5))
                .not_valid_after(now + CA_LIFETIME)
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(
                    x509.KeyUsage(
                        digital_signature=False,
                        content_commitment=False,
                        key_encipherment=False,
                        data_encipherment=False,
                        key_agreement=False,
                        key_cert_sign=True,
                        crl_sign=True,
                        encipher_only=False,
                        decipher_only=False,
                    ),
                    critical=True,
                )
                .add_extension(ski, critical=False)
                .sign(key, hashes.SHA256())
            )
            write_private(staging / KEY_FILE, key_pem(key))
            write_private(staging / CERT_FILE, cert_pem(cert))
            try:
                # Atomic, and refused when another process made its CA first.
                os.rename(staging, self.directory)
            except OSError:
                if not (self.directory / KEY_FILE).exists():
                    raise
        finally:
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(staging)

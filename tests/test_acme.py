"""ACME (RFC 8555) against a real pebble: issuance, renewal, a failed authorization.

These tests need Debian's ``pebble`` package (``apt-get install pebble``, which
has ``pebble-challtestsrv`` too): without it they are skipped, unless
``CI=true``, where a missing pebble is a failure.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from ctrlplane.bus import Event
from ctrlplane.certs import AcmeIssuer, FileRouter, Http01Responder, IssueError
from ctrlplane.certs.issuer import cert_pem, key_pem, matches, new_key
from ctrlplane.certs.renewal import renewal_time
from ctrlplane.store import Store
from ctrlplane.workers.cert_renewer import CertRenewer
from tests.test_certs import HOST, Clock, _ctx, _domain, _types
from tests.test_reconciler import free_port

PEBBLE = Path("/usr/bin/pebble")
CHALLTESTSRV = Path("/usr/bin/pebble-challtestsrv")


@dataclass
class Pebble:
    directory: str
    ca_bundle: Path
    http_port: int


def _udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pebble_tls(folder: Path) -> None:
    """A throwaway CA and a certificate for pebble's own HTTPS on 127.0.0.1 (the Debian
    package ships neither)."""
    ca_key, key = new_key(), new_key()
    now = datetime.now(UTC)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pebble test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pebble")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    (folder / "ca.pem").write_bytes(cert_pem(ca))
    (folder / "cert.pem").write_bytes(cert_pem(leaf))
    (folder / "key.pem").write_bytes(key_pem(key))


@pytest.fixture
def pebble(tmp_path: Path) -> Iterator[Pebble]:
    """pebble on 127.0.0.1 with free ports, and pebble-challtestsrv as its DNS server
    (every name is 127.0.0.1), so http-01 is validated for real against our responder."""
    if not PEBBLE.exists() or not CHALLTESTSRV.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(
                f"CI=true but {PEBBLE} or {CHALLTESTSRV} is missing: "
                "install the Debian package 'pebble' (apt-get install -y pebble)"
            )
        pytest.skip(f"{PEBBLE} not installed (apt-get install pebble); the ACME test needs it")
    folder = tmp_path / "pebble"
    folder.mkdir()
    _pebble_tls(folder)
    port, http_port, dns = free_port(), free_port(), _udp_port()
    config = {
        "pebble": {
            "listenAddress": f"127.0.0.1:{port}",
            "managementListenAddress": f"127.0.0.1:{free_port()}",
            "certificate": str(folder / "cert.pem"),
            "privateKey": str(folder / "key.pem"),
            "httpPort": http_port,
            "tlsPort": free_port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
    }
    (folder / "pebble.json").write_text(json.dumps(config))
    procs: list[subprocess.Popen[bytes]] = []
    log = open(folder / "log.txt", "ab")  # noqa: SIM115 - closed in finally
    try:
        procs.append(
            subprocess.Popen(
                [
                    str(CHALLTESTSRV),
                    *("-dns01", f"127.0.0.1:{dns}", "-defaultIPv6", ""),
                    *("-http01", "", "-https01", "", "-tlsalpn01", ""),
                    *("-management", f"127.0.0.1:{free_port()}"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        procs.append(
            subprocess.Popen(
                [
                    str(PEBBLE),
                    *("-config", str(folder / "pebble.json")),
                    *("-dnsserver", f"127.0.0.1:{dns}"),
                ],
                env={**os.environ, "PEBBLE_VA_NOSLEEP": "1"},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        directory = f"https://127.0.0.1:{port}/dir"
        context = ssl.create_default_context(cafile=str(folder / "ca.pem"))
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(directory, context=context, timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                    raise AssertionError(
                        "pebble did not come up: " + (folder / "log.txt").read_text()[-2000:]
                    ) from None
                time.sleep(0.05)
        yield Pebble(directory=directory, ca_bundle=folder / "ca.pem", http_port=http_port)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


async def test_acme_issuance_and_renewal_against_pebble(
    tmp_path: Path, store: Store, pebble: Pebble
) -> None:
    responder = Http01Responder("127.0.0.1", pebble.http_port)
    account_key = tmp_path / "certs" / "acme" / "account.key"
    acme = AcmeIssuer(
        pebble.directory,
        account_key=account_key,
        responder=responder,
        email="ops@example.test",
        ca_bundle=pebble.ca_bundle,
        poll_interval=timedelta(milliseconds=100),
    )
    router = FileRouter(tmp_path, {"acme": acme})
    clock = Clock()
    renewer = CertRenewer(store, router, clock=clock)
    domain = _domain(issuer="acme")
    await store.domains.sync([domain])
    published: list[Event] = []

    await renewer.run(_ctx(published))
    assert _types(published) == ["cert.provisioned"]
    assert responder.served >= 1, "pebble never fetched the http-01 answer"
    assert account_key.stat().st_mode & 0o777 == 0o600
    key_before = account_key.read_bytes()
    first = await store.certificates.current(HOST)
    assert first is not None and first.issuer == "acme"
    current = tmp_path / "certs" / "domains" / HOST / "current"
    leaf = x509.load_pem_x509_certificate((current / "cert.pem").read_bytes())
    chain = x509.load_pem_x509_certificates((current / "chain.pem").read_bytes())
    leaf.verify_directly_issued_by(chain[0])
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [HOST]
    assert format(leaf.serial_number, "x") == first.serial

    # Not due yet: nothing is ordered.
    await renewer.run(_ctx(published))
    assert _types(published) == ["cert.provisioned"]

    clock.now = renewal_time(first, domain) + timedelta(seconds=1)
    await renewer.run(_ctx(published))
    assert _types(published) == ["cert.provisioned", "cert.renewed"]
    second = await store.certificates.current(HOST)
    assert second is not None and second.serial != first.serial
    assert os.readlink(current) == second.serial
    assert matches((current / "cert.pem").read_bytes(), (current / "key.pem").read_bytes())
    assert account_key.read_bytes() == key_before  # one account, reused


async def test_acme_failure_names_the_problem(tmp_path: Path, pebble: Pebble) -> None:
    # Nobody answers the challenge: the authorization fails, and says why.
    acme = AcmeIssuer(
        pebble.directory,
        account_key=tmp_path / "account.key",
        responder=Http01Responder(None, webroot=tmp_path / "webroot"),
        ca_bundle=pebble.ca_bundle,
        poll_interval=timedelta(milliseconds=100),
    )
    with pytest.raises(IssueError) as caught:
        await acme.issue("fail.example.test", timedelta(days=1))
    message = str(caught.value)
    assert "'fail.example.test'" in message and "authorization" in message
    assert "is invalid" in message and "/.well-known/acme-challenge/" in message  # pebble's words
    assert list((tmp_path / "webroot" / ".well-known" / "acme-challenge").iterdir()) == []

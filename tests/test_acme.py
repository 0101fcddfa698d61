"""ACME (RFC 8555) against a real pebble: issuance, renewal, a failed authorization,
External Account Binding, rate limits, and no file I/O on the event loop.

These tests need Debian's ``pebble`` package (``apt-get install pebble``, which
has ``pebble-challtestsrv`` too): without it they are skipped, unless
``CI=true``, where a missing pebble is a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import pickle
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from ctrlplane.bus import Event
from ctrlplane.certs import AcmeError, AcmeIssuer, FileRouter, Http01Responder, IssueError
from ctrlplane.certs.acme import (
    MAX_RATE_LIMIT_WAIT,
    RATE_LIMIT_BACKOFF,
    RateLimitedError,
    parse_retry_after,
)
from ctrlplane.certs.issuer import cert_pem, key_pem, matches, new_key
from ctrlplane.certs.registry import builtin_issuers
from ctrlplane.certs.renewal import renewal_time
from ctrlplane.config import Config
from ctrlplane.errors import ConfigError
from ctrlplane.store import Store
from ctrlplane.workers.cert_renewer import CertRenewer, CertRenewError
from tests.helpers import tick_context
from tests.test_certs import HOST, Clock, _domain, _types
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
    with _pebble(tmp_path) as server:
        yield server


EAB_KID = "kid-1"
EAB_KEY = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W"


@pytest.fixture
def pebble_eab(tmp_path: Path) -> Iterator[Pebble]:
    """pebble that creates accounts only with an External Account Binding of ``EAB_KID``."""
    with _pebble(tmp_path, {EAB_KID: EAB_KEY}) as server:
        yield server


@contextlib.contextmanager
def _pebble(tmp_path: Path, eab_keys: dict[str, str] | None = None) -> Iterator[Pebble]:
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
            "externalAccountBindingRequired": eab_keys is not None,
            "externalAccountMACKeys": eab_keys or {},
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

    await renewer.run(tick_context("cert_renewer", published))
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
    await renewer.run(tick_context("cert_renewer", published))
    assert _types(published) == ["cert.provisioned"]

    clock.now = renewal_time(first, domain) + timedelta(seconds=1)
    await renewer.run(tick_context("cert_renewer", published))
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


# ------------------------------------------------------------ External Account Binding


def _acme(pebble: Pebble, folder: Path, **kw: object) -> AcmeIssuer:
    return AcmeIssuer(
        pebble.directory,
        account_key=folder / "account.key",
        responder=Http01Responder("127.0.0.1", pebble.http_port),
        ca_bundle=pebble.ca_bundle,
        poll_interval=timedelta(milliseconds=100),
        **kw,  # type: ignore[arg-type]
    )


async def test_acme_external_account_binding_against_pebble(
    tmp_path: Path, pebble_eab: Pebble
) -> None:
    # Without a binding, a CA that requires one is refused with what to set.
    with pytest.raises(AcmeError) as caught:
        await _acme(pebble_eab, tmp_path).issue(HOST, timedelta(days=1))
    assert "External Account Binding" in str(caught.value)
    assert "acme_eab_kid" in str(caught.value) and "acme_eab_hmac_key_file" in str(caught.value)

    # A wrong MAC key: pebble's refusal is surfaced, and the key is never shown.
    wrong = tmp_path / "wrong.key"
    wrong_key = "A" * 43
    wrong.write_text(wrong_key)
    with pytest.raises(AcmeError) as caught:
        await _acme(pebble_eab, tmp_path, eab_kid=EAB_KID, eab_hmac_key=wrong).issue(
            HOST, timedelta(days=1)
        )
    assert "HTTP 403: unauthorized: external account binding" in str(caught.value)  # pebble's
    assert wrong_key not in str(caught.value)

    # An unreadable key file is named, not shown.
    bad = tmp_path / "bad.key"
    bad.write_text("not base64url!\n")
    with pytest.raises(AcmeError, match="does not hold a base64url MAC key"):
        await _acme(pebble_eab, tmp_path, eab_kid=EAB_KID, eab_hmac_key=bad).issue(
            HOST, timedelta(days=1)
        )

    key_file = tmp_path / "eab.key"
    key_file.write_text(EAB_KEY + "\n")
    issued = await _acme(pebble_eab, tmp_path, eab_kid=EAB_KID, eab_hmac_key=key_file).issue(
        HOST, timedelta(days=1)
    )
    leaf = x509.load_pem_x509_certificate(issued.cert_pem)
    leaf.verify_directly_issued_by(x509.load_pem_x509_certificates(issued.chain_pem)[0])
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [HOST]


def test_eab_config_needs_both_fields(tmp_path: Path) -> None:
    key = tmp_path / "eab.key"
    with pytest.raises(ConfigError) as caught:
        Config(acme_directory="https://ca.test/dir", acme_eab_kid="kid-1")
    assert caught.value.field == "acme_eab_hmac_key_file"
    with pytest.raises(ConfigError) as caught:
        Config(acme_directory="https://ca.test/dir", acme_eab_hmac_key_file=key)
    assert caught.value.field == "acme_eab_kid"
    with pytest.raises(ConfigError):
        Config(acme_eab_kid="kid\n1", acme_eab_hmac_key_file=key)
    config = Config(
        acme_directory="https://ca.test/dir", acme_eab_kid="kid-1", acme_eab_hmac_key_file=key
    )
    acme = builtin_issuers(config)["acme"]
    assert isinstance(acme, AcmeIssuer)
    assert (acme._eab_kid, acme._eab_hmac_key) == ("kid-1", key)


# ------------------------------------------------------------------ rate limits


def test_retry_after_is_seconds_or_an_http_date() -> None:
    now = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after(" 7 ", now) == 7.0
    assert parse_retry_after("Mon, 30 Nov 2026 14:00:00 GMT", now) == 7200.0
    assert parse_retry_after(format_datetime(now + timedelta(minutes=5), usegmt=True), now) == 300
    assert parse_retry_after("Mon, 30 Nov 2026 11:00:00 GMT", now) == 0.0  # past: no wait
    for junk in (None, "", "-5", "1.5", "\u00b2", "soon", "Mon, 99 Nov 2026 14:00:00 GMT"):
        assert parse_retry_after(junk, now) is None, junk


@dataclass
class RateLimitingCA:
    """An ACME server that answers every new-account request with ``rateLimited``.

    pebble has no rate limits, so this real HTTP server plays the part: the
    directory, a nonce, and the refusal as Let's Encrypt sends it.
    """

    directory: str
    retry_after: str | None
    accounts: int = 0


@contextlib.asynccontextmanager
async def _rate_limiting_ca(retry_after: str | None) -> AsyncIterator[RateLimitingCA]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    ca = RateLimitingCA(directory=f"{base}/dir", retry_after=retry_after)

    async def directory(request: web.Request) -> web.Response:
        urls = {"newNonce": f"{base}/nonce", "newAccount": f"{base}/acct", "newOrder": f"{base}/o"}
        return web.json_response(urls)

    async def nonce(request: web.Request) -> web.Response:
        return web.Response(headers={"Replay-Nonce": "n0nce"})

    async def account(request: web.Request) -> web.Response:
        ca.accounts += 1
        headers = {"Replay-Nonce": "n0nce", "Content-Type": "application/problem+json"}
        if ca.retry_after is not None:
            headers["Retry-After"] = ca.retry_after
        problem = {
            "type": "urn:ietf:params:acme:error:rateLimited",
            "detail": "too many new registrations (10) from this IP address",
            "status": 429,
        }
        return web.Response(status=429, body=json.dumps(problem), headers=headers)

    app = web.Application()
    app.router.add_get("/dir", directory)
    app.router.add_route("HEAD", "/nonce", nonce)
    app.router.add_post("/acct", account)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        yield ca
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [
        ("in two hours", RATE_LIMIT_BACKOFF),  # neither form: the default wait
        (None, RATE_LIMIT_BACKOFF),
        ("5400", timedelta(minutes=90)),
        ("0", timedelta(seconds=1)),
        ("99999999", MAX_RATE_LIMIT_WAIT),
        ("date+2h", timedelta(hours=2)),
    ],
)
async def test_acme_rate_limited_is_not_retried_and_says_when(
    tmp_path: Path, retry_after: str | None, expected: timedelta
) -> None:
    if retry_after == "date+2h":
        retry_after = format_datetime(datetime.now(UTC) + timedelta(hours=2), usegmt=True)
    async with _rate_limiting_ca(retry_after) as ca:
        acme = AcmeIssuer(
            ca.directory,
            account_key=tmp_path / "account.key",
            responder=Http01Responder(None, webroot=tmp_path / "webroot"),
        )
        with pytest.raises(RateLimitedError) as caught:
            await acme.issue(HOST, timedelta(days=1))
    assert ca.accounts == 1  # asked once, not again at once
    # An HTTP date is read against the clock: allow the seconds the test took.
    assert expected - timedelta(seconds=30) <= caught.value.retry_after <= expected
    message = str(caught.value)
    assert "rate limited by the CA" in message and "not asking again for" in message
    assert "too many new registrations" in message
    copy = pickle.loads(pickle.dumps(caught.value))
    assert (type(copy), str(copy), copy.retry_after) == (
        RateLimitedError,
        message,
        caught.value.retry_after,
    )


async def test_cert_renewer_waits_out_a_rate_limit(tmp_path: Path, store: Store) -> None:
    async with _rate_limiting_ca("10800") as ca:
        acme = AcmeIssuer(
            ca.directory,
            account_key=tmp_path / "account.key",
            responder=Http01Responder(None, webroot=tmp_path / "webroot"),
        )
        clock = Clock()
        renewer = CertRenewer(store, FileRouter(tmp_path, {"acme": acme}), clock=clock)
        await store.domains.sync([_domain(issuer="acme")])
        published: list[Event] = []
        with pytest.raises(CertRenewError):
            await renewer.run(tick_context("cert_renewer", published))
        # Longer than the renewer's own first back-off (5 minutes): the CA's three hours.
        domain = await store.domains.get(HOST)
        assert domain.next_attempt == clock.now + timedelta(hours=3)
        assert domain.last_error is not None and "rate limited" in domain.last_error
        assert _types(published) == ["cert.renewal_failed"]
        clock.now += timedelta(hours=2)
        # Inside the wait: the CA is not asked.
        await renewer.run(tick_context("cert_renewer", published))
        assert ca.accounts == 1


# ------------------------------------------------------------- the event loop is never blocked


async def test_acme_reads_the_ca_bundle_off_the_event_loop(tmp_path: Path, pebble: Pebble) -> None:
    # The bundle is a FIFO: its reader blocks until this test writes it. The
    # writer asks the loop to run a coroutine first, which it can only do if
    # the reader is not the loop's own thread.
    fifo = tmp_path / "ca-fifo.pem"
    os.mkfifo(fifo)
    acme = _acme(pebble, tmp_path)
    acme._ca_bundle = fifo
    loop = asyncio.get_running_loop()

    async def probe() -> None:
        return None

    def feed() -> bool:
        with open(fifo, "wb") as pipe:  # opens once the issuer opened the bundle
            try:
                asyncio.run_coroutine_threadsafe(probe(), loop).result(timeout=10)
                free = True
            except TimeoutError:
                free = False
            pipe.write(pebble.ca_bundle.read_bytes())
        return free

    issuing = asyncio.create_task(acme.issue(HOST, timedelta(days=1)))
    async with asyncio.timeout(60):
        loop_was_free = await asyncio.to_thread(feed)
        await issuing
    assert loop_was_free, "the event loop was blocked reading the CA bundle"


_WATCH: tuple[int, str] | None = None
_ON_LOOP: list[tuple[str, str]] = []


def _audit(event: str, args: tuple[object, ...]) -> None:
    watch = _WATCH
    if watch is None or threading.get_ident() != watch[0]:
        return
    for arg in args:
        if isinstance(arg, str | os.PathLike) and str(os.fspath(arg)).startswith(watch[1]):
            _ON_LOOP.append((event, str(os.fspath(arg))))


sys.addaudithook(_audit)


async def test_acme_issuance_touches_no_file_on_the_event_loop(
    tmp_path: Path, pebble_eab: Pebble
) -> None:
    # Python's audit hooks see every open, mkdir, rename, remove... with the
    # thread that does it: during a whole issuance and install, none of the
    # files (account key, EAB key, http-01 webroot, certificates with their
    # fsync) may be touched from the event loop's thread.
    global _WATCH
    key_file = tmp_path / "eab.key"
    key_file.write_text(EAB_KEY)
    acme = AcmeIssuer(
        pebble_eab.directory,
        account_key=tmp_path / "data" / "certs" / "acme" / "account.key",
        responder=Http01Responder(
            "127.0.0.1", pebble_eab.http_port, webroot=tmp_path / "data" / "webroot"
        ),
        ca_bundle=pebble_eab.ca_bundle,
        eab_kid=EAB_KID,
        eab_hmac_key=key_file,
        poll_interval=timedelta(milliseconds=100),
    )
    router = FileRouter(tmp_path / "data", {"acme": acme})
    _ON_LOOP.clear()
    _WATCH = threading.get_ident(), str(tmp_path)
    try:
        cert = await router.provision_cert(_domain(issuer="acme"))
    finally:
        _WATCH = None
    assert _ON_LOOP == []
    assert acme.responder.served >= 1
    assert cert.issuer == "acme" and cert.key_path.startswith(str(tmp_path / "data"))

"""An ACME (RFC 8555) issuer: account, order, http-01 authorization, finalize, download.

Written on aiohttp and ``cryptography`` rather than certbot's ``acme``
package: that one is synchronous (requests, pyOpenSSL) and would need a
thread per issuance, while the protocol itself is a dozen signed POSTs.
"""

from __future__ import annotations

import asyncio
import ssl
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import msgspec
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from msgspec import Struct, field

from ctrlplane.certs.http01 import Http01Responder
from ctrlplane.certs.issuer import Issued, IssueError, key_pem, new_key, split_chain
from ctrlplane.certs.jws import AccountKey, b64

log = structlog.get_logger("ctrlplane.certs")

T = TypeVar("T", bound=Struct)

USER_AGENT = "ctrlplane-workers"
BAD_NONCE = "urn:ietf:params:acme:error:badNonce"
# A CA may refuse a nonce now and then (pebble does for 5% by default); RFC 8555
# says to retry with the fresh one the refusal carries.
NONCE_RETRIES = 10


class Problem(Struct, frozen=True, kw_only=True):
    """An RFC 7807 problem document, as ACME servers report errors."""

    type: str = "about:blank"
    detail: str = ""
    status: int | None = None
    subproblems: list[Problem] = field(default_factory=list)

    def __str__(self) -> str:
        text = f"{self.type.rsplit(':', 1)[-1]}: {self.detail}" if self.detail else self.type
        return "; ".join([text, *(str(p) for p in self.subproblems)])


class AcmeError(IssueError):
    """The ACME server refused a request or an authorization failed.

    Attributes:
        problem: What the server said, when it said something.
    """

    def __init__(self, hostname: str, reason: str, problem: Problem | None = None) -> None:
        self.problem = problem
        super().__init__(hostname, "acme", reason if problem is None else f"{reason}: {problem}")

    def __reduce__(self) -> tuple[Any, ...]:
        # ``reason`` already holds the problem's text.
        return type(self), (self.hostname, self.reason)


class _Directory(Struct, frozen=True, rename="camel"):
    new_nonce: str
    new_account: str
    new_order: str


class _Challenge(Struct, frozen=True):
    type: str
    url: str
    status: str
    token: str = ""
    error: Problem | None = None


class _Authorization(Struct, frozen=True):
    status: str
    challenges: list[_Challenge]
    identifier: dict[str, str] = field(default_factory=dict)


class _Order(Struct, frozen=True):
    status: str
    authorizations: list[str]
    finalize: str
    certificate: str | None = None
    error: Problem | None = None


class AcmeIssuer:
    """Issues certificates from an ACME CA, proving control of names by http-01.

    Args:
        directory: The CA's directory URL (Let's Encrypt, or pebble in tests).
        account_key: Where the account key is kept (made on first use, 0600).
        responder: Answers the http-01 challenges.
        email: The account's contact, if any.
        ca_bundle: A PEM bundle to trust for the CA's own HTTPS (a test CA);
            ``None`` trusts the system store.
        timeout: How long one issuance may take in all.
        poll_interval: How often to ask whether an order or authorization moved
            on, unless the server says (``Retry-After``) within reason.
    """

    name = "acme"

    def __init__(
        self,
        directory: str,
        *,
        account_key: Path,
        responder: Http01Responder,
        email: str | None = None,
        ca_bundle: Path | None = None,
        timeout: timedelta = timedelta(minutes=2),
        poll_interval: timedelta = timedelta(milliseconds=500),
    ) -> None:
        self.directory = directory
        self.responder = responder
        self._account_key_path = account_key
        self._email = email
        self._ca_bundle = ca_bundle
        self._timeout = timeout
        self._poll = poll_interval.total_seconds()
        self._key: AccountKey | None = None

    async def issue(self, hostname: str, lifetime: timedelta) -> Issued:
        """Order, authorize and download a certificate for ``hostname``.

        ``lifetime`` is not asked for: public CAs choose it themselves.
        """
        if hostname.startswith("*."):
            raise IssueError(hostname, self.name, "wildcard names need dns-01, which is not done")
        try:
            async with asyncio.timeout(self._timeout.total_seconds()):
                return await self._issue(hostname)
        except TimeoutError:
            raise AcmeError(hostname, f"gave up after {self._timeout.total_seconds():g}s") from None
        except (aiohttp.ClientError, OSError, ValueError, msgspec.DecodeError) as exc:
            raise AcmeError(hostname, f"{type(exc).__name__}: {exc}") from exc

    async def _issue(self, hostname: str) -> Issued:
        if self._key is None:
            self._key = await asyncio.to_thread(AccountKey.load_or_create, self._account_key_path)
        context = ssl.create_default_context(
            cafile=None if self._ca_bundle is None else str(self._ca_bundle)
        )
        connector = aiohttp.TCPConnector(ssl=context)
        async with aiohttp.ClientSession(
            connector=connector, headers={"User-Agent": USER_AGENT}
        ) as http:
            session = _Session(http, self._key, hostname, self._poll)
            await session.open(self.directory)
            contact = [] if self._email is None else [f"mailto:{self._email}"]
            await session.account(contact)
            order_url, order = await session.new_order(hostname)
            for url in order.authorizations:
                await self._authorize(session, url)
            order = await session.wait(order_url, _Order, ("ready", "valid"))
            key = new_key()
            if order.status == "ready":
                csr = (
                    x509.CertificateSigningRequestBuilder()
                    .subject_name(x509.Name([]))
                    .add_extension(
                        x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False
                    )
                    .sign(key, hashes.SHA256())
                )
                der = csr.public_bytes(serialization.Encoding.DER)
                await session.post(order.finalize, {"csr": b64(der)})
                order = await session.wait(order_url, _Order, ("valid",))
            if order.certificate is None:
                raise AcmeError(hostname, "the order is valid but names no certificate")
            chain = await session.download(order.certificate)
        leaf, rest = split_chain(chain)
        log.info("acme certificate issued", hostname=hostname, directory=self.directory)
        return Issued(key_pem=key_pem(key), cert_pem=leaf, chain_pem=rest)

    async def _authorize(self, session: _Session, url: str) -> None:
        authz = await session.get(url, _Authorization)
        if authz.status == "valid":
            return  # the CA remembers an earlier proof
        if authz.status != "pending":
            raise AcmeError(session.hostname, f"authorization is {authz.status}")
        challenge = next((c for c in authz.challenges if c.type == "http-01"), None)
        if challenge is None:
            offered = ", ".join(c.type for c in authz.challenges)
            raise AcmeError(session.hostname, f"no http-01 challenge offered (only {offered})")
        assert self._key is not None
        answer = f"{challenge.token}.{self._key.thumbprint()}"
        async with self.responder.serving(challenge.token, answer):
            await session.post(challenge.url, {})
            await session.wait(url, _Authorization, ("valid",))


class _Session:
    """One conversation with the CA: nonces, signing, errors, polling."""

    def __init__(
        self, http: aiohttp.ClientSession, key: AccountKey, hostname: str, poll: float
    ) -> None:
        self._http = http
        self._key = key
        self.hostname = hostname
        self._poll = poll
        self._nonce: str | None = None
        self._kid: str | None = None
        self._dir: _Directory | None = None

    async def open(self, directory: str) -> None:
        async with self._http.get(directory) as response:
            await self._check(response, "directory")
            self._dir = msgspec.json.decode(await response.read(), type=_Directory)

    @property
    def directory(self) -> _Directory:
        assert self._dir is not None, "open the session first"
        return self._dir

    async def account(self, contact: list[str]) -> None:
        """Find or create the account of our key (the CA answers 200 or 201)."""
        payload: dict[str, Any] = {"termsOfServiceAgreed": True}
        if contact:
            payload["contact"] = contact
        response, _ = await self._post(self.directory.new_account, payload, use_jwk=True)
        self._kid = response.headers.get("Location")
        if not self._kid:
            raise AcmeError(self.hostname, "the account has no URL (no Location header)")

    async def new_order(self, hostname: str) -> tuple[str, _Order]:
        payload = {"identifiers": [{"type": "dns", "value": hostname}]}
        response, body = await self._post(self.directory.new_order, payload)
        url = response.headers.get("Location")
        if not url:
            raise AcmeError(self.hostname, "the order has no URL (no Location header)")
        return url, msgspec.json.decode(body, type=_Order)

    async def get(self, url: str, type_: type[T]) -> T:
        _, body = await self._post(url, None)
        return msgspec.json.decode(body, type=type_)

    async def post(self, url: str, payload: dict[str, Any]) -> bytes:
        _, body = await self._post(url, payload)
        return body

    async def download(self, url: str) -> bytes:
        _, body = await self._post(url, None, accept="application/pem-certificate-chain")
        return body

    async def wait(self, url: str, type_: type[T], done: tuple[str, ...]) -> T:
        """Poll ``url`` until its status is one of ``done``; fail when it is invalid."""
        while True:
            response, body = await self._post(url, None)
            obj = msgspec.json.decode(body, type=type_)
            status = getattr(obj, "status", "")
            if status in done:
                return obj
            if status not in ("pending", "processing", "ready"):
                what = type_.__name__.strip("_").lower()  # order, authorization
                raise AcmeError(self.hostname, f"{what} {url} is {status}", _problem_of(obj))
            await asyncio.sleep(_retry_after(response, self._poll))

    async def _post(
        self,
        url: str,
        payload: dict[str, Any] | None,
        *,
        use_jwk: bool = False,
        accept: str = "application/json",
    ) -> tuple[aiohttp.ClientResponse, bytes]:
        for _ in range(NONCE_RETRIES):
            nonce = self._nonce or await self._new_nonce()
            self._nonce = None
            data = self._key.sign(url, nonce, payload, kid=None if use_jwk else self._kid)
            async with self._http.post(
                url,
                data=data,
                headers={"Content-Type": "application/jose+json", "Accept": accept},
            ) as response:
                self._nonce = response.headers.get("Replay-Nonce")
                body = await response.read()
            if response.status < 400:
                return response, body
            problem = _decode_problem(body)
            if problem.type != BAD_NONCE:
                raise AcmeError(self.hostname, f"POST {url}: HTTP {response.status}", problem)
        raise AcmeError(self.hostname, f"POST {url}: nonce refused {NONCE_RETRIES} times")

    async def _new_nonce(self) -> str:
        async with self._http.head(self.directory.new_nonce) as response:
            await self._check(response, "new nonce")
            nonce = response.headers.get("Replay-Nonce")
        if not nonce:
            raise AcmeError(self.hostname, "the CA gave no nonce")
        return nonce

    async def _check(self, response: aiohttp.ClientResponse, what: str) -> None:
        if response.status >= 400:
            problem = _decode_problem(await response.read())
            raise AcmeError(self.hostname, f"{what}: HTTP {response.status}", problem)


def _decode_problem(body: bytes) -> Problem:
    try:
        return msgspec.json.decode(body, type=Problem)
    except msgspec.DecodeError:
        return Problem(detail=body[:200].decode(errors="replace"))


def _problem_of(obj: object) -> Problem | None:
    """The error of an order, or of the first failed challenge of an authorization."""
    if isinstance(obj, _Order):
        return obj.error
    if isinstance(obj, _Authorization):
        return next((c.error for c in obj.challenges if c.error is not None), None)
    return None


def _retry_after(response: aiohttp.ClientResponse, default: float) -> float:
    """The server's ``Retry-After`` in seconds, kept between ``default`` and 10 s."""
    try:
        value = float(response.headers.get("Retry-After", ""))
    except ValueError:
        return default
    return min(max(value, default), 10.0)

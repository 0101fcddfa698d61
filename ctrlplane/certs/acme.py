"""An ACME (RFC 8555) issuer: account, order, http-01 authorization, finalize, download.

Written on aiohttp and ``cryptography`` rather than certbot's ``acme``
package: that one is synchronous (requests, pyOpenSSL) and would need a
thread per issuance, while the protocol itself is a dozen signed POSTs.
"""

from __future__ import annotations

import asyncio
import email.utils
import ssl
from datetime import UTC, datetime, timedelta
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
from ctrlplane.certs.jws import AccountKey, b64, external_account_binding, read_hmac_key

log = structlog.get_logger("ctrlplane.certs")

T = TypeVar("T", bound=Struct)

USER_AGENT = "ctrlplane-workers"
BAD_NONCE = "urn:ietf:params:acme:error:badNonce"
# A CA may refuse a nonce now and then (pebble does for 5% by default); RFC 8555
# says to retry with the fresh one the refusal carries.
NONCE_RETRIES = 10
RATE_LIMITED = "urn:ietf:params:acme:error:rateLimited"
EAB_REQUIRED = "urn:ietf:params:acme:error:externalAccountRequired"
RATE_LIMIT_BACKOFF = timedelta(hours=1)
"""The wait after ``rateLimited`` when the CA gives no (usable) ``Retry-After``."""
MAX_RATE_LIMIT_WAIT = timedelta(days=1)
"""The longest ``Retry-After`` of a ``rateLimited`` that is honoured; longer ones are cut to it."""
MAX_POLL_WAIT = 10.0
"""The longest ``Retry-After`` honoured while polling an order or authorization, in seconds."""


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


class RateLimitedError(AcmeError):
    """The CA refused with ``rateLimited``: asking again before ``retry_after`` is pointless.

    Attributes:
        retry_after: How long to wait: the CA's ``Retry-After`` (seconds or an
            HTTP date), kept within a second and :data:`MAX_RATE_LIMIT_WAIT`,
            or :data:`RATE_LIMIT_BACKOFF` when it gave none.
    """

    def __init__(
        self,
        hostname: str,
        reason: str,
        problem: Problem | None = None,
        *,
        retry_after: timedelta = RATE_LIMIT_BACKOFF,
    ) -> None:
        self.retry_after = retry_after
        super().__init__(hostname, reason, problem)

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.hostname, self.reason), {"retry_after": self.retry_after}


class _Meta(Struct, frozen=True, rename="camel"):
    external_account_required: bool = False


class _Directory(Struct, frozen=True, rename="camel"):
    new_nonce: str
    new_account: str
    new_order: str
    meta: _Meta = field(default_factory=_Meta)


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
        eab_kid: The key identifier of an External Account Binding (RFC 8555
            section 7.3.4), for a CA that creates accounts only for its
            customers; ``None`` for none.
        eab_hmac_key: The file holding that binding's MAC key, base64url as
            CAs hand it out; read at each issuance, never logged.
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
        eab_kid: str | None = None,
        eab_hmac_key: Path | None = None,
        timeout: timedelta = timedelta(minutes=2),
        poll_interval: timedelta = timedelta(milliseconds=500),
    ) -> None:
        if (eab_kid is None) != (eab_hmac_key is None):
            raise ValueError("eab_kid and eab_hmac_key go together")
        self.directory = directory
        self._eab_kid = eab_kid
        self._eab_hmac_key = eab_hmac_key
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
        eab: tuple[str, bytes] | None = None
        if self._eab_kid is not None and self._eab_hmac_key is not None:
            try:
                eab = self._eab_kid, await asyncio.to_thread(read_hmac_key, self._eab_hmac_key)
            except (OSError, ValueError) as exc:
                reason = f"external account binding: {exc}"
                raise AcmeError(hostname, reason) from None
        # Reading a CA bundle (the system store, hundreds of certificates) is file I/O
        # and parsing: off the event loop, like every file this issuer touches.
        context = await asyncio.to_thread(
            ssl.create_default_context,
            cafile=None if self._ca_bundle is None else str(self._ca_bundle),
        )
        connector = aiohttp.TCPConnector(ssl=context)
        async with aiohttp.ClientSession(
            connector=connector, headers={"User-Agent": USER_AGENT}
        ) as http:
            session = _Session(http, self._key, hostname, self._poll)
            await session.open(self.directory)
            contact = [] if self._email is None else [f"mailto:{self._email}"]
            await session.account(contact, eab)
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

    async def account(self, contact: list[str], eab: tuple[str, bytes] | None = None) -> None:
        """Find or create the account of our key (the CA answers 200 or 201).

        ``eab`` is the key id and MAC key of an External Account Binding.
        """
        if eab is None and self.directory.meta.external_account_required:
            raise AcmeError(self.hostname, _EAB_HINT)
        payload: dict[str, Any] = {"termsOfServiceAgreed": True}
        if contact:
            payload["contact"] = contact
        if eab is not None:
            kid, mac_key = eab
            payload["externalAccountBinding"] = external_account_binding(
                kid, mac_key, self._key.jwk, self.directory.new_account
            )
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
                raise self._refused(response, f"POST {url}", problem)
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
            raise self._refused(response, what, _decode_problem(await response.read()))

    def _refused(self, response: aiohttp.ClientResponse, what: str, problem: Problem) -> AcmeError:
        """The error for a refusal: a rate limit says when to come back, a missing
        account binding says which settings to make."""
        reason = f"{what}: HTTP {response.status}"
        if problem.type == RATE_LIMITED:
            wait = parse_retry_after(response.headers.get("Retry-After"), datetime.now(UTC))
            retry_after = RATE_LIMIT_BACKOFF if wait is None else _bounded_rate_limit(wait)
            reason = (
                f"rate limited by the CA, not asking again for "
                f"{retry_after.total_seconds():g}s ({reason})"
            )
            return RateLimitedError(self.hostname, reason, problem, retry_after=retry_after)
        if problem.type == EAB_REQUIRED:
            return AcmeError(self.hostname, f"{_EAB_HINT} ({reason})", problem)
        return AcmeError(self.hostname, reason, problem)


_EAB_HINT = (
    "the CA requires an External Account Binding: set acme_eab_kid and "
    "acme_eab_hmac_key_file to the key id and MAC key the CA gave"
)


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait by a ``Retry-After`` header (RFC 9110 section 10.2.3).

    It is either a number of seconds or an HTTP date; a date in the past is
    no wait. ``None`` when there is no header or it is neither form.
    """
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000": RFC 5322's "UTC, but unknown local time"
        when = when.replace(tzinfo=UTC)
    return max((when - now).total_seconds(), 0.0)


def _bounded_rate_limit(seconds: float) -> timedelta:
    return min(max(timedelta(seconds=seconds), timedelta(seconds=1)), MAX_RATE_LIMIT_WAIT)


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
    """The server's ``Retry-After`` in seconds, between ``default`` and :data:`MAX_POLL_WAIT`."""
    value = parse_retry_after(response.headers.get("Retry-After"), datetime.now(UTC))
    if value is None:
        return default
    return min(max(value, default), MAX_POLL_WAIT)

"""The control API as a NATS micro service: discoverable, versioned, strict.

Every ``ctrlplane run`` process registers the service ``ctrlplane``
(:data:`~ctrlplane.api.endpoints.SERVICE_NAME`), so ``$SRV.PING``, ``$SRV.INFO``
and ``$SRV.STATS`` find each of them. Its endpoints listen on
``<prefix>.api.v1.<endpoint>``; all but ``workers`` share one queue group, so
exactly one process answers (every process of a cluster shares the store, so
any of them can); ``workers`` has a queue group per process, so each answers
for its own workers.

A catch-all on ``<prefix>.api.>``, in a queue group of its own (NATS would
merge a same-named group across subjects with the endpoints'), answers a
request for an unknown endpoint or version with a 404 naming what exists.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Awaitable, Callable, Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import structlog
from msgspec import Struct
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import Service

from ctrlplane.api.endpoints import API_VERSIONS, ENDPOINTS, SERVICE_NAME, EndpointSpec, endpoint
from ctrlplane.api.errors import (
    CODE_HEADER,
    MESSAGE_HEADER,
    ApiError,
    InternalError,
    NotFoundError,
    RefusedError,
)
from ctrlplane.api.wire import decode_body, encode_body
from ctrlplane.bus.codec import encode
from ctrlplane.bus.connection import Bus
from ctrlplane.bus.subjects import API_VERSION
from ctrlplane.errors import CtrlplaneError

__all__ = ["QUEUE", "UNKNOWN_QUEUE", "ApiService", "Handler"]

log = structlog.get_logger("ctrlplane.api")

QUEUE = "ctrlplane-api"
"""The queue group of the endpoints that exactly one process answers."""

UNKNOWN_QUEUE = "ctrlplane-api-unknown"
"""The queue group of the unknown-endpoint answer: one process answers it."""

MAX_HEADER = 1024
"""Characters of an error message that go into the ``Nats-Service-Error`` header
(the body has all of it)."""

Handler = Callable[[Any], Awaitable[Struct]]
"""Takes the decoded request Struct, returns the reply Struct or raises."""

# A header value is one line: a message that quotes a request must not end it.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class ApiService:
    """The ``ctrlplane`` micro service of one process.

    Args:
        bus: The connected bus.
        handlers: Endpoint name to handler; only these endpoints are served
            by this process (the catch-all still knows every endpoint).
    """

    def __init__(self, bus: Bus, handlers: Mapping[str, Handler]) -> None:
        unknown = set(handlers) - {e.name for e in ENDPOINTS}
        if unknown:
            raise ValueError(f"no such endpoints: {sorted(unknown)}")
        self._bus = bus
        self._handlers = dict(handlers)
        self._service: Service | None = None
        self._unknown: Subscription | None = None

    @property
    def id(self) -> str:
        """The service instance id (as in ``$SRV.INFO``); empty before :meth:`start`."""
        return "" if self._service is None else self._service.id

    async def start(self) -> None:
        s = self._bus.subjects
        with warnings.catch_warnings():
            # nats.micro stamps its start time with datetime.utcnow(), deprecated
            # since Python 3.12; the warning is theirs and harmless.
            warnings.simplefilter("ignore", DeprecationWarning)
            service = await add_service(
                self._bus.nc,
                name=SERVICE_NAME,
                version=_version(),
                description="ctrlplane control API",
                metadata={
                    "api_versions": ",".join(API_VERSIONS),
                    "subject_prefix": s.prefix,
                    "schema": "ctrlplane schema api",
                },
                queue_group=QUEUE,
            )
        self._service = service
        for spec in ENDPOINTS:
            handler = self._handlers.get(spec.name)
            if handler is None:
                continue
            # One group per process for scatter-gather: each process is its
            # group's only member, so every process gets the request.
            queue = f"{QUEUE}-{spec.name}-{service.id}" if spec.scatter else QUEUE
            await service.add_endpoint(
                name=spec.name,
                subject=s.api(spec.name),
                queue_group=queue,
                handler=self._wrap(spec, handler),
                metadata={
                    "api_version": API_VERSION,
                    "request": spec.request.__name__,
                    "reply": spec.reply.__name__,
                    "access": "admin" if spec.mutating else "observer",
                    "answers": "every process" if spec.scatter else "one process",
                    "description": spec.description,
                },
            )
        self._unknown = await self._bus.nc.subscribe(
            s.all_api, queue=UNKNOWN_QUEUE, cb=self._on_unknown
        )

    def _wrap(self, spec: EndpointSpec, handler: Handler) -> Callable[[Request], Awaitable[None]]:
        async def on_request(req: Request) -> None:
            try:
                body: object = decode_body(req.data, spec.request, req.subject)
                reply = await handler(body)
                data = encode_body(reply)
            except Exception as exc:  # a bad request must never hurt the process
                await _respond_error(req.respond_error, _api_error(spec.name, exc))
                return
            with contextlib.suppress(Exception):  # no reply subject, or the asker left
                await req.respond(data)

        return on_request

    async def _on_unknown(self, msg: Msg) -> None:
        if not msg.reply:
            return
        error = self._not_found(msg.subject)
        if error is None:
            return  # a known endpoint: it answers for itself

        async def respond(code: str, message: str, data: bytes) -> None:
            headers = {MESSAGE_HEADER: message, CODE_HEADER: code}
            await self._bus.nc.publish(msg.reply, data, headers=headers)

        await _respond_error(respond, error)

    def _not_found(self, subject: str) -> NotFoundError | None:
        s = self._bus.subjects
        head = s.all_api[:-1]  # "<prefix>.api."
        tokens = subject[len(head) :].split(".")
        known = sorted(e.name for e in ENDPOINTS)
        if tokens[0] in API_VERSIONS:
            if len(tokens) == 2 and endpoint(tokens[1]) is not None:
                return None
            return NotFoundError(
                f"no endpoint {'.'.join(tokens[1:])!r} in API {tokens[0]} ({subject}): "
                f"the endpoints are {', '.join(known)}, at {s.api('<endpoint>', tokens[0])}"
            )
        if len(tokens) == 1 and endpoint(tokens[0]) is not None:
            return NotFoundError(
                f"unversioned API subjects were removed: send to {s.api(tokens[0])}"
            )
        return NotFoundError(
            f"no API version {tokens[0]!r} ({subject}): this control plane serves "
            f"{', '.join(API_VERSIONS)}, at {s.api('<endpoint>')}"
        )

    async def stop(self) -> None:
        if self._unknown is not None:
            with contextlib.suppress(Exception):
                await self._unknown.unsubscribe()
            self._unknown = None
        if self._service is not None:
            with contextlib.suppress(Exception):
                await self._service.stop()
            self._service = None


def _version() -> str:
    """The package's version: the service's version in ``$SRV.INFO``."""
    try:
        return version("ctrlplane-workers")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "0.0.0+unknown"


def _api_error(name: str, exc: Exception) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, CtrlplaneError):
        # Our own refusals (a bad declaration, an unknown instance): the
        # request cannot be done as asked.
        return RefusedError(str(exc))
    log.exception("control request failed", api=name, exc_info=exc)
    return InternalError(f"internal error: {exc!r}")


async def _respond_error(
    respond: Callable[[str, str, bytes], Awaitable[None]], error: ApiError
) -> None:
    header = _CONTROL.sub(" ", error.message)[:MAX_HEADER]
    with contextlib.suppress(Exception):  # no reply subject, or the asker left
        await respond(str(error.code), header, encode(error.body()))

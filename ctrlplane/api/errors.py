"""Errors of the control API, and how they travel: the NATS micro convention plus a JSON body."""

from __future__ import annotations

from msgspec import Struct

from ctrlplane.errors import CtrlplaneError

__all__ = [
    "CODE_HEADER",
    "MESSAGE_HEADER",
    "ApiError",
    "BadRequestError",
    "ErrorBody",
    "ErrorDetail",
    "ForbiddenError",
    "InternalError",
    "NotFoundError",
    "RefusedError",
    "UnavailableError",
]

MESSAGE_HEADER = "Nats-Service-Error"
"""The micro services header that carries an error's message."""

CODE_HEADER = "Nats-Service-Error-Code"
"""The micro services header that carries an error's code (HTTP-like: 400, 404, 500, 503)."""


class ErrorDetail(Struct, frozen=True, kw_only=True):
    """What went wrong: ``code`` as in the ``Nats-Service-Error-Code`` header."""

    code: int
    message: str


class ErrorBody(Struct, frozen=True, kw_only=True):
    """The body of every error answer, ``{"error": {"code": ..., "message": ...}}``."""

    error: ErrorDetail


class ApiError(CtrlplaneError):
    """A control request that was not done, with the code its answer carries.

    Attributes:
        code: HTTP-like: 4xx for the caller's mistake, 5xx for ours.
        message: Why, for a person to read.
    """

    code = 500

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)

    def __reduce__(self) -> tuple[type[ApiError], tuple[str]]:
        return type(self), (self.message,)

    def body(self) -> ErrorBody:
        """The error as an answer's JSON body."""
        return ErrorBody(error=ErrorDetail(code=self.code, message=self.message))


class BadRequestError(ApiError):
    """A request that cannot be decoded, has unknown fields, or asks for something out of range.

    Attributes:
        subject: Where the request was sent.
        reason: What is wrong with it.
    """

    code = 400

    def __init__(self, subject: str, reason: str) -> None:
        self.subject = subject
        self.reason = reason
        super().__init__(f"bad request on {subject}: {reason}")

    def __reduce__(self) -> tuple[type[ApiError], tuple[str, str]]:  # type: ignore[override]
        return type(self), (self.subject, self.reason)


class RefusedError(ApiError):
    """A request that decoded but cannot be done as asked (a bad declaration, a
    domain naming an undeclared instance)."""

    code = 400


class NotFoundError(ApiError):
    """An unknown endpoint or version, or a request naming something that does not exist."""

    code = 404


class ForbiddenError(ApiError):
    """A request this control plane is configured to refuse (``api_apply = false``)."""

    code = 403


class UnavailableError(ApiError):
    """The answering process cannot serve this endpoint (no router, no node registry)."""

    code = 503


class InternalError(ApiError):
    """A failure of ours while handling a request; the process keeps serving."""

    code = 500

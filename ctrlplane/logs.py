"""structlog set-up for the CLI: console for people, JSON for log collectors."""

from __future__ import annotations

import enum
import logging
import sys
from datetime import date, datetime, time, timedelta
from pathlib import PurePath
from typing import Any, Literal

import structlog

LogFormat = Literal["console", "json"]
LogLevel = Literal["debug", "info", "warning", "error"]

LEVELS: dict[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
"""The names ``--log-level`` accepts, to the stdlib's numbers."""


def json_value(value: object) -> Any:
    """What ``value`` is in a JSON log line, for the types ``json`` cannot write itself.

    A log collector parses these: a datetime is ISO 8601, a duration seconds,
    a path a string, an enum its value. Anything else becomes ``str(value)``,
    never a Python repr such as ``datetime.datetime(2027, ...)``.
    """
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value)


def configure_logging(fmt: LogFormat = "console", level: int = logging.INFO) -> None:
    """Send structlog (and stdlib logging) to stderr in ``fmt``, from ``level`` up."""
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: structlog.typing.Processor
    if fmt == "json":
        # Without locals: their reprs are no data for a collector, and may
        # hold a token.
        processors.append(
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            )
        )
        # An Enum that is also a str or int (StrEnum) is written by json as
        # its value already; everything else json cannot write goes to json_value.
        renderer = structlog.processors.JSONRenderer(default=json_value)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Libraries' stdlib logs (asyncio, nats): warnings and above, rendered
    # like ours, so that in JSON every line on stderr is one JSON object.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_logger_name,
                *processors,
            ],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    logging.basicConfig(level=max(level, logging.WARNING), handlers=[handler], force=True)

"""Store URLs: which backend a URL names, and how to show one without its secret.

Imported by the configuration, so it imports nothing but the standard library.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

POSTGRES_SCHEMES = ("postgresql", "postgres")
"""The URL schemes of a PostgreSQL store (libpq accepts both)."""

# The user part of the authority, up to the last "@" (a password may hold "/"
# or "@" unescaped), and a password given as a query parameter.
_USERINFO_RE = re.compile(r"//([^/?#]*)@|//(.*)@")
_PASSWORD_PARAM_RE = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)


def is_postgres_url(url: str) -> bool:
    """Whether ``url`` names a PostgreSQL store."""
    scheme, sep, _ = url.partition("://")
    return bool(sep) and scheme.lower() in POSTGRES_SCHEMES


def sqlite_file(url: str) -> Path | None:
    """The file a ``sqlite:///ABSOLUTE/PATH`` URL names, or ``None`` for another URL."""
    scheme, sep, _ = url.partition("://")
    if not sep or scheme.lower() != "sqlite":
        return None
    return Path(urlsplit(url).path)


def redact_store_url(url: str) -> str:
    """``url`` with its password (in the user part or a ``password=`` parameter) as ``***``."""

    def redact(match: re.Match[str]) -> str:
        userinfo = match.group(1) if match.group(1) is not None else match.group(2)
        user, colon, _ = userinfo.partition(":")
        return f"//{user}:***@" if colon else f"//{user}@"

    return _PASSWORD_PARAM_RE.sub(r"\1***", _USERINFO_RE.sub(redact, url, count=1))


def store_url_problem(url: str) -> str | None:
    """What is wrong with ``url`` as a store URL, or ``None``; never quotes a password."""
    shown = repr(redact_store_url(url))
    if sqlite_file(url) is not None:
        parts = urlsplit(url)
        if parts.netloc or not parts.path.startswith("/") or parts.path.endswith("/"):
            return f"{shown}: a SQLite store is sqlite:///ABSOLUTE/PATH/FILE.db"
        return None
    if not is_postgres_url(url):
        return (
            f"{shown} is not a store URL: use postgresql://user@host:5432/database, "
            "sqlite:///ABSOLUTE/PATH.db (a file the processes of one host share), "
            "or leave it unset for the SQLite file in data_dir"
        )
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - urlsplit checks the port only when asked
    except ValueError:
        return f"{shown} is not a URL (its port, or a user part holding '/', cannot be read)"
    if any(ch.isspace() for ch in url):
        return f"{shown} holds white space"
    return None

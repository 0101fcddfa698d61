"""The embedded server's token: a private file the bus creates once and reuses.

Raises ``OSError`` for what the file system refuses and ``ValueError`` for a
file that holds no usable token; callers turn either into a bus error with
context.
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path

# A leaf of the standard library only (see its docstring): the bus pulls
# nothing of the domain through it.
from ctrlplane.files import write_private

_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{16,}")


def load_or_create_token(path: Path) -> str:
    """The token stored at ``path``; a new random one is stored first if there is none.

    Raises:
        ValueError: the file holds something that is not a usable token.
    """
    # The caller holds the data directory's lock, so no other start races this one.
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        token = secrets.token_urlsafe(32)
        write_private(path, token.encode())
        return token
    # The token goes into a URL's user part, which nats-py does not percent-decode.
    if not _TOKEN_RE.fullmatch(token):
        raise ValueError(f"{path} does not hold a valid token; delete it to make a new one")
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)
    return token

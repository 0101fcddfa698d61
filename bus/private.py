"""Files only their owner may read: the data directory, the token, the server's config.

These helpers raise ``OSError`` for what the file system refuses and
``ValueError`` for what they will not do; callers turn either into their
own package's error with context.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
import tempfile
from pathlib import Path

_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{16,}")


def private_dir(path: Path) -> None:
    """Create ``path`` with mode 0700, or narrow it to 0700 if others may read it.

    Raises:
        ValueError: ``path`` is a shared sticky directory such as ``/tmp``.
        OSError: it cannot be created or changed.
    """
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = path.stat().st_mode
    if mode & stat.S_ISVTX:
        # A sticky directory is shared like /tmp; making it private would break others.
        raise ValueError(f"{path} is a shared directory; use a directory of its own")
    if mode & 0o077:
        path.chmod(0o700)


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


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600, atomically: readers see all of it or none."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)

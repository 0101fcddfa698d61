"""Files only their owner may read: a private directory, a file written atomically.

A leaf below every layer (the standard library only, no ctrlplane module), so
that the bus, the certificates, the providers and the CLI share it without the
bus depending on the domain or the domain reaching into the bus for it.

These helpers raise ``OSError`` for what the file system refuses and
``ValueError`` for what they will not do; callers turn either into their
own package's error with context.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path


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

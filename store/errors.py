"""Errors raised by the store."""

from __future__ import annotations


class StoreError(Exception):
    """Base class of every error raised by ``ctrlplane.store``."""


class NotOpenError(StoreError):
    """The store was used before ``open()`` or after ``close()``."""

    def __init__(self, action: str) -> None:
        self.action = action
        super().__init__(f"store: cannot {action}: open the store first")


class MigrationError(StoreError):
    """A schema migration failed, or the file is newer than this code."""

    def __init__(self, version: int, reason: str) -> None:
        self.version = version
        self.reason = reason
        super().__init__(f"store: migration to version {version}: {reason}")


class StoreUnavailableError(StoreError):
    """The database server cannot be reached, or refused to let us in.

    ``url`` is shown without its password.
    """

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"store: cannot connect to {url}: {reason}")

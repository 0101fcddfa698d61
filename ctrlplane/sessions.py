"""One shared aiohttp session, made on first use inside the running loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp


class LoopSession:
    """A lazily created ``aiohttp.ClientSession`` bound to the loop that first used it.

    Collectors are built before any loop runs, and an aiohttp
    session must be made inside one; this makes it on the first :meth:`get`
    and refuses use from another loop, which aiohttp would only fail on later.

    Args:
        owner: Named in the error for use from another loop.
        make: Builds the session (called inside the running loop).
    """

    def __init__(self, owner: str, make: Callable[[], aiohttp.ClientSession]) -> None:
        self._owner = owner
        self._make = make
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def get(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed:
            self._session = self._make()
            self._loop = loop
        elif self._loop is not loop:
            raise RuntimeError(
                f"{self._owner}: its session belongs to another event loop; close() it there first"
            )
        return self._session

    async def close(self) -> None:
        """Close the session and its connections; the next :meth:`get` makes a new one."""
        session, self._session, self._loop = self._session, None, None
        if session is not None:
            await session.close()

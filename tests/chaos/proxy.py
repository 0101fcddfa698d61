"""A NATS proxy that SIGKILLs its client the moment it acknowledges a chosen consumer's message.

It forwards bytes both ways between a ``ctrlplane run`` process and nats-server,
reading the client's commands (``PUB``/``HPUB`` carry a byte count, every
other command is one line). When the client publishes ``+ACK`` (or an empty
ack) to a ``$JS.ACK.`` subject of the trapped consumer, the proxy kills the
process and drops the ack: the process dies after ``run()`` returned and
after everything the runtime does before acknowledging (records, completion
marks), but before the ack reaches NATS. In-progress acks pass through.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable

_ACKS = (b"+ACK", b"")


class AckTrap:
    """Listen on 127.0.0.1 and forward to ``upstream_port``; kill ``victim`` at its first ack.

    Args:
        upstream_port: The nats-server's client port on 127.0.0.1.
        consumer: The durable consumer whose ack is fatal, e.g. ``tick-ack-victim``.
        on_kill: Called with the pid just before it is killed (to log it).
    """

    def __init__(self, upstream_port: int, consumer: str, on_kill: Callable[[int], None]) -> None:
        self._upstream = upstream_port
        self._marker = f".{consumer}.".encode()
        self._on_kill = on_kill
        self.victim: int | None = None
        self.fired = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None, "start() the trap first"
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await task
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._upstream)
        except OSError:
            writer.close()
            return
        down = asyncio.create_task(self._pipe(up_reader, writer))
        up = asyncio.create_task(self._client_to_server(reader, up_writer))
        for task in (down, up):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        await asyncio.wait({down, up}, return_when=asyncio.FIRST_COMPLETED)
        for task in (down, up):
            task.cancel()
        for w in (writer, up_writer):
            w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()

    async def _client_to_server(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        buf = b""
        while True:
            data = await reader.read(65536)
            if not data:
                return
            buf += data
            out = bytearray()
            while True:
                end = buf.find(b"\r\n")
                if end < 0:
                    break
                line = buf[:end]
                words = line.split()
                op = words[0].upper() if words else b""
                if op in (b"PUB", b"HPUB"):
                    size = int(words[-1])
                    total = end + 2 + size + 2
                    if len(buf) < total:
                        break
                    command, buf = buf[:total], buf[total:]
                    payload = command[end + 2 : end + 2 + size]
                    if self._is_fatal(op, words[1], payload):
                        writer.write(bytes(out))
                        await writer.drain()
                        self._kill()
                        return
                    out += command
                else:
                    out += buf[: end + 2]
                    buf = buf[end + 2 :]
            if out:
                writer.write(bytes(out))
                await writer.drain()

    def _is_fatal(self, op: bytes, subject: bytes, payload: bytes) -> bool:
        return (
            self.victim is not None
            and not self.fired.is_set()
            and op == b"PUB"
            and subject.startswith(b"$JS.ACK.")
            and self._marker in subject
            and payload in _ACKS
        )

    def _kill(self) -> None:
        assert self.victim is not None
        self._on_kill(self.victim)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.victim, signal.SIGKILL)
        self.fired.set()

"""The ``tcp`` check: passes when a TCP connection to ``host:port`` opens."""

from __future__ import annotations

import asyncio
import contextlib

from ctrlplane.checks.text import bounded
from ctrlplane.oserrors import describe_os_error
from ctrlplane.store.health import CheckSpec, Outcome
from ctrlplane.store.instances import Instance
from ctrlplane.types import Probe


def parse_host_port(target: str | None) -> tuple[str, int]:
    """Split ``"host:port"`` (or ``"[::1]:port"``) into its host and port.

    Shared by the ``tcp`` and ``grpc`` checks.

    Raises:
        ValueError: saying what is wrong with ``target``.
    """
    if not target or not target.strip():
        raise ValueError("needs a target 'host:port'")
    text = target.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"{target!r} is not '[ipv6]:port'")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"{target!r} has no port: use 'host:port'")
        if ":" in host:
            raise ValueError(f"{target!r}: put an IPv6 address in brackets, as in '[::1]:port'")
    if not host or any(c.isspace() for c in host):
        raise ValueError(f"{target!r} has no valid host: use 'host:port'")
    if not port_text.isascii() or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{target!r} has no valid port (1-65535)")
    return host, int(port_text)


class TcpChecker:
    """Passes when a TCP connection to ``spec.target`` (``host:port``) opens.

    The connection is closed again at once; nothing is sent. The caller
    enforces ``spec.timeout`` (a connect that hangs is cancelled, and asyncio
    closes the half-open socket).
    """

    type: str = "tcp"

    async def check(self, spec: CheckSpec, instance: Instance) -> Probe:
        """Open and close one connection to ``spec.target``."""
        try:
            host, port = parse_host_port(spec.target)
        except ValueError as exc:
            return Probe(outcome=Outcome.UNKNOWN, message=bounded(f"tcp check {exc}"))
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError as exc:
            return Probe(outcome=Outcome.FAIL, message=describe_os_error(exc))
        except ValueError as exc:  # a host name IDNA cannot encode, say
            return Probe(
                outcome=Outcome.UNKNOWN, message=bounded(f"tcp check: bad host {host!r}: {exc}")
            )
        writer.close()
        # A reset while closing says nothing about whether the port is open.
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return Probe(outcome=Outcome.PASS, message="connected")

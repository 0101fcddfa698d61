"""``http_addr``: where ``ctrlplane run`` serves HTTP, or ``off``."""

from __future__ import annotations

import ipaddress
from typing import NamedTuple

OFF = "off"


class HttpAddr(NamedTuple):
    """A host and a port to listen on; port 0 lets the kernel choose one."""

    host: str
    port: int


def parse_http_addr(value: str) -> HttpAddr | None:
    """``host:port`` (``[v6]:port`` for IPv6) as an :class:`HttpAddr`; None for ``off``.

    Raises:
        ValueError: with what is wrong, for anything else.
    """
    if value == OFF:
        return None
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{value!r} is not host:port (e.g. 127.0.0.1:8080, or 'off')")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{value!r}: {host!r} is not an IPv6 address") from None
    elif ":" in host:
        raise ValueError(f"{value!r}: write an IPv6 address in brackets, e.g. [::1]:8080")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{value!r}: the port must be a number from 0 to 65535")
    return HttpAddr(host, int(port_text))

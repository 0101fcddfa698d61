"""Which hostnames a domain may have: the rule shared by declarations and the router.

A domain's hostname names a certificate, a folder under the data directory
and a line of ``routes.json``, so it is checked as a whole string (never with
``$``, which lets a trailing newline through) and refused when no certificate
for it could mean anything:

* lowercase DNS names only, at most 253 characters, labels of 1 to 63
  letters, digits and ``-`` (not at either end), with an optional leading
  ``*.`` for a wildcard;
* at least two labels: a single-label name (``localhost``, ``ca``, ``web``)
  is not a name a client reaches over TLS, and refusing them keeps a domain
  from ever being taken for one of the control plane's own folders;
* not ``localhost`` or a name under ``.localhost`` (RFC 6761: always the
  loopback address) nor under ``.invalid`` (RFC 6761: never resolves).

Names under ``.local`` (mDNS) and ``.test`` are allowed: the local CA can
serve them, though a public ACME CA refuses them.
"""

from __future__ import annotations

import re

__all__ = ["RESERVED_SUFFIXES", "hostname_problem"]

MAX_LENGTH = 253

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOSTNAME_RE = re.compile(rf"(?:\*\.)?{_LABEL}(?:\.{_LABEL})+")

RESERVED_SUFFIXES = ("localhost", "invalid")
"""Top-level names no domain may be or end in."""


def hostname_problem(hostname: str) -> str | None:
    """Why ``hostname`` cannot be a domain's hostname, or ``None`` when it can.

    Args:
        hostname: The name to check, such as ``app.example.test``.

    Returns:
        A sentence naming the problem and the rule, or ``None``.
    """
    if not isinstance(hostname, str) or len(hostname) > MAX_LENGTH:
        return f"{_shown(hostname)} is longer than {MAX_LENGTH} characters"
    if not _HOSTNAME_RE.fullmatch(hostname):
        if re.fullmatch(rf"(?:\*\.)?{_LABEL}", hostname):
            return (
                f"{_shown(hostname)} is a single-label name; use a fully qualified name "
                "such as app.example.com"
            )
        return (
            f"{_shown(hostname)} is not a lowercase DNS name: use letters, digits and '-' "
            "in dot-separated labels, such as app.example.com (or *.example.com)"
        )
    last = hostname.rsplit(".", 1)[-1]
    if last in RESERVED_SUFFIXES:
        return f"{_shown(hostname)} is reserved (RFC 6761 .{last}) and cannot have a certificate"
    return None


def _shown(hostname: object) -> str:
    text = repr(hostname)
    return text if len(text) <= 80 else text[:77] + "..."

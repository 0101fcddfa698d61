"""Text from outside (events, check messages, command output) made safe for a terminal.

Whatever reaches the CLI's output may come from anyone who can publish an
event or answer a health check. Printed raw, an escape sequence in it clears
the screen, recolours the rest of the session, rewrites the line above or, on
some terminals, sets the window title or the clipboard. So every table cell
and every line of data goes through :func:`visible`, and JSON through
:func:`visible_json`.
"""

from __future__ import annotations

import re

__all__ = ["visible", "visible_json"]

# C0 controls (ESC among them), DEL, the C1 controls (U+009B is a one-character
# CSI to some terminals), and the characters that reorder or break lines
# without being seen: bidirectional overrides and isolates, line and paragraph
# separators.
_INVISIBLE = "\x7f-\x9f\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"
_UNSAFE_RE = re.compile(f"[\x00-\x1f{_INVISIBLE}]")
# In JSON, tab, newline and carriage return may stand between tokens; every
# other control is written as the \u escape JSON itself defines.
_UNSAFE_JSON_RE = re.compile(f"[\x00-\x08\x0b\x0c\x0e-\x1f{_INVISIBLE}]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def visible(text: str) -> str:
    """``text`` with each control character written as an escape a reader sees.

    ``"\\x1b[2J"`` becomes ``\\x1b[2J`` (a backslash, ``x1b``, ...), a newline
    ``\\n``, a C1 control ``\\x9b``, a bidirectional override ``\\u202e``.
    Printable text, including non-ASCII letters, is unchanged.

    Args:
        text: The text to show.

    Returns:
        Text with no control characters in it.
    """
    return _UNSAFE_RE.sub(_escape, text)


def visible_json(text: str) -> str:
    """JSON text with each control character written as a JSON ``\\u`` escape.

    Valid JSON stays valid and means the same; tab, newline and carriage
    return are kept, as they may be whitespace between tokens.
    """
    return _UNSAFE_JSON_RE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")

"""Text from outside made visible before it reaches a terminal, and the CLI's tables using it."""

from __future__ import annotations

import json

import pytest

from ctrlplane.cli.common import echo, echo_json, fail, print_table
from ctrlplane.cli.terminal import visible, visible_json

HOSTILE = "ok\x1b[2J\x1b]0;pwned\x07\r\n\x9b31m\u202eevil\x7f\x00"


def test_visible_shows_every_control_character_as_an_escape() -> None:
    shown = visible(HOSTILE)
    assert shown == "ok\\x1b[2J\\x1b]0;pwned\\x07\\r\\n\\x9b31m\\u202eevil\\x7f\\x00"
    assert all(ch.isprintable() for ch in shown)


def test_visible_leaves_printable_text_alone() -> None:
    text = 'café 日本 200 OK: a\\b {"k": 1}'
    assert visible(text) == text


def test_visible_json_stays_json_with_the_same_meaning() -> None:
    text = json.dumps({"source": HOSTILE}, ensure_ascii=False)
    shown = visible_json(text)
    assert all(ch.isprintable() for ch in shown)
    assert json.loads(shown) == {"source": HOSTILE}


def test_tables_lines_and_errors_print_no_control_character(
    capsys: pytest.CaptureFixture[str],
) -> None:
    print_table(["NAME", "MESSAGE"], [["web", HOSTILE], [HOSTILE, "-"]])
    echo(f"event {HOSTILE}")
    echo_json(json.dumps({"data": HOSTILE}, ensure_ascii=False))
    with pytest.raises(SystemExit):
        fail(f"no instance {HOSTILE!s}")
    out, err = capsys.readouterr()
    for text in (out, err):
        assert "\x1b" not in text and "\x9b" not in text and "\u202e" not in text
        assert "\r" not in text and "\x07" not in text and "\x00" not in text
    lines = out.splitlines()
    assert len(lines) == 5  # header, two rows, a line and the JSON: no line broken in two
    assert "ok\\x1b[2J" in lines[1]
    assert "ok\\x1b[2J" in err

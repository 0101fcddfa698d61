"""Which hostnames a domain may have."""

from __future__ import annotations

import pytest

from ctrlplane.hostnames import hostname_problem


@pytest.mark.parametrize(
    "hostname",
    ["app.example.test", "*.example.com", "a.b", "x-1.example.com", "printer.local"],
)
def test_fully_qualified_lowercase_names_are_accepted(hostname: str) -> None:
    assert hostname_problem(hostname) is None


@pytest.mark.parametrize(
    ("hostname", "problem"),
    [
        ("app.example.test\n", "not a lowercase DNS name"),
        ("nl\n", "not a lowercase DNS name"),
        ("app.example.test\r", "not a lowercase DNS name"),
        ("App.example.test", "not a lowercase DNS name"),
        ("-a.example.test", "not a lowercase DNS name"),
        ("a..example.test", "not a lowercase DNS name"),
        ("../../etc.example", "not a lowercase DNS name"),
        ("", "not a lowercase DNS name"),
        ("ca", "single-label"),
        ("acme", "single-label"),
        ("localhost", "single-label"),
        ("*.web", "single-label"),
        ("app.localhost", "reserved"),
        ("x.invalid", "reserved"),
        ("a." * 127 + "example", "longer than 253"),
    ],
)
def test_other_names_are_refused_with_the_rule(hostname: str, problem: str) -> None:
    found = hostname_problem(hostname)
    assert found is not None and problem in found

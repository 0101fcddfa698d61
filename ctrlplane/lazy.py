"""Lazy package exports (PEP 562): a name is imported on its first use.

A leaf module (standard library only) so that every layer's ``__init__`` may
use it: importing a package then pays only for what the caller touches.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from importlib import import_module

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, exports: Mapping[str, str], names: Sequence[str]
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """The module ``__getattr__`` and ``__dir__`` of ``package``.

    Args:
        package: The package's ``__name__``.
        exports: Each exported name and the module that defines it.
        names: The package's ``__all__``.

    Returns:
        ``(__getattr__, __dir__)``: the first imports a name's module on first
        use and keeps the value in the package, so later uses are plain
        attribute reads; the second lists the names before any is imported.
    """

    def getattr_(name: str) -> object:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    def dir_() -> list[str]:
        return sorted({*vars(sys.modules[package]), *names})

    return getattr_, dir_

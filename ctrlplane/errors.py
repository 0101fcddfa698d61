"""Errors raised by ``ctrlplane`` itself: one base class, subclasses that carry what went wrong."""

from __future__ import annotations


class CtrlplaneError(Exception):
    """Base class of every error raised by the ``ctrlplane`` package."""


# ConfigError deliberately does not also derive from ValueError: msgspec turns a
# ValueError raised in ``Config.__post_init__`` into a ValidationError, which
# would lose the field and source this class carries.
class ConfigError(CtrlplaneError):
    """A configuration value is missing, malformed or out of range.

    Attributes:
        field: Dotted path of the offending setting, such as ``health_interval``
            or ``workers[1]``; ``config`` when the file itself is the problem.
        reason: What is wrong and, where it helps, what would be accepted.
        source: The file path or environment variable that held the bad value,
            ``overrides`` for values passed in by the caller, or ``None`` when
            the value was not loaded from anywhere (a ``Config`` built in code).
    """

    def __init__(self, field: str, reason: str, source: str | None = None) -> None:
        self.field = field
        self.reason = reason
        self.source = source
        where = f" (from {source})" if source else ""
        # The file itself (field ``config``) is named once: "config: not UTF-8 text".
        named = "config" if field == "config" else f"config: {field}"
        super().__init__(f"{named}: {reason}{where}")

    def __reduce__(self) -> tuple[type[ConfigError], tuple[str, str, str | None]]:
        # Exceptions pickle their ``args`` by default, which here is the
        # formatted message rather than the three fields __init__ takes.
        return type(self), (self.field, self.reason, self.source)


class WorkerLoadError(CtrlplaneError):
    """A custom worker named in the config or an entry point cannot be loaded.

    Attributes:
        ref: The ``module:attr`` reference or entry point that failed.
        reason: Why it could not be loaded.
    """

    def __init__(self, ref: str, reason: str) -> None:
        self.ref = ref
        self.reason = reason
        super().__init__(f"worker {ref}: {reason}")

    def __reduce__(self) -> tuple[type[WorkerLoadError], tuple[str, str]]:
        return type(self), (self.ref, self.reason)


class DataDirInUseError(CtrlplaneError):
    """Another process holds the data dir: one control-plane process per data dir.

    Attributes:
        data_dir: The data directory.
        holder: Who holds it, from its lock file: ``pid 123 on host``.
    """

    def __init__(self, data_dir: str, holder: str) -> None:
        self.data_dir = data_dir
        self.holder = holder
        super().__init__(
            f"data_dir {data_dir} is in use by another ctrlplane process ({holder}): "
            "stop that one first, or give this one another data dir"
        )

    def __reduce__(self) -> tuple[type[DataDirInUseError], tuple[str, str]]:
        return type(self), (self.data_dir, self.holder)


class PartialFailure(CtrlplaneError):
    """A run did what it could; some parts failed and are named here.

    Built-in workers isolate failures (one provider, kind or domain does not
    stop the others) and raise this at the end, so that the run is recorded
    as failed with every cause.

    Attributes:
        failures: Each failed part and why.
    """

    what = "incomplete"

    def __init__(self, failures: dict[str, str]) -> None:
        self.failures = failures
        detail = "; ".join(f"{part}: {why}" for part, why in sorted(failures.items()))
        super().__init__(f"{self.what}: {detail}")

"""The errors that providers raise."""

from __future__ import annotations

from ctrlplane.errors import CtrlplaneError


class ProviderError(CtrlplaneError):
    """A provider could not do what was asked of it.

    Attributes:
        instance: The name of the instance concerned; ``None`` when the error
            is not about one instance (a provider that cannot be loaded).
        reason: What went wrong, naming the path or value at fault.
    """

    def __init__(self, instance: str | None, reason: str) -> None:
        self.instance = instance
        self.reason = reason
        where = f"instance {instance!r}: " if instance is not None else ""
        super().__init__(f"provider: {where}{reason}")

    def __reduce__(self) -> tuple[type[ProviderError], tuple[str | None, str]]:
        # Exceptions pickle their ``args`` by default: the message, not the fields.
        return type(self), (self.instance, self.reason)


class ProviderLoadError(ProviderError):
    """A provider named by an entry point cannot be loaded.

    Attributes:
        ref: The entry point that failed, with the object it names.
        reason: Why it could not be loaded.
    """

    def __init__(self, ref: str, reason: str) -> None:
        super().__init__(None, f"{ref}: {reason}")
        self.ref = ref
        self.reason = reason

    def __reduce__(self) -> tuple[type[ProviderLoadError], tuple[str, str]]:
        return type(self), (self.ref, self.reason)

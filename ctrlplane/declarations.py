"""Instances as the operator declares them (``[[instances]]``), and their validation.

Apart from :mod:`ctrlplane.inventory`, which carries them out, so that loading
the configuration does not load the runtime (providers, the store, asyncio).
"""

from __future__ import annotations

from datetime import timedelta

from msgspec import Struct, field

from ctrlplane.bus.subjects import is_valid_token
from ctrlplane.store.health import CheckSpec
from ctrlplane.store.instances import DesiredState, InstanceSpec


class InstanceDecl(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One ``[[instances]]`` table: an instance as the operator declares it.

    Attributes:
        name: Unique; lowercase letters, digits, ``-`` and ``_``.
        command: The argv to run (never through a shell).
        provider: Who runs it; ``process`` by default.
        desired_state: ``running`` (default) or ``stopped``.
        env: Extra environment variables.
        cwd: Working directory.
        ports: Ports it listens on.
        metrics_url: A Prometheus text endpoint.
        checks: Its health checks (``[[instances.checks]]``).
        node: The node to run it on, for a host-bound provider (``process``);
            by default the live node with the fewest instances. Honoured when
            the instance is created: applying again never moves it.
    """

    name: str
    command: list[str]
    provider: str = "process"
    desired_state: DesiredState = DesiredState.RUNNING
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    ports: list[int] = field(default_factory=list)
    metrics_url: str | None = None
    checks: list[CheckSpec] = field(default_factory=list)
    node: str | None = None

    def spec(self) -> InstanceSpec:
        return InstanceSpec(
            command=list(self.command),
            env=dict(self.env),
            cwd=self.cwd,
            ports=list(self.ports),
            metrics_url=self.metrics_url,
        )


def decl_problems(decls: list[InstanceDecl]) -> list[tuple[str, str]]:
    """What is wrong with ``decls``, as (field path, reason) pairs; empty if nothing."""
    problems: list[tuple[str, str]] = []
    names: dict[str, int] = {}
    token_rule = "use lowercase letters, digits, '-' and '_'"
    for i, d in enumerate(decls):
        at = f"instances[{i}]"
        if not is_valid_token(d.name) or len(d.name) > 64:
            problems.append((f"{at}.name", f"{d.name!r}: {token_rule}"))
        if d.name in names:
            problems.append(
                (f"{at}.name", f"{d.name!r} is already declared as instances[{names[d.name]}]")
            )
        names.setdefault(d.name, i)
        if d.node is not None and not is_valid_token(d.node):
            problems.append((f"{at}.node", f"{d.node!r} is not a node name: {token_rule}"))
        if not d.command or not all(d.command):
            problems.append((f"{at}.command", "must be a non-empty list of non-empty strings"))
        for j, port in enumerate(d.ports):
            if not 0 < port < 65536:
                problems.append((f"{at}.ports[{j}]", f"{port} is not a TCP port"))
        checks: dict[str, int] = {}
        for j, c in enumerate(d.checks):
            cat = f"{at}.checks[{j}]"
            if not is_valid_token(c.name):
                problems.append((f"{cat}.name", f"{c.name!r}: {token_rule}"))
            if c.name in checks:
                problems.append((f"{cat}.name", f"{c.name!r} is already a check of {d.name!r}"))
            checks.setdefault(c.name, j)
            if c.failure_threshold < 1:
                problems.append((f"{cat}.failure_threshold", "must be at least 1"))
            if c.success_threshold < 1:
                problems.append((f"{cat}.success_threshold", "must be at least 1"))
            if c.timeout <= timedelta(0):
                problems.append((f"{cat}.timeout", "must be greater than zero"))
            low, high = c.expected_status
            if not 100 <= low <= high <= 599:
                problems.append(
                    (f"{cat}.expected_status", f"[{low}, {high}] is not a range of HTTP statuses")
                )
    return problems

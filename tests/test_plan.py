"""ctrlplane/plan.py: what apply would change, decided without a store or NATS."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec

from ctrlplane.declarations import InstanceDecl
from ctrlplane.domains import DomainDecl
from ctrlplane.plan import (
    Action,
    DomainPlan,
    FieldChange,
    InstancePlan,
    plan_domains,
    plan_instances,
)
from ctrlplane.store.certs import Domain
from ctrlplane.store.health import CheckSpec
from ctrlplane.store.instances import DesiredState, Instance, InstanceState

NOW = datetime(2026, 11, 30, tzinfo=UTC)


def _decl(name: str, **fields: object) -> InstanceDecl:
    return msgspec.convert({"name": name, "command": ["sleep", "30"], **fields}, InstanceDecl)


def _recorded(decl: InstanceDecl) -> tuple[Instance, list[CheckSpec]]:
    spec = decl.spec()
    instance = Instance(
        id=f"i-{decl.name}",
        name=decl.name,
        provider=decl.provider,
        spec=spec,
        spec_hash=spec.digest(),
        desired=decl.desired_state,
        state=InstanceState.RUNNING,
        created=NOW,
        updated=NOW,
    )
    return instance, list(decl.checks)


def test_created_updated_removed_and_unchanged_in_declaration_order() -> None:
    http = {"name": "http", "target": "http://127.0.0.1:8080/"}
    web = _decl("web", env={"A": "1", "B": "2"}, checks=[http])
    old = _decl("old")
    same = _decl("same")
    recorded = [_recorded(d) for d in (old, same, web)]
    declared = [
        _decl("new"),
        _decl(
            "web",
            command=["sleep", "60"],
            env={"A": "1", "C": "3"},
            desired_state="stopped",
            # A declared node is honoured only at creation: not a change.
            node="elsewhere",
            checks=[
                {**http, "timeout": timedelta(seconds=5)},
                {"name": "tcp", "type": "tcp", "target": "x:1"},
            ],
        ),
        same,
    ]
    assert plan_instances(recorded, declared) == [
        InstancePlan(name="new", action=Action.CREATE),
        InstancePlan(
            name="web",
            action=Action.UPDATE,
            changes=[
                FieldChange(field="desired_state", old='"running"', new='"stopped"'),
                FieldChange(field="command", old='["sleep","30"]', new='["sleep","60"]'),
                FieldChange(field="env.B", old='"2"'),
                FieldChange(field="env.C", new='"3"'),
                FieldChange(field="checks.http.timeout", old="2s", new="5s"),
                FieldChange(
                    field="checks.tcp",
                    new='{"name":"tcp","type":"tcp","target":"x:1","command":null,'
                    '"method":"GET","expected_status":[200,399],"service":"",'
                    '"timeout":"2s","latency_threshold":null,"failure_threshold":3,'
                    '"success_threshold":1}',
                ),
            ],
        ),
        InstancePlan(name="same", action=Action.UNCHANGED),
        InstancePlan(name="old", action=Action.REMOVE),
    ]


def test_a_spec_change_is_a_change_exactly_when_its_digest_changes() -> None:
    base = _decl("web", ports=[8080], cwd="/srv")
    for changed, field in (
        (_decl("web", ports=[8081], cwd="/srv"), "ports"),
        (_decl("web", ports=[8080]), "cwd"),
        (_decl("web", ports=[8080], cwd="/srv", metrics_url="http://x/m"), "metrics_url"),
        (_decl("web", ports=[8080], cwd="/srv", provider="docker"), "provider"),
    ):
        (plan,) = plan_instances([_recorded(base)], [changed])
        assert [c.field for c in plan.changes] == [field]
        assert (changed.spec().digest() != base.spec().digest()) is (field != "provider")
    (same,) = plan_instances([_recorded(base)], [base])
    assert same == InstancePlan(name="web", action=Action.UNCHANGED)
    assert base.desired_state is DesiredState.RUNNING


def test_domains_compare_the_declared_fields_only() -> None:
    kept = Domain(
        hostname="a.test",
        instance="web",
        issuer="local",
        cert_lifetime=timedelta(days=90),
        renew_before=timedelta(days=30),
        # Back-off state is not declared: never a change.
        failures=3,
        last_error="boom",
    )
    gone = msgspec.structs.replace(kept, hostname="gone.test")
    declared = [
        DomainDecl(hostname="new.test", instance="web"),
        DomainDecl(hostname="a.test", instance="api", renew_before=timedelta(days=20)),
    ]
    assert plan_domains([kept, gone], declared) == [
        DomainPlan(hostname="new.test", action=Action.CREATE),
        DomainPlan(
            hostname="a.test",
            action=Action.UPDATE,
            changes=[
                FieldChange(field="instance", old='"web"', new='"api"'),
                FieldChange(field="renew_before", old="30d", new="20d"),
            ],
        ),
        DomainPlan(hostname="gone.test", action=Action.REMOVE),
    ]
    (same,) = plan_domains([kept], [DomainDecl(hostname="a.test", instance="web")])
    assert same.action is Action.UNCHANGED and same.changes == []

"""Tests for ctrlplane.config: defaults, the four layers, and errors that say where."""

from __future__ import annotations

import json
import os
import pickle
from datetime import timedelta
from pathlib import Path
from typing import assert_type

import msgspec
import pytest

from ctrlplane.bus.subjects import is_valid_token
from ctrlplane.config import (
    Config,
    check_names,
    default_data_dir,
    default_node,
    describe,
    load_config,
)
from ctrlplane.declarations import InstanceDecl
from ctrlplane.errors import ConfigError, CtrlplaneError

DURATION_FIELDS = [f.name for f in msgspec.structs.fields(Config) if f.type is timedelta]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def env(home: Path) -> dict[str, str]:
    """A clean environment: only HOME, so defaults never come from the real one."""
    return {"HOME": str(home)}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ctrlplane.toml"
    path.write_text(text)
    return path


# --- defaults -------------------------------------------------------------------------


def test_defaults_match_the_seed(env: dict[str, str], home: Path) -> None:
    config = load_config(env=env)

    assert config.nats_url is None
    assert config.data_dir == home / ".local" / "share" / "ctrlplane"
    assert config.subject_prefix == "ctrlplane"
    assert config.reconcile_interval == timedelta(seconds=60)
    assert config.health_interval == timedelta(seconds=30)
    assert config.telemetry_flush_interval == timedelta(seconds=10)
    assert config.gc_interval == timedelta(minutes=5)
    assert config.cert_renew_interval == timedelta(hours=1)
    assert config.stop_grace == timedelta(seconds=10)
    assert config.events_max_age == timedelta(days=7)
    assert config.workers == []


def test_public_types() -> None:
    config = load_config(env={"HOME": "/nonexistent"})
    assert_type(config, Config)
    assert_type(config.health_interval, timedelta)
    assert_type(config.data_dir, Path)
    assert_type(config.nats_url, str | None)
    assert_type(config.workers, list[str])
    assert isinstance(config.health_interval, timedelta)
    assert isinstance(config.data_dir, Path)


def test_duration_fields_are_found_from_the_annotations() -> None:
    assert set(DURATION_FIELDS) == {
        "reconcile_interval",
        "health_interval",
        "node_timeout",
        "telemetry_flush_interval",
        "gc_interval",
        "cert_renew_interval",
        "stop_grace",
        "connect_timeout",
        "events_max_age",
        "dlq_max_age",
        "deployment_retention",
        "audit_retention",
        "telemetry_retention",
        "gc_batch_pause",
    }


def test_input_bounds_default_well_under_nats_limits(env: dict[str, str]) -> None:
    config = load_config(env=env)
    assert config.max_event_size == 256 * 1024  # NATS' default max_payload is 1 MiB
    assert (config.events_max_bytes, config.dlq_max_bytes) == (256 * 1024**2, 64 * 1024**2)
    assert config.dlq_max_age == timedelta(days=30)
    assert config.audit_max_rows == 1_000_000


@pytest.mark.parametrize(
    ("env_var", "value", "field"),
    [
        ("CTRLPLANE_MAX_EVENT_SIZE", "100", "max_event_size"),
        ("CTRLPLANE_MAX_EVENT_SIZE", str(128 * 1024**2), "max_event_size"),
        ("CTRLPLANE_EVENTS_MAX_BYTES", "1000", "events_max_bytes"),
        ("CTRLPLANE_DLQ_MAX_BYTES", "0", "dlq_max_bytes"),
        ("CTRLPLANE_DLQ_MAX_AGE", "0s", "dlq_max_age"),
        ("CTRLPLANE_AUDIT_MAX_ROWS", "0", "audit_max_rows"),
    ],
)
def test_input_bounds_out_of_range_name_their_field(
    env: dict[str, str], env_var: str, value: str, field: str
) -> None:
    env[env_var] = value
    with pytest.raises(ConfigError) as caught:
        load_config(env=env)
    assert caught.value.field == field


def test_events_max_bytes_must_hold_a_few_events() -> None:
    with pytest.raises(ConfigError, match="events_max_bytes: must hold at least four"):
        Config(max_event_size=1024**2, events_max_bytes=2 * 1024**2)


def test_default_data_dir_prefers_xdg_data_home(tmp_path: Path) -> None:
    env = {"HOME": "/home/someone", "XDG_DATA_HOME": str(tmp_path)}
    assert default_data_dir(env) == tmp_path / "ctrlplane"
    assert load_config(env=env).data_dir == tmp_path / "ctrlplane"


@pytest.mark.parametrize("xdg", ["", "relative/dir"])
def test_default_data_dir_ignores_empty_or_relative_xdg(xdg: str) -> None:
    env = {"HOME": "/home/someone", "XDG_DATA_HOME": xdg}
    assert default_data_dir(env) == Path("/home/someone/.local/share/ctrlplane")


def test_default_data_dir_is_computed_when_config_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Set after import: a default computed at import time would miss it.
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert Config().data_dir == tmp_path / "ctrlplane"
    assert default_data_dir() == tmp_path / "ctrlplane"


def test_env_none_reads_the_process_environment(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith("CTRLPLANE_"):
            monkeypatch.delenv(name)
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("CTRLPLANE_HEALTH_INTERVAL", "7s")

    config = load_config()

    assert config.health_interval == timedelta(seconds=7)
    assert config.data_dir == home / ".local" / "share" / "ctrlplane"


# --- the TOML file --------------------------------------------------------------------


def test_file_sets_every_field(tmp_path: Path, env: dict[str, str]) -> None:
    path = write(
        tmp_path,
        f"""
        nats_url = "nats://a:4222,tls://b:4443"
        data_dir = "{tmp_path / "data"}"
        subject_prefix = "acme.prod"
        reconcile_interval = "2m"
        health_interval = 15
        telemetry_flush_interval = 2.5
        gc_interval = "1h30m"
        cert_renew_interval = "12h"
        stop_grace = "0s"
        events_max_age = "90d"
        workers = ["acme.workers:Billing", "acme.jobs.nightly:task"]
        """,
    )

    config = load_config(path, env=env)

    assert config == Config(
        nats_url="nats://a:4222,tls://b:4443",
        data_dir=tmp_path / "data",
        subject_prefix="acme.prod",
        reconcile_interval=timedelta(minutes=2),
        health_interval=timedelta(seconds=15),
        telemetry_flush_interval=timedelta(seconds=2.5),
        gc_interval=timedelta(hours=1, minutes=30),
        cert_renew_interval=timedelta(hours=12),
        stop_grace=timedelta(0),
        events_max_age=timedelta(days=90),
        workers=["acme.workers:Billing", "acme.jobs.nightly:task"],
    )


def test_path_may_be_a_string(tmp_path: Path, env: dict[str, str]) -> None:
    path = write(tmp_path, 'health_interval = "45s"\n')
    assert load_config(str(path), env=env).health_interval == timedelta(seconds=45)


def test_file_leaves_other_fields_at_their_defaults(tmp_path: Path, env: dict[str, str]) -> None:
    path = write(tmp_path, 'gc_interval = "10m"\n')
    config = load_config(path, env=env)
    assert config.gc_interval == timedelta(minutes=10)
    assert config.health_interval == timedelta(seconds=30)


def test_tilde_in_data_dir_uses_home_from_env(
    tmp_path: Path, env: dict[str, str], home: Path
) -> None:
    path = write(tmp_path, 'data_dir = "~/state"\n')
    assert load_config(path, env=env).data_dir == home / "state"


# --- environment variables ------------------------------------------------------------


def test_env_sets_fields(env: dict[str, str], tmp_path: Path) -> None:
    env |= {
        "CTRLPLANE_NATS_URL": "wss://bus.example:443",
        "CTRLPLANE_DATA_DIR": str(tmp_path / "d"),
        "CTRLPLANE_SUBJECT_PREFIX": "staging",
        "CTRLPLANE_HEALTH_INTERVAL": "1h30m",
        "CTRLPLANE_STOP_GRACE": "2.5",
        "CTRLPLANE_WORKERS": " a.b:C , d:e,",
    }

    config = load_config(env=env)

    assert config.nats_url == "wss://bus.example:443"
    assert config.data_dir == tmp_path / "d"
    assert config.subject_prefix == "staging"
    assert config.health_interval == timedelta(hours=1, minutes=30)
    assert config.stop_grace == timedelta(seconds=2.5)
    assert config.workers == ["a.b:C", "d:e"]


@pytest.mark.parametrize("field", DURATION_FIELDS)
def test_every_duration_field_reads_its_env_var(field: str, env: dict[str, str]) -> None:
    env[f"CTRLPLANE_{field.upper()}"] = "3m"
    assert getattr(load_config(env=env), field) == timedelta(minutes=3)


def test_env_vars_that_name_no_field_are_ignored(env: dict[str, str]) -> None:
    env |= {"CTRLPLANE_CONFIG": "/nowhere.toml", "CTRLPLANE_BOGUS": "x", "HEALTH_INTERVAL": "1s"}
    assert load_config(env=env) == load_config(env={"HOME": env["HOME"]})


def test_empty_env_nats_url_means_embedded_server(tmp_path: Path, env: dict[str, str]) -> None:
    path = write(tmp_path, 'nats_url = "nats://remote:4222"\n')
    env["CTRLPLANE_NATS_URL"] = ""
    assert load_config(path, env=env).nats_url is None


def test_empty_env_workers_means_none(tmp_path: Path, env: dict[str, str]) -> None:
    path = write(tmp_path, 'workers = ["a:B"]\n')
    env["CTRLPLANE_WORKERS"] = ""
    assert load_config(path, env=env).workers == []


# --- precedence -----------------------------------------------------------------------


def test_precedence_defaults_file_env_overrides(tmp_path: Path, env: dict[str, str]) -> None:
    path = write(
        tmp_path,
        """
        health_interval = "1s"
        gc_interval = "1s"
        reconcile_interval = "1s"
        """,
    )
    env |= {"CTRLPLANE_GC_INTERVAL": "2s", "CTRLPLANE_RECONCILE_INTERVAL": "2s"}
    overrides = {"reconcile_interval": "3s"}

    config = load_config(path, env=env, overrides=overrides)

    assert config.telemetry_flush_interval == timedelta(seconds=10)  # default
    assert config.health_interval == timedelta(seconds=1)  # file
    assert config.gc_interval == timedelta(seconds=2)  # env over file
    assert config.reconcile_interval == timedelta(seconds=3)  # overrides over env


def test_none_in_overrides_means_not_given(tmp_path: Path, env: dict[str, str]) -> None:
    path = write(tmp_path, 'nats_url = "nats://file:4222"\nhealth_interval = "5s"\n')
    env["CTRLPLANE_HEALTH_INTERVAL"] = "6s"

    config = load_config(
        path, env=env, overrides={"nats_url": None, "health_interval": None, "bogus": None}
    )

    assert config.nats_url == "nats://file:4222"
    assert config.health_interval == timedelta(seconds=6)


def test_overrides_take_typed_values(env: dict[str, str], tmp_path: Path) -> None:
    config = load_config(
        env=env,
        overrides={
            "health_interval": timedelta(seconds=9),
            "gc_interval": 120,
            "data_dir": tmp_path,
            "workers": ["x:Y"],
        },
    )
    assert config.health_interval == timedelta(seconds=9)
    assert config.gc_interval == timedelta(minutes=2)
    assert config.data_dir == tmp_path
    assert config.workers == ["x:Y"]


def test_only_the_winning_value_is_validated(tmp_path: Path, env: dict[str, str]) -> None:
    # The file's value is replaced before validation, so it cannot fail the load.
    path = write(tmp_path, 'health_interval = "0s"\n')
    env["CTRLPLANE_HEALTH_INTERVAL"] = "5s"
    assert load_config(path, env=env).health_interval == timedelta(seconds=5)


# --- accepted values ------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "nats://localhost:4222",
        "tls://nats.example.com:4443",
        "ws://127.0.0.1:8080",
        "wss://nats.example.com",
        "nats://user:secret@host:4222",
        "nats://[::1]:4222",
        "nats://a:4222,nats://b:4222",
        "nats://a:4222, tls://b:4443",
    ],
)
def test_accepted_nats_urls(url: str, env: dict[str, str]) -> None:
    assert load_config(env=env, overrides={"nats_url": url}).nats_url == url


@pytest.mark.parametrize(
    "spec", ["mod:Cls", "pkg.mod:attr", "_p.m2._x:_Y", "a.b.c.d:factory", "café:Worker"]
)
def test_accepted_worker_specs(spec: str, env: dict[str, str]) -> None:
    assert load_config(env=env, overrides={"workers": [spec]}).workers == [spec]


@pytest.mark.parametrize("field", DURATION_FIELDS)
def test_only_stop_grace_and_gc_pause_may_be_zero(field: str, env: dict[str, str]) -> None:
    var = f"CTRLPLANE_{field.upper()}"
    env[var] = "0"
    if field in ("stop_grace", "gc_batch_pause"):
        assert getattr(load_config(env=env), field) == timedelta(0)
        return
    with pytest.raises(ConfigError, match="greater than zero") as caught:
        load_config(env=env)
    assert (caught.value.field, caught.value.source) == (field, var)


# --- errors: each names the field and the source ---------------------------------------


@pytest.mark.parametrize(
    ("toml", "field", "fragment"),
    [
        ('health_interval = "abc"', "health_interval", "invalid duration 'abc'"),
        ('health_interval = ""', "health_interval", "invalid duration ''"),
        ('telemetry_flush_interval = "10x"', "telemetry_flush_interval", "unknown unit 'x'"),
        ('gc_interval = "-5m"', "gc_interval", "negative"),
        ("reconcile_interval = -1", "reconcile_interval", "negative"),
        ("health_interval = 0", "health_interval", "greater than zero"),
        ('cert_renew_interval = "0s"', "cert_renew_interval", "greater than zero"),
        ('events_max_age = "0ms"', "events_max_age", "greater than zero"),
        ('stop_grace = "-1s"', "stop_grace", "negative"),
        ("reconcile_interval = true", "reconcile_interval", "invalid duration True"),
        ("cert_renew_interval = [1]", "cert_renew_interval", "got list"),
        ("health_interval = 00:00:30", "health_interval", "got time"),
        ('subject_prefix = "a b"', "subject_prefix", "not a valid subject prefix"),
        ('subject_prefix = "ctrl.>"', "subject_prefix", "not a valid subject prefix"),
        ('subject_prefix = ""', "subject_prefix", "not a valid subject prefix"),
        ("subject_prefix = 5", "subject_prefix", "expected `str`, got `int`"),
        ('nats_url = "http://host:4222"', "nats_url", "has scheme 'http'"),
        ('nats_url = "localhost:4222"', "nats_url", "has no scheme"),
        ('nats_url = "nats://"', "nats_url", "has no host"),
        ('nats_url = "nats://a:99999"', "nats_url", "not a URL"),
        ('nats_url = "nats://a:4222,"', "nats_url", "empty URL"),
        ('nats_url = ""', "nats_url", "empty URL"),
        ("nats_url = 4222", "nats_url", "got `int`"),
        ('workers = ["a.b:C", "nocolon"]', "workers[1]", "not a worker reference"),
        ('workers = ["a..b:C"]', "workers[0]", "not a worker reference"),
        ('workers = ["a.b:"]', "workers[0]", "not a worker reference"),
        ('workers = [":C"]', "workers[0]", "not a worker reference"),
        ('workers = ["a:b.c"]', "workers[0]", "not a worker reference"),
        ('workers = ["a:B:C"]', "workers[0]", "not a worker reference"),
        ('workers = ["1a:B"]', "workers[0]", "not a worker reference"),
        ('workers = ["a-b:C"]', "workers[0]", "not a worker reference"),
        ('workers = ["a:class"]', "workers[0]", "not a worker reference"),
        ('workers = ["a:B", 3]', "workers[1]", "expected `str`, got `int`"),
        ('workers = ["a:B", "c:D", "a:B"]', "workers[2]", "already listed as workers[0]"),
        ('workers = "a:B"', "workers", "got `str`"),
        ('data_dir = ""', "data_dir", "empty string"),
        ("data_dir = 5", "data_dir", "expected `path`, got `int`"),
    ],
)
def test_bad_file_value_names_field_and_file(
    tmp_path: Path, env: dict[str, str], toml: str, field: str, fragment: str
) -> None:
    path = write(tmp_path, toml + "\n")

    with pytest.raises(ConfigError) as caught:
        load_config(path, env=env)

    error = caught.value
    assert error.field == field
    assert error.source == str(path)
    assert fragment in error.reason
    assert str(error) == f"config: {field}: {error.reason} (from {path})"


def test_error_reads_as_documented(tmp_path: Path, env: dict[str, str]) -> None:
    path = write(tmp_path, 'health_interval = "abc"\n')

    with pytest.raises(ConfigError) as caught:
        load_config(path, env=env)

    assert str(caught.value) == (
        "config: health_interval: invalid duration 'abc': use a number with a unit such as "
        f"30s, 5m, 1h or 7d (from {path})"
    )


@pytest.mark.parametrize(
    ("var", "value", "field", "fragment"),
    [
        ("CTRLPLANE_HEALTH_INTERVAL", "abc", "health_interval", "invalid duration 'abc'"),
        ("CTRLPLANE_HEALTH_INTERVAL", "", "health_interval", "invalid duration ''"),
        ("CTRLPLANE_GC_INTERVAL", "0", "gc_interval", "greater than zero"),
        ("CTRLPLANE_STOP_GRACE", "-1s", "stop_grace", "negative"),
        ("CTRLPLANE_NATS_URL", "http://x", "nats_url", "has scheme 'http'"),
        ("CTRLPLANE_NATS_URL", "nats://a:4222,,nats://b", "nats_url", "empty URL"),
        ("CTRLPLANE_SUBJECT_PREFIX", "a.>", "subject_prefix", "not a valid subject prefix"),
        ("CTRLPLANE_WORKERS", "a:B,bad", "workers[1]", "not a worker reference"),
        ("CTRLPLANE_DATA_DIR", "", "data_dir", "empty string"),
        ("CTRLPLANE_API_APPLY", "perhaps", "api_apply", "expected `bool`"),
        ("CTRLPLANE_NATS_CREDENTIALS", "/run/secrets/service", "nats_credentials", "nats_url"),
        ("CTRLPLANE_PUBLISHER_EVENT_TYPES", "usage.*,a b", "publisher_event_types[1]", "event"),
    ],
)
def test_bad_env_value_names_field_and_variable(
    env: dict[str, str], var: str, value: str, field: str, fragment: str
) -> None:
    env[var] = value

    with pytest.raises(ConfigError) as caught:
        load_config(env=env)

    assert caught.value.field == field
    assert caught.value.source == var
    assert fragment in caught.value.reason
    assert str(caught.value).endswith(f"(from {var})")


def test_security_settings_load_from_env(env: dict[str, str]) -> None:
    env["CTRLPLANE_API_APPLY"] = "false"
    env["CTRLPLANE_PROCESS_EXECUTABLES"] = "/usr/bin/python3, /bin/true"
    env["CTRLPLANE_PUBLISHER_EVENT_TYPES"] = "usage.*"

    config = load_config(env=env)

    assert config.api_apply is False
    assert config.process_executables == ["/usr/bin/python3", "/bin/true"]
    assert config.publisher_event_types == ["usage.*"]


def test_env_error_is_blamed_on_env_not_on_the_file(tmp_path: Path, env: dict[str, str]) -> None:
    path = write(tmp_path, 'health_interval = "30s"\nnats_url = "nats://ok:4222"\n')
    env["CTRLPLANE_NATS_URL"] = "nats://"

    with pytest.raises(ConfigError) as caught:
        load_config(path, env=env)

    assert (caught.value.field, caught.value.source) == ("nats_url", "CTRLPLANE_NATS_URL")


def test_file_error_is_blamed_on_the_file_when_env_sets_other_fields(
    tmp_path: Path, env: dict[str, str]
) -> None:
    path = write(tmp_path, 'subject_prefix = "bad prefix"\n')
    env["CTRLPLANE_HEALTH_INTERVAL"] = "5s"

    with pytest.raises(ConfigError) as caught:
        load_config(path, env=env)

    assert (caught.value.field, caught.value.source) == ("subject_prefix", str(path))


@pytest.mark.parametrize(
    ("overrides", "field", "fragment"),
    [
        ({"health_interval": "abc"}, "health_interval", "invalid duration 'abc'"),
        ({"health_interval": timedelta(0)}, "health_interval", "greater than zero"),
        ({"stop_grace": True}, "stop_grace", "invalid duration True"),
        ({"nats_url": 5}, "nats_url", "got `int`"),
        ({"workers": ["x"]}, "workers[0]", "not a worker reference"),
        ({"bogus": 1}, "bogus", "unknown field"),
    ],
)
def test_bad_override_names_field_and_overrides(
    env: dict[str, str], overrides: dict[str, object], field: str, fragment: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(env=env, overrides=overrides)

    assert caught.value.field == field
    assert caught.value.source == "overrides"
    assert fragment in caught.value.reason


def test_unknown_field_in_file_is_rejected_by_name(tmp_path: Path, env: dict[str, str]) -> None:
    path = write(tmp_path, 'health_interval = "30s"\nhelth_interval = "30s"\n')

    with pytest.raises(ConfigError) as caught:
        load_config(path, env=env)

    assert caught.value.field == "helth_interval"
    assert caught.value.source == str(path)
    assert "unknown field" in caught.value.reason
    assert "did you mean 'health_interval'?" in caught.value.reason


def test_unknown_field_in_a_nested_table_gets_did_you_mean(
    tmp_path: Path, env: dict[str, str]
) -> None:
    path = write(
        tmp_path,
        '[[instances]]\nname = "a"\ncommand = ["x"]\n'
        '[[instances.checks]]\nname = "h"\ntype = "http"\ntarget = "http://x/"\n'
        'timout = "1s"\n',
    )

    with pytest.raises(ConfigError) as caught:
        load_config(path, env=env)

    assert caught.value.field == "instances[0].checks[0]"
    assert caught.value.reason == (
        "object contains unknown field `timout`; did you mean 'timeout'?"
    )


def test_unknown_nested_field_with_no_close_name_lists_the_known(
    tmp_path: Path, env: dict[str, str]
) -> None:
    path = write(tmp_path, '[[instances]]\nname = "a"\ncommand = ["x"]\nzzzzzz = 1\n')

    with pytest.raises(ConfigError) as caught:
        load_config(path, env=env)

    assert caught.value.field == "instances[0]"
    assert "; known fields are name, command, provider" in caught.value.reason


def test_the_file_itself_is_named_once(tmp_path: Path, env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "missing.toml", env=env)

    assert str(caught.value) == f"config: file not found (from {tmp_path / 'missing.toml'})"


def test_unknown_table_in_file_is_rejected_by_name(tmp_path: Path, env: dict[str, str]) -> None:
    path = write(tmp_path, '[[gadgets]]\nname = "x"\n')

    with pytest.raises(ConfigError) as caught:
        load_config(path, env=env)

    assert caught.value.field == "gadgets"
    assert caught.value.source == str(path)
    assert "known fields are nats_url, data_dir" in caught.value.reason


def test_toml_syntax_error_gives_the_line(tmp_path: Path, env: dict[str, str]) -> None:
    path = write(tmp_path, 'subject_prefix = "ok"\n\nhealth_interval = \n')

    with pytest.raises(ConfigError) as caught:
        load_config(path, env=env)

    assert caught.value.field == "config"
    assert caught.value.source == str(path)
    assert "invalid TOML" in caught.value.reason
    assert "line 3" in caught.value.reason


def test_missing_file_is_a_config_error(tmp_path: Path, env: dict[str, str]) -> None:
    path = tmp_path / "absent.toml"

    with pytest.raises(ConfigError) as caught:
        load_config(path, env=env)

    assert (caught.value.field, caught.value.source) == ("config", str(path))
    assert "not found" in caught.value.reason


def test_unreadable_file_is_a_config_error(tmp_path: Path, env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path, env=env)  # a directory, not a file

    assert (caught.value.field, caught.value.source) == ("config", str(tmp_path))
    assert "cannot read" in caught.value.reason


def test_nats_url_credentials_stay_out_of_errors(env: dict[str, str]) -> None:
    env["CTRLPLANE_NATS_URL"] = "http://admin:hunter2@host:4222"

    with pytest.raises(ConfigError) as caught:
        load_config(env=env)

    assert "hunter2" not in str(caught.value)
    assert "admin:***@host" in str(caught.value)


@pytest.mark.parametrize("url", ["nats://user:s3/cr3t@host:4222", "nats://a:4,tls://u:s3/cr3t@b:4"])
def test_a_password_holding_a_slash_stays_out_of_errors(url: str, env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(env=env, overrides={"nats_url": url})
    assert "s3" not in str(caught.value) and "cr3t" not in str(caught.value)
    assert ":***@" in str(caught.value)


def test_a_token_holding_a_slash_is_redacted_whole(env: dict[str, str]) -> None:
    # urlsplit reads "s3" as the host here; the redaction must not.
    config = load_config(env=env, overrides={"nats_url": "nats://s3/cr3t@h:1"})
    assert describe(config)["nats_url"] == "nats://***@h:1"


# --- the Config value -----------------------------------------------------------------


def test_config_is_frozen(env: dict[str, str]) -> None:
    config = load_config(env=env)
    with pytest.raises(AttributeError):
        config.health_interval = timedelta(seconds=1)  # type: ignore[misc]


def test_building_config_directly_validates_without_a_source() -> None:
    with pytest.raises(ConfigError) as caught:
        Config(data_dir=Path("/d"), health_interval=timedelta(0))

    assert (caught.value.field, caught.value.source) == ("health_interval", None)
    assert str(caught.value) == "config: health_interval: must be greater than zero, got 0s"


def test_config_error_is_a_ctrlplane_error_and_pickles() -> None:
    error = ConfigError("workers[1]", "bad", "/etc/ctrlplane.toml")
    assert isinstance(error, CtrlplaneError)

    copy = pickle.loads(pickle.dumps(error))

    assert (copy.field, copy.reason, copy.source) == ("workers[1]", "bad", "/etc/ctrlplane.toml")
    assert str(copy) == str(error) == "config: workers[1]: bad (from /etc/ctrlplane.toml)"


# --- describe -------------------------------------------------------------------------


def test_describe_is_json_friendly(env: dict[str, str], home: Path) -> None:
    config = load_config(
        env=env,
        overrides={"nats_url": "nats://a:4222", "workers": ["a:B"], "gc_interval": "1h30m"},
    )

    described = describe(config)

    assert json.loads(json.dumps(described)) == described
    assert described == {
        "nats_url": "nats://a:4222",
        "data_dir": str(home / ".local" / "share" / "ctrlplane"),
        "subject_prefix": "ctrlplane",
        "reconcile_interval": "1m",
        "health_interval": "30s",
        "telemetry_flush_interval": "10s",
        "gc_interval": "1h30m",
        "cert_renew_interval": "1h",
        "stop_grace": "10s",
        "connect_timeout": "10s",
        "events_max_age": "7d",
        "max_event_size": 262144,
        "events_max_bytes": 268435456,
        "dlq_max_age": "30d",
        "dlq_max_bytes": 67108864,
        "audit_max_rows": 1000000,
        "workers": ["a:B"],
        "nats_server_binary": None,
        "instances": None,
        "disabled_workers": [],
        "health_concurrency": 64,
        "remediation": {"backoff": "1s", "max_backoff": "5m", "max_restarts": 5, "window": "10m"},
        "telemetry_concurrency": 16,
        "deployment_retention": "30d",
        "health_history_limit": 1000,
        "audit_retention": "90d",
        "telemetry_retention": "7d",
        "gc_batch_size": 1000,
        "gc_batch_pause": "10ms",
        "domains": None,
        "acme_directory": None,
        "acme_email": None,
        "acme_ca_bundle": None,
        "acme_eab_kid": None,
        "acme_eab_hmac_key_file": None,
        "nats_credentials": None,
        "publisher_event_types": None,
        "api_apply": True,
        "process_executables": [],
        "store_url": None,
        "store_password_file": None,
        "node": default_node(),
        "node_timeout": "30s",
        "stream_replicas": 1,
        "max_consumers": 10_000,
        "http_addr": "127.0.0.1:0",
        "reconcile_schedule": None,
        "health_schedule": None,
        "telemetry_flush_schedule": None,
        "gc_schedule": None,
        "cert_renew_schedule": None,
        "schedule_timezone": "UTC",
    }


def test_describe_round_trips_through_overrides(env: dict[str, str]) -> None:
    config = load_config(
        env=env,
        overrides={"nats_url": "tls://x:1,tls://y:2", "stop_grace": "1.5", "workers": ["m:W"]},
    )
    assert load_config(env={}, overrides=describe(config)) == config


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("nats://user:hunter2@host:4222", "nats://user:***@host:4222"),
        ("nats://s3cr3t-token@host:4222", "nats://***@host:4222"),
        ("nats://a:4222,tls://u:p@b:4443", "nats://a:4222,tls://u:***@b:4443"),
        ("nats://host:4222", "nats://host:4222"),
        ("nats://user:p@ss@host:4222", "nats://user:***@host:4222"),
    ],
)
def test_describe_redacts_nats_credentials(url: str, shown: str, env: dict[str, str]) -> None:
    config = load_config(env=env, overrides={"nats_url": url})
    assert describe(config)["nats_url"] == shown


def test_connect_timeout_defaults_to_ten_seconds_and_loads_from_env() -> None:
    assert Config().connect_timeout == timedelta(seconds=10)
    loaded = load_config(env={"CTRLPLANE_CONNECT_TIMEOUT": "2s", "HOME": "/h"})
    assert loaded.connect_timeout == timedelta(seconds=2)
    with pytest.raises(ConfigError) as info:
        load_config(env={"CTRLPLANE_CONNECT_TIMEOUT": "0s", "HOME": "/h"})
    assert info.value.field == "connect_timeout"
    assert info.value.source == "CTRLPLANE_CONNECT_TIMEOUT"


def test_check_names_suggests_the_closest_worker() -> None:
    config = Config(disabled_workers=["gc", "remediatorr"])
    with pytest.raises(ConfigError) as info:
        check_names(config, workers=["gc", "remediator", "reconciler"], check_types=["http"])
    assert info.value.field == "disabled_workers[1]"
    assert info.value.reason == 'unknown worker "remediatorr"; did you mean "remediator"?'
    check_names(Config(disabled_workers=["gc"]), workers=["gc"], check_types=[])


def test_check_names_suggests_the_closest_check_type() -> None:
    config = Config(
        instances=[
            msgspec.convert(
                {"name": "web", "command": ["x"], "checks": [{"name": "h", "type": "htp"}]},
                InstanceDecl,
            )
        ]
    )
    with pytest.raises(ConfigError) as info:
        check_names(config, workers=[], check_types=["http", "tcp", "grpc", "command"])
    assert info.value.field == "instances[0].checks[0].type"
    assert info.value.reason == 'unknown check type "htp"; did you mean "http"?'
    with pytest.raises(ConfigError) as info:
        check_names(config, workers=[], check_types=["grpc"])
    assert info.value.reason == 'unknown check type "htp"; known: grpc'


# --- input that must end in one line, never a traceback -------------------------------


def test_integer_env_vars_are_read_as_numbers(env: dict[str, str]) -> None:
    loaded = load_config(
        env={**env, "CTRLPLANE_HEALTH_CONCURRENCY": "10", "CTRLPLANE_GC_BATCH_SIZE": " 500 "}
    )
    assert (loaded.health_concurrency, loaded.gc_batch_size) == (10, 500)
    with pytest.raises(ConfigError) as info:
        load_config(env={**env, "CTRLPLANE_HEALTH_CONCURRENCY": "ten"})
    assert info.value.field == "health_concurrency"
    assert info.value.source == "CTRLPLANE_HEALTH_CONCURRENCY"
    assert "int" in info.value.reason


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b'health_interval = "30s"\n\xff = 1\n', "not UTF-8 text (an invalid byte on line 2)"),
        (b"a = " + b"[" * 100_000 + b"]" * 100_000 + b"\n", "invalid TOML: nested too deeply"),
        (b"# " + b"x" * (1024 * 1024) + b"\n", "larger than 1024 KiB"),
    ],
)
def test_a_file_that_is_not_a_small_utf8_toml_file_is_one_config_error(
    tmp_path: Path, env: dict[str, str], content: bytes, reason: str
) -> None:
    path = tmp_path / "ctrlplane.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env)
    assert (info.value.field, info.value.source) == ("config", str(path))
    assert reason in info.value.reason


@pytest.mark.parametrize("special", ["/dev/zero", "fifo", "dir"])
def test_a_config_path_that_is_no_regular_file_is_refused_at_once(
    tmp_path: Path, env: dict[str, str], special: str
) -> None:
    path = Path(special)
    if special == "fifo":
        path = tmp_path / "fifo"
        os.mkfifo(path)  # reading it would wait for a writer for ever
    elif special == "dir":
        path = tmp_path
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env)
    assert info.value.field == "config"
    assert "not a regular file" in info.value.reason or "cannot read" in info.value.reason


@pytest.mark.parametrize("value", ["1000000d", "36501d", "9999999999"])
def test_a_duration_longer_than_a_century_is_refused(
    tmp_path: Path, env: dict[str, str], value: str
) -> None:
    path = write(tmp_path, f'events_max_age = "{value}"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env)
    assert info.value.field == "events_max_age"
    assert info.value.reason.startswith("must be at most 36500d")
    with pytest.raises(ConfigError, match="events_max_age: must be at most 36500d"):
        load_config(env={**env, "CTRLPLANE_EVENTS_MAX_AGE": value})
    path = write(tmp_path, f'[remediation]\nwindow = "{value}"\n')
    with pytest.raises(ConfigError, match=r"remediation\.window: must be at most"):
        load_config(path, env=env)
    assert load_config(env={**env, "CTRLPLANE_EVENTS_MAX_AGE": "36500d"}).events_max_age == (
        timedelta(days=36_500)
    )
    with pytest.raises(ConfigError, match="events_max_age: must be at most"):
        Config(events_max_age=timedelta(days=36_501))


@pytest.mark.parametrize(
    ("hostname", "says"),
    [("ca", "single-label"), ("acme", "single-label"), ("app.example.test\n", "not a lowercase")],
)
def test_a_domain_hostname_that_could_name_no_certificate_is_refused(
    tmp_path: Path, env: dict[str, str], hostname: str, says: str
) -> None:
    text = (
        '[[instances]]\nname = "web"\ncommand = ["true"]\n'
        f'[[domains]]\nhostname = {json.dumps(hostname)}\ninstance = "web"\n'
    )
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env=env)
    assert info.value.field == "domains[0].hostname"
    assert says in info.value.reason


def test_node_defaults_to_the_host_name_and_must_be_a_subject_token() -> None:
    assert is_valid_token(default_node())
    assert Config(node="edge-1").node == "edge-1"
    with pytest.raises(ConfigError) as caught:
        Config(node="Edge 1")
    assert caught.value.field == "node"


def test_stream_replicas_is_bounded_by_jetstream() -> None:
    assert Config(stream_replicas=3).stream_replicas == 3
    for bad in (0, 6):
        with pytest.raises(ConfigError) as caught:
            Config(stream_replicas=bad)
        assert caught.value.field == "stream_replicas"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://cp:s3cret@db:5432/ctrlplane", "postgresql://cp:***@db:5432/ctrlplane"),
        ("postgres://cp:pa%2Fss%40word@db/ctrlplane", "postgres://cp:***@db/ctrlplane"),
        (
            "postgresql://cp@db/ctrlplane?password=s3cret&sslmode=require",
            "postgresql://cp@db/ctrlplane?password=***&sslmode=require",
        ),
        ("postgresql://cp@db/ctrlplane", "postgresql://cp@db/ctrlplane"),
    ],
)
def test_a_store_password_is_never_shown(url: str, shown: str, env: dict[str, str]) -> None:
    config = load_config(env={**env, "CTRLPLANE_STORE_URL": url})
    assert config.store_url == url
    assert describe(config)["store_url"] == shown
    for text in (repr(config), str(config)):
        assert "s3cret" not in text and "pa%2F" not in text
        assert repr(shown) in text


def test_repr_hides_a_nats_password_too(env: dict[str, str]) -> None:
    config = load_config(env=env, overrides={"nats_url": "nats://u:s3cret@h:4222"})
    assert "s3cret" not in repr(config)
    assert "nats://u:***@h:4222" in repr(config)


@pytest.mark.parametrize(
    "url",
    [
        "mysql://cp:s3cret@db/x",
        "db.example:5432",
        "sqlite://x.db",
        "sqlite:///",
        "postgresql://h:x/db",
    ],
)
def test_a_store_url_that_is_not_a_store_is_refused_by_name(url: str, env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match=r"store_url") as caught:
        load_config(env=env, overrides={"store_url": url})
    assert "s3cret" not in str(caught.value)


def test_an_empty_store_url_in_the_environment_means_sqlite(env: dict[str, str]) -> None:
    assert load_config(env={**env, "CTRLPLANE_STORE_URL": ""}).store_url is None


def test_a_store_password_file_needs_a_store_url(env: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"store_password_file: is used only with a PostgreSQL"):
        load_config(env=env, overrides={"store_password_file": str(tmp_path / "pw")})
    config = load_config(
        env={**env, "CTRLPLANE_STORE_PASSWORD_FILE": str(tmp_path / "pw")},
        overrides={"store_url": "postgresql://cp@db/ctrlplane"},
    )
    assert config.store_password_file == tmp_path / "pw"


def test_a_sqlite_store_url_is_a_file_the_processes_of_a_host_share(tmp_path: Path) -> None:
    from ctrlplane.app import store_for

    shared = Config(data_dir=tmp_path / "a", store_url=f"sqlite://{tmp_path}/shared.db")
    assert store_for(shared).path == tmp_path / "shared.db"
    assert store_for(Config(data_dir=tmp_path)).path == tmp_path / "ctrlplane.db"
    with pytest.raises(ConfigError) as caught:
        Config(store_url=f"sqlite://{tmp_path}/x.db", store_password_file=tmp_path / "pw")
    assert caught.value.field == "store_password_file"


def test_max_consumers_must_be_positive() -> None:
    assert Config(max_consumers=20_000).max_consumers == 20_000
    assert load_config(env={"CTRLPLANE_MAX_CONSUMERS": "5000"}).max_consumers == 5000
    for bad in (0, -1):
        with pytest.raises(ConfigError) as caught:
            Config(max_consumers=bad)
        assert caught.value.field == "max_consumers"


# --- cron schedules of the built-in workers ---------------------------------------


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"CTRLPLANE_GC_SCHEDULE": "61 * * * *"}, "gc_schedule"),
        ({"CTRLPLANE_RECONCILE_SCHEDULE": "* * *"}, "reconcile_schedule"),
        ({"CTRLPLANE_HEALTH_SCHEDULE": "0 0 30 2 *"}, "health_schedule"),
        ({"CTRLPLANE_SCHEDULE_TIMEZONE": "Mars/Olympus"}, "schedule_timezone"),
        (
            {"CTRLPLANE_GC_SCHEDULE": "0 3 * * *", "CTRLPLANE_SCHEDULE_TIMEZONE": "Nowhere"},
            "schedule_timezone",
        ),
        (
            {"CTRLPLANE_GC_SCHEDULE": "0 3 * * *", "CTRLPLANE_GC_INTERVAL": "10m"},
            "gc_schedule",
        ),
    ],
)
def test_a_bad_schedule_names_its_field(
    env: dict[str, str], settings: dict[str, str], field: str
) -> None:
    env.update(settings)
    with pytest.raises(ConfigError) as caught:
        load_config(env=env)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"config: {field}: ")


def test_a_schedule_replaces_the_interval_of_its_worker(env: dict[str, str]) -> None:
    env["CTRLPLANE_GC_SCHEDULE"] = "30 2 * * *"
    env["CTRLPLANE_SCHEDULE_TIMEZONE"] = "Europe/Berlin"
    config = load_config(env=env)
    assert config.schedule_of("gc") == "30 2 * * *"
    assert config.schedule_of("reconciler") is None
    assert config.schedule_of("no-such-worker") is None
    assert describe(config)["gc_schedule"] == "30 2 * * *"
    assert describe(config)["schedule_timezone"] == "Europe/Berlin"

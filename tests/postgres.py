"""A real PostgreSQL server for tests and benchmarks: Debian's binaries, a temporary folder.

``initdb`` and ``postgres`` from ``/usr/lib/postgresql/<version>/bin``, in a
fresh temporary folder, listening on 127.0.0.1 on a free ephemeral port (its
unix socket in that folder). ``initdb`` refuses to run as root, which is how
CI and this machine run: then the server runs as the ``postgres`` system
user (through ``runuser``), and owns the folder.

Logins over TCP need a password (SCRAM), as a real deployment's would: the
role :data:`USER` with :data:`PASSWORD` may create databases; the superuser
logs in over the unix socket. Each test gets a database of its own.

Without the binaries the tests that need the server skip, except when the
environment variable ``CI`` is set: there they fail, so that a CI machine
missing PostgreSQL cannot pass by skipping.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio

USER = "ctrlplane"
PASSWORD = "s3cret-pw/with@odd:chars"
"""Odd characters on purpose: a URL must carry them escaped, and logs never show them."""

_START_TIMEOUT = 60.0
_STOP_TIMEOUT = 30.0


def postgres_bin() -> Path | None:
    """The newest ``/usr/lib/postgresql/*/bin`` that has ``initdb``, if any."""
    found = sorted(
        (Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    return found[-1] if found else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """One PostgreSQL server in a temporary folder; :meth:`start`, then :meth:`stop`.

    Args:
        settings: ``postgres -c`` settings beyond the defaults (tests turn
            off fsync; a benchmark may keep it).
    """

    def __init__(self, settings: dict[str, str] | None = None) -> None:
        binaries = postgres_bin()
        if binaries is None:
            raise FileNotFoundError("no /usr/lib/postgresql/*/bin/initdb: install postgresql")
        self.bin = binaries
        self.settings = settings or {}
        self.port = 0
        self.dir = Path(tempfile.mkdtemp(prefix="ctrlplane-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        # As root, everything runs as the postgres system user, which must
        # reach the folder (mkdtemp's is 0700) and own it.
        self._as: list[str] = []
        if os.geteuid() == 0:
            self._as = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.dir, "postgres", "postgres")
        self._started = False

    def url(self, database: str, *, password: bool = True) -> str:
        """A URL for :data:`USER` on ``database`` over TCP (with the password escaped in it)."""
        from urllib.parse import quote

        secret = f":{quote(PASSWORD, safe='')}" if password else ""
        return f"postgresql://{USER}{secret}@127.0.0.1:{self.port}/{database}"

    async def admin(self) -> asyncpg.Connection:
        """A superuser connection over the unix socket, to the ``postgres`` database."""
        return await asyncpg.connect(
            host=str(self.dir), port=self.port, user="postgres", database="postgres", timeout=30
        )

    async def start(self) -> None:
        """initdb, start, and create :data:`USER`; bounded by a timeout."""
        pwfile = self.dir / "pw"
        pwfile.write_text("unused-superuser-password\n")
        if self._as:
            shutil.chown(pwfile, "postgres", "postgres")
        await self._run(
            str(self.bin / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--pwfile",
            str(pwfile),
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--no-locale",
            "--encoding=UTF8",
            "--no-sync",
        )
        # A free port can be taken between asking and binding: try a few.
        for attempt in range(3):
            self.port = _free_port()
            options = [
                f"-p {self.port}",
                "-h 127.0.0.1",
                f"-k {self.dir}",
                *(f"-c {k}={v}" for k, v in self.settings.items()),
            ]
            try:
                await self._run(
                    str(self.bin / "pg_ctl"),
                    "-D",
                    str(self.data),
                    "-l",
                    str(self.log),
                    "-w",
                    "-t",
                    str(int(_START_TIMEOUT)),
                    "-o",
                    " ".join(options),
                    "start",
                )
                break
            except RuntimeError:
                if attempt == 2:
                    raise
        self._started = True
        admin = await self.admin()
        try:
            escaped = PASSWORD.replace("'", "''")
            await admin.execute(f"CREATE ROLE {USER} LOGIN CREATEDB PASSWORD '{escaped}'")
        finally:
            await admin.close()

    async def create_database(self) -> str:
        """A new, empty database owned by :data:`USER`; its name."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        admin = await self.admin()
        try:
            await admin.execute(f"CREATE DATABASE {name} OWNER {USER}")
        finally:
            await admin.close()
        return name

    async def drop_database(self, name: str) -> None:
        """Drop ``name``, ending whatever connections are still on it."""
        admin = await self.admin()
        try:
            await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        finally:
            await admin.close()

    async def stop(self) -> None:
        """Stop the server (fast shutdown, bounded) and remove its folder."""
        try:
            if self._started:
                self._started = False
                await self._run(
                    str(self.bin / "pg_ctl"),
                    "-D",
                    str(self.data),
                    "-m",
                    "fast",
                    "-w",
                    "-t",
                    str(int(_STOP_TIMEOUT)),
                    "stop",
                )
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    async def _run(self, *argv: str) -> None:
        proc = await asyncio.create_subprocess_exec(
            *self._as,
            *argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=self.dir,
        )
        try:
            async with asyncio.timeout(_START_TIMEOUT + 30):
                out, _ = await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise RuntimeError(f"{argv[0]} timed out") from None
        if proc.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(argv)} failed: {out.decode(errors='replace')}\n{log}")


def missing(reason: str) -> None:
    """Skip the test for want of PostgreSQL; in CI, fail instead."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must have PostgreSQL: .ci/run installs it)")
    pytest.skip(reason)


@pytest_asyncio.fixture(scope="session")
async def postgres_server() -> AsyncIterator[PostgresServer]:
    """One PostgreSQL server for the whole session, stopped at its end."""
    if postgres_bin() is None:
        missing("PostgreSQL is not installed (/usr/lib/postgresql/*/bin/initdb)")
    server = PostgresServer(
        {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
    )
    try:
        await server.start()
        yield server
    finally:
        await server.stop()


@pytest_asyncio.fixture
async def postgres_url(postgres_server: PostgresServer) -> AsyncIterator[str]:
    """The URL of a fresh database of this test's own (dropped afterwards)."""
    name = await postgres_server.create_database()
    try:
        yield postgres_server.url(name)
    finally:
        with contextlib.suppress(asyncpg.PostgresError, OSError):
            await postgres_server.drop_database(name)

"""Running the real server in tests: `emirax serve` in a subprocess, fresh PostgreSQL databases,
and bundles compiled from source.

    with fresh_database(postgres_url) as url: ...
    srv = ServerProcess(url, home, admin_token="...")   # waits for /healthz
    srv.client(token) -> httpx.Client;  srv.stop();  srv.kill()  (SIGKILL)
    compile_bundle(tmp, ORDERS, "1.0.0") -> .emxb bytes
    RunnerProcess(module, srv.base, token, home, "r1")  # `emirax runner`; .lines(), .kill()

The server's output goes to a file in `home` (an undrained pipe would block a chatty server).
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import psycopg
import pytest

from conftest import libpq_dsn
from emirax import pipeline
from emirax.bundle import build_bundle

# A workload without functions: a start with Items is one step (`count` fires, waiting); adding
# a Shipped fact is another (`ship` fires, completed).
ORDERS = """\
package demo.orders

workflow Order {
    fact Item(String sku, int qty)
    fact Total(int items)
    fact Shipped(String carrier)

    rule 'count' {
        match {
            items: collect Item()
            when items.size() > 0
        }
        action {
            def n = items.sum { it.qty }
            insert Total(items: n)
        }
    }
    rule 'ship' {
        match {
            t: Total()
            s: Shipped()
        }
        action { complete(items: t.items, carrier: s.carrier) }
    }
}
"""


def compile_bundle(folder: Path, source: str, version: str) -> bytes:
    """The .emxb bytes of one rule file's source, at `version`."""
    path = folder / f"rules-{version}.emx"
    path.write_text(source, encoding="utf-8")
    result = pipeline.build(path, cache_dir=False)
    assert result.ir is not None
    return build_bundle(result.ir, version=version, sources={})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def fresh_database(postgres_url: str, prefix: str = "emirax_t_") -> Iterator[str]:
    """A new PostgreSQL database next to `postgres_url`, dropped afterwards."""
    name = prefix + secrets.token_hex(4)
    admin_dsn = libpq_dsn(postgres_url)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f"create database {name}")
    try:
        yield postgres_url.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f"drop database if exists {name} with (force)")


# The two databases every server test runs on: a fixture's `params`.
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def database(request: pytest.FixtureRequest, stack: ExitStack, home: Path, kind: str) -> str:
    """A database URL for a test: a SQLite file in `home`, or a fresh PostgreSQL database that
    `stack` drops when it closes."""
    if kind == "sqlite":
        return f"sqlite:///{home / 'emirax.db'}"
    return stack.enter_context(fresh_database(request.getfixturevalue("postgres_url")))


@contextmanager
def running_server(request: pytest.FixtureRequest, home: Path,
                   make: Callable[[str, Path], ServerProcess]) -> Iterator[ServerProcess]:
    """`make(url, home)` on the database `request.param` names (a BACKENDS fixture's), stopped
    and its database dropped at the end."""
    with ExitStack() as stack:
        srv = make(database(request, stack, home, request.param), home)
        stack.callback(srv.stop)
        yield srv


class ServerProcess:
    """`emirax serve --db url` with EMIRAX_HOME=home; `admin_token` None leaves the server to
    make its own (in home/admin-token)."""

    def __init__(self, url: str, home: Path, admin_token: str | None = None,
                 env: dict[str, str] | None = None, port: int | None = None) -> None:
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.home = home
        self.log = home / f"serve-{self.port}.log"
        full = {**os.environ, "EMIRAX_HOME": str(home), **(env or {})}
        full.pop("EMIRAX_ADMIN_TOKEN", None)
        if admin_token is not None:
            full["EMIRAX_ADMIN_TOKEN"] = admin_token
        with self.log.open("wb") as sink:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "emirax", "serve", "--port", str(self.port), "--db", url],
                env=full, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()}")
            try:
                if httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not start: {self.log.read_text()}")

    def client(self, token: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.base, headers=headers, timeout=60)

    def kill(self) -> None:
        """SIGKILL: no shutdown, no rollback by the process; the database must cope."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


class RunnerProcess:
    """`emirax runner MODULE --server BASE --token TOKEN --name NAME` in a subprocess, its log
    (stderr: one line per invocation) in home/runner-NAME.log."""

    def __init__(self, module: Path, base: str, token: str, home: Path, name: str, *,
                 concurrency: int = 4, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log = home / f"runner-{name}.log"
        with self.log.open("ab") as sink:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "emirax", "runner", str(module), "--server", base,
                 "--token", token, "--name", name, "--concurrency", str(concurrency),
                 "--wait", "5", "--grace", "5"],
                env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL, stdout=sink,
                stderr=subprocess.STDOUT)

    def lines(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines() if self.log.exists() else []

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

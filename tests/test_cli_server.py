"""The server's command line against a real server: `emirax serve`, `db upgrade`, `tenants create`,
`upload` and `workflows start|list|get|facts|trace`, each run as `python -m emirax ...` in a
subprocess, as a user runs them.

One `emirax serve` per module, on the embedded SQLite default in a temporary `EMIRAX_HOME` and
without `EMIRAX_ADMIN_TOKEN`, so it also makes the admin token file the tests then read. Bundles
come from `emirax compile`. What is asserted is what a user sees: exit codes, the table and the
`--json` document on stdout, and for every failure exactly one `emirax: error:` line on stderr
and never a traceback.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from serverkit import ORDERS, free_port
from support import Run

TIMEOUT = 60
WORKFLOW = "demo.orders.Order"
# Another rule set for the same package, so its IR (and so its digest) differs.
ORDERS_V2 = ORDERS.replace("complete(items: t.items, carrier: s.carrier)",
                           "complete(items: t.items, carrier: s.carrier, v: 2)")


# ── running things ─────────────────────────────────────────────────────────────────────────────




def _base_env(home: Path) -> dict[str, str]:
    """The caller's environment without any Emirax setting (a developer's EMIRAX_TOKEN must not
    leak in), with a temporary home, no colour, and an 80-column width, what a pipe gets."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("EMIRAX_") and k not in {"FORCE_COLOR", "COLUMNS", "LINES"}}
    env.update(EMIRAX_HOME=str(home), EMIRAX_CACHE_DIR=str(home / "cache"), NO_COLOR="1",
               COLUMNS="80", PYTHONIOENCODING="utf-8")
    return env




@dataclass
class Served:
    """A running `emirax serve`: its URL, home, admin token, and the file its output went to."""

    base: str
    home: Path
    log: Path
    proc: subprocess.Popen[bytes]

    @property
    def admin(self) -> str:
        return (self.home / "admin-token").read_text(encoding="utf-8").strip()

    def emirax(self, *args: str, env: dict[str, str] | None = None) -> Run:
        """`python -m emirax ARGS` talking to this server (EMIRAX_SERVER); never a traceback."""
        full = {**_base_env(self.home), "EMIRAX_SERVER": self.base, **(env or {})}
        done = subprocess.run([sys.executable, "-m", "emirax", *args], cwd=self.home, env=full,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              encoding="utf-8", timeout=TIMEOUT)
        run = Run(done.returncode, done.stdout, done.stderr)
        assert "Traceback" not in run.stdout + run.stderr, run
        assert "internal error" not in run.stderr, run
        return run


def start_server(home: Path, *args: str, env: dict[str, str] | None = None) -> Served:
    port = free_port()
    log = home / f"serve-{port}.log"
    with log.open("wb") as sink:  # a file, not a pipe nobody drains
        proc = subprocess.Popen(
            [sys.executable, "-m", "emirax", "serve", "--port", str(port), *args],
            env={**_base_env(home), **(env or {})}, stdin=subprocess.DEVNULL, stdout=sink,
            stderr=subprocess.STDOUT)
    served = Served(f"http://127.0.0.1:{port}", home, log, proc)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"emirax serve exited: {log.read_text()}")
        try:
            if httpx.get(f"{served.base}/healthz", timeout=1).status_code == 200:
                return served
        except httpx.HTTPError:
            time.sleep(0.1)
    stop_server(served)
    raise RuntimeError(f"emirax serve did not start: {log.read_text()}")


def stop_server(served: Served) -> None:
    served.proc.terminate()
    try:
        served.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        served.proc.kill()
        served.proc.wait(timeout=10)


def one_error(run: Run, *needles: str) -> str:
    """A failure as users must see it: exit 1, nothing on stdout, ONE `emirax: error:` line."""
    assert run.code == 1, run
    assert run.stdout == "", run
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("emirax: error: "), run
    for needle in needles:
        assert needle in lines[0], run
    return lines[0]


def summary(stdout: str) -> dict[str, str]:
    """The `key  value` lines under a summary's title, as a dict."""
    rows = {}
    for line in stdout.splitlines()[1:]:
        key, _, value = line.strip().partition(" ")
        rows[key] = value.strip()
    return rows


def write_facts(folder: Path, name: str, facts: list[dict[str, Any]]) -> Path:
    path = folder / name
    path.write_text(json.dumps(facts), encoding="utf-8")
    return path


def item(sku: str, qty: int) -> dict[str, Any]:
    return {"type": "Item", "fields": {"sku": sku, "qty": qty}}


# ── fixtures ───────────────────────────────────────────────────────────────────────────────────


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`emirax serve` with no --db and no EMIRAX_ADMIN_TOKEN: the embedded default, and a token
    file it makes itself."""
    srv = start_server(tmp_path_factory.mktemp("home"))
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def bundles(served: Served) -> dict[str, Path]:
    """Two versions of demo.orders, compiled by `emirax compile`."""
    out = {}
    for version, source in (("1.0.0", ORDERS), ("1.1.0", ORDERS_V2)):
        src = served.home / f"orders-{version}.emx"
        src.write_text(source, encoding="utf-8")
        target = served.home / f"orders-{version}.emxb"
        run = served.emirax("compile", str(src), "-o", str(target), "--version", version)
        assert run.code == 0 and target.is_file(), run
        out[version] = target
    return out


def new_tenant(served: Served, prefix: str) -> str:
    """A tenant for a test's own setup: made over HTTP, which is quicker than a subprocess (the
    command itself is tested on its own)."""
    r = api(served, served.admin, "POST", "/v1/tenants",
            json={"name": f"{prefix}-{secrets.token_hex(3)}"})
    assert r.status_code == 201, r.text
    return r.json()["token"]


def api(served: Served, token: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(method, served.base + path, headers={"Authorization": f"Bearer {token}"},
                         timeout=30, **kwargs)


@pytest.fixture(scope="module")
def acme(served: Served, bundles: dict[str, Path]) -> str:
    """A tenant whose demo.orders 1.0.0 is uploaded (and so active)."""
    token = new_tenant(served, "acme")
    run = served.emirax("upload", str(bundles["1.0.0"]), "--token", token)
    assert run.code == 0, run
    return token


# ── emirax serve and emirax db upgrade ─────────────────────────────────────────────────────────


def test_serve_makes_an_admin_token_file_and_prints_where_it_is_never_the_token(
        served: Served) -> None:
    path = served.home / "admin-token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = served.admin
    assert len(token) >= 32
    log = served.log.read_text(encoding="utf-8")
    assert str(path) in log
    assert token not in log
    # The embedded default: a SQLite file in EMIRAX_HOME.
    assert (served.home / "emirax.db").is_file()
    assert httpx.post(f"{served.base}/v1/tenants", json={"name": "x"},
                      headers={"Authorization": f"Bearer {token}-not"}).status_code == 401


def test_a_second_serve_in_the_same_home_keeps_the_token(served: Served) -> None:
    before = served.admin
    again = start_server(served.home, "--db", f"sqlite:///{served.home / 'second.db'}")
    try:
        assert served.admin == before
        assert stat.S_IMODE((served.home / "admin-token").stat().st_mode) == 0o600
        r = httpx.post(f"{again.base}/v1/tenants", json={"name": "second-home"},
                       headers={"Authorization": f"Bearer {before}"})
        assert r.status_code == 201, r.text
    finally:
        stop_server(again)
    assert before not in again.log.read_text(encoding="utf-8")


def test_db_upgrade_creates_a_usable_database(served: Served, tmp_path: Path) -> None:
    from server.store import Store

    path = tmp_path / "fresh.db"
    url = f"sqlite:///{path}"
    run = served.emirax("db", "upgrade", "--db", url)
    assert run.code == 0, run
    assert "up to date" in run.stdout
    with sqlite3.connect(path) as conn:
        tables = {r[0] for r in conn.execute("select name from sqlite_master where type='table'")}
    assert {"tenants", "bundles", "workflows", "facts", "trace", "alembic_version"} <= tables
    assert served.emirax("db", "upgrade", "--db", url).code == 0  # twice: nothing to do
    store = Store.open(url)
    try:
        tenant_id, token = store.create_tenant("after-upgrade")
        assert store.tenant_by_token(token) is not None and tenant_id >= 1
    finally:
        store.close()


def test_db_upgrade_defaults_to_the_file_in_emirax_home(served: Served, tmp_path: Path) -> None:
    run = served.emirax("db", "upgrade", env={"EMIRAX_HOME": str(tmp_path / "h")})
    assert run.code == 0, run
    assert (tmp_path / "h" / "emirax.db").is_file()


@pytest.mark.parametrize("url", [
    "bogus://nowhere",
    "sqlite:////no/such/folder/anywhere/x.db",
    "postgresql+psycopg://nobody@127.0.0.1:1/none",
])
def test_db_upgrade_of_a_bad_url_is_one_line(served: Served, url: str) -> None:
    one_error(served.emirax("db", "upgrade", "--db", url), "cannot upgrade")


# ── tenants ────────────────────────────────────────────────────────────────────────────────────


def test_tenants_create_prints_a_summary_and_json(served: Served) -> None:
    name = f"table-{secrets.token_hex(3)}"
    run = served.emirax("tenants", "create", name, "--token", served.admin)
    assert run.code == 0, run
    assert run.stdout.splitlines()[0] == f"tenant {name} created"
    rows = summary(run.stdout)
    assert rows["id"].isdigit() and len(rows["token"]) >= 32
    # The token works: the tenant lists its (no) workflows.
    listed = served.emirax("workflows", "list", "--json", "--token", rows["token"])
    assert listed.code == 0 and listed.json == {"workflows": [], "next": None}, listed

    name = f"json-{secrets.token_hex(3)}"
    run = served.emirax("tenants", "create", name, "--json",
                        env={"EMIRAX_ADMIN_TOKEN": served.admin})
    assert run.code == 0, run
    doc = run.json
    assert doc["name"] == name and isinstance(doc["id"], int) and doc["token"] != rows["token"]


def test_tenants_create_refusals_are_one_line(served: Served, acme: str) -> None:
    one_error(served.emirax("tenants", "create", "nope", "--token", "not-the-admin"),
              "401")
    one_error(served.emirax("tenants", "create", "nope", "--token", acme), "403")
    name = f"twice-{secrets.token_hex(3)}"
    assert served.emirax("tenants", "create", name, "--token", served.admin).code == 0
    one_error(served.emirax("tenants", "create", name, "--token", served.admin), "409")
    one_error(served.emirax("tenants", "create", "Not A Name", "--token", served.admin), "422")


def test_tenants_create_without_a_token_names_the_admin_variable(served: Served) -> None:
    one_error(served.emirax("tenants", "create", "nope"), "EMIRAX_ADMIN_TOKEN")


# ── upload ─────────────────────────────────────────────────────────────────────────────────────


def test_upload_twice_is_same_then_activate_another_version(served: Served,
                                                           bundles: dict[str, Path]) -> None:
    token = new_tenant(served, "up")
    first = served.emirax("upload", str(bundles["1.0.0"]), "--token", token)
    assert first.code == 0, first
    assert first.stdout.splitlines()[0] == "bundle demo.orders 1.0.0 created"
    rows = summary(first.stdout)
    assert rows["digest"].startswith("sha256:") and rows["active"] == "yes"  # the first is active

    again = served.emirax("upload", str(bundles["1.0.0"]), "--json", "--token", token)
    assert again.code == 0, again
    assert again.json == {"package": "demo.orders", "version": "1.0.0", "digest": rows["digest"],
                          "outcome": "same", "active": True}

    later = served.emirax("upload", str(bundles["1.1.0"]), "--json", "--token", token)
    assert later.code == 0, later
    assert later.json["outcome"] == "created" and later.json["active"] is False
    assert later.json["digest"] != rows["digest"]

    activated = served.emirax("upload", str(bundles["1.1.0"]), "--activate", "--json",
                              env={"EMIRAX_TOKEN": token})
    assert activated.code == 0, activated
    assert activated.json["outcome"] == "same" and activated.json["active"] is True
    versions = api(served, token, "GET", "/v1/bundles/demo.orders").json()["versions"]
    assert [(v["version"], v["active"]) for v in versions] == [("1.0.0", False), ("1.1.0", True)]
    started = served.emirax("workflows", "start", WORKFLOW, "--json", "--token", token)
    assert started.code == 0 and started.json["version"] == "1.1.0", started


def test_upload_with_activate_activates_a_new_version_at_once(served: Served,
                                                             bundles: dict[str, Path]) -> None:
    token = new_tenant(served, "act")
    assert served.emirax("upload", str(bundles["1.0.0"]), "--token", token).code == 0
    run = served.emirax("upload", str(bundles["1.1.0"]), "--activate", "--token", token)
    assert run.code == 0, run
    assert run.stdout.splitlines()[0] == "bundle demo.orders 1.1.0 created"
    assert summary(run.stdout)["active"] == "yes"
    # Rolling back is uploading the old version with --activate.
    back = served.emirax("upload", str(bundles["1.0.0"]), "--activate", "--json",
                         "--token", token)
    assert back.code == 0 and back.json["active"] is True, back


def test_upload_refusals_are_one_line(served: Served, bundles: dict[str, Path],
                                      tmp_path: Path) -> None:
    token = new_tenant(served, "bad")
    garbage = tmp_path / "garbage.emxb"
    garbage.write_bytes(secrets.token_bytes(2000))
    one_error(served.emirax("upload", str(garbage), "--token", token), "422", "bundle")
    fake_zip = tmp_path / "fake.emxb"
    fake_zip.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    one_error(served.emirax("upload", str(fake_zip), "--token", token), "422")
    one_error(served.emirax("upload", str(tmp_path / "missing.emxb"), "--token", token),
              "cannot read")
    # Another digest under a version that exists: 1.1.0's rules relabelled 1.0.0.
    assert served.emirax("upload", str(bundles["1.0.0"]), "--token", token).code == 0
    relabelled = tmp_path / "relabelled.emxb"
    src = tmp_path / "v2.emx"
    src.write_text(ORDERS_V2, encoding="utf-8")
    assert served.emirax("compile", str(src), "-o", str(relabelled), "--version", "1.0.0").code == 0
    one_error(served.emirax("upload", str(relabelled), "--token", token), "409")
    # Nothing of the refused uploads was kept.
    assert api(served, token, "GET", "/v1/bundles").json() == [{"package": "demo.orders", "active_version": "1.0.0"}]


# ── workflows ──────────────────────────────────────────────────────────────────────────────────


def test_start_with_facts_and_an_id_twice_is_idempotent(served: Served, acme: str) -> None:
    facts = write_facts(served.home, "start.json", [item("a", 2), item("b", 3)])
    wid = f"order-{secrets.token_hex(3)}"
    first = served.emirax("workflows", "start", WORKFLOW, "--facts", str(facts), "--id", wid,
                          "--token", acme)
    assert first.code == 0, first
    assert first.stdout.splitlines()[0] == f"workflow {wid}"
    rows = summary(first.stdout)
    assert (rows["id"], rows["workflow"], rows["status"], rows["version"]) == (
        wid, WORKFLOW, "waiting", "1.0.0")
    assert rows["facts"] == "3" and rows["pending"] == "0"  # two Items and the Total

    again = served.emirax("workflows", "start", WORKFLOW, "--facts", str(facts), "--id", wid,
                          "--json", "--token", acme)
    assert again.code == 0, again
    doc = again.json
    assert doc["id"] == wid and doc["status"] == "waiting"
    assert doc["facts"] == [item("a", 2), item("b", 3), {"type": "Total", "fields": {"items": 5}}]
    # The same id with other facts: still the first workflow, nothing added or re-run.
    other = write_facts(served.home, "other.json", [item("zzz", 100)])
    third = served.emirax("workflows", "start", WORKFLOW, "--facts", str(other), "--id", wid,
                          "--json", "--token", acme)
    assert third.code == 0 and third.json == doc, third
    trace = served.emirax("workflows", "trace", wid, "--json", "--token", acme).json["events"]
    assert [e["event"]["event"] for e in trace].count("start") == 1


def test_get_facts_and_trace(served: Served, acme: str) -> None:
    wid = f"ship-{secrets.token_hex(3)}"
    start = write_facts(served.home, "ship-start.json", [item("a", 4)])
    assert served.emirax("workflows", "start", WORKFLOW, "--id", wid, "--facts", str(start),
                         "--token", acme).code == 0
    got = served.emirax("workflows", "get", wid, "--token", acme)
    assert got.code == 0, got
    assert summary(got.stdout)["status"] == "waiting" and "output" not in summary(got.stdout)

    shipped = write_facts(served.home, "shipped.json",
                          [{"type": "Shipped", "fields": {"carrier": "ups"}}])
    added = served.emirax("workflows", "facts", wid, str(shipped), "--token", acme)
    assert added.code == 0, added
    rows = summary(added.stdout)
    assert rows["status"] == "completed"
    assert json.loads(rows["output"]) == {"items": 4, "carrier": "ups"}
    assert rows["facts"] == "3"

    doc = served.emirax("workflows", "get", wid, "--json", "--token", acme).json
    assert doc["status"] == "completed" and doc["output"] == {"items": 4, "carrier": "ups"}
    assert doc["error"] is None and doc["pending"] == [] and doc["version"] == "1.0.0"
    assert doc["facts"][-1] == {"type": "Shipped", "fields": {"carrier": "ups"}}

    trace = served.emirax("workflows", "trace", wid, "--json", "--token", acme)
    assert trace.code == 0, trace
    events = trace.json["events"]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert [e["event"]["rule"] for e in events if e["event"]["event"] == "fire"] == ["count", "ship"]
    assert events[-1]["event"] == {"event": "status", "from": "waiting", "to": "completed"}
    table = served.emirax("workflows", "trace", wid, "--token", acme)
    assert table.code == 0, table
    for word in ("seq", "event", "start", "fire", "complete", "status"):
        assert word in table.stdout
    assert "Traceback" not in table.stdout


def _list_json(served: Served, token: str, *args: str) -> dict[str, Any]:
    run = served.emirax("workflows", "list", "--json", "--token", token, *args)
    assert run.code == 0, run
    return run.json


def test_list_filters_and_pages(served: Served, bundles: dict[str, Path]) -> None:
    token = new_tenant(served, "list")  # the setup over HTTP; the listing through the CLI
    r = api(served, token, "POST", "/v1/bundles", content=bundles["1.0.0"].read_bytes())
    assert r.status_code == 201, r.text
    ids = [f"w-{i}" for i in range(4)]
    for wid in ids:
        r = api(served, token, "POST", "/v1/workflows", json={"workflow": WORKFLOW, "id": wid})
        assert r.status_code == 201, r.text
    for wid in ("w-1", "w-3"):  # completed
        r = api(served, token, "POST", f"/v1/workflows/{wid}/facts", json={"facts": [
            item("x", 1), {"type": "Shipped", "fields": {"carrier": "dhl"}}]})
        assert r.json()["status"] == "completed", r.text

    everything = _list_json(served, token)
    assert [w["id"] for w in everything["workflows"]] == ids and everything["next"] is None
    assert {w["workflow"] for w in everything["workflows"]} == {WORKFLOW}
    completed = _list_json(served, token, "--status", "completed")
    assert [w["id"] for w in completed["workflows"]] == ["w-1", "w-3"]
    assert [w["id"] for w in _list_json(served, token, "--status", "waiting")["workflows"]] == [
        "w-0", "w-2"]
    assert _list_json(served, token, "--workflow", "demo.orders.Nope")["workflows"] == []

    # Keyset pages of one: every workflow once, in order, then no cursor.
    seen, cursor = [], None
    for _ in range(len(ids) + 1):
        page = _list_json(served, token, "--limit", "1", *(["--after", cursor] if cursor else []))
        seen += [w["id"] for w in page["workflows"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == ids
    # Filter and pages together.
    page = _list_json(served, token, "--status", "completed", "--limit", "1")
    assert [w["id"] for w in page["workflows"]] == ["w-1"] and page["next"] == "w-1"
    page = _list_json(served, token, "--status", "completed", "--limit", "1", "--after", "w-1")
    assert [w["id"] for w in page["workflows"]] == ["w-3"] and page["next"] is None

    table = served.emirax("workflows", "list", "--limit", "2", "--token", token)
    assert table.code == 0, table
    for heading in ("id", "workflow", "status", "version", "updated"):
        assert heading in table.stdout.splitlines()[1]
    assert "w-0" in table.stdout and "w-1" in table.stdout and "w-2" not in table.stdout
    assert table.stdout.splitlines()[-1] == "next page: --after w-1"
    last = served.emirax("workflows", "list", "--after", "w-2", "--token", token)
    assert "w-3" in last.stdout and "next page" not in last.stdout


def test_list_table_shows_whole_ids(served: Served, acme: str) -> None:
    started = served.emirax("workflows", "start", WORKFLOW, "--json", "--token", acme)
    wid = started.json["id"]
    assert len(wid) == 32
    table = served.emirax("workflows", "list", "--limit", "500", "--token", acme)
    assert table.code == 0, table
    assert wid in table.stdout


def test_workflow_errors_are_one_line(served: Served, acme: str, tmp_path: Path) -> None:
    wid = f"mine-{secrets.token_hex(3)}"
    assert served.emirax("workflows", "start", WORKFLOW, "--id", wid, "--token", acme).code == 0
    other = new_tenant(served, "other")
    # Another tenant's workflow is 404 like a missing one, for every command.
    facts = write_facts(tmp_path, "f.json", [item("a", 1)])
    theirs = one_error(served.emirax("workflows", "get", wid, "--token", other), "404")
    missing = one_error(served.emirax("workflows", "get", "never-was", "--token", other), "404")
    assert theirs.replace(wid, "ID") == missing.replace("never-was", "ID")
    one_error(served.emirax("workflows", "trace", wid, "--token", other), "404")
    one_error(served.emirax("workflows", "facts", wid, str(facts), "--token", other), "404")
    one_error(served.emirax("workflows", "start", WORKFLOW, "--token", other), "404")
    assert wid not in served.emirax("workflows", "list", "--json", "--token", other).stdout
    assert served.emirax("workflows", "get", wid, "--json", "--token", acme).json["facts"] == []

    # Tokens and the server.
    one_error(served.emirax("workflows", "list"), "no token")
    one_error(served.emirax("workflows", "get", wid, "--token", "not-a-token"), "401")
    one_error(served.emirax("workflows", "list", "--token", served.admin), "403")
    dead = f"http://127.0.0.1:{free_port()}"
    one_error(served.emirax("workflows", "list", "--server", dead, "--token", acme),
              "cannot reach", dead)
    one_error(served.emirax("upload", str(facts), "--token", acme,
                            env={"EMIRAX_SERVER": dead}), "cannot reach")

    # Bad facts: the file, the shape, the types; nothing is added.
    not_json = tmp_path / "bad.json"
    not_json.write_text("{nope", encoding="utf-8")
    one_error(served.emirax("workflows", "facts", wid, str(not_json), "--token", acme), "not JSON")
    one_error(served.emirax("workflows", "facts", wid, str(write_facts(tmp_path, "obj.json", {})),  # type: ignore[arg-type]
                            "--token", acme), "JSON list")
    one_error(served.emirax("workflows", "facts", wid, str(tmp_path / "none.json"),
                            "--token", acme), "cannot read")
    unknown = write_facts(tmp_path, "unknown.json", [{"type": "Nope", "fields": {}}])
    one_error(served.emirax("workflows", "facts", wid, str(unknown), "--token", acme), "422")
    wrong = write_facts(tmp_path, "wrong.json", [item("a", "many")])  # type: ignore[arg-type]
    one_error(served.emirax("workflows", "facts", wid, str(wrong), "--token", acme), "422")
    one_error(served.emirax("workflows", "start", WORKFLOW, "--facts", str(wrong),
                            "--token", acme), "422")
    one_error(served.emirax("workflows", "start", "demo.orders.Nope", "--token", acme), "404")
    one_error(served.emirax("workflows", "start", WORKFLOW, "--id", "has space",
                            "--token", acme), "422")
    assert served.emirax("workflows", "get", wid, "--json", "--token", acme).json["facts"] == []


# ── runners, the queue, and watching a workflow ────────────────────────────────────────────────

WORK = """\
package demo.work

workflow Job {
    fact Task(int n)
    fact Done(int value)

    function int work(int n) with [retries: 1]

    rule 'work' {
        match {
            t: Task()
            not Done()
        }
        action { work(t.n) }
        reaction { v -> insert Done(value: v) }
    }
    rule 'done' {
        match { d: Done() }
        action {
            if (d.value < 0) { fail "negative" }
            complete(value: d.value)
        }
    }
}
"""


def test_tenants_create_with_a_limit(served: Served) -> None:
    run = served.emirax("tenants", "create", f"lim-{secrets.token_hex(3)}", "--max-in-flight", "3",
                        "--json", "--token", served.admin)
    assert run.code == 0 and run.json["max_in_flight"] == 3, run
    refused = served.emirax("tenants", "create", "lim", "--max-in-flight", "0", "--token", served.admin)
    assert refused.code == 2 and "--max-in-flight" in refused.stderr, refused  # a usage error


def test_get_says_why_work_waits_and_watch_follows_a_runner_to_the_end(served: Served) -> None:
    token = new_tenant(served, "work")
    src = served.home / "work.emx"
    src.write_text(WORK, encoding="utf-8")
    bundle = served.home / "work.emxb"
    assert served.emirax("compile", str(src), "-o", str(bundle)).code == 0
    assert served.emirax("upload", str(bundle), "--token", token).code == 0
    for wid, n in (("job-ok", 21), ("job-bad", -1)):
        facts = write_facts(served.home, f"{wid}.json", [{"type": "Task", "fields": {"n": n}}])
        assert served.emirax("workflows", "start", "demo.work.Job", "--id", wid, "--facts",
                             str(facts), "--token", token).code == 0
    got = served.emirax("workflows", "get", "job-ok", "--token", token)
    assert got.code == 0 and "why it waits" in got.stdout and "no runner serves work" in got.stdout, got

    module = served.home / "work_functions.py"
    module.write_text("def work(n):\n    return n * 2\n", encoding="utf-8")
    env = {**_base_env(served.home), "EMIRAX_SERVER": served.base, "EMIRAX_TOKEN": token}
    runner = subprocess.Popen([sys.executable, "-m", "emirax", "runner", str(module), "--name", "cli"],
                              env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        watched = served.emirax("workflows", "watch", "job-ok", "--token", token)
        assert watched.code == 0, watched
        assert summary(watched.stdout)["status"] == "completed"
        assert json.loads(summary(watched.stdout)["output"]) == {"value": 42}
        assert "work" in watched.stderr  # the progress bar of the function
        failed = served.emirax("workflows", "watch", "job-bad", "--token", token)
        assert failed.code == 1 and summary(failed.stdout)["status"] == "failed", failed
    finally:
        runner.terminate()
        assert runner.wait(timeout=30) == 0  # a graceful stop

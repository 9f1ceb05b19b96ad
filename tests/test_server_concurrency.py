"""Two `emirax serve` processes on ONE PostgreSQL database, and a server killed mid-work.

Owns the store's promise across processes (issue 4, docs/store.md "Locking"): work on one
workflow is serialised by the row lock whichever server takes the request, so client threads
adding facts to the same few workflows through both servers at once lose nothing and apply
nothing twice; and a server killed with SIGKILL loses nothing it committed and leaves no half
step behind.

The bundle has no functions and its rules fire once per fact: `seen` inserts `Seen(sku)` for
each `Item(sku)`, and `count` (a `collect`) inserts `Count(n)` with the number of items it saw.
Each request adds one Item, so after N requests a workflow must hold exactly N Items, N Seen
and Counts numbered 1..N (a lost update would repeat or skip a number), fact ids 1..3N, and
a trace with one `seen` and one `count` firing per request. Everything is checked through
the HTTP API of both servers and, for ids and revisions, in the database's own rows.
"""

from __future__ import annotations

import collections
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from conftest import libpq_dsn
from serverkit import ServerProcess, compile_bundle, fresh_database

pytestmark = pytest.mark.postgres

ADMIN = "admin-" + secrets.token_hex(8)
WORKFLOW = "demo.tally.Tally"
TALLY = """\
package demo.tally

workflow Tally {
    fact Item(String sku)
    fact Seen(String sku)
    fact Count(int n)

    rule 'seen' {
        match { i: Item() }
        action { insert Seen(sku: i.sku) }
    }
    rule 'count' {
        match {
            items: collect Item()
            when items.size() > 0
        }
        action { insert Count(n: items.size()) }
    }
}
"""
WORKFLOWS, FACTS, THREADS = 4, 100, 8


# ── servers ────────────────────────────────────────────────────────────────────────────────────


class Server(ServerProcess):
    def __init__(self, url: str, home: Path) -> None:
        super().__init__(url, home, admin_token=ADMIN)

@pytest.fixture(scope="module")
def database(postgres_url: str) -> Iterator[str]:
    """A fresh PostgreSQL database for this module, dropped at the end."""
    with fresh_database(postgres_url, prefix="emirax_conc_") as url:
        yield url


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def servers(database: str, home: Path) -> Iterator[list[Server]]:
    """Two servers on the same database, started together (both run the migrations)."""
    started: list[Server] = []
    try:
        started += [Server(database, home), Server(database, home)]
        yield started
    finally:
        for srv in started:
            srv.stop()


@pytest.fixture(scope="module")
def token(servers: list[Server], home: Path) -> str:
    """One tenant, with the Tally bundle uploaded (and so active)."""
    data = compile_bundle(home, TALLY, "1.0.0")
    with servers[0].client(ADMIN) as admin:
        r = admin.post("/v1/tenants", json={"name": f"conc-{secrets.token_hex(3)}"})
        assert r.status_code == 201, r.text
        tok = r.json()["token"]
    with servers[1].client(tok) as c:  # uploaded through one, used through both
        r = c.post("/v1/bundles", content=data)
        assert r.status_code == 201 and r.json()["active"] is True, r.text
    return tok


# ── driving and checking ───────────────────────────────────────────────────────────────────────


def start_workflows(server: Server, token: str, ids: list[str]) -> None:
    with server.client(token) as c:
        for wid in ids:
            r = c.post("/v1/workflows", json={"workflow": WORKFLOW, "id": wid, "facts": []})
            assert r.status_code == 201, r.text


def add_item(client: httpx.Client, wid: str, sku: str) -> httpx.Response:
    return client.post(f"/v1/workflows/{wid}/facts",
                       json={"facts": [{"type": "Item", "fields": {"sku": sku}}]})


@dataclass
class Hammer:
    """Client threads taking (workflow, sku) jobs off one shared list, each thread sending its
    requests to the servers in turn. `acked` holds the jobs answered 200, `failed` the others."""

    servers: list[Server]
    token: str
    jobs: list[tuple[str, str]]
    acked: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[tuple[str, str], str]] = field(default_factory=list)
    stop_on_error: bool = False

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._next = 0

    def _take(self) -> tuple[str, str] | None:
        with self._lock:
            if self._next >= len(self.jobs):
                return None
            self._next += 1
            return self.jobs[self._next - 1]

    def _work(self, n: int, barrier: threading.Barrier) -> None:
        clients = [s.client(self.token) for s in self.servers]
        try:
            barrier.wait()
            turn = n
            while (job := self._take()) is not None:
                client = clients[turn % len(clients)]
                turn += 1
                try:
                    r = add_item(client, *job)
                    outcome = "ok" if r.status_code == 200 else f"{r.status_code} {r.text[:200]}"
                except httpx.HTTPError as exc:
                    outcome = f"{type(exc).__name__}: {exc}"
                with self._lock:
                    if outcome == "ok":
                        self.acked.append(job)
                    else:
                        self.failed.append((job, outcome))
                if outcome != "ok" and self.stop_on_error:
                    return
        finally:
            for c in clients:
                c.close()

    def start(self, threads: int) -> list[threading.Thread]:
        barrier = threading.Barrier(threads)
        workers = [threading.Thread(target=self._work, args=(n, barrier), daemon=True)
                   for n in range(threads)]
        for w in workers:
            w.start()
        return workers


def full_trace(client: httpx.Client, wid: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    while True:
        r = client.get(f"/v1/workflows/{wid}/trace",
                       params={"after": events[-1]["seq"] if events else 0, "limit": 500})
        assert r.status_code == 200, r.text
        page = r.json()["events"]
        if not page:
            return events
        events += page


def stored_rows(database: str, wid: str) -> tuple[list[int], int, int]:
    """The workflow's fact ids, revision and next fact id, read from the database itself."""
    with psycopg.connect(libpq_dsn(database)) as conn:
        pk, revision, next_fact = conn.execute(
            "select pk, revision, next_fact from workflows where id = %s", (wid,)).fetchone()
        ids = [r[0] for r in conn.execute(
            "select fact_id from facts where workflow_pk = %s order by fact_id", (pk,))]
    return ids, revision, next_fact


def check_workflow(client: httpx.Client, database: str, wid: str, skus: list[str]) -> dict[str, Any]:
    """Assert that `wid` holds exactly the steps that added `skus`, one Item each, every rule
    fired once per Item, nothing lost or doubled; returns the GET document."""
    n = len(skus)
    r = client.get(f"/v1/workflows/{wid}")
    assert r.status_code == 200, r.text
    doc = r.json()
    by_type: dict[str, list[Any]] = collections.defaultdict(list)
    for f in doc["facts"]:
        by_type[f["type"]].append(next(iter(f["fields"].values())))
    assert sorted(by_type["Item"]) == sorted(skus), "an Item lost or doubled"
    assert sorted(by_type["Seen"]) == sorted(skus), "a Seen missing or doubled"
    assert sorted(by_type["Count"]) == list(range(1, n + 1)), "a step did not see the one before"
    assert doc["status"] == "waiting" and doc["pending"] == []

    events = full_trace(client, wid)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    kinds = collections.Counter(e["event"]["event"] for e in events)
    assert kinds["start"] == 1 and kinds["facts"] == n
    inserted = {e["event"]["fact"]: e["event"]["type"] for e in events
                if e["event"]["event"] == "insert"}
    assert sorted(inserted) == list(range(1, 3 * n + 1)), "fact ids not unique and contiguous"
    item_ids = sorted(i for i, t in inserted.items() if t == "Item")
    fires = [e["event"] for e in events if e["event"]["event"] == "fire"]
    seen_fires = [f["facts"] for f in fires if f["rule"] == "seen"]
    assert sorted(i for fs in seen_fires for i in fs) == item_ids, "'seen' not once per Item"
    assert sum(1 for f in fires if f["rule"] == "count") == n, "'count' not once per step"
    assert len(fires) == 2 * n

    ids, revision, next_fact = stored_rows(database, wid)
    assert ids == list(range(1, 3 * n + 1))
    assert revision == n + 1  # the start and one committed step per Item
    assert next_fact == 3 * n + 1
    return doc


# ── the tests ──────────────────────────────────────────────────────────────────────────────────


def test_two_servers_adding_facts_to_the_same_workflows_lose_nothing(
        servers: list[Server], token: str, database: str) -> None:
    ids = [f"tally-{w}" for w in range(WORKFLOWS)]
    start_workflows(servers[0], token, ids)
    # Interleaved, so every workflow is contended by several threads and both servers at once.
    jobs = [(wid, f"{wid}-sku-{i}") for i in range(FACTS) for wid in ids]
    hammer = Hammer(servers, token, jobs)
    for worker in hammer.start(THREADS):
        worker.join(timeout=120)
        assert not worker.is_alive(), "a client thread hung"
    assert hammer.failed == []
    assert len(hammer.acked) == len(jobs)

    expected = collections.defaultdict(list)
    for wid, sku in jobs:
        expected[wid].append(sku)
    clients = [s.client(token) for s in servers]
    try:
        for wid in ids:
            docs = [check_workflow(c, database, wid, expected[wid]) for c in clients]
            assert docs[0] == docs[1], "the two servers disagree"
    finally:
        for c in clients:
            c.close()


def test_a_server_killed_with_sigkill_loses_nothing_committed(
        servers: list[Server], token: str, database: str, home: Path) -> None:
    ids = [f"kill-{w}" for w in range(2)]
    start_workflows(servers[0], token, ids)
    victim = Server(database, home)
    try:
        jobs = [(wid, f"{wid}-sku-{i}") for i in range(300) for wid in ids]
        hammer = Hammer([victim], token, jobs, stop_on_error=True)
        workers = hammer.start(4)
        deadline = time.monotonic() + 30
        while len(hammer.acked) < 60 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert len(hammer.acked) >= 60, hammer.failed[:3]
        victim.kill()  # with requests in flight: some steps mid-transaction
        for worker in workers:
            worker.join(timeout=60)
            assert not worker.is_alive(), "a client thread hung"
        assert hammer.failed, "the kill came after all the work"
    finally:
        victim.stop()

    # Through the surviving server: every acknowledged Item is there; an unanswered one may be
    # (its commit landed) or not, but never half of a step.
    sent = set(hammer.acked) | {job for job, _ in hammer.failed}
    present: dict[str, list[str]] = {}
    with servers[0].client(token) as c:
        for wid in ids:
            items = [f["fields"]["sku"] for f in c.get(f"/v1/workflows/{wid}").json()["facts"]
                     if f["type"] == "Item"]
            assert len(items) == len(set(items)), "a step applied twice"
            acked = {sku for w, sku in hammer.acked if w == wid}
            assert acked <= set(items), "an acknowledged fact was lost"
            assert {(wid, sku) for sku in items} <= sent
            check_workflow(c, database, wid, items)
            present[wid] = items

    # Restarted on the same database: the same state, and it carries on where it stopped.
    again = Server(database, home)
    try:
        with again.client(token) as c:
            for wid in ids:
                more = [f"{wid}-after-{i}" for i in range(3)]
                for sku in more:
                    r = add_item(c, wid, sku)
                    assert r.status_code == 200, r.text
                check_workflow(c, database, wid, present[wid] + more)
    finally:
        again.stop()

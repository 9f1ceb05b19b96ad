"""The server's durable store (server/store) on both databases it supports.

Every test runs twice: on a SQLite file and on the machine's PostgreSQL (marker `postgres`),
each module run in a database of its own, created here and dropped afterwards. Engine steps are
the real engine's (`emirax.pipeline.build` + `Program.from_ir` + `step`); a state read back from
the store is compared with the same workflow run in memory, event for event.
"""

from __future__ import annotations

import hashlib
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from emirax.engine.program import Program, Workflow
from emirax.engine.state import WorkflowState
from emirax.engine.step import AddFacts, Delta, Failure, Result, Start, step
from emirax.pipeline import build
from server.store import Conflict, NotFound, Store, StoreError, token_hash
from server.store.models import FACTS as FACTS_TABLE
from server.store.models import WORKFLOWS as WORKFLOWS_TABLE
from server.store.models import Base

ROOT = Path(__file__).resolve().parents[1]
MEDIA = "media.encode"
TABLES = {"tenants", "bundles", "packages", "workflows", "facts", "fired", "pending",
          "invocations", "trace", "idempotency"}

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


# ── databases ──────────────────────────────────────────────────────────────────────────────────


class Databases:
    """Fresh, empty databases of one kind: SQLite files, or PostgreSQL databases made for the
    test and dropped after it (so runs never see each other's rows)."""

    def __init__(self, kind: str, tmp: Path, pg_url: str | None) -> None:
        self.kind = kind
        self.tmp = tmp
        self.pg_url = pg_url

    @contextmanager
    def fresh(self) -> Iterator[str]:
        if self.kind == "sqlite":
            yield f"sqlite:///{self.tmp / uuid.uuid4().hex}.db"
            return
        assert self.pg_url is not None
        name = f"emirax_store_{uuid.uuid4().hex[:12]}"
        self._admin(f'CREATE DATABASE "{name}"')
        try:
            yield str(sa.make_url(self.pg_url).set(database=name).render_as_string(False))
        finally:
            self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _admin(self, sql: str) -> None:
        import psycopg

        url = sa.make_url(self.pg_url).set(drivername="postgresql", database="postgres")
        with psycopg.connect(url.render_as_string(False), autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]


@pytest.fixture(scope="module", params=BACKENDS)
def databases(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Databases:
    pg_url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    return Databases(request.param, tmp_path_factory.mktemp("store"), pg_url)


@pytest.fixture(scope="module")
def store(databases: Databases) -> Iterator[Store]:
    with databases.fresh() as url:
        opened = Store.open(url)
        opened.upgrade()
        try:
            yield opened
        finally:
            opened.close()


@pytest.fixture(params=[0, 16], ids=["uncached", "cached"])
def stepper(request: pytest.FixtureRequest, store: Store) -> Store:
    """The module's store without and with a state cache (same database, same engine)."""
    return Store(store.engine, state_cache=request.param)


# ── programs and helpers ───────────────────────────────────────────────────────────────────────

TALLY = """
package t.tally

workflow Tally {
    fact Item(int n, boolean counted = false)
    fact Seen(int n)
    fact Counter(int total)

    rule 'seen' {
        match {
            i: Item()
            not Seen(n == i.n)
        }
        action { insert Seen(n: i.n) }
    }

    // Every Item bumps the one Counter: two steps that both read the old total would lose one.
    rule 'count' {
        match {
            i: Item(counted == false)
            c: Counter()
        }
        action {
            modify c { total = c.total + 1 }
            modify i { counted = true }
        }
    }
}
"""


@cache
def media() -> Program:
    result = build(ROOT / "tenants" / "media-encoding", cache_dir=False)
    assert result.ir is not None
    return Program.from_ir(result.ir, version="1.0.0")


@cache
def tally(tmp: str) -> Workflow:
    path = Path(tmp) / "tally.emx"
    path.write_text(TALLY, encoding="utf-8")
    result = build(path, cache_dir=False)
    assert result.ir is not None
    return Program.from_ir(result.ir, version="1").workflow("Tally")


@pytest.fixture
def tally_wf(tmp_path_factory: pytest.TempPathFactory) -> Workflow:
    return tally(str(tmp_path_factory.getbasetemp()))


def new_tenant(store: Store) -> int:
    tenant_id, _ = store.create_tenant(f"tenant-{uuid.uuid4().hex[:10]}")
    return tenant_id


def add_bundle(store: Store, tenant_id: int, package: str, version: str, data: bytes = b"") -> str:
    data = data or f"{package} {version}".encode()
    digest = hashlib.sha256(data).hexdigest()
    store.put_bundle(tenant_id, package, version, digest, data, {"package": package})
    return digest


def request(chunks: int = 3, source: str = "s3://in/movie.mov") -> dict[str, Any]:
    return {"type": "Request", "fields": {"source": source, "recipe": "h264", "chunks": chunks}}


class Twin:
    """One workflow driven through the store and, in lockstep, in memory: every step must give
    the same delta, and the state read back must equal the state in memory."""

    def __init__(self, store: Store, tenant_id: int, wf: Workflow, version: str,
                 facts: list[Any], priority: int = 0) -> None:
        self.store, self.tenant_id, self.wf = store, tenant_id, wf
        self.memory = WorkflowState.new(wf.name)
        self.deltas: list[Delta] = []
        package = wf.name.rpartition(".")[0]
        with store.start(tenant_id, wf.name, package, version, priority=priority) as s:
            assert s.created
            self.id = s.workflow.id
            self._apply(s, Start(facts))

    def send(self, event: Any) -> Delta:
        with self.store.step(self.tenant_id, self.id) as s:
            return self._apply(s, event)

    def _apply(self, s: Any, event: Any) -> Delta:
        delta = step(self.wf, s.state, event)
        s.apply(delta)
        expected = step(self.wf, self.memory, event)
        assert delta.to_json() == expected.to_json()
        self.deltas.append(delta)
        return delta

    def check(self) -> WorkflowState:
        loaded = self.store.load(self.tenant_id, self.id)
        assert loaded is not None
        assert loaded.to_json() == self.memory.to_json()
        return loaded


# ── migrations ─────────────────────────────────────────────────────────────────────────────────


def test_migrations_from_an_empty_database_match_the_models(databases: Databases) -> None:
    with databases.fresh() as url:
        store = Store.open(url)
        try:
            assert not sa.inspect(store.engine).get_table_names()
            store.upgrade()
            store.upgrade()  # at head already: nothing to do
            with store.engine.connect() as conn:
                assert TABLES <= set(sa.inspect(conn).get_table_names())
                assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == "0003"
                diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
                if store.dialect == "sqlite":
                    # Alembic cannot compare SQLite's expression indexes (`priority DESC`): it
                    # reports them removed and added again. Check that one by name and columns.
                    indexes = {i["name"]: i for i in sa.inspect(conn).get_indexes("invocations")}
                    assert "ix_invocations_lease" in indexes
                    diff = [d for d in diff
                            if not (d[0] in ("add_index", "remove_index") and d[1].name == "ix_invocations_lease")]
            assert diff == []
        finally:
            store.close()


def test_ping(store: Store) -> None:
    store.ping()


def test_open_refuses_what_it_cannot_store_durably() -> None:
    with pytest.raises(ValueError, match="SQLite file"):
        Store.open("sqlite://")
    with pytest.raises(ValueError, match="unsupported"):
        Store.open("mysql://localhost/x")


# ── tenants and bundles ────────────────────────────────────────────────────────────────────────


def test_tenants_keep_only_the_hash_of_their_token(store: Store) -> None:
    name = f"acme-{uuid.uuid4().hex[:8]}"
    tenant_id, token = store.create_tenant(name)
    found = store.tenant_by_token(token)
    assert found is not None and (found.id, found.name) == (tenant_id, name)
    assert store.tenant_by_token(token + "x") is None
    assert store.tenant_by_token("") is None
    with store.engine.connect() as conn:
        row = conn.execute(sa.text("SELECT * FROM tenants WHERE id = :i"), {"i": tenant_id}).one()
    assert token_hash(token) == hashlib.sha256(token.encode()).hexdigest() == row.token_hash
    assert token not in [str(v) for v in row]
    with pytest.raises(Conflict):
        store.create_tenant(name)


def test_bundles_versions_and_the_active_one(store: Store) -> None:
    tenant_id, other = new_tenant(store), new_tenant(store)
    data = b"PK\x03\x04 the bundle \x00\xff"
    digest = hashlib.sha256(data).hexdigest()
    assert store.put_bundle(tenant_id, "p.q", "1.0", digest, data, {"v": 1}) == "created"
    assert store.put_bundle(tenant_id, "p.q", "1.0", digest, data, {"v": 1}) == "same"
    with pytest.raises(Conflict):
        store.put_bundle(tenant_id, "p.q", "1.0", "0" * 64, b"other", {"v": 2})
    assert store.active_version(tenant_id, "p.q") == "1.0"  # the first version is active at once
    assert store.put_bundle(tenant_id, "p.q", "2.0", "2" * 64, b"two", {"v": 2}) == "created"
    listed = store.versions(tenant_id, "p.q") or []
    assert [(v.version, v.active) for v in listed] == [("1.0", True), ("2.0", False)]
    assert listed[1]["digest"] == "2" * 64 and isinstance(listed[1].to_json()["created_at"], str)
    assert store.bundle(tenant_id, "p.q", "1.0") == (data, {"v": 1}, digest)

    assert store.activate(tenant_id, "p.q", "2.0") == "1.0"
    assert [p.active_version for p in store.packages(tenant_id)] == ["2.0"]
    assert store.activate(tenant_id, "p.q", "1.0") == "2.0"  # a rollback
    with pytest.raises(NotFound):
        store.activate(tenant_id, "p.q", "3.0")

    # Another tenant sees none of it, and its own upload of the same name is its own.
    assert store.packages(other) == []
    assert store.versions(other, "p.q") is None
    assert store.bundle(other, "p.q", "1.0") is None
    with pytest.raises(NotFound):
        store.activate(other, "p.q", "1.0")
    assert store.put_bundle(other, "p.q", "1.0", "9" * 64, b"mine", {}) == "created"
    assert store.bundle(tenant_id, "p.q", "1.0") == (data, {"v": 1}, digest)


# ── workflows ──────────────────────────────────────────────────────────────────────────────────


def test_workflows_are_idempotent_by_client_id(store: Store) -> None:
    tenant_id, other = new_tenant(store), new_tenant(store)
    for t in (tenant_id, other):
        add_bundle(store, t, MEDIA, "1.0.0")
    name = f"{MEDIA}.VideoEncode"
    assert store.create_workflow(tenant_id, name, MEDIA, "1.0.0", "order-7") == ("order-7", True)
    assert store.create_workflow(tenant_id, name, MEDIA, "1.0.0", "order-7") == ("order-7", False)
    # Ids are per tenant: another tenant's "order-7" is another workflow.
    assert store.create_workflow(other, name, MEDIA, "1.0.0", "order-7") == ("order-7", True)
    made, created = store.create_workflow(tenant_id, name, MEDIA, "1.0.0")
    assert created and len(made) == 32 and int(made, 16) >= 0
    info = store.workflow(tenant_id, "order-7")
    assert info is not None and (info.status, info.version, info.output) == ("waiting", "1.0.0", None)
    with pytest.raises(ValueError):
        store.create_workflow(tenant_id, name, MEDIA, "1.0.0", "x" * 256)


def test_engine_steps_persisted_load_back_equal(stepper: Store) -> None:
    """The media tenant from start to completion: every delta as in memory, every state read
    back equal to the one in memory, the queue and the trace as the deltas say."""
    store = stepper
    tenant_id = new_tenant(store)
    add_bundle(store, tenant_id, MEDIA, "1.0.0")
    wf = media().workflow("VideoEncode")
    # U+0000 and a map whose key order is not sorted: both survive (jsonb would lose them).
    run = Twin(store, tenant_id, wf, "1.0.0", [request(3, "s3://in/mo\u0000vie.mov")], priority=2)
    run.check()
    queued = store.pending_invocations(tenant_id, run.id) or []
    assert [(i.call_id, i.kind, i.name, i.priority) for i in queued] == [
        (1, "call", "split", 2), (2, "start", f"{MEDIA}.Thumbnail", 2)]
    assert queued[0].args == ["s3://in/mo\u0000vie.mov", 3]

    run.send(Result(1, ["c0", "c1", "c2"]))
    run.check()
    view = store.describe(tenant_id, run.id)
    assert view is not None and view["status"] == "running"
    assert view["pending"] == [i.to_json() for i in store.pending_invocations(tenant_id, run.id) or []]
    encodes = [i for i in store.pending_invocations(tenant_id, run.id) or [] if i.name == "encode"]
    # The workflow's priority plus the function's option (encode: 5).
    assert [(i.call_id, i.priority) for i in encodes] == [(3, 7), (4, 7), (5, 7)]
    run.send(Result(2, {"uri": "thumb.pgm"}))
    run.send([Result(3, "e0"), Result(4, "e1")])  # a batch: one delta, one transaction
    run.send(Result(5, "e2"))
    run.check()
    run.send(Result(6, "movie.enc"))
    run.send(Result(7, {"chunks": 3, "b": 1, "a": 2}))
    loaded = run.check()

    assert loaded.status == "completed"
    assert loaded.output == {"uri": "movie.enc", "index": {"chunks": 3, "b": 1, "a": 2}}
    assert list(loaded.output["index"]) == ["chunks", "b", "a"]
    info = store.workflow(tenant_id, run.id)
    assert info is not None and (info.status, info.output) == ("completed", loaded.output)
    assert store.pending_invocations(tenant_id, run.id) == []
    view = store.describe(tenant_id, run.id)
    assert view is not None and view["facts"] == run.memory.fact_list()
    assert (view["workflow"], view["version"], view["status"], view["pending"]) == (
        wf.name, "1.0.0", "completed", [])

    events = [e for d in run.deltas for e in d.trace]
    trace = store.trace(tenant_id, run.id) or []
    assert [t.seq for t in trace] == list(range(1, len(events) + 1))
    assert [t.event for t in trace] == events
    assert [t.seq for t in store.trace(tenant_id, run.id, after_seq=5, limit=3) or []] == [6, 7, 8]
    with store.engine.connect() as conn:
        statuses = conn.execute(sa.text(
            "SELECT i.status, count(*) FROM invocations i JOIN workflows w ON w.pk = i.workflow_pk"
            " WHERE w.id = :id GROUP BY i.status"), {"id": run.id}).all()
    assert dict(statuses) == {"done": 7}


def test_failures_cancel_and_batches_net_out(stepper: Store) -> None:
    store = stepper
    tenant_id = new_tenant(store)
    add_bundle(store, tenant_id, MEDIA, "1.0.0")
    wf = media().workflow("VideoEncode")
    run = Twin(store, tenant_id, wf, "1.0.0", [request(3)])
    run.send(Result(1, ["c0", "c1", "c2"]))
    run.send(Failure(3, "disk full", attempts=4))  # 'give up' fails the workflow
    loaded = run.check()
    assert loaded.status == "failed" and "disk full" in loaded.error["message"]
    assert store.pending_invocations(tenant_id, run.id) == []
    assert _invocation_statuses(store, run.id) == {
        1: "done", 2: "cancelled", 3: "done", 4: "cancelled", 5: "cancelled"}

    # Opened and closed within one delta: the activation never reaches the pending table.
    with store.start(tenant_id, wf.name, MEDIA, "1.0.0") as s:
        delta = step(wf, s.state, [Start([request(2)]), Failure(1, "no such file")])
        assert delta.opened and 1 in delta.closed
        s.apply(delta)
        wid = s.workflow.id
    loaded = store.load(tenant_id, wid)
    assert loaded is not None and loaded.status == "failed" and not loaded.pending
    assert _invocation_statuses(store, wid) == {1: "done", 2: "cancelled"}


def _invocation_statuses(store: Store, workflow_id: str) -> dict[int, str]:
    with store.engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT i.call_id, i.status FROM invocations i JOIN workflows w ON w.pk = i.workflow_pk"
            " WHERE w.id = :id"), {"id": workflow_id}).all()
    return dict(rows)  # type: ignore[arg-type]


def test_a_step_that_raises_writes_nothing(stepper: Store) -> None:
    store = stepper
    tenant_id = new_tenant(store)
    add_bundle(store, tenant_id, MEDIA, "1.0.0")
    wf = media().workflow("VideoEncode")
    run = Twin(store, tenant_id, wf, "1.0.0", [request(2)])
    before = (run.check().to_json(), store.trace(tenant_id, run.id),
              store.pending_invocations(tenant_id, run.id), store.workflow(tenant_id, run.id))

    with pytest.raises(RuntimeError, match="host crashed"):
        with store.step(tenant_id, run.id) as s:
            s.apply(step(wf, s.state, Result(1, ["c0", "c1"])))
            raise RuntimeError("host crashed after apply, before commit")
    with pytest.raises(StoreError):
        s.apply(Delta())  # the handle is dead outside its block
    after = (store.load(tenant_id, run.id).to_json(), store.trace(tenant_id, run.id),  # type: ignore[union-attr]
             store.pending_invocations(tenant_id, run.id), store.workflow(tenant_id, run.id))
    assert after == before

    # The next step starts from the stored state, not from the object the failed step changed.
    run.send(Result(1, ["c0", "c1"]))
    run.check()


def test_long_refraction_keys_are_stored(store: Store) -> None:
    """A collect of a thousand facts makes a key far past a PostgreSQL index entry's limit."""
    tenant_id = new_tenant(store)
    add_bundle(store, tenant_id, MEDIA, "1.0.0")
    wid, _ = store.create_workflow(tenant_id, f"{MEDIA}.VideoEncode", MEDIA, "1.0.0")
    key = ("assemble", ((1, 1),), (tuple((i, 1) for i in range(1000)),))
    delta = Delta()
    delta.fired.append(key)
    with store.step(tenant_id, wid) as s:
        s.apply(delta)
    loaded = store.load(tenant_id, wid)
    assert loaded is not None and loaded.fired == {key}


def test_a_cached_state_is_used_only_while_it_is_current(store: Store, tally_wf: Workflow) -> None:
    """Two stores with caches on one database, as two server processes: each reuses its state
    object (and matcher) while no one else stepped the workflow, and reloads when someone did."""
    tenant_id = new_tenant(store)
    add_bundle(store, tenant_id, "t.tally", "1")
    one, two = Store(store.engine, state_cache=4), Store(store.engine, state_cache=4)
    memory = WorkflowState.new(tally_wf.name)
    with one.start(tenant_id, tally_wf.name, "t.tally", "1") as s:
        s.apply(step(tally_wf, s.state, Start([("Counter", {"total": 0})])))
        wid, first = s.workflow.id, s.state
    step(tally_wf, memory, Start([("Counter", {"total": 0})]))

    def add(via: Store, n: int) -> WorkflowState:
        with via.step(tenant_id, wid) as s:
            s.apply(step(tally_wf, s.state, AddFacts([("Item", {"n": n})])))
            used = s.state
        step(tally_wf, memory, AddFacts([("Item", {"n": n})]))
        return used

    assert add(one, 1) is first  # current: the same object, its matcher kept
    assert add(two, 2) is not first  # another process: loaded from the rows
    assert add(one, 3) is not first  # stale now: reloaded, so item 2 is seen
    loaded = store.load(tenant_id, wid)
    assert loaded is not None and loaded.to_json() == memory.to_json()
    assert {"type": "Counter", "fields": {"total": 3}} in loaded.fact_list()


# ── isolation and listing ──────────────────────────────────────────────────────────────────────


def test_another_tenant_sees_nothing(store: Store) -> None:
    owner, intruder = new_tenant(store), new_tenant(store)
    for t in (owner, intruder):
        add_bundle(store, t, MEDIA, "1.0.0")
    wf = media().workflow("VideoEncode")
    with store.start(owner, wf.name, MEDIA, "1.0.0", client_id="secret-42") as s:
        s.apply(step(wf, s.state, Start([request(2)])))
    snapshot = store.load(owner, "secret-42")
    assert snapshot is not None and snapshot.facts

    assert store.load(intruder, "secret-42") is None
    assert store.workflow(intruder, "secret-42") is None
    assert store.describe(intruder, "secret-42") is None
    assert store.trace(intruder, "secret-42") is None
    assert store.pending_invocations(intruder, "secret-42") is None
    assert store.list_workflows(intruder) == ([], None)
    with pytest.raises(NotFound):
        with store.step(intruder, "secret-42"):
            pass
    # Starting "secret-42" as the intruder makes the intruder's own workflow.
    with store.start(intruder, wf.name, MEDIA, "1.0.0", client_id="secret-42") as s:
        assert s.created and not s.state.facts
        s.apply(step(wf, s.state, Start([request(5)])))
    owned = store.load(owner, "secret-42")
    assert owned is not None and owned.to_json() == snapshot.to_json()
    assert [w.id for w in store.list_workflows(owner)[0]] == ["secret-42"]


def test_keyset_pagination_and_filters(store: Store) -> None:
    tenant_id, other = new_tenant(store), new_tenant(store)
    for t in (tenant_id, other):
        add_bundle(store, t, MEDIA, "1.0.0")
    names = [f"{MEDIA}.VideoEncode", f"{MEDIA}.Thumbnail"]
    ids = [f"w{i:02d}" for i in range(11)]
    for i, wid in enumerate(ids):
        store.create_workflow(tenant_id, names[i % 2], MEDIA, "1.0.0", wid)
        store.create_workflow(other, names[0], MEDIA, "1.0.0", f"{wid}-other")
        if i % 3 == 0:
            done = Delta()
            done.status, done.output = "completed", {"n": i}
            with store.step(tenant_id, wid) as s:
                s.apply(done)

    def pages(**filters: Any) -> list[list[str]]:
        out, cursor = [], None
        while True:
            rows, cursor = store.list_workflows(tenant_id, after=cursor, limit=4, **filters)
            out.append([r.id for r in rows])
            if cursor is None:
                return out

    assert pages() == [ids[0:4], ids[4:8], ids[8:11]]
    assert sum(pages(name=names[1]), []) == ids[1::2]
    assert sum(pages(status="completed"), []) == ids[0::3]
    assert sum(pages(status="completed", name=names[0]), []) == ["w00", "w06"]
    rows, cursor = store.list_workflows(tenant_id, after="w09")
    assert [r.id for r in rows] == ["w10"] and cursor is None
    assert rows[0].status == "waiting"
    assert store.list_workflows(tenant_id, status="failed") == ([], None)


# ── concurrency ────────────────────────────────────────────────────────────────────────────────

THREADS, STEPS = 4, 10


def test_concurrent_steps_lose_nothing(store: Store, tally_wf: Workflow) -> None:
    """Threads, each on its own connection (and two of them through stores with their own state
    caches, as two server processes would be), add facts to one workflow at once. The row lock
    serialises them: every fact kept, every rule fired once per fact, the counter exact."""
    tenant_id = new_tenant(store)
    add_bundle(store, tenant_id, "t.tally", "1")
    with store.start(tenant_id, tally_wf.name, "t.tally", "1") as s:
        s.apply(step(tally_wf, s.state, Start([("Counter", {"total": 0})])))
        wid = s.workflow.id
    stores = [store, store, Store(store.engine, state_cache=8), Store(store.engine, state_cache=8)]
    barrier = threading.Barrier(THREADS)
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            barrier.wait()
            for k in range(STEPS):
                items = [("Item", {"n": t * 100 + k * 2 + j}) for j in range(2)]
                with stores[t].step(tenant_id, wid) as s:
                    s.apply(step(tally_wf, s.state, AddFacts(items)))
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    n = THREADS * STEPS * 2
    numbers = sorted(t * 100 + k * 2 + j for t in range(THREADS) for k in range(STEPS) for j in range(2))

    # The union, computed in memory in one order; the stored facts are the same set.
    memory = WorkflowState.new(tally_wf.name)
    step(tally_wf, memory, Start([("Counter", {"total": 0})]))
    step(tally_wf, memory, AddFacts([("Item", {"n": x}) for x in numbers]))
    loaded = store.load(tenant_id, wid)
    assert loaded is not None
    assert _fact_set(loaded) == _fact_set(memory)
    assert {"type": "Counter", "fields": {"total": n}} in loaded.fact_list()
    assert Counter(key[0] for key in loaded.fired) == {"seen": n, "count": n}
    assert loaded.next_fact == 1 + 1 + n + n  # counter, items, seens: no id given twice
    trace = store.trace(tenant_id, wid, limit=10_000) or []
    assert [t.seq for t in trace] == list(range(1, len(trace) + 1))


def _fact_set(state: WorkflowState) -> list[tuple[str, str]]:
    return sorted((f["type"], repr(sorted(f["fields"].items()))) for f in state.fact_list())


def test_concurrent_starts_with_one_client_id_make_one_workflow(store: Store) -> None:
    tenant_id = new_tenant(store)
    add_bundle(store, tenant_id, MEDIA, "1.0.0")
    barrier = threading.Barrier(THREADS)
    results: list[tuple[str, bool]] = []

    def worker() -> None:
        barrier.wait()
        results.append(store.create_workflow(tenant_id, f"{MEDIA}.VideoEncode", MEDIA, "1.0.0",
                                             "same-id"))

    threads = [threading.Thread(target=worker) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(results) == [("same-id", False)] * (THREADS - 1) + [("same-id", True)]
    assert len(store.list_workflows(tenant_id)[0]) == 1


def test_runners_seen_are_forgotten_after_a_while(store: Store) -> None:
    from datetime import timedelta

    tenant_id, _ = store.create_tenant(f"runners-{uuid.uuid4().hex[:6]}")
    store.seen_runner(tenant_id, "host:1", ["encode"])
    store.seen_runner(tenant_id, "host:1", ["encode", "split"])  # the same runner, again
    assert store.forget_runners(timedelta(days=1)) == 0
    assert store.forget_runners(timedelta(0)) == 1


# ── writes sent with the commit (PostgreSQL: server/store/deferred.py) ──────────────────────────


def test_writes_kept_for_the_commit_are_seen_in_the_transaction_and_dropped_with_it(
        store: Store, tally_wf: Workflow) -> None:
    """On PostgreSQL a new workflow's row and a step's delta wait to go out with the COMMIT; a
    statement the transaction runs first sends them before it, and a rollback drops them (the
    pooled connection's next transaction never sends them). SQLite writes at once: the same
    assertions hold."""
    tenant_id = new_tenant(store)
    add_bundle(store, tenant_id, "t.tally", "1")
    count = sa.select(sa.func.count()).select_from(FACTS_TABLE)
    with store.start(tenant_id, tally_wf.name, "t.tally", "1") as s:
        s.apply(step(tally_wf, s.state, Start([("Counter", {"total": 0})])))
        wid = s.workflow.id
        seen = s._conn.execute(count.where(FACTS_TABLE.c.workflow_pk == s._pk)).scalar()
        assert seen == 1  # sent before the SELECT, in order (the row before its facts)
    for _ in range(3):  # every pooled connection, likely: none sends a dropped write later
        with pytest.raises(RuntimeError):
            with store.start(tenant_id, tally_wf.name, "t.tally", "1") as s:
                s.apply(step(tally_wf, s.state, Start([("Counter", {"total": 9})])))
                dropped = s.workflow.id
                raise RuntimeError("the host fails before the commit")
        assert store.workflow(tenant_id, dropped) is None
    with store.step(tenant_id, wid) as s:
        s.apply(step(tally_wf, s.state, AddFacts([("Item", {"n": 1})])))
    assert [w.id for w in store.list_workflows(tenant_id)[0]] == [wid]
    loaded = store.load(tenant_id, wid)
    assert loaded is not None and {"type": "Counter", "fields": {"total": 1}} in loaded.fact_list()


def test_a_transaction_begun_with_its_first_query_leaves_the_connection_as_psycopg_had_it(
        store: Store, tally_wf: Workflow) -> None:
    """On PostgreSQL a transaction's first round trip carries its BEGIN, with the connection in
    autocommit so psycopg sends none of its own (deferred.py). Whether it commits, the host
    fails, or the database refuses a write, the one pooled connection comes back out of
    autocommit and out of any transaction, and goes on working."""
    if store.dialect != "postgresql":
        pytest.skip("psycopg's connections: SQLite writes at once")
    import psycopg
    from psycopg.pq import TransactionStatus

    from server.store import deferred

    single = Store.open(store.engine.url.render_as_string(hide_password=False),
                        pool_size=1, max_overflow=0)

    def as_psycopg_had_it() -> None:
        with single.engine.connect() as conn:
            driver = conn.connection.driver_connection
            assert driver is not None and driver.autocommit is False
            assert driver.pgconn.transaction_status == TransactionStatus.IDLE

    tenant_id = new_tenant(single)
    add_bundle(single, tenant_id, "t.tally", "1")
    try:
        with single.start(tenant_id, tally_wf.name, "t.tally", "1") as s:  # BEGIN ... COMMIT
            s.apply(step(tally_wf, s.state, Start([("Counter", {"total": 0})])))
            wid = s.workflow.id
        as_psycopg_had_it()
        with single.step(tenant_id, wid) as s:  # BEGIN with the lock, then the writes, COMMIT
            s.apply(step(tally_wf, s.state, AddFacts([("Item", {"n": 1})])))
        as_psycopg_had_it()
        with pytest.raises(RuntimeError), single.step(tenant_id, wid) as s:
            s.apply(step(tally_wf, s.state, AddFacts([("Item", {"n": 100})])))
            raise RuntimeError("the host fails after the lock")
        as_psycopg_had_it()
        with pytest.raises(psycopg.errors.DivisionByZero), single._tx(write=True) as conn:
            deferred.later(conn, "SELECT 1 / %(zero)s", {"zero": 0})  # refused with the COMMIT
        as_psycopg_had_it()
        with single.step(tenant_id, wid) as s:
            s.apply(step(tally_wf, s.state, AddFacts([("Item", {"n": 2})])))
        loaded = single.load(tenant_id, wid)
        assert loaded is not None
        items = [f["fields"]["n"] for f in loaded.fact_list() if f["type"] == "Item"]
        assert items == [1, 2]  # the failed step's Item 100 was never written
        assert {"type": "Counter", "fields": {"total": 2}} in loaded.fact_list()
    finally:
        single.close()


def test_two_stores_starting_workflows_take_distinct_keys(store: Store, tally_wf: Workflow) -> None:
    """Two processes (two stores) take workflow keys from the sequence in blocks: interleaved
    starts never share one, and each workflow reads back whole."""
    tenant_id = new_tenant(store)
    add_bundle(store, tenant_id, "t.tally", "1")
    one, two = Store(store.engine), Store(store.engine)
    ids = []
    for n in range(10):
        via = (one, two)[n % 2]
        with via.start(tenant_id, tally_wf.name, "t.tally", "1") as s:
            s.apply(step(tally_wf, s.state, Start([("Counter", {"total": n})])))
            ids.append(s.workflow.id)
    rows = {w.id for w in store.list_workflows(tenant_id, limit=50)[0]}
    assert rows == set(ids)
    with store.engine.connect() as conn:
        pks = conn.execute(sa.select(WORKFLOWS_TABLE.c.pk).where(
            WORKFLOWS_TABLE.c.tenant_id == tenant_id)).scalars().all()
    assert len(set(pks)) == 10
    for n, wid in enumerate(ids):
        loaded = store.load(tenant_id, wid)
        assert loaded is not None and {"type": "Counter", "fields": {"total": n}} in loaded.fact_list()


DONE = """
package t.done

workflow Done {
    fact Go(int n)

    rule 'finish' {
        match { g: Go() }
        action { complete(n: g.n) }
    }
}
"""


def test_the_state_cache_keeps_live_workflows_only(store: Store, tmp_path: Path) -> None:
    """A state goes back into the cache after its commit while the workflow is live; an ended
    workflow's does not (a cache of ended ones was a heap the collector rescanned, 0.5 s a
    pass). The ended workflow still reads back, and a step on it loads it from the rows."""
    path = tmp_path / "done.emx"
    path.write_text(DONE, encoding="utf-8")
    result = build(path, cache_dir=False)
    assert result.ir is not None
    wf = Program.from_ir(result.ir, version="1").workflow("Done")
    tenant_id = new_tenant(store)
    add_bundle(store, tenant_id, "t.done", "1")
    cached = Store(store.engine, state_cache=8)
    with cached.start(tenant_id, wf.name, "t.done", "1") as s:
        s.apply(step(wf, s.state, Start([])))
        wid, pk = s.workflow.id, s._pk
    assert pk in cached._cache.entries  # waiting: kept
    with cached.step(tenant_id, wid) as s:
        s.apply(step(wf, s.state, AddFacts([("Go", {"n": 7})])))
        assert s.state.status == "completed"
    assert pk not in cached._cache.entries  # ended: not kept
    loaded = cached.load(tenant_id, wid)
    assert loaded is not None and loaded.status == "completed" and loaded.output == {"n": 7}

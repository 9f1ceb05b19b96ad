"""The durable store: tenants, bundles and workflows on PostgreSQL or a SQLite file.

    store = Store.open("sqlite:///emirax.db")           # or "postgresql+psycopg://..."
    store.upgrade()                                       # alembic upgrade head
    tenant_id, token = store.create_tenant("acme")
    store.put_bundle(tenant_id, "media.encode", "1.0.0", digest, data, manifest)
    wid, created = store.create_workflow(tenant_id, "media.encode.VideoEncode", "media.encode", "1.0.0")
    with store.step(tenant_id, wid) as s:                 # one transaction, the workflow locked
        s.apply(engine_step(workflow, s.state, Start(facts)))

Every method takes the tenant id and filters by it: a workflow or bundle of another tenant is
exactly as invisible as a missing one. A step is one transaction that locks the workflow's row
(`SELECT ... FOR NO KEY UPDATE` on PostgreSQL, `BEGIN IMMEDIATE` on SQLite), so any number of
threads and processes can step the same workflow and each step sees the one before it. Nothing
of a step is written unless all of it is. docs/store.md describes the tables and the locking.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import uuid
from collections import OrderedDict, namedtuple
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.dialects import postgresql, sqlite

from emirax.engine.state import Pending, WorkflowState, key_from_json, key_to_json
from emirax.engine.step import Delta
from emirax.engine.values import FactValue
from server.store.models import (
    BUNDLES, FACTS, FIRED, IDEMPOTENCY, INVOCATIONS, PACKAGES, PENDING, TENANTS, TRACE, WORKFLOWS,
    utcnow,
)
from server.store.queue import OPEN, QueueStore, Refused, refusal, waiting_reasons
from server.store import deferred
from server.store.writes import Writes, postgres_statement, write_rows

__all__ = [
    "Conflict", "InvocationInfo", "NotFound", "PackageInfo", "Refused", "StepHandle", "Store",
    "StoreError", "Tenant", "TraceEntry", "VersionInfo", "WorkflowInfo", "alembic_config",
    "token_hash",
]

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# Held (pg_advisory_xact_lock) while migrating, so servers starting together migrate once.
MIGRATION_LOCK = 0x656D69726178  # "emirax"


LIVE = ("running", "waiting")  # the statuses whose states the cache keeps
_compact = partial(json.dumps, separators=(",", ":"), allow_nan=False)


# ── errors and records ─────────────────────────────────────────────────────────────────────────


class StoreError(Exception):
    """Base of the store's own errors (database errors pass through as SQLAlchemy's)."""


class Conflict(StoreError):
    """The write contradicts what is stored: another digest under an existing version, a taken
    tenant name. The API answers 409."""


class NotFound(StoreError):
    """No such row for this tenant (another tenant's row is not found either). The API answers 404."""


class _Record:
    """A row as the API reads it: attributes, `record["field"]`, and `to_json()` (ISO times)."""

    def __getitem__(self, name: str) -> Any:
        return getattr(self, name)

    def to_json(self) -> dict[str, Any]:
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclass_fields(self)}  # type: ignore[arg-type]


def _jsonable(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


@dataclass(frozen=True)
class Tenant(_Record):
    id: int
    name: str
    created_at: datetime


@dataclass(frozen=True)
class PackageInfo(_Record):
    package: str
    active_version: str


@dataclass(frozen=True)
class VersionInfo(_Record):
    version: str
    digest: str
    active: bool
    created_at: datetime


@dataclass(frozen=True)
class WorkflowInfo(_Record):
    """A workflow's row: what a list or a get shows without its facts."""

    id: str
    name: str
    package: str
    version: str
    status: str
    priority: int
    output: dict[str, Any] | None
    error: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class TraceEntry(_Record):
    seq: int
    at: datetime
    event: dict[str, Any]


@dataclass(frozen=True)
class InvocationInfo(_Record):
    id: int  # global: what a runner names
    call_id: int  # the engine's number in its workflow
    kind: str
    name: str
    args: list[Any]
    facts: list[dict[str, Any]]
    options: dict[str, Any]
    rule: str
    priority: int
    status: str
    created_at: datetime
    attempt: int = 1
    runner: str | None = None
    leased_at: datetime | None = None
    lease_expires: datetime | None = None
    available_at: datetime | None = None
    error: dict[str, Any] | None = None
    waiting: str = ""  # why it waits, in words (docs/queue.md)


_WORKFLOW_COLUMNS = ("id", "name", "package", "version", "status", "priority", "output", "error",
                     "created_at", "updated_at")


def _workflow_info(row: Any) -> WorkflowInfo:
    return WorkflowInfo(**{name: getattr(row, name) for name in _WORKFLOW_COLUMNS})


def token_hash(token: str) -> str:
    """What the tenants table keeps of a token: its sha256, hex."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def fired_key(key: Any) -> tuple[str, str]:
    """A refraction key as stored: (sha256 of the text, the compact JSON text)."""
    text = _compact(key_to_json(key))
    return hashlib.sha256(text.encode("utf-8")).hexdigest(), text


def alembic_config(url: str) -> Config:
    """An Alembic Config for the store's migrations, built in code (no alembic.ini)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


# ── the state cache ────────────────────────────────────────────────────────────────────────────


class _StateCache:
    """The states (with their matchers) of recently stepped workflows, by workflow pk.

    An entry is (revision, state). A step takes the entry out while it holds the row lock and
    uses it only if the row's revision is the same (no other process stepped the workflow since);
    the entry goes back, with the new revision, only after the commit. A state is never shared:
    whoever holds it holds the row lock."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.entries: OrderedDict[int, tuple[int, WorkflowState]] = OrderedDict()
        self.lock = threading.Lock()

    def take(self, pk: int, revision: int) -> WorkflowState | None:
        if not self.size:
            return None
        with self.lock:
            entry = self.entries.pop(pk, None)
        return entry[1] if entry is not None and entry[0] == revision else None

    def put(self, pk: int, revision: int, state: WorkflowState) -> None:
        if not self.size:
            return
        with self.lock:
            self.entries[pk] = (revision, state)
            self.entries.move_to_end(pk)
            while len(self.entries) > self.size:
                self.entries.popitem(last=False)


# ── the store ──────────────────────────────────────────────────────────────────────────────────


class Store(QueueStore):
    """The server's database. Thread-safe: each call takes a pooled connection of its own."""

    def __init__(self, engine: sa.Engine, *, state_cache: int = 0, max_in_flight: int = 256) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self.max_in_flight = max_in_flight
        self._ids: dict[int, str] = {}
        self._cache = _StateCache(state_cache)
        self._sqlite_writer = threading.RLock()
        self._group = threading.local()  # the shared transaction of this thread's group commit
        self._insert_row, self._locks = _step_statements(self.dialect, self._insert(WORKFLOWS))
        # The row locks as SQL for psycopg itself (PostgreSQL): see `_lock`.
        self._lock_sql = {by: str(query.compile(dialect=engine.dialect))
                          for by, query in self._locks.items()}
        self._pks: list[int] = []  # workflow pks taken from the sequence ahead (PostgreSQL)
        self._pks_lock = threading.Lock()
        if self.dialect == "postgresql":
            deferred.install(engine)

    @classmethod
    def open(cls, url: str, *, state_cache: int = 0, busy_timeout: float = 30.0,
             max_in_flight: int = 256, **engine_options: Any) -> Store:
        """Open a SQLite file (`sqlite:///path.db`) or PostgreSQL (`postgresql+psycopg://...`).

        `state_cache` keeps that many workflow states (and their matchers) in memory between
        steps; a cached state is used only while no other process has stepped the workflow.
        `busy_timeout` (SQLite) is how long a writer waits for the lock, in seconds.
        `max_in_flight` is a tenant's limit of invocations leased at once, unless its own row
        sets another."""
        parsed = sa.make_url(url)
        backend = parsed.get_backend_name()
        json_options = {"json_serializer": _compact}
        if backend == "sqlite":
            if parsed.database in (None, "", ":memory:"):
                raise ValueError("the store needs a SQLite file, not an in-memory database")
            engine = sa.create_engine(parsed, connect_args={"timeout": busy_timeout},
                                      **json_options, **engine_options)
            _sqlite_setup(engine, busy_timeout)
        elif backend == "postgresql":
            # No pre-ping: it costs a round trip per transaction; a connection that died with a
            # database restart fails its request once and is replaced (pool invalidation).
            engine = sa.create_engine(parsed, **json_options,
                                      **{"pool_size": 20, "max_overflow": 20, **engine_options})
        else:
            raise ValueError(f"unsupported database {backend!r}: use sqlite or postgresql+psycopg")
        return cls(engine, state_cache=state_cache, max_in_flight=max_in_flight)

    def close(self) -> None:
        self.engine.dispose()

    def ping(self) -> None:
        """Raise unless the database answers (for /healthz)."""
        with self.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    def upgrade(self, revision: str = "head") -> None:
        """`alembic upgrade head` on this database, under a lock so concurrent starts migrate once."""
        cfg = alembic_config(self.engine.url.render_as_string(hide_password=False))
        with self._tx(write=True) as conn:
            if self.dialect == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK})
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)

    # ── transactions ───────────────────────────────────────────────────────────────────────────

    @contextmanager
    def _tx(self, *, write: bool, snapshot: bool = False) -> Iterator[sa.Connection]:
        """One transaction. A write takes SQLite's write lock at BEGIN (a deferred transaction
        that writes later can fail at once with SQLITE_BUSY instead of waiting). A `snapshot`
        read is REPEATABLE READ on PostgreSQL, so its several SELECTs see one committed state
        (a SQLite read transaction is a snapshot already)."""
        shared = getattr(self._group, "conn", None) if write else None
        if shared is not None:  # joins the group's transaction: it commits or rolls back for all
            yield shared
            return
        if write and self.dialect == "sqlite":
            # Writers of this process queue on a lock instead of on SQLite's busy handler, whose
            # backoff (up to 100 ms a try) made the tail latency; other processes still meet
            # BEGIN IMMEDIATE.
            with self._sqlite_writer, self.engine.connect() as conn:
                conn.execution_options(emirax_immediate=True)
                with conn.begin():
                    yield conn
            return
        with self.engine.connect() as conn:
            if snapshot and self.dialect == "postgresql":
                conn.execution_options(isolation_level="REPEATABLE READ")
            try:
                with conn.begin():
                    yield conn
                    if write and self.dialect == "postgresql":
                        deferred.send(conn, commit=True)  # the writes kept back, and COMMIT
            finally:
                deferred.end(conn)

    @contextmanager
    def group(self) -> Iterator[None]:
        """Group commit: the write transactions this thread opens inside the block (steps, on
        any workflows) are one transaction, committed once when the block ends, or rolled back
        together when it raises. What must wait for the commit (`_after_commit`) runs after it,
        in order. server/committer.py uses it; docs/store.md says why."""
        if getattr(self._group, "conn", None) is not None:
            raise RuntimeError("group() does not nest")
        after: list[Callable[[], None]] = []
        with self._tx(write=True) as conn:
            self._group.conn, self._group.after, self._group.ahead = conn, after, {}
            try:
                yield
            finally:
                self._group.conn = self._group.after = self._group.ahead = None
        for callback in after:
            callback()

    def lock_ahead(self, workflows: list[tuple[int, str]]) -> None:
        """In a group on PostgreSQL: lock the rows of these (tenant, workflow id) pairs with ONE
        statement, in the order every group locks (by id), for the steps about to run: the
        first step of each takes its row from here instead of asking (a second step of the same
        workflow asks again: the first changed the row). SQLite's group holds the whole
        database already."""
        conn = getattr(self._group, "conn", None)
        if conn is None or self.dialect != "postgresql" or len(workflows) < 2:
            return
        pairs = json.dumps([{"t": t, "i": i} for t, i in sorted(set(workflows))])
        rows = map(_WorkflowRow._make, deferred.fetch(conn, _LOCK_MANY, {"pairs": pairs}))
        self._group.ahead = {(row.tenant_id, row.id): row for row in rows}

    def _after_commit(self, callback: Callable[[], None]) -> None:
        """Run `callback` once this thread's transaction has committed: now, when it has (a
        transaction of its own ended), or when the group's commit comes. A rolled-back group
        never runs it."""
        after = getattr(self._group, "after", None)
        if after is None:
            callback()
        else:
            after.append(callback)

    def _insert(self, table: sa.Table) -> Any:
        """INSERT with this dialect's ON CONFLICT support."""
        return (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(table)

    # ── tenants ────────────────────────────────────────────────────────────────────────────────

    def create_tenant(self, name: str, max_in_flight: int | None = None) -> tuple[int, str]:
        """A new tenant and its token (shown once: only its hash is stored). `max_in_flight`:
        its invocations leased at once (None: the server's default)."""
        token = secrets.token_urlsafe(32)
        try:
            with self._tx(write=True) as conn:
                result = conn.execute(TENANTS.insert().values(
                    name=name, token_hash=token_hash(token), max_in_flight=max_in_flight,
                    created_at=utcnow()))
                return int(result.inserted_primary_key[0]), token
        except sa.exc.IntegrityError:
            raise Conflict(f"a tenant named {name!r} exists") from None

    def tenant_by_token(self, token: str) -> Tenant | None:
        with self._tx(write=False) as conn:
            row = conn.execute(sa.select(TENANTS.c.id, TENANTS.c.name, TENANTS.c.created_at)
                               .where(TENANTS.c.token_hash == token_hash(token))).first()
        return Tenant(row.id, row.name, row.created_at) if row is not None else None

    # ── idempotency keys ───────────────────────────────────────────────────────────────────────

    def reserve(self, tenant_id: int, key: str, request_hash: str,
                stale_after: float = 60.0) -> tuple[str, int, Any] | None:
        """Claim `key` for a request about to run: None when this request holds it now;
        otherwise what is kept under it, (request hash, status, body), where status 0 means
        another request holding it is still running. A claim older than `stale_after` seconds
        whose request never finished (its server died) is taken over."""
        now = utcnow()
        i = IDEMPOTENCY.c
        with self._tx(write=True) as conn:
            claimed = conn.execute(
                self._insert(IDEMPOTENCY).values(
                    tenant_id=tenant_id, key=key, request_hash=request_hash, status=0, body={},
                    created_at=now)
                .on_conflict_do_nothing(index_elements=["tenant_id", "key"])
                .returning(i.key)).first()
            if claimed is not None:
                return None
            row = conn.execute(sa.select(i.request_hash, i.status, i.body, i.created_at)
                               .where(i.tenant_id == tenant_id, i.key == key)
                               .with_for_update()).one()
            if row.status == 0 and row.request_hash == request_hash and \
                    row.created_at < now - timedelta(seconds=stale_after):
                conn.execute(IDEMPOTENCY.update().where(i.tenant_id == tenant_id, i.key == key)
                             .values(created_at=now))
                return None
        return row.request_hash, row.status, row.body

    def remember(self, tenant_id: int, key: str, status: int, body: Any) -> None:
        """Keep the answer of the request that holds `key` (a 2xx): replays get it."""
        i = IDEMPOTENCY.c
        with self._tx(write=True) as conn:
            conn.execute(IDEMPOTENCY.update()
                         .where(i.tenant_id == tenant_id, i.key == key, i.status == 0)
                         .values(status=status, body=body))

    def release_key(self, tenant_id: int, key: str) -> None:
        """The request holding `key` failed (not a 2xx): free the key, so a retry runs again."""
        i = IDEMPOTENCY.c
        with self._tx(write=True) as conn:
            conn.execute(IDEMPOTENCY.delete().where(i.tenant_id == tenant_id, i.key == key,
                                                    i.status == 0))

    # ── always on ──────────────────────────────────────────────────────────────────────────────

    def stale_workflows(self, limit: int = 100) -> list[tuple[int, str, str]]:
        """Waiting and completed workflows whose package has another active version than the one
        they ran under, as (tenant id, workflow id, active version): what re-evaluation owes.
        The store is the record of progress, so a restarted server finds what is left."""
        w, p = WORKFLOWS, PACKAGES
        with self._tx(write=False) as conn:
            rows = conn.execute(
                sa.select(w.c.tenant_id, w.c.id, p.c.active_version)
                .join(p, sa.and_(p.c.tenant_id == w.c.tenant_id, p.c.package == w.c.package))
                .where(w.c.status.in_(("waiting", "completed")), w.c.version != p.c.active_version)
                .order_by(w.c.tenant_id, w.c.pk).limit(limit)).all()
        return [(r.tenant_id, r.id, r.active_version) for r in rows]

    def queue_depths(self) -> dict[int, int]:
        """Invocations queued per tenant (the /metrics gauge)."""
        i = INVOCATIONS
        with self._tx(write=False) as conn:
            rows = conn.execute(sa.select(i.c.tenant_id, sa.func.count())
                                .where(i.c.status == "queued").group_by(i.c.tenant_id)).all()
        return {int(t): int(n) for t, n in rows}

    def workflows_of(self, tenant_id: int, package: str, limit: int = 1000) -> list[str]:
        """Ids of a package's waiting and completed workflows (for an impact preview)."""
        w = WORKFLOWS
        with self._tx(write=False) as conn:
            rows = conn.execute(
                sa.select(w.c.id).where(w.c.tenant_id == tenant_id, w.c.package == package,
                                        w.c.status.in_(("waiting", "completed")))
                .order_by(w.c.pk).limit(limit)).all()
        return [r.id for r in rows]

    # ── bundles ────────────────────────────────────────────────────────────────────────────────

    def put_bundle(self, tenant_id: int, package: str, version: str, digest: str, data: bytes,
                   manifest: dict[str, Any]) -> Literal["created", "same"]:
        """Store a verified bundle. The same digest again is a no-op ("same"); another digest
        under a version that exists raises Conflict. A package's first version becomes active."""
        with self._tx(write=True) as conn:
            added = conn.execute(
                self._insert(BUNDLES).values(
                    tenant_id=tenant_id, package=package, version=version, digest=digest,
                    data=data, manifest=manifest, created_at=utcnow())
                .on_conflict_do_nothing(index_elements=["tenant_id", "package", "version"])
                .returning(BUNDLES.c.id)).first()
            if added is None:
                stored = conn.execute(sa.select(BUNDLES.c.digest).where(
                    *_bundle_key(tenant_id, package, version))).scalar_one()
                if stored != digest:
                    raise Conflict(f"{package} {version} exists with another digest ({stored})")
                return "same"
            conn.execute(self._insert(PACKAGES).values(
                tenant_id=tenant_id, package=package, active_version=version)
                .on_conflict_do_nothing(index_elements=["tenant_id", "package"]))
            return "created"

    def activate(self, tenant_id: int, package: str, version: str) -> str:
        """Make `version` the active one (also a rollback); returns the version active before."""
        with self._tx(write=True) as conn:
            exists = conn.execute(sa.select(BUNDLES.c.id).where(
                *_bundle_key(tenant_id, package, version))).first()
            before = conn.execute(
                sa.select(PACKAGES.c.active_version)
                .where(PACKAGES.c.tenant_id == tenant_id, PACKAGES.c.package == package)
                .with_for_update()).scalar_one_or_none()
            if exists is None or before is None:
                raise NotFound(f"no version {version} of {package}")
            conn.execute(PACKAGES.update()
                         .where(PACKAGES.c.tenant_id == tenant_id, PACKAGES.c.package == package)
                         .values(active_version=version))
            return str(before)

    def packages(self, tenant_id: int) -> list[PackageInfo]:
        with self._tx(write=False) as conn:
            rows = conn.execute(sa.select(PACKAGES.c.package, PACKAGES.c.active_version)
                                .where(PACKAGES.c.tenant_id == tenant_id)
                                .order_by(PACKAGES.c.package)).all()
        return [PackageInfo(r.package, r.active_version) for r in rows]

    def active_version(self, tenant_id: int, package: str) -> str | None:
        with self._tx(write=False) as conn:
            return conn.execute(sa.select(PACKAGES.c.active_version).where(
                PACKAGES.c.tenant_id == tenant_id, PACKAGES.c.package == package)).scalar()

    def versions(self, tenant_id: int, package: str) -> list[VersionInfo] | None:
        """A package's versions, oldest first, with the active one marked; None if no such package."""
        with self._tx(write=False, snapshot=True) as conn:
            active = conn.execute(sa.select(PACKAGES.c.active_version).where(
                PACKAGES.c.tenant_id == tenant_id, PACKAGES.c.package == package)).scalar()
            if active is None:
                return None
            rows = conn.execute(
                sa.select(BUNDLES.c.version, BUNDLES.c.digest, BUNDLES.c.created_at)
                .where(BUNDLES.c.tenant_id == tenant_id, BUNDLES.c.package == package)
                .order_by(BUNDLES.c.id)).all()
        return [VersionInfo(r.version, r.digest, r.version == active, r.created_at) for r in rows]

    def bundle(self, tenant_id: int, package: str,
               version: str) -> tuple[bytes, dict[str, Any], str] | None:
        """(data, manifest, digest) of one stored version, or None."""
        with self._tx(write=False) as conn:
            row = conn.execute(sa.select(BUNDLES.c.data, BUNDLES.c.manifest, BUNDLES.c.digest)
                               .where(*_bundle_key(tenant_id, package, version))).first()
        return (bytes(row.data), row.manifest, row.digest) if row is not None else None

    # ── workflows ──────────────────────────────────────────────────────────────────────────────

    def create_workflow(self, tenant_id: int, name: str, package: str, version: str,
                        client_id: str | None = None, priority: int = 0) -> tuple[str, bool]:
        """A new workflow row (no facts yet). The same client id twice gives (id, False).

        A server that starts a workflow with facts should use `start`, which creates the row
        and applies the first step in one transaction."""
        with self.start(tenant_id, name, package, version, client_id, priority) as s:
            return s.workflow.id, s.created

    @contextmanager
    def start(self, tenant_id: int, name: str, package: str, version: str,
              client_id: str | None = None, priority: int = 0) -> Iterator[StepHandle]:
        """Create a workflow and step it in ONE transaction (a crash cannot leave a started
        workflow without its first facts). With a client id that exists, nothing is created:
        the handle has `created == False` and the existing workflow, locked, as `step` gives it."""
        wid = _client_id(client_id) if client_id is not None else uuid.uuid4().hex
        with self._handle(tenant_id, wid, create=(name, package, version, priority),
                          fresh=client_id is None) as handle:
            yield handle

    @contextmanager
    def step(self, tenant_id: int, workflow_id: str) -> Iterator[StepHandle]:
        """ONE transaction on one workflow, its row locked: `.state` is its WorkflowState,
        `.apply(delta)` writes what the engine's step changed. Commits when the block ends,
        rolls back (writing nothing) when it raises. NotFound for a missing or foreign workflow."""
        with self._handle(tenant_id, workflow_id, create=None) as handle:
            yield handle

    @contextmanager
    def step_invocation(self, tenant_id: int, invocation_id: int) -> Iterator[StepHandle]:
        """`step` on the workflow of one of the tenant's invocations (a runner names only the
        invocation). NotFound when the tenant has no such invocation."""
        with self._handle(tenant_id, None, create=None, invocation=invocation_id) as handle:
            yield handle

    @contextmanager
    def _handle(self, tenant_id: int, workflow_id: str | None,
                create: tuple[str, str, str, int] | None,
                invocation: int | None = None, fresh: bool = False) -> Iterator[StepHandle]:
        handle: StepHandle | None = None
        try:
            with self._tx(write=True) as conn:
                # A row this transaction inserted is its own until the commit: no lock needed.
                row = (self._insert_workflow(conn, tenant_id, workflow_id, *create, fresh=fresh)
                       if create is not None and workflow_id is not None else None)
                created = row is not None
                if not created:
                    row = self._lock(conn, tenant_id, workflow_id, invocation)
                    if row is None:
                        raise NotFound(f"no workflow {workflow_id}" if invocation is None
                                       else f"no invocation {invocation}")
                if created:
                    state = _load_state(conn, row, empty=True)
                else:  # the cached state, unless another process stepped the workflow since
                    state = self._cache.take(row.pk, row.revision)
                    if state is None:
                        state = _load_state(conn, row)
                handle = StepHandle(self, conn, tenant_id, row, state, created)
                yield handle
        finally:
            if handle is not None:
                handle._closed = True
        # Committed (or, in a group, once it is): the state is the stored one again (a
        # rolled-back one is never put back). A workflow that has ended is rarely stepped
        # again (a new version's re-evaluation reads it back): its state is not kept, so the
        # cache holds live workflows, not a heap of finished ones for the collector to scan.
        if handle.revision != row.revision and handle.state.status in LIVE:
            self._after_commit(partial(self._cache.put, row.pk, handle.revision, handle.state))

    def _insert_workflow(self, conn: sa.Connection, tenant_id: int, workflow_id: str, name: str,
                         package: str, version: str, priority: int,
                         parent: tuple[int, int] | None = None, fresh: bool = False) -> Any:
        """The new row, or None when the tenant has a workflow with this id already. A `fresh`
        id (generated here, so taken by nobody) on PostgreSQL is written with the commit: its
        pk comes from the sequence ahead of time, and the row is known without asking."""
        now = utcnow()
        values = {
            "id": workflow_id, "tenant_id": tenant_id, "name": name, "package": package,
            "version": version, "status": "waiting", "output": None, "error": None,
            "priority": priority, "next_fact": 1, "next_call": 1, "next_pending": 1, "next_seq": 1,
            "revision": 0, "created_at": now, "updated_at": now,
            "parent_pk": parent[0] if parent else None,
            "parent_call": parent[1] if parent else None}
        if not (fresh and self.dialect == "postgresql"):
            return conn.execute(self._insert_row, values).first()
        row = _WorkflowRow(pk=self._new_pk(conn), **values)
        deferred.later(conn, _INSERT_WORKFLOW, row._asdict())
        return row

    def _new_pk(self, conn: sa.Connection) -> int:
        """A workflow pk from the sequence, taken PK_BLOCK at a time (one round trip for many
        starts; a block a crash leaves unused is a gap, as any rolled-back insert leaves)."""
        with self._pks_lock:
            if not self._pks:
                self._pks = list(conn.exec_driver_sql(
                    "SELECT nextval(pg_get_serial_sequence('workflows', 'pk')) "
                    f"FROM generate_series(1, {PK_BLOCK})").scalars())[::-1]
            return self._pks.pop()

    def _lock(self, conn: sa.Connection, tenant_id: int, workflow_id: str | None,
              invocation: int | None = None, pk: int | None = None) -> Any:
        """The workflow's row, locked: by public id, by the pk, or as an invocation's workflow."""
        ahead = getattr(self._group, "ahead", None)
        if ahead and invocation is None and pk is None:
            row = ahead.pop((tenant_id, workflow_id), None)
            if row is not None:
                return row
        if invocation is not None:
            by, params = "invocation", {"invocation": invocation}
        elif pk is not None:
            by, params = "pk", {"pk": pk}
        else:
            by, params = "id", {"workflow_id": workflow_id}
        params["tenant_id"] = tenant_id
        if self.dialect != "postgresql":
            return conn.execute(self._locks[by], params).first()
        # Usually a transaction's first statement: through psycopg itself, in one query with the
        # BEGIN (and any writes waiting), it is one round trip instead of two (deferred.py).
        found = deferred.fetch(conn, self._lock_sql[by], params)
        return _WorkflowRow(*found[0]) if found else None

    def _nested(self, outer: StepHandle, row: Any, created: bool) -> StepHandle:
        """A handle on another workflow in `outer`'s transaction (a child it starts, a parent
        its end settles). Its state is read from the rows: the cache is only for top-level
        steps, and a cached entry of this workflow is now one revision behind, so unused."""
        state = _load_state(outer._conn, row, empty=created)
        return StepHandle(self, outer._conn, outer._tenant_id, row, state, created)

    def load(self, tenant_id: int, workflow_id: str) -> WorkflowState | None:
        """The workflow's state, rebuilt from its rows (a new object, not locked); None when
        missing or another tenant's."""
        with self._tx(write=False, snapshot=True) as conn:
            row = _select_workflow(conn, tenant_id, workflow_id)
            return _load_state(conn, row) if row is not None else None

    def workflow(self, tenant_id: int, workflow_id: str) -> WorkflowInfo | None:
        with self._tx(write=False) as conn:
            row = _select_workflow(conn, tenant_id, workflow_id)
        return _workflow_info(row) if row is not None else None

    def describe(self, tenant_id: int, workflow_id: str) -> dict[str, Any] | None:
        """What `GET /v1/workflows/{id}` shows, read in one snapshot: the row (as
        WorkflowInfo.to_json(), with `workflow` the full name), `facts` as {"type", "fields"}
        oldest first, and `pending`, the queued invocations. None when missing or foreign."""
        with self._tx(write=False, snapshot=True) as conn:
            row = _select_workflow(conn, tenant_id, workflow_id)
            if row is None:
                return None
            facts = conn.execute(sa.select(FACTS.c.type, FACTS.c.fields)
                                 .where(FACTS.c.workflow_pk == row.pk)
                                 .order_by(FACTS.c.fact_id)).all()
            queued = _queued(conn, row.pk, self.max_in_flight)
        doc = _workflow_info(row).to_json()
        doc["workflow"] = doc.pop("name")
        doc["facts"] = [{"type": f.type, "fields": f.fields} for f in facts]
        doc["pending"] = [i.to_json() for i in queued]
        return doc

    def list_workflows(self, tenant_id: int, name: str | None = None, status: str | None = None,
                       after: str | None = None,
                       limit: int = 50) -> tuple[list[WorkflowInfo], str | None]:
        """A page of workflows ordered by id, after the cursor `after` (an id); the cursor of
        the next page, or None on the last. Served by (tenant_id, status|name, id) indexes."""
        limit = max(1, min(int(limit), 1000))
        w = WORKFLOWS.c
        query = sa.select(*(getattr(w, c) for c in _WORKFLOW_COLUMNS)).where(w.tenant_id == tenant_id)
        if name is not None:
            query = query.where(w.name == name)
        if status is not None:
            query = query.where(w.status == status)
        if after is not None:
            query = query.where(w.id > after)
        with self._tx(write=False) as conn:
            rows = conn.execute(query.order_by(w.id).limit(limit + 1)).all()
        page = [_workflow_info(r) for r in rows[:limit]]
        return page, (page[-1].id if len(rows) > limit else None)

    def trace(self, tenant_id: int, workflow_id: str, after_seq: int = 0,
              limit: int = 500) -> list[TraceEntry] | None:
        """Trace events with seq > after_seq, oldest first; None for a missing workflow."""
        limit = max(1, min(int(limit), 10_000))
        with self._tx(write=False) as conn:
            pk = _workflow_pk(conn, tenant_id, workflow_id)
            if pk is None:
                return None
            rows = conn.execute(sa.select(TRACE.c.seq, TRACE.c.at, TRACE.c.event)
                                .where(TRACE.c.workflow_pk == pk, TRACE.c.seq > after_seq)
                                .order_by(TRACE.c.seq).limit(limit)).all()
        return [TraceEntry(r.seq, r.at, r.event) for r in rows]

    def pending_invocations(self, tenant_id: int, workflow_id: str) -> list[InvocationInfo] | None:
        """The workflow's queued invocations by call id; None for a missing workflow."""
        with self._tx(write=False) as conn:
            pk = _workflow_pk(conn, tenant_id, workflow_id)
            return _queued(conn, pk, self.max_in_flight) if pk is not None else None


# ── one step ───────────────────────────────────────────────────────────────────────────────────


class StepHandle:
    """What `Store.step` and `Store.start` yield: the locked workflow, its state, and `apply`.

    Valid only inside the `with` block. `apply` may be called more than once (a step per
    event); everything is committed together when the block ends."""

    def __init__(self, store: Store, conn: sa.Connection, tenant_id: int, row: Any,
                 state: WorkflowState, created: bool) -> None:
        self._store = store
        self._conn = conn
        self._tenant_id = tenant_id
        self._row: dict[str, Any] = row._asdict()
        self._pk: int = row.pk
        self._seq: int = row.next_seq
        self._open = set(state.calls)  # invocations queued before this delta
        self._results: dict[int, Any] = {}  # call id -> the result a runner reported
        self._settled: set[int] = set()  # calls whose row `failed` wrote already
        self._closed = False
        self._base_revision: int = row.revision
        self.state = state
        self.created = created
        self.revision: int = row.revision

    @property
    def version(self) -> str:
        """The bundle version the workflow runs under (the one to step it with)."""
        return str(self._row["version"])

    def view(self) -> dict[str, Any]:
        """What `Store.describe` gives, from this transaction: the facts from the state in
        memory, the queued invocations read here (no second transaction)."""
        doc = self.workflow.to_json()
        doc["workflow"] = doc.pop("name")
        doc["facts"] = self.state.fact_list()
        # The state's open calls are exactly the queued and leased rows: none, nothing to read.
        doc["pending"] = ([i.to_json() for i in _queued(self._conn, self._pk, self._store.max_in_flight)]
                          if self.state.calls else [])
        return doc

    @property
    def workflow(self) -> WorkflowInfo:
        """The workflow's row as of the last `apply` (as locked, before any)."""
        return WorkflowInfo(**{name: self._row[name] for name in _WORKFLOW_COLUMNS})

    def apply(self, delta: Delta, cache_keys: dict[int, str] | None = None) -> None:
        """Write one delta of the engine's `step` on this handle's state. `cache_keys` (call id
        -> key) marks the new calls whose results may be reused (execution avoidance)."""
        if self._closed:
            raise StoreError("this step's transaction has ended")
        w = Writes(utcnow())
        _fact_writes(w, delta)
        w.fired = [{"key_hash": h, "key": text} for h, text in map(fired_key, delta.fired)]
        _pending_writes(w, delta)
        self._invocation_writes(w, delta, cache_keys or {})
        w.trace = [{"seq": self._seq + i, "event": event} for i, event in enumerate(delta.trace)]
        self._seq += len(delta.trace)
        self._workflow_writes(w, delta)
        if self._store.dialect == "postgresql":  # one statement, sent with the commit
            statement = postgres_statement(self._conn, self._pk, w)
            if statement is not None:
                deferred.later(self._conn, *statement)
        else:
            write_rows(self._conn, self._pk, w)

    # ── the invocation queue (docs/queue.md) ──────────────────────────────────────────────────

    @property
    def tenant_id(self) -> int:
        return self._tenant_id

    def invocation(self, invocation_id: int, fence: int | None = None) -> Any:
        """This workflow's invocation row, locked; with `fence`, Refused unless that lease is
        the current one and still held."""
        row = self.invocations([invocation_id]).get(invocation_id)
        if row is None:
            raise NotFound(f"no invocation {invocation_id}")
        if fence is not None:
            refused = refusal(row, fence)
            if refused is not None:
                raise refused
        return row

    def invocations(self, ids: list[int]) -> dict[int, Any]:
        """This workflow's invocation rows among `ids`, locked, by id."""
        rows = self._conn.execute(sa.select(INVOCATIONS).where(
            INVOCATIONS.c.id.in_(ids), INVOCATIONS.c.workflow_pk == self._pk)
            .order_by(INVOCATIONS.c.id).with_for_update()).all()
        return {r.id: r for r in rows}

    def record_results(self, results: dict[int, Any], *, replace: bool = False) -> None:
        """The results (by call id) the next `apply` closes calls with: their rows are marked
        done with the result kept (for execution avoidance) in the same statement."""
        if replace:
            self._results.clear()
        self._results.update(results)

    def failed(self, row: Any, error: dict[str, Any]) -> None:
        """Record that an invocation failed for good (with its last error), before the step
        that tells the engine (whose write then leaves the row alone)."""
        self._settled.add(row.call_id)
        self._conn.execute(INVOCATIONS.update().where(INVOCATIONS.c.id == row.id).values(
            status="failed", error=error, finished_at=utcnow(), lease_expires=None))

    def retry(self, invocation_id: int, attempt: int, available_at: datetime,
              error: dict[str, Any]) -> None:
        """Queue an invocation again for `attempt`, available from `available_at`."""
        self._conn.execute(INVOCATIONS.update().where(INVOCATIONS.c.id == invocation_id).values(
            status="queued", attempt=attempt, available_at=available_at, error=error, runner=None,
            leased_at=None, lease_expires=None))

    def reusable(self, keys: dict[int, tuple[str, float | None]]) -> dict[int, Any]:
        """Execution avoidance: for each new call (call id -> (cache key, max age in seconds or
        None)), the result of a call with the same key that succeeded in this workflow (the
        latest, no older than the max age); calls without one are absent. One query."""
        i = INVOCATIONS.c
        rows = self._conn.execute(
            sa.select(i.cache_key, i.result, i.finished_at)
            .where(i.workflow_pk == self._pk, i.cache_key.in_({k for k, _ in keys.values()}),
                   i.status == "done", i.result.is_not(None))
            .order_by(i.id)).all()
        latest = {r.cache_key: r for r in rows}  # ordered by id: the last one wins
        now = utcnow()
        found: dict[int, Any] = {}
        for call, (key, max_age) in keys.items():
            row = latest.get(key)
            if row is not None and (max_age is None or row.finished_at >= now - timedelta(seconds=max_age)):
                found[call] = row.result
        return found

    def note(self, events: list[dict[str, Any]]) -> None:
        """Add trace events that change no state (a failed attempt that will be retried)."""
        if not events:
            return
        now = utcnow()
        self._conn.execute(TRACE.insert(), [
            {"workflow_pk": self._pk, "seq": self._seq + i, "at": now, "event": event}
            for i, event in enumerate(events)])
        self._seq += len(events)
        self._conn.execute(WORKFLOWS.update().where(WORKFLOWS.c.pk == self._pk)
                           .values(next_seq=self._seq))
        self._row["next_seq"] = self._seq

    def notify(self, channel: str, payload: str) -> None:
        """PostgreSQL NOTIFY, sent when this transaction commits (nothing on SQLite)."""
        if self._store.dialect == "postgresql":
            self._conn.execute(sa.text("SELECT pg_notify(:c, :p)"), {"c": channel, "p": payload})

    def start_child(self, name: str, package: str, version: str, call_id: int) -> StepHandle:
        """A child workflow for this workflow's `start` call, created in this transaction; its
        id is `<parent id>:<call id>`. Step it with the handle returned."""
        store = self._store
        child_id = f"{self._row['id']}:{call_id}"[:255]
        row = store._insert_workflow(self._conn, self._tenant_id, child_id, name, package,
                                     version, self._row["priority"], parent=(self._pk, call_id))
        if row is None:
            raise Conflict(f"a workflow {child_id} exists")
        return store._nested(self, row, created=True)

    def parent(self) -> tuple[StepHandle, int] | None:
        """(a handle on the parent workflow, locked in this transaction, and the call this
        workflow settles), while the parent still waits for it; else None."""
        pk, call = self._row.get("parent_pk"), self._row.get("parent_call")
        if pk is None or call is None:
            return None
        still_open = self._conn.execute(sa.select(INVOCATIONS.c.id).where(
            INVOCATIONS.c.workflow_pk == pk, INVOCATIONS.c.call_id == call,
            INVOCATIONS.c.status.in_(OPEN))).first()
        if still_open is None:
            return None
        row = self._store._lock(self._conn, self._tenant_id, None, pk=pk)
        return (self._store._nested(self, row, created=False), call) if row is not None else None

    def _invocation_writes(self, w: Writes, delta: Delta, cache_keys: dict[int, str]) -> None:
        """Queue the new invocations and settle the ones that left the state's open calls:
        cancelled ones as the delta says, the others because a result or failure closed them."""
        cancelled = set(delta.cancelled)
        still_open = set(self.state.calls)
        new = {inv.id for inv in delta.invocations}
        w.calls_new = [
            {"tenant_id": self._tenant_id, "call_id": inv.id, "kind": inv.kind, "name": inv.name,
             "args": inv.args, "facts": inv.facts, "options": inv.options, "rule": inv.rule,
             "priority": _priority(inv.options, self._row["priority"]),
             "status": ("cancelled" if inv.id in cancelled
                        else "queued" if inv.id in still_open else "done"),
             "cache_key": cache_keys.get(inv.id), "created_at": w.now}
            for inv in delta.invocations]
        settled = self._open - still_open - self._settled
        with_results = {c: self._results.pop(c) for c in settled - cancelled if c in self._results}
        w.calls_done_with_result = [{"call_id": c, "result": v} for c, v in with_results.items()]
        for status, calls in (("cancelled", settled & cancelled),
                              ("done", settled - cancelled - set(with_results))):
            if calls - new:
                w.calls_closed[status] = sorted(calls - new)
        self._open = still_open

    def _workflow_writes(self, w: Writes, delta: Delta) -> None:
        state = self.state
        self.revision = self._base_revision + 1  # one revision per transaction
        w.workflow = {
            "status": delta.status, "output": delta.output, "error": delta.error,
            "version": state.version or self._row["version"], "next_fact": state.next_fact,
            "next_call": state.next_call, "next_pending": state.next_pending,
            "next_seq": self._seq, "revision": self.revision, "updated_at": w.now,
        }
        self._row.update(w.workflow)


# ── reading and writing a workflow's rows ──────────────────────────────────────────────────────


def _bundle_key(tenant_id: int, package: str, version: str) -> tuple[Any, ...]:
    b = BUNDLES.c
    return (b.tenant_id == tenant_id, b.package == package, b.version == version)


def _client_id(client_id: str) -> str:
    if not isinstance(client_id, str) or not 1 <= len(client_id) <= 255:
        raise ValueError("a workflow id is a string of 1 to 255 characters")
    return client_id


def _priority(options: dict[str, Any], workflow_priority: int) -> int:
    """An invocation's queue priority: its workflow's (from the start request) plus its
    function's `priority` option (0 unless declared), so a start request raises all of a
    workflow's work and the function's option orders work within it."""
    p = options.get("priority", 0)
    return workflow_priority + (p if isinstance(p, int) and not isinstance(p, bool) else 0)


PK_BLOCK = 32
_WorkflowRow = namedtuple("_WorkflowRow", [c.name for c in WORKFLOWS.c])  # a row known unread
_INSERT_WORKFLOW = (f"INSERT INTO workflows ({', '.join(_WorkflowRow._fields)}) VALUES "
                    f"({', '.join(f'%({name})s' for name in _WorkflowRow._fields)})")
# A group's rows, locked in the order every group locks them (PostgreSQL: `Store.lock_ahead`);
# the (tenant, id) pairs travel as one JSON document.
_LOCK_MANY = (f"SELECT {', '.join(_WorkflowRow._fields)} FROM workflows WHERE (tenant_id, id) IN "
              "(SELECT x.t, x.i FROM json_to_recordset(CAST(%(pairs)s AS json)) AS x(t int, i text)) "
              "ORDER BY id, tenant_id FOR NO KEY UPDATE")


def _step_statements(dialect: str, insert: Any) -> tuple[Any, dict[str, Any]]:
    """The statements every step runs, built once: SQLAlchemy finds a built statement's compiled
    form by its memoized cache key, where a statement built per step costs more to build and
    key than the database takes to run it (docs/server.md). The INSERT of a new workflow row
    (None when the tenant has that id already), and the row's lock by id, pk or invocation."""
    columns = [c for c in WORKFLOWS.c if c.name != "pk"]
    insert_row = (insert.values({c.name: sa.bindparam(c.name, type_=c.type) for c in columns})
                  .on_conflict_do_nothing(index_elements=["tenant_id", "id"])
                  .returning(*WORKFLOWS.c))
    base = sa.select(WORKFLOWS).where(WORKFLOWS.c.tenant_id == sa.bindparam("tenant_id"))
    of_invocation = (sa.select(INVOCATIONS.c.workflow_pk)
                     .where(INVOCATIONS.c.id == sa.bindparam("invocation"),
                            INVOCATIONS.c.tenant_id == sa.bindparam("tenant_id")).scalar_subquery())
    locks = {"id": base.where(WORKFLOWS.c.id == sa.bindparam("workflow_id")),
             "pk": base.where(WORKFLOWS.c.pk == sa.bindparam("pk")),
             "invocation": base.where(WORKFLOWS.c.pk == of_invocation)}
    if dialect == "postgresql":
        # NO KEY UPDATE: serialises steps of this workflow, yet does not block other
        # transactions inserting rows that refer to it (a foreign key takes KEY SHARE).
        locks = {by: query.with_for_update(key_share=True) for by, query in locks.items()}
    return insert_row, locks


def _select_workflow(conn: sa.Connection, tenant_id: int, workflow_id: str) -> Any:
    return conn.execute(sa.select(WORKFLOWS).where(
        WORKFLOWS.c.tenant_id == tenant_id, WORKFLOWS.c.id == workflow_id)).first()


def _workflow_pk(conn: sa.Connection, tenant_id: int, workflow_id: str) -> int | None:
    return conn.execute(sa.select(WORKFLOWS.c.pk).where(
        WORKFLOWS.c.tenant_id == tenant_id, WORKFLOWS.c.id == workflow_id)).scalar()


def _load_state(conn: sa.Connection, row: Any, *, empty: bool = False) -> WorkflowState:
    """The WorkflowState of a workflow row and its facts, refraction keys and pending
    activations (`empty`: a row just inserted has none, so nothing is read)."""
    pk = row.pk
    facts: Iterable[Any] = ()
    keys: Iterable[str] = ()
    docs: Iterable[Any] = ()
    if not empty:
        facts = conn.execute(sa.select(FACTS.c.fact_id, FACTS.c.version, FACTS.c.type,
                                       FACTS.c.fields)
                             .where(FACTS.c.workflow_pk == pk).order_by(FACTS.c.fact_id)).all()
        keys = conn.execute(sa.select(FIRED.c.key).where(FIRED.c.workflow_pk == pk)).scalars()
        docs = conn.execute(sa.select(PENDING.c.doc).where(PENDING.c.workflow_pk == pk)
                            .order_by(PENDING.c.pending_id)).scalars()
    pending = {p.id: p for p in map(Pending.from_json, docs)}
    return WorkflowState(
        workflow=row.name,
        facts={f.fact_id: FactValue(f.type, f.fields, f.fact_id, f.version) for f in facts},
        fired={key_from_json(json.loads(k)) for k in keys},
        pending=pending,
        calls=_open_calls(pending.values()),
        status=row.status, output=row.output, error=row.error, version=row.version,
        next_fact=row.next_fact, next_call=row.next_call, next_pending=row.next_pending,
    )


def _open_calls(pending: Iterable[Pending]) -> dict[int, int]:
    """The state's open invocations: every call of a pending activation without its result
    (a result or failure takes the call out; a failure closes the whole activation)."""
    return {c: p.id for p in pending for c in p.calls if c not in p.results}


def _fact_writes(w: Writes, delta: Delta) -> None:
    w.facts_new = [{"fact_id": f.id, "version": f.version, "type": f.type, "fields": dict(f.fields)}
                   for f in delta.inserted]
    w.facts_changed = [{"fact_id": f.id, "version": f.version, "fields": dict(f.fields)}
                       for f in delta.modified]
    w.facts_gone = list(delta.retracted)


def _pending_writes(w: Writes, delta: Delta) -> None:
    """Net effect of opened/updated/closed: an activation opened and closed in the same delta
    (a batch, or a failure in the same step) never reaches the table."""
    closed = set(delta.closed)
    opened = {p.id: p for p in delta.opened}
    w.pending_new = [{"pending_id": i, "doc": p.to_json()} for i, p in opened.items()
                     if i not in closed]
    updates = {p.id: p for p in delta.updated if p.id not in opened and p.id not in closed}
    w.pending_changed = [{"pending_id": i, "doc": p.to_json()} for i, p in updates.items()]
    w.pending_gone = sorted(i for i in closed if i not in opened)


def _queued(conn: sa.Connection, pk: int, default_limit: int) -> list[InvocationInfo]:
    """The workflow's open invocations (queued or leased) by call id, each saying why it waits."""
    rows = conn.execute(sa.select(INVOCATIONS)
                        .where(INVOCATIONS.c.workflow_pk == pk, INVOCATIONS.c.status.in_(OPEN))
                        .order_by(INVOCATIONS.c.call_id)).all()
    if not rows:
        return []
    reasons = waiting_reasons(conn, rows[0].tenant_id, rows, default_limit)
    return [_invocation_info(r, reasons.get(r.id, "")) for r in rows]


def _invocation_info(row: Any, waiting: str = "") -> InvocationInfo:
    return InvocationInfo(row.id, row.call_id, row.kind, row.name, row.args, row.facts,
                          row.options, row.rule, row.priority, row.status, row.created_at,
                          row.attempt, row.runner, row.leased_at, row.lease_expires,
                          row.available_at, row.error, waiting)


# ── SQLite ─────────────────────────────────────────────────────────────────────────────────────


def _sqlite_setup(engine: sa.Engine, busy_timeout: float) -> None:
    """WAL (readers never wait for the writer), foreign keys on, a busy timeout, and BEGIN
    issued by SQLAlchemy so a write transaction can be BEGIN IMMEDIATE."""

    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # the driver must not issue its own BEGIN
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        immediate = conn.get_execution_options().get("emirax_immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


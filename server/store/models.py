"""The store's tables, as typed SQLAlchemy 2 models: the one description of the schema.

Alembic's migrations (`server/store/migrations/versions/`) create exactly these tables; a test
compares the migrated schema with this metadata on SQLite and PostgreSQL. Every table a tenant's
request touches is reached through an index that starts with the tenant id or with one
workflow's primary key, so no query's cost grows with other tenants' rows or other workflows'
facts (docs/store.md lists the queries and the index each one uses).

JSON columns are `json` on PostgreSQL, not `jsonb`, on purpose: jsonb reorders the keys of
every object (a Groovy map keeps its order, and rule code can see it), turns `1e20` into an
integer and refuses strings holding U+0000. Plain `json` keeps the text the engine wrote, so a
state read back is the state that was written. Nothing queries inside these documents.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "Base", "Bundle", "Fact", "Fired", "Invocation", "Package", "PendingRow", "Runner", "Tenant",
    "TraceEvent", "UTCDateTime", "Workflow", "JSONDoc", "BigId",
]

# Constraint names are part of the schema (migrations drop and alter them by name): one rule
# names them all, the same on both databases.
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# A 64-bit id on PostgreSQL; SQLite only auto-increments an `INTEGER PRIMARY KEY`.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# None is SQL NULL (not the JSON text 'null'), so "no output" is the same on both databases.
JSONDoc = sa.JSON(none_as_null=True)


class UTCDateTime(sa.TypeDecorator[datetime]):
    """A timestamp that is always UTC and timezone-aware in Python, on both databases.

    PostgreSQL keeps `timestamptz`; SQLite keeps text without a zone, so the zone is put back
    when a row is read."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("store timestamps must be timezone-aware")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime()}


# ── tenants and bundles ────────────────────────────────────────────────────────────────────────


class Tenant(Base):
    """A tenant; its bearer token is kept only as a sha256 hex digest."""

    __tablename__ = "tenants"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(sa.String(200), unique=True)
    token_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    # Invocations leased at once; None: the server's default (docs/queue.md).
    max_in_flight: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    created_at: Mapped[datetime]


class Bundle(Base):
    """One uploaded version of a package: the .emxb file itself and its manifest."""

    __tablename__ = "bundles"
    __table_args__ = (sa.UniqueConstraint("tenant_id", "package", "version"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    tenant_id: Mapped[int] = mapped_column(sa.ForeignKey("tenants.id", ondelete="CASCADE"))
    package: Mapped[str] = mapped_column(sa.String(255))
    version: Mapped[str] = mapped_column(sa.String(100))
    digest: Mapped[str] = mapped_column(sa.String(80))  # "sha256:" and 64 hex digits
    data: Mapped[bytes] = mapped_column(sa.LargeBinary)
    manifest: Mapped[Any] = mapped_column(JSONDoc)
    created_at: Mapped[datetime]


class Package(Base):
    """A tenant's package and the version that is active (the one new workflows run under)."""

    __tablename__ = "packages"
    __table_args__ = (
        # The active version must be an uploaded one.
        sa.ForeignKeyConstraint(
            ["tenant_id", "package", "active_version"],
            ["bundles.tenant_id", "bundles.package", "bundles.version"],
        ),
    )

    tenant_id: Mapped[int] = mapped_column(
        sa.ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    package: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    active_version: Mapped[str] = mapped_column(sa.String(100))


class IdempotentResponse(Base):
    """The first answer to a POST carrying an `Idempotency-Key`, per tenant (0: the admin), so
    a replay gets it again and the same key with another request is refused."""

    __tablename__ = "idempotency"

    tenant_id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    key: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(sa.String(64))
    status: Mapped[int] = mapped_column(sa.Integer)
    body: Mapped[Any] = mapped_column(JSONDoc)
    created_at: Mapped[datetime]


# ── workflows and their state ──────────────────────────────────────────────────────────────────


class Workflow(Base):
    """A workflow instance: the scalar part of its WorkflowState, and where it lives.

    `pk` is the internal key every child row refers to; `id` is the public id, unique per tenant.
    `revision` counts committed steps, so a process can tell whether a state it cached is still
    the latest; `next_seq` is the next trace sequence number."""

    __tablename__ = "workflows"
    __table_args__ = (
        sa.UniqueConstraint("tenant_id", "id"),
        sa.Index("ix_workflows_tenant_status_id", "tenant_id", "status", "id"),
        sa.Index("ix_workflows_tenant_name_id", "tenant_id", "name", "id"),
        # Activating a version finds the workflows of that package still on another version.
        sa.Index("ix_workflows_tenant_package_version", "tenant_id", "package", "version"),
        # A parent's children (why its `start` call waits).
        sa.Index("ix_workflows_parent_pk_parent_call", "parent_pk", "parent_call"),
        sa.ForeignKeyConstraint(
            ["tenant_id", "package", "version"],
            ["bundles.tenant_id", "bundles.package", "bundles.version"],
        ),
    )

    pk: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(sa.String(255))
    tenant_id: Mapped[int] = mapped_column(sa.ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(sa.String(512))
    package: Mapped[str] = mapped_column(sa.String(255))
    version: Mapped[str] = mapped_column(sa.String(100))
    status: Mapped[str] = mapped_column(sa.String(16))
    output: Mapped[Any | None] = mapped_column(JSONDoc, nullable=True)
    error: Mapped[Any | None] = mapped_column(JSONDoc, nullable=True)
    priority: Mapped[int] = mapped_column(sa.Integer)
    next_fact: Mapped[int] = mapped_column(sa.Integer)
    next_call: Mapped[int] = mapped_column(sa.Integer)
    next_pending: Mapped[int] = mapped_column(sa.Integer)
    next_seq: Mapped[int] = mapped_column(sa.Integer)
    revision: Mapped[int] = mapped_column(sa.Integer)
    # A child workflow: the parent and the parent's `start` call its outcome settles. No
    # foreign key: SQLite can only add one by copying the table (see migration 0003).
    parent_pk: Mapped[int | None] = mapped_column(BigId, nullable=True)
    parent_call: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


def _workflow_fk() -> Any:
    return sa.ForeignKey("workflows.pk", ondelete="CASCADE")


class Fact(Base):
    """A live fact of one workflow (a retracted fact's row is deleted)."""

    __tablename__ = "facts"

    workflow_pk: Mapped[int] = mapped_column(BigId, _workflow_fk(), primary_key=True)
    fact_id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    version: Mapped[int] = mapped_column(sa.Integer)
    type: Mapped[str] = mapped_column(sa.String(255))
    fields: Mapped[Any] = mapped_column(JSONDoc)


class Fired(Base):
    """A refraction key: an activation that fired, never to fire again in this workflow.

    The key (a collect list of thousands of facts makes a long one) is stored whole in `key`;
    the primary key is its sha256, because a PostgreSQL btree entry is limited to ~2.7 kB."""

    __tablename__ = "fired"

    workflow_pk: Mapped[int] = mapped_column(BigId, _workflow_fk(), primary_key=True)
    key_hash: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    key: Mapped[str] = mapped_column(sa.Text)


class PendingRow(Base):
    """A pending activation (`Pending.to_json()`): a fired rule waiting for its invocations."""

    __tablename__ = "pending"

    workflow_pk: Mapped[int] = mapped_column(BigId, _workflow_fk(), primary_key=True)
    pending_id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    doc: Mapped[Any] = mapped_column(JSONDoc)


class Invocation(Base):
    """A function call or child-workflow start made by a step: the queue (docs/queue.md).

    `id` is global (what a runner names); `call_id` is the engine's per-workflow number.
    `tenant_id` is repeated here so the queue is read per tenant without a join. `fence` grows
    with every lease: only the current lease's holder may settle the invocation."""

    __tablename__ = "invocations"
    __table_args__ = (
        sa.UniqueConstraint("workflow_pk", "call_id"),
        # The lease: a tenant's queued work, highest priority first, then the oldest workflow's,
        # in call order (a workflow's calls stay together, so a batch is one workflow's).
        sa.Index("ix_invocations_lease", "tenant_id", "status", sa.desc("priority"), "workflow_pk",
                 "call_id"),
        # The sweeper: leases past their deadline, on every tenant.
        sa.Index("ix_invocations_status_lease_expires", "status", "lease_expires"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    tenant_id: Mapped[int] = mapped_column(sa.ForeignKey("tenants.id", ondelete="CASCADE"))
    workflow_pk: Mapped[int] = mapped_column(BigId, _workflow_fk())
    call_id: Mapped[int] = mapped_column(sa.Integer)
    kind: Mapped[str] = mapped_column(sa.String(16))
    name: Mapped[str] = mapped_column(sa.String(512))
    args: Mapped[Any] = mapped_column(JSONDoc)
    facts: Mapped[Any] = mapped_column(JSONDoc)
    options: Mapped[Any] = mapped_column(JSONDoc)
    rule: Mapped[str] = mapped_column(sa.String(512))
    priority: Mapped[int] = mapped_column(sa.Integer)
    # queued | leased | done | failed | cancelled
    status: Mapped[str] = mapped_column(sa.String(16))
    attempt: Mapped[int] = mapped_column(sa.Integer, server_default="1")
    fence: Mapped[int] = mapped_column(sa.BigInteger, server_default="0")
    available_at: Mapped[datetime | None] = mapped_column(nullable=True)  # backing off until
    runner: Mapped[str | None] = mapped_column(sa.String(200), nullable=True)
    leased_at: Mapped[datetime | None] = mapped_column(nullable=True)
    lease_expires: Mapped[datetime | None] = mapped_column(nullable=True)
    cache_key: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)
    result: Mapped[Any | None] = mapped_column(JSONDoc, nullable=True)
    error: Mapped[Any | None] = mapped_column(JSONDoc, nullable=True)  # the last attempt's
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)
    created_at: Mapped[datetime]


class Runner(Base):
    """A runner seen leasing: which functions it serves, and when it last asked for work (so a
    pending invocation can say that no runner serves its function)."""

    __tablename__ = "runners"

    tenant_id: Mapped[int] = mapped_column(
        sa.ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    functions: Mapped[Any] = mapped_column(JSONDoc)
    last_seen: Mapped[datetime]


class TraceEvent(Base):
    """One trace event of a workflow, numbered from 1 in the order the engine produced them."""

    __tablename__ = "trace"

    workflow_pk: Mapped[int] = mapped_column(BigId, _workflow_fk(), primary_key=True)
    seq: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    at: Mapped[datetime]
    event: Mapped[Any] = mapped_column(JSONDoc)


# The tables as Core objects, for the store's statements (one name each, used by every module).
TENANTS: sa.Table = Tenant.__table__  # type: ignore[assignment]
BUNDLES: sa.Table = Bundle.__table__  # type: ignore[assignment]
PACKAGES: sa.Table = Package.__table__  # type: ignore[assignment]
IDEMPOTENCY: sa.Table = IdempotentResponse.__table__  # type: ignore[assignment]
WORKFLOWS: sa.Table = Workflow.__table__  # type: ignore[assignment]
FACTS: sa.Table = Fact.__table__  # type: ignore[assignment]
FIRED: sa.Table = Fired.__table__  # type: ignore[assignment]
PENDING: sa.Table = PendingRow.__table__  # type: ignore[assignment]
INVOCATIONS: sa.Table = Invocation.__table__  # type: ignore[assignment]
RUNNERS: sa.Table = Runner.__table__  # type: ignore[assignment]
TRACE: sa.Table = TraceEvent.__table__  # type: ignore[assignment]

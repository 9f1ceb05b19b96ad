"""The server's durable store (issue 4): SQLAlchemy models, Alembic migrations, and `Store`.

    from server.store import Store
    store = Store.open(url); store.upgrade()

docs/store.md describes the tables, the one-transaction step and the locking.
"""

from server.store.store import (
    Conflict,
    InvocationInfo,
    NotFound,
    PackageInfo,
    Refused,
    StepHandle,
    Store,
    StoreError,
    Tenant,
    TraceEntry,
    VersionInfo,
    WorkflowInfo,
    alembic_config,
    token_hash,
)

__all__ = [
    "Conflict", "InvocationInfo", "NotFound", "PackageInfo", "Refused", "StepHandle", "Store",
    "StoreError", "Tenant", "TraceEntry", "VersionInfo", "WorkflowInfo", "alembic_config", "token_hash",
]

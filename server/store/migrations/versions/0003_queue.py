"""The invocation queue: leases with fencing tokens, attempts and backoff, recorded results for
execution avoidance, child workflows' parents, per-tenant limits, and the runners seen.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _time(name: str) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=True)


def upgrade() -> None:
    # Plain ADD COLUMN, never a batch (copy-and-drop) alteration: on SQLite, dropping the old
    # `workflows` table with foreign keys on would cascade-delete every workflow's facts.
    op.add_column("tenants", sa.Column("max_in_flight", sa.Integer(), nullable=True))
    op.add_column("workflows", sa.Column("parent_pk", BigId, nullable=True))
    op.add_column("workflows", sa.Column("parent_call", sa.Integer(), nullable=True))
    op.create_index("ix_workflows_parent_pk_parent_call", "workflows", ["parent_pk", "parent_call"])
    op.add_column("invocations", sa.Column("attempt", sa.Integer(), server_default="1", nullable=False))
    op.add_column("invocations", sa.Column("fence", sa.BigInteger(), server_default="0", nullable=False))
    op.add_column("invocations", _time("available_at"))
    op.add_column("invocations", sa.Column("runner", sa.String(200), nullable=True))
    op.add_column("invocations", _time("leased_at"))
    op.add_column("invocations", _time("lease_expires"))
    op.add_column("invocations", sa.Column("cache_key", sa.String(64), nullable=True))
    op.add_column("invocations", sa.Column("result", sa.JSON(), nullable=True))
    op.add_column("invocations", sa.Column("error", sa.JSON(), nullable=True))
    op.add_column("invocations", _time("finished_at"))
    op.drop_index("ix_invocations_tenant_status_priority_id", table_name="invocations")
    op.create_index("ix_invocations_lease", "invocations",
                    ["tenant_id", "status", sa.text("priority DESC"), "workflow_pk", "call_id"])
    op.create_index("ix_invocations_status_lease_expires", "invocations", ["status", "lease_expires"])
    op.create_table(
        "runners",
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("functions", sa.JSON(), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name="fk_runners_tenant_id_tenants",
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("tenant_id", "name", name="pk_runners"),
    )


def downgrade() -> None:
    op.drop_table("runners")
    op.drop_index("ix_invocations_status_lease_expires", table_name="invocations")
    op.drop_index("ix_invocations_lease", table_name="invocations")
    op.create_index("ix_invocations_tenant_status_priority_id", "invocations",
                    ["tenant_id", "status", "priority", "id"])
    for column in ("finished_at", "error", "result", "cache_key", "lease_expires", "leased_at", "runner", "available_at", "fence", "attempt"):
        op.drop_column("invocations", column)
    op.drop_index("ix_workflows_parent_pk_parent_call", table_name="workflows")
    op.drop_column("workflows", "parent_call")
    op.drop_column("workflows", "parent_pk")
    op.drop_column("tenants", "max_in_flight")

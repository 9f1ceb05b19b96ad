"""The initial schema: tenants, bundles and packages, workflows with their facts, refraction keys,
pending activations, invocations and trace.

Revision ID: 0001
Revises:
Create Date: 2026-11-25

Written out in full (not importing the models), so this migration keeps meaning what it meant
when the models change; tests/test_store.py checks that head matches the models.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _time(name: str) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=False)


def _json(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.JSON(), nullable=nullable)


def _workflow_child(name: str, *columns: sa.Column | sa.Constraint) -> None:
    """A table of one workflow's rows: keyed first by the workflow, deleted with it."""
    op.create_table(
        name,
        sa.Column("workflow_pk", BigId, nullable=False),
        *columns,
        sa.ForeignKeyConstraint(["workflow_pk"], ["workflows.pk"],
                                name=op.f(f"fk_{name}_workflow_pk_workflows"), ondelete="CASCADE"),
    )


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        _time("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenants")),
        sa.UniqueConstraint("name", name=op.f("uq_tenants_name")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_tenants_token_hash")),
    )
    op.create_table(
        "bundles",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("package", sa.String(255), nullable=False),
        sa.Column("version", sa.String(100), nullable=False),
        sa.Column("digest", sa.String(80), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        _json("manifest"),
        _time("created_at"),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"],
                                name=op.f("fk_bundles_tenant_id_tenants"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bundles")),
        sa.UniqueConstraint("tenant_id", "package", "version",
                            name=op.f("uq_bundles_tenant_id_package_version")),
    )
    op.create_table(
        "packages",
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("package", sa.String(255), nullable=False),
        sa.Column("active_version", sa.String(100), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id", "package", "active_version"],
            ["bundles.tenant_id", "bundles.package", "bundles.version"],
            name=op.f("fk_packages_tenant_id_package_active_version_bundles")),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"],
                                name=op.f("fk_packages_tenant_id_tenants"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("tenant_id", "package", name=op.f("pk_packages")),
    )
    op.create_table(
        "workflows",
        sa.Column("pk", BigId, autoincrement=True, nullable=False),
        sa.Column("id", sa.String(255), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(512), nullable=False),
        sa.Column("package", sa.String(255), nullable=False),
        sa.Column("version", sa.String(100), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        _json("output", nullable=True),
        _json("error", nullable=True),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("next_fact", sa.Integer(), nullable=False),
        sa.Column("next_call", sa.Integer(), nullable=False),
        sa.Column("next_pending", sa.Integer(), nullable=False),
        sa.Column("next_seq", sa.Integer(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        _time("created_at"),
        _time("updated_at"),
        sa.ForeignKeyConstraint(
            ["tenant_id", "package", "version"],
            ["bundles.tenant_id", "bundles.package", "bundles.version"],
            name=op.f("fk_workflows_tenant_id_package_version_bundles")),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"],
                                name=op.f("fk_workflows_tenant_id_tenants"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_workflows")),
        sa.UniqueConstraint("tenant_id", "id", name=op.f("uq_workflows_tenant_id_id")),
    )
    op.create_index("ix_workflows_tenant_status_id", "workflows", ["tenant_id", "status", "id"])
    op.create_index("ix_workflows_tenant_name_id", "workflows", ["tenant_id", "name", "id"])
    op.create_index("ix_workflows_tenant_package_version", "workflows",
                    ["tenant_id", "package", "version"])

    _workflow_child(
        "facts",
        sa.Column("fact_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("type", sa.String(255), nullable=False),
        _json("fields"),
        sa.PrimaryKeyConstraint("workflow_pk", "fact_id", name=op.f("pk_facts")),
    )
    _workflow_child(
        "fired",
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("workflow_pk", "key_hash", name=op.f("pk_fired")),
    )
    _workflow_child(
        "pending",
        sa.Column("pending_id", sa.Integer(), autoincrement=False, nullable=False),
        _json("doc"),
        sa.PrimaryKeyConstraint("workflow_pk", "pending_id", name=op.f("pk_pending")),
    )
    _workflow_child(
        "invocations",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("call_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("name", sa.String(512), nullable=False),
        _json("args"),
        _json("facts"),
        _json("options"),
        sa.Column("rule", sa.String(512), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        _time("created_at"),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"],
                                name=op.f("fk_invocations_tenant_id_tenants"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_invocations")),
        sa.UniqueConstraint("workflow_pk", "call_id",
                            name=op.f("uq_invocations_workflow_pk_call_id")),
    )
    op.create_index("ix_invocations_tenant_status_priority_id", "invocations",
                    ["tenant_id", "status", "priority", "id"])
    _workflow_child(
        "trace",
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        _time("at"),
        _json("event"),
        sa.PrimaryKeyConstraint("workflow_pk", "seq", name=op.f("pk_trace")),
    )


def downgrade() -> None:
    for table in ("trace", "invocations", "pending", "fired", "facts", "workflows", "packages",
                  "bundles", "tenants"):
        op.drop_table(table)

"""Decision memory (SPEC §12): decision_rules, agent_escalations.rule_id, and the index
that finds a founder's latest decision on a project's error in any job.

Reviewed from `flask db migrate` (the partial index's WHERE clause and the UUID columns'
portable type written out by hand).

Revision ID: 0005_decision_memory
Revises: 0004_expiry_and_audit
Create Date: 2026-12-01
"""
import sqlalchemy as sa
from alembic import op

revision = "0005_decision_memory"
down_revision = "0004_expiry_and_audit"
branch_labels = None
depends_on = None

TIMESTAMP = sa.DateTime(timezone=True)
FOUNDER_DECISIONS = "status = 'resolved' AND decided_by = 'founder'"


def upgrade():
    op.create_table(
        "decision_rules",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("founder_id", sa.String(length=255), nullable=False),
        sa.Column("project_id", sa.String(length=255), nullable=False),
        sa.Column("error_type", sa.String(length=255), nullable=False),
        sa.Column("error_signature", sa.String(length=255), nullable=False),
        sa.Column("decision", sa.String(length=255), nullable=False),
        sa.Column("label", sa.Text(), nullable=True),
        sa.Column("guidance", sa.Text(), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("created_from", sa.Uuid(), nullable=False),
        sa.Column("times_applied", sa.Integer(), nullable=False),
        sa.Column("last_applied_at", TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_decision_rules")),
    )
    op.create_index("uq_decision_rules_founder_id_project_id_error_signature", "decision_rules",
                    ["founder_id", "project_id", "error_signature"], unique=True)
    op.create_index("ix_decision_rules_founder_id_created_at", "decision_rules", ["founder_id", "created_at"])
    with op.batch_alter_table("agent_escalations") as batch:
        batch.add_column(sa.Column("rule_id", sa.Uuid(), nullable=True))
    op.create_index("ix_agent_escalations_memory", "agent_escalations",
                    ["founder_id", "project_id", "error_signature", "resolved_at"],
                    postgresql_where=sa.text(FOUNDER_DECISIONS), sqlite_where=sa.text(FOUNDER_DECISIONS))


def downgrade():
    op.drop_index("ix_agent_escalations_memory", table_name="agent_escalations")
    with op.batch_alter_table("agent_escalations") as batch:
        batch.drop_column("rule_id")
    op.drop_index("ix_decision_rules_founder_id_created_at", table_name="decision_rules")
    op.drop_index("uq_decision_rules_founder_id_project_id_error_signature", table_name="decision_rules")
    op.drop_table("decision_rules")

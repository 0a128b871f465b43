"""Expiry, the reminder and who decided (SPEC §10): six nullable columns on
agent_escalations and two partial indexes that keep the worker's sweeps cheap.

Reviewed from `flask db migrate` (autogenerate rendered UTCDateTime without an import and
the partial indexes without their WHERE clauses; both are written out here). The backfill
fills `decided_by` of rows settled before this revision: a resolve was always a founder's,
a skip always the agent's; `decided_via` stays unknown (null) for them.

Revision ID: 0004_expiry_and_audit
Revises: 0003_job_events_founder_id
Create Date: 2026-12-01
"""
import sqlalchemy as sa
from alembic import op

revision = "0004_expiry_and_audit"
down_revision = "0003_job_events_founder_id"
branch_labels = None
depends_on = None

TIMESTAMP = sa.DateTime(timezone=True)
DUE_TO_EXPIRE = "status = 'pending' AND expires_at IS NOT NULL"
DUE_FOR_REMINDER = "status = 'pending' AND reminder_at IS NOT NULL AND reminded_at IS NULL"


def upgrade():
    with op.batch_alter_table("agent_escalations") as batch:
        batch.add_column(sa.Column("expires_at", TIMESTAMP, nullable=True))
        batch.add_column(sa.Column("on_expiry", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("reminder_at", TIMESTAMP, nullable=True))
        batch.add_column(sa.Column("reminded_at", TIMESTAMP, nullable=True))
        batch.add_column(sa.Column("decided_by", sa.String(length=20), nullable=True))
        batch.add_column(sa.Column("decided_via", sa.String(length=20), nullable=True))
    op.execute("UPDATE agent_escalations SET decided_by = 'founder' WHERE status = 'resolved'")
    op.execute("UPDATE agent_escalations SET decided_by = 'agent' WHERE status = 'skipped'")
    op.create_index("ix_agent_escalations_pending_expires_at", "agent_escalations", ["expires_at"],
                    postgresql_where=sa.text(DUE_TO_EXPIRE), sqlite_where=sa.text(DUE_TO_EXPIRE))
    op.create_index("ix_agent_escalations_pending_reminder_at", "agent_escalations", ["reminder_at"],
                    postgresql_where=sa.text(DUE_FOR_REMINDER), sqlite_where=sa.text(DUE_FOR_REMINDER))


def downgrade():
    op.drop_index("ix_agent_escalations_pending_reminder_at", table_name="agent_escalations")
    op.drop_index("ix_agent_escalations_pending_expires_at", table_name="agent_escalations")
    op.execute("UPDATE agent_escalations SET status = 'skipped' WHERE status = 'expired'")  # no fourth status before
    with op.batch_alter_table("agent_escalations") as batch:
        for name in ("decided_via", "decided_by", "reminded_at", "reminder_at", "on_expiry", "expires_at"):
            batch.drop_column(name)

"""Create agent_escalations, jobs and job_events.

Reviewed from `flask db migrate` (autogenerate rendered the UTCDateTime decorator and
JSONB(astext_type=Text()) without imports; both are written out here).

Revision ID: 0001_create_escalations
Revises:
Create Date: 2026-11-26
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001_create_escalations"
down_revision = None
branch_labels = None
depends_on = None

JSON_DOCUMENT = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)
PENDING_ONLY = sa.text("status = 'pending'")


def upgrade():
    op.create_table(
        "agent_escalations",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("session_id", sa.String(length=255), nullable=False),
        sa.Column("job_id", sa.String(length=255), nullable=False),
        sa.Column("project_id", sa.String(length=255), nullable=False),
        sa.Column("founder_id", sa.String(length=255), nullable=False),
        sa.Column("error_type", sa.String(length=255), nullable=False),
        sa.Column("error_signature", sa.String(length=255), nullable=False),
        sa.Column("plain_english_problem", sa.Text(), nullable=False),
        sa.Column("attempts_summary", JSON_DOCUMENT, nullable=False),
        sa.Column("recommended_action", sa.Text(), nullable=False),
        sa.Column("options", JSON_DOCUMENT, nullable=False),
        sa.Column("status", sa.String(length=50), nullable=False),
        sa.Column("founder_decision", sa.String(length=255), nullable=True),
        sa.Column("founder_guidance", sa.Text(), nullable=True),
        sa.Column("resolved_at", TIMESTAMP, nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("occurrences", sa.Integer(), nullable=False),
        sa.Column("last_seen_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agent_escalations")),
    )
    op.create_index(op.f("ix_agent_escalations_session_id"), "agent_escalations", ["session_id"])
    op.create_index(op.f("ix_agent_escalations_project_id"), "agent_escalations", ["project_id"])
    op.create_index(op.f("ix_agent_escalations_error_signature"), "agent_escalations", ["error_signature"])
    op.create_index("ix_agent_escalations_job_id_created_at", "agent_escalations", ["job_id", "created_at"])
    op.create_index("ix_agent_escalations_founder_id_created_at", "agent_escalations",
                    ["founder_id", "created_at", "id"])
    op.create_index("ix_agent_escalations_founder_id_status_created_at", "agent_escalations",
                    ["founder_id", "status", "created_at", "id"])
    # At most one pending escalation per (job, error signature), enforced by the database.
    op.create_index("uq_agent_escalations_pending_job_id_error_signature", "agent_escalations",
                    ["job_id", "error_signature"], unique=True,
                    postgresql_where=PENDING_ONLY, sqlite_where=PENDING_ONLY)

    op.create_table(
        "jobs",
        sa.Column("id", sa.String(length=255), nullable=False),
        sa.Column("founder_id", sa.String(length=255), nullable=False),
        sa.Column("project_id", sa.String(length=255), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    )
    op.create_index(op.f("ix_jobs_founder_id"), "jobs", ["founder_id"])

    op.create_table(
        "job_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(length=255), nullable=False),
        sa.Column("type", sa.String(length=100), nullable=False),
        sa.Column("payload", JSON_DOCUMENT, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_events")),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_job_events_job_id_id", "job_events", ["job_id", "id"])


def downgrade():
    op.drop_index("ix_job_events_job_id_id", table_name="job_events")
    op.drop_table("job_events")
    op.drop_index(op.f("ix_jobs_founder_id"), table_name="jobs")
    op.drop_table("jobs")
    op.drop_index("uq_agent_escalations_pending_job_id_error_signature", table_name="agent_escalations")
    op.drop_index("ix_agent_escalations_founder_id_status_created_at", table_name="agent_escalations")
    op.drop_index("ix_agent_escalations_founder_id_created_at", table_name="agent_escalations")
    op.drop_index("ix_agent_escalations_job_id_created_at", table_name="agent_escalations")
    op.drop_index(op.f("ix_agent_escalations_error_signature"), table_name="agent_escalations")
    op.drop_index(op.f("ix_agent_escalations_project_id"), table_name="agent_escalations")
    op.drop_index(op.f("ix_agent_escalations_session_id"), table_name="agent_escalations")
    op.drop_table("agent_escalations")

"""Trust (SPEC §16): server-side console sessions, a job's one project, and the index of
the hourly message cap.

* `console_sessions`: a console cookie counts only while its row is live, so a sign-out
  ends the session on the server and "Sign out everywhere" ends all of a founder's.
* `jobs.project_id` was recorded on a job's first sight but never enforced: jobs that have
  none yet take the project of their first escalation (a job has one project from now on).
* `ix_notification_deliveries_founder_id_channel_sent_at`: what a founder was sent on one
  channel in the last hour, read by the worker before each send.

Written by hand (autogenerate compared against it: no difference).

Revision ID: 0009_trust
Revises: 0008_event_ids_in_commit_order
Create Date: 2026-12-08
"""
import sqlalchemy as sa
from alembic import op

revision = "0009_trust"
down_revision = "0008_event_ids_in_commit_order"
branch_labels = None
depends_on = None

TIMESTAMP = sa.DateTime(timezone=True)


def upgrade():
    op.create_table(
        "console_sessions",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("founder_id", sa.String(length=255), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("expires_at", TIMESTAMP, nullable=False),
        sa.Column("ended_at", TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_console_sessions")),
    )
    op.create_index("ix_console_sessions_founder_id", "console_sessions", ["founder_id"])
    op.create_index("ix_console_sessions_expires_at", "console_sessions", ["expires_at"])
    op.create_index("ix_notification_deliveries_founder_id_channel_sent_at", "notification_deliveries",
                    ["founder_id", "channel", "sent_at"])
    op.execute(
        "UPDATE jobs SET project_id = (SELECT e.project_id FROM agent_escalations e WHERE e.job_id = jobs.id "
        "ORDER BY e.created_at, e.id LIMIT 1) WHERE project_id IS NULL")


def downgrade():
    # jobs.project_id keeps what it was given: the column existed before, only its rule is new.
    op.drop_index("ix_notification_deliveries_founder_id_channel_sent_at", table_name="notification_deliveries")
    op.drop_index("ix_console_sessions_expires_at", table_name="console_sessions")
    op.drop_index("ix_console_sessions_founder_id", table_name="console_sessions")
    op.drop_table("console_sessions")

"""job_events.founder_id: each event names its founder, so the founder's stream reads one
index range and event ids are ordered per founder (console/events.py) instead of by one
lock for the whole database.

Written by hand from `flask db migrate`'s column and index; the backfill copies each
job's founder from `jobs` (every event's job is there: events are stored only after the
job was claimed). SQLite cannot add a NOT NULL column without a default or alter one, so
the column is added nullable, filled, then made NOT NULL in a batch (table copy) on SQLite
and with ALTER COLUMN on PostgreSQL.

Revision ID: 0003_job_events_founder_id
Revises: 0002_spent_login_links
Create Date: 2026-12-01
"""
import sqlalchemy as sa
from alembic import op

revision = "0003_job_events_founder_id"
down_revision = "0002_spent_login_links"
branch_labels = None
depends_on = None

# A batch rebuilds the table on SQLite from its reflection, which forgets AUTOINCREMENT
# (ids of deleted last rows would be reused): say it again.
KEEP_AUTOINCREMENT = {"sqlite_autoincrement": True}


def upgrade():
    op.add_column("job_events", sa.Column("founder_id", sa.String(length=255), nullable=True))
    op.execute("UPDATE job_events SET founder_id = (SELECT jobs.founder_id FROM jobs WHERE jobs.id = job_events.job_id)")
    op.execute("UPDATE job_events SET founder_id = '' WHERE founder_id IS NULL")  # no such rows; never leave NULL
    with op.batch_alter_table("job_events", table_kwargs=KEEP_AUTOINCREMENT) as batch:
        batch.alter_column("founder_id", existing_type=sa.String(length=255), nullable=False)
    op.create_index("ix_job_events_founder_id_id", "job_events", ["founder_id", "id"])


def downgrade():
    op.drop_index("ix_job_events_founder_id_id", table_name="job_events")
    with op.batch_alter_table("job_events", table_kwargs=KEEP_AUTOINCREMENT) as batch:
        batch.drop_column("founder_id")

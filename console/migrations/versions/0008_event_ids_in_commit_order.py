"""Event ids in transaction order, without a lock (PostgreSQL; SQLite is unchanged).

Before: ids came from the job_events_id_seq sequence, and every event-writing transaction
took its founder's advisory lock until commit, so one founder's ids became visible in
order (SPEC §3). One founder's writes therefore ran one at a time, commit included.

Now an event's id is its transaction's id (`pg_current_xact_id()`, 64 bits, never
reused) times 1024, plus its place in the transaction (1..1023): all ids of a transaction
sit above those of every transaction that started writing before it. Readers stop at
`console_event_horizon()`: the oldest transaction of this database still in flight in the
reader's own snapshot, × 1024 (console/events.py). Everything below that line is final,
and every event that commits later lands above it. No writer waits for another.

The horizon is the snapshot's in-flight transactions less those positively known to run in
another database (pg_stat_activity): a transaction of another database cannot write these
rows, so a long one there (a migration, a bulk load) holds nobody back here. The function
is STABLE, so pg_current_snapshot() is the calling statement's own snapshot; only
transactions seen *now* in another database are left out, which is safe whenever it is
read. When no transaction is in flight, the horizon is the snapshot's xmax.

The place in the transaction is counted in a transaction-local setting
(`console.events_in_transaction`, reset at commit or rollback, also of a savepoint with its
rows). 1,023 events per transaction is the bound (the worker's batches write at most 500);
a 1,024th raises program_limit_exceeded instead of handing out a wrong id.

Ids stay below 2^53 (safe in JavaScript) until the cluster has used 8.8 × 10^12
transactions. Existing rows keep their ids, which the first new id is checked to exceed.

Written by hand (autogenerate does not see functions or defaults); reviewed by running
upgrade and downgrade on PostgreSQL 15 with rows in the table.

Revision ID: 0008_event_ids_in_commit_order
Revises: 0007_notifications
Create Date: 2026-12-01
"""
from alembic import op

revision = "0008_event_ids_in_commit_order"
down_revision = "0007_notifications"
branch_labels = None
depends_on = None

NEXT_EVENT_ID = """
CREATE FUNCTION console_next_event_id() RETURNS bigint
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE AS $$
DECLARE
    place integer := coalesce(nullif(current_setting('console.events_in_transaction', true), ''), '0')::integer + 1;
BEGIN
    IF place > 1023 THEN
        RAISE EXCEPTION 'one transaction may store at most 1023 job events'
              USING ERRCODE = 'program_limit_exceeded';
    END IF;
    PERFORM set_config('console.events_in_transaction', place::text, true);
    RETURN pg_current_xact_id()::text::bigint * 1024 + place;
END $$
"""

EVENT_HORIZON = """
CREATE FUNCTION console_event_horizon() RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT coalesce(
        (SELECT min(running::text::bigint) FROM pg_snapshot_xip(pg_current_snapshot()) AS running
          WHERE running::text::bigint % 4294967296 NOT IN (
                SELECT backend_xid::text::bigint FROM pg_stat_activity
                 WHERE backend_xid IS NOT NULL AND datid IS NOT NULL
                   AND datid <> (SELECT oid FROM pg_database WHERE datname = current_database()))),
        pg_snapshot_xmax(pg_current_snapshot())::text::bigint) * 1024
$$
"""

NEW_IDS_ABOVE_OLD_ONES = """
DO $$ BEGIN
    IF (SELECT coalesce(max(id), 0) FROM job_events) >= pg_current_xact_id()::text::bigint * 1024 THEN
        RAISE EXCEPTION 'job_events holds ids above the first transaction-ordered id';
    END IF;
END $$
"""


def upgrade():
    if op.get_bind().dialect.name != "postgresql":
        return  # one writer at a time: SQLite's AUTOINCREMENT ids are visible in order
    op.execute(NEXT_EVENT_ID)
    op.execute(EVENT_HORIZON)
    op.execute(NEW_IDS_ABOVE_OLD_ONES)
    op.execute("ALTER TABLE job_events ALTER COLUMN id SET DEFAULT console_next_event_id()")
    op.execute("DROP SEQUENCE job_events_id_seq")


def downgrade():
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("CREATE SEQUENCE job_events_id_seq OWNED BY job_events.id")
    op.execute("SELECT setval('job_events_id_seq', (SELECT coalesce(max(id), 0) + 1 FROM job_events), false)")
    op.execute("ALTER TABLE job_events ALTER COLUMN id SET DEFAULT nextval('job_events_id_seq')")
    op.execute("DROP FUNCTION console_event_horizon()")
    op.execute("DROP FUNCTION console_next_event_id()")

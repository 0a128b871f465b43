"""The job event vocabulary and the append-only event log.

Every event is stored in the same transaction as the change that caused it, then fanned
out (see `console.hub`). Event ids become visible in order to every reader of the API:
each reader reads one job's events or one founder's (a job has one founder), so ids are
ordered per founder. On PostgreSQL an event-writing transaction takes its founder's
transaction-level advisory lock right before it inserts its event, so one founder's ids
are handed out, and made visible, one transaction at a time: a reader of a job or of a
founder that has seen id N never later finds a smaller one. Writers of different founders
never wait for one another (the global lock this replaced queued every writer of the
database). On SQLite the database lock already serialises all writers.
"""
from __future__ import annotations

import datetime as dt
import json
from typing import Any, Iterable, NamedTuple

from sqlalchemy import bindparam, event as sa_event, insert, select, text
from sqlalchemy.engine import Row
from sqlalchemy.orm import Session

from .database import read_rows
from .extensions import db
from .models import JobEvent, event_envelope, utcnow

JOB_EVENTS = JobEvent.__table__


class StoredEvent(NamedTuple):
    """An event as services hand it out; rows read from job_events have the same attributes."""

    id: int
    job_id: str
    founder_id: str
    type: str
    payload: dict[str, Any]
    created_at: dt.datetime

    def envelope(self) -> dict[str, Any]:
        return event_envelope(self)

__all__ = ["SSEEventType", "record_event", "list_events", "event_envelope", "StoredEvent", "JOB_EVENTS"]


class SSEEventType:
    """Event types of the job stream (SPEC §3)."""

    BUILD_STAGE_STARTED = "build.stage.started"
    BUILD_STAGE_COMPLETED = "build.stage.completed"
    SNAPSHOT_UPDATED = "snapshot.updated"
    DOCUMENTATION_UPDATED = "documentation.updated"
    AGENT_SLEEPING = "agent.sleeping"
    AGENT_WAKING = "agent.waking"
    AGENT_BUDGET_EXCEEDED = "agent.budget_exceeded"
    AGENT_BUDGET_UPDATED = "agent.budget_updated"
    AGENT_WAITING_FOR_INPUT = "agent.waiting_for_input"
    AGENT_RETRYING = "agent.retrying"
    AGENT_ESCALATION_RESOLVED = "agent.escalation_resolved"
    AGENT_BUILD_PAUSED = "agent.build_paused"
    AGENT_THINKING = "agent.thinking"
    AGENT_TOOL_CALLED = "agent.tool.called"
    GSD_PHASE_STARTED = "gsd.phase.started"
    GSD_PHASE_COMPLETED = "gsd.phase.completed"

    @classmethod
    def values(cls) -> frozenset[str]:
        return frozenset(v for k, v in vars(cls).items() if k.isupper())


# Emitted only by the server, as a consequence of create / resolve / skip.
SERVER_OWNED_EVENT_TYPES = frozenset({SSEEventType.AGENT_WAITING_FOR_INPUT, SSEEventType.AGENT_ESCALATION_RESOLVED})
AGENT_EVENT_TYPES = SSEEventType.values() - SERVER_OWNED_EVENT_TYPES
# Keys of the envelope that a payload may not set.
ENVELOPE_KEYS = frozenset({"id", "type", "job_id", "timestamp"})

NOTIFY_CHANNEL = "console_job_events"
# The seed of hashtextextended() that turns a founder id into their advisory lock key: a
# key space of its own, so no other advisory lock of the database can collide with ours.
FOUNDER_LOCK_SEED = 0x6573_6361_6C61  # "escala"


def founder_lock_sql(founder_expression: str) -> str:
    """The SQL that takes the founder's event-ordering lock (held until commit)."""
    return f"pg_advisory_xact_lock(hashtextextended({founder_expression}, {FOUNDER_LOCK_SEED}))"


def record_event(job_id: str, founder_id: str, event_type: str, payload: dict[str, Any]) -> StoredEvent:
    """Append an event of the founder's job inside the caller's (write) transaction; it
    becomes visible, and subscribers are woken, when that transaction commits."""
    session = db.session
    values = {"job_id": job_id, "founder_id": founder_id, "type": event_type, "payload": payload,
              "created_at": utcnow()}
    if session.get_bind().dialect.name == "postgresql":
        # One round trip: take the founder's ordering lock, insert, and queue the NOTIFY that
        # PostgreSQL delivers at commit to every LISTENing process (never on rollback).
        event_id = session.execute(_INSERT_EVENT_POSTGRES, {
            **values, "payload": json.dumps(payload), "channel": NOTIFY_CHANNEL}).scalar_one()
    else:
        event_id = session.execute(insert(JOB_EVENTS).values(**values).returning(JOB_EVENTS.c.id)).scalar_one()
    session.info.setdefault("committed_events", []).append((event_id, job_id, founder_id))
    return StoredEvent(id=event_id, **values)


_INSERT_EVENT_POSTGRES = text(f"""
    WITH ordering AS (SELECT {founder_lock_sql("CAST(:founder_id AS TEXT)")})
    INSERT INTO job_events (job_id, founder_id, type, payload, created_at)
    SELECT :job_id, :founder_id, :type, CAST(:payload AS JSONB), :created_at FROM ordering
    RETURNING id, pg_notify(:channel, json_build_array(id, job_id, founder_id)::text)
""")


def list_events(job_id: str, after: int, limit: int) -> list[Row]:
    """A job's events after `after`, in id order."""
    return read_rows(_JOB_EVENTS_AFTER, {"job_id": job_id, "after": after, "limit": limit})


def list_founder_events(founder_id: str, after: int, limit: int) -> list[Row]:
    """Every event of the founder's jobs after `after`, in id order (the console's stream)."""
    return read_rows(_FOUNDER_EVENTS_AFTER, {"founder_id": founder_id, "after": after, "limit": limit})


def _after(column):
    return (select(JOB_EVENTS).where(column == bindparam(column.key), JOB_EVENTS.c.id > bindparam("after"))
            .order_by(JOB_EVENTS.c.id).limit(bindparam("limit")))


_JOB_EVENTS_AFTER = _after(JOB_EVENTS.c.job_id)
_FOUNDER_EVENTS_AFTER = _after(JOB_EVENTS.c.founder_id)


def announce(committed: Iterable[tuple[int, str, str]]) -> None:
    """Tell this process's listeners about events that a statement outside the Session
    (an autocommit Core statement) has committed."""
    committed = list(committed)
    if committed:
        for listener in _commit_listeners:
            listener(committed)


# In-process fan-out after commit: the hub wakes this process's waiters at once (on
# PostgreSQL, NOTIFY reaches the other processes).
_commit_listeners: list = []


def on_events_committed(listener) -> None:
    """Register listener(list[(event_id, job_id, founder_id)]), called after a commit that stored events."""
    _commit_listeners.append(listener)


@sa_event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    committed = session.info.pop("committed_events", None)
    if committed:
        for listener in _commit_listeners:
            listener(committed)


@sa_event.listens_for(Session, "after_rollback")
def _after_rollback(session: Session) -> None:
    session.info.pop("committed_events", None)

"""The job event vocabulary and the append-only event log.

Every event is stored in the same transaction as the change that caused it, then fanned
out (see `console.hub`). Event ids become visible in order (SPEC §3: a reader that has seen
id N never later finds a new event below N), and no writer waits for another to get there:

* On PostgreSQL an event's id is its transaction's id × 1024 plus its place in that
  transaction (`console_next_event_id()`, migration 0008), and every reader stops below
  the oldest transaction of this database still in flight (`console_event_horizon()`).
  Below that line the log is final; whatever commits later gets an id above it. A reader
  that finds committed events beyond the line waits (HOLD_BACK_SECONDS at most, usually
  milliseconds) for the older transactions to end: the price of writers that never queue
  (the per-founder lock this replaced ran one founder's writes, commit included, one at a
  time).
* On SQLite the database lock serialises all writers, and AUTOINCREMENT ids are visible in
  order as they are.
"""
from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any, Iterable, NamedTuple

from sqlalchemy import bindparam, event as sa_event, func, insert, select, text
from sqlalchemy.engine import Row
from sqlalchemy.orm import Session

from .database import fetch_one, read_rows
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


def record_event(job_id: str, founder_id: str, event_type: str, payload: dict[str, Any]) -> StoredEvent:
    """Append an event of the founder's job inside the caller's (write) transaction; it
    becomes visible, and subscribers are woken, when that transaction commits."""
    session = db.session
    values = {"job_id": job_id, "founder_id": founder_id, "type": event_type, "payload": payload,
              "created_at": utcnow()}
    if session.get_bind().dialect.name == "postgresql":
        # One round trip: insert, and queue the NOTIFY that PostgreSQL delivers at commit to
        # every LISTENing process (never on rollback).
        event_id = session.execute(_INSERT_EVENT_POSTGRES, {
            **values, "payload": json.dumps(payload), "channel": NOTIFY_CHANNEL}).scalar_one()
    else:
        event_id = session.execute(insert(JOB_EVENTS).values(**values).returning(JOB_EVENTS.c.id)).scalar_one()
    session.info.setdefault("committed_events", []).append((event_id, job_id, founder_id))
    return StoredEvent(id=event_id, **values)


_INSERT_EVENT_POSTGRES = text("""
    INSERT INTO job_events (job_id, founder_id, type, payload, created_at)
    VALUES (:job_id, :founder_id, :type, CAST(:payload AS JSONB), :created_at)
    RETURNING id, pg_notify(:channel, json_build_array(id, job_id, founder_id)::text)
""")


def list_events(job_id: str, after: int, limit: int) -> list[Row]:
    """A job's events after `after`, in id order (only final ones: see the module's doc)."""
    return _final_events("job", {"job_id": job_id, "after": after, "limit": limit})


def list_founder_events(founder_id: str, after: int, limit: int) -> list[Row]:
    """Every event of the founder's jobs after `after`, in id order (the console's stream)."""
    return _final_events("founder", {"founder_id": founder_id, "after": after, "limit": limit})


def latest_visible_event_id() -> int:
    """The newest event id that no later commit can go below: where a page that reads the
    database next starts its live updates, so that it misses nothing."""
    return fetch_one(_reads()["latest"], {})[0] or 0


# How long a reader waits for older transactions to finish when committed events lie beyond
# the horizon (usually a few milliseconds: a client that has just stored an event finds it
# in its next read). Past this it answers with the final events only; the rest follow.
HOLD_BACK_SECONDS = 1.0
_HOLD_BACK_PAUSE = 0.003


def _final_events(key: str, params: dict[str, Any]) -> list[Row]:
    query = _reads()[key]
    if db.engine.dialect.name != "postgresql":
        return read_rows(query, params)
    deadline = time.monotonic() + HOLD_BACK_SECONDS
    while True:
        rows = read_rows(query, params)
        final = [row for row in rows if row.final]  # a prefix: rows come in id order
        if len(final) == len(rows) or time.monotonic() >= deadline:
            return final
        time.sleep(_HOLD_BACK_PAUSE)


# On PostgreSQL, the lowest event id a transaction still in flight can be given (migration
# 0008), computed once per statement.
_HORIZON = text("(SELECT console_event_horizon())")


def _after(column, dialect: str):
    final = [(JOB_EVENTS.c.id < _HORIZON).label("final")] if dialect == "postgresql" else []
    return (select(JOB_EVENTS, *final)
            .where(column == bindparam(column.key), JOB_EVENTS.c.id > bindparam("after"))
            .order_by(JOB_EVENTS.c.id).limit(bindparam("limit")))


def _latest(dialect: str):
    below_horizon = [JOB_EVENTS.c.id < _HORIZON] if dialect == "postgresql" else []
    return select(func.max(JOB_EVENTS.c.id)).where(*below_horizon)


_READS = {dialect: {"job": _after(JOB_EVENTS.c.job_id, dialect), "founder": _after(JOB_EVENTS.c.founder_id, dialect),
                    "latest": _latest(dialect)}
          for dialect in ("postgresql", "sqlite")}


def _reads() -> dict:
    return _READS[db.engine.dialect.name]


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

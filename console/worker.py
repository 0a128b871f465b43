"""The worker: the console's clock (SPEC §9). `flask --app console worker [--once]`.

Everything that is not an answer to a request happens here. Each kind of work is a
*task*, registered once with `@task(name)`: a function that, given the time, does one
batch of what is due in ONE transaction and returns how many items it handled. The
worker calls the tasks in turn, a batch each, until none has anything due, then sleeps
until the next tick (WORKER_POLL_SECONDS, 1 s by default: due work is picked up within
2 s). Webhooks (console/webhooks.py) are the one task with two transactions per batch:
a claim, and the outcomes after the HTTP calls, so none stays open while a receiver is
waited on.

What is due is always stored in the database, by the transaction of the change that made
it due (an escalation's `expires_at` is written by its create), so a crash, a restart or a
database outage loses none of it. A batch is one transaction: it is done completely or
not at all, and on SIGTERM / SIGINT the worker finishes the batch in hand and exits, so
nothing is ever half-done. On PostgreSQL any number of workers may run: each claims its
batch with `FOR UPDATE SKIP LOCKED`, so no two handle the same item; on SQLite run one.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import signal
import threading
import time
from typing import Callable

import psycopg
from flask import Flask
from sqlalchemy import case, select, text
from sqlalchemy.exc import DBAPIError, TimeoutError as PoolTimeout

from .config import POSTGRES_LIVENESS
from .database import write_transaction
from .events import NOTIFY_CHANNEL, SSEEventType, announce, record_event
from .extensions import db
from .models import BY_EXPIRY, EXPIRED, PENDING, RESOLVED, AgentEscalation, escalation_option, utcnow
from .services import notifications as notification_service
from .text import one_line

log = logging.getLogger("console.worker")

BATCH = 500  # at most this many events per transaction (PostgreSQL's bound is 1023: migration 0008)
OUTAGE_BACKOFF_MAX = 5.0


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    run: Callable[[dt.datetime], int]  # one batch of what is due at `now`; returns how many
    batch: int = BATCH  # a full batch means more may be due: the worker calls it again at once


TASKS: dict[str, Task] = {}


def task(name: str, *, batch: int = BATCH) -> Callable:
    """Register a kind of work. The function does one batch (at most `batch` items) in one
    transaction; outbound work (console/webhooks.py) claims in one and records in another,
    so that no transaction stays open while a receiver is waited on."""

    def register(function: Callable[[dt.datetime], int]) -> Callable[[dt.datetime], int]:
        TASKS[name] = Task(name, function, batch)
        return function

    return register


DATABASE_ERRORS = (DBAPIError, PoolTimeout)


class Worker:
    def __init__(self, app: Flask, *, clock: Callable[[], dt.datetime] = utcnow, poll_seconds: float | None = None):
        self.app = app
        self.clock = clock
        self.poll_seconds = float(poll_seconds if poll_seconds is not None else app.config["WORKER_POLL_SECONDS"])
        self.stopping = threading.Event()
        self.woken = threading.Event()  # set to tick now (an event was stored, or stop())
        self.failing: dict[str, str] = {}  # task → what it last raised (logged once, until it changes)

    def _task_failed(self, name: str, error: Exception) -> None:
        """A task raised outside any one piece of its work: the other tasks go on this tick and
        it is tried again at the next. Logged when the error first appears or changes, not
        once per tick."""
        said = one_line(f"{type(error).__name__}: {error}", 300)
        if self.failing.get(name) != said:
            self.failing[name] = said
            log.error("task %s failed (%s); the other tasks go on, and it is tried again every tick",
                      name, said, exc_info=error)

    def run_once(self) -> dict[str, int]:
        """Do everything that is due now, batch by batch; how many of each. The tasks take
        turns, one batch each, while any has more: a backlog of one kind of work (thousands of
        webhooks) never holds up another (a deadline). Stops between batches when asked to."""
        done: dict[str, int] = {name: 0 for name in TASKS}
        with self.app.app_context():
            try:
                busy = list(TASKS.values())
                while busy and not self.stopping.is_set():
                    still_busy = []
                    for registered in busy:
                        if self.stopping.is_set():
                            break
                        try:
                            handled = registered.run(self.clock())
                        except DATABASE_ERRORS:
                            raise  # an outage: run_forever reports it once and backs off
                        except Exception as error:  # noqa: BLE001  (SPEC §16: never the end of the worker)
                            db.session.rollback()
                            self._task_failed(registered.name, error)
                            continue
                        self.failing.pop(registered.name, None)
                        done[registered.name] += handled
                        if handled >= registered.batch:
                            still_busy.append(registered)
                    busy = still_busy
            finally:
                db.session.remove()
        return {name: count for name, count in done.items() if count}

    def run_forever(self) -> None:
        """Tick until SIGTERM / SIGINT (or stop()). A database outage is reported once, then
        retried with backoff, and its end is reported too."""
        log.info("worker started: tasks %s, every %.1f s", ", ".join(TASKS), self.poll_seconds)
        with self.app.app_context():
            if db.engine.dialect.name == "postgresql":
                threading.Thread(target=self._wake_on_events, name="console-worker-wake", daemon=True).start()
        outage_since: float | None = None
        backoff = self.poll_seconds
        while not self.stopping.is_set():
            try:
                done = self.run_once()
            except DATABASE_ERRORS as error:
                if outage_since is None:
                    outage_since = time.monotonic()
                    log.warning("the database is not answering (%s); the worker retries until it is back",
                                _short(error))
                backoff = min(backoff * 2, OUTAGE_BACKOFF_MAX)
                self.stopping.wait(backoff)
                continue
            if outage_since is not None:
                log.warning("the database is back after %.0f s; the worker carries on", time.monotonic() - outage_since)
                outage_since, backoff = None, self.poll_seconds
            if done:
                log.info("done: %s", ", ".join(f"{count} {name}" for name, count in done.items()))
            self.woken.wait(self.poll_seconds)
            self.woken.clear()
        log.info("worker stopped")

    def _wake_on_events(self) -> None:
        """PostgreSQL: a stored event (NOTIFY at its commit) may have made work due at once —
        a webhook delivery, a notification —, so the next tick starts then, not at the poll
        interval. Without this connection (it reconnects quietly) the poll still ticks."""
        with self.app.app_context():
            conninfo = db.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        while not self.stopping.is_set():
            try:
                with psycopg.connect(conninfo, autocommit=True, **POSTGRES_LIVENESS) as connection:
                    connection.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    while not self.stopping.is_set():
                        for _ in connection.notifies(timeout=5.0, stop_after=1):
                            self.woken.set()
                        connection.execute("SELECT 1")
            except Exception:  # the main loop reports outages; this is only a shortcut
                self.stopping.wait(2.0)

    def stop(self, *_signal_args) -> None:
        self.stopping.set()
        self.woken.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)


def _short(error: Exception, limit: int = 200) -> str:
    first_line = str(getattr(error, "orig", None) or error).strip().splitlines()[0] if str(error).strip() else ""
    return first_line[:limit] or type(error).__name__


# --- expiry (SPEC §10) ---------------------------------------------------------------------------

ESCALATIONS = AgentEscalation.__table__


@task("expiry")
def settle_expired(now: dt.datetime) -> int:
    """Settle escalations still pending at their deadline, exactly once each, as a resolve
    would: status `resolved` with `on_expiry`, or `expired` without one; one
    `agent.escalation_resolved` event each (decided_by "expiry"). The change is conditional
    on status = 'pending' under the row's lock, so a founder deciding in the same instant
    either wins (the worker skips the row) or gets 409."""
    if db.engine.dialect.name == "postgresql":
        return _settle_expired_postgres(now)
    columns = ESCALATIONS.c
    with write_transaction() as session:  # SQLite: BEGIN IMMEDIATE, the database is ours
        due = session.execute(
            select(columns.id).where(columns.status == PENDING, columns.expires_at.is_not(None),
                                     columns.expires_at <= now)
            .order_by(columns.expires_at).limit(BATCH)
        ).scalars().all()
        for escalation_id in due:
            row = session.execute(
                ESCALATIONS.update()
                .where(columns.id == escalation_id, columns.status == PENDING)
                .values(status=case((columns.on_expiry.is_(None), EXPIRED), else_=RESOLVED),
                        founder_decision=columns.on_expiry, founder_guidance=None, resolved_at=now,
                        decided_by=BY_EXPIRY, decided_via=None)
                .returning(*ESCALATIONS.c)
            ).one()
            record_event(row.job_id, row.founder_id, SSEEventType.AGENT_ESCALATION_RESOLVED, expiry_payload(row))
    return len(due)


def expiry_payload(row) -> dict:
    return {
        "escalation_id": str(row.id), "project_id": row.project_id, "status": row.status,
        "resolution": row.founder_decision, "resolution_label": (escalation_option(row, row.founder_decision) or {}).get("label"),
        "guidance": None, "resolved_at": row.resolved_at.isoformat(), "decided_by": BY_EXPIRY, "decided_via": None,
    }


def _settle_expired_postgres(now: dt.datetime) -> int:
    """One statement per batch: claim the due rows (SKIP LOCKED: rows another worker or a
    resolving founder holds are left to them), settle them, and store one event each with
    its NOTIFY."""
    with write_transaction() as session:
        rows = session.execute(_SETTLE_EXPIRED_POSTGRES, {
            "now": now, "now_iso": now.isoformat(), "batch": BATCH, "expired": EXPIRED, "resolved": RESOLVED,
            "by": BY_EXPIRY, "type": SSEEventType.AGENT_ESCALATION_RESOLVED, "channel": NOTIFY_CHANNEL,
        }).all()
    announce([(row.event_id, row.job_id, row.founder_id) for row in rows])
    return len(rows)


_SETTLE_EXPIRED_POSTGRES = text("""
    WITH due AS (
        SELECT id FROM agent_escalations
         WHERE status = 'pending' AND expires_at IS NOT NULL AND expires_at <= :now
         ORDER BY expires_at LIMIT :batch
           FOR UPDATE SKIP LOCKED
    ), settled AS (
        UPDATE agent_escalations AS e
           SET status = CASE WHEN e.on_expiry IS NULL THEN :expired ELSE :resolved END,
               founder_decision = e.on_expiry, founder_guidance = NULL, resolved_at = :now,
               decided_by = :by, decided_via = NULL
          FROM due
         WHERE e.id = due.id AND e.status = 'pending'
        RETURNING e.id, e.job_id, e.founder_id, e.project_id, e.status, e.founder_decision, e.options
    ), event AS (
        INSERT INTO job_events (job_id, founder_id, type, payload, created_at)
        SELECT s.job_id, s.founder_id, :type, jsonb_build_object(
                   'escalation_id', s.id::text, 'project_id', s.project_id, 'status', s.status,
                   'resolution', s.founder_decision,
                   'resolution_label', (SELECT option ->> 'label' FROM jsonb_array_elements(s.options) AS option
                                         WHERE option ->> 'value' = s.founder_decision LIMIT 1),
                   'guidance', NULL, 'resolved_at', CAST(:now_iso AS TEXT),
                   'decided_by', CAST(:by AS TEXT), 'decided_via', NULL),
               :now
          FROM settled AS s
         ORDER BY s.founder_id, s.id
        RETURNING id, job_id, founder_id, pg_notify(:channel, json_build_array(id, job_id, founder_id)::text)
    )
    SELECT id AS event_id, job_id, founder_id FROM event
""")


# --- the reminder (SPEC §10) ---------------------------------------------------------------------

@task("reminder")
def mark_reminders_due(now: dt.datetime) -> int:
    """At three quarters of an expiring escalation's time, if it is still pending, its one
    reminder falls due: `reminded_at` is set, once, in one conditional change, and in the same
    transaction the reminder is owed to the founder's channels (SPEC §11; the notifications
    task sends it). The console shows it on the card."""
    columns = ESCALATIONS.c
    due = (select(columns.id)
           .where(columns.status == PENDING, columns.reminder_at.is_not(None), columns.reminded_at.is_(None),
                  columns.reminder_at <= now)
           .order_by(columns.reminder_at).limit(BATCH))
    if db.engine.dialect.name == "postgresql":
        due = due.with_for_update(skip_locked=True)
    with write_transaction() as session:
        reminded = session.execute(
            ESCALATIONS.update()
            .where(columns.id.in_(due.scalar_subquery()), columns.status == PENDING, columns.reminded_at.is_(None))
            .values(reminded_at=now)
            .returning(columns.id, columns.founder_id)
        ).all()
        notification_service.enqueue_reminders([row.id for row in reminded], now)
    for escalation_id, founder_id in reminded:
        log.info("reminder due for escalation %s (founder %s)", escalation_id, one_line(founder_id, 255))
    return len(reminded)


# --- webhooks (SPEC §13): its task registers itself on import ------------------------------------

from . import webhooks  # noqa: E402,F401

# --- notifications (SPEC §11): e-mail and Slack, its task registers itself on import -------------

from . import notifications  # noqa: E402,F401

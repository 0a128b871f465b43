"""Real-time fan-out of the stored event log: SSE streams and the `?wait=` long-poll.

One `EventHub` per process. Waiters (a stream, a long-poll) *watch* a key — a job, or a
founder's whole inbox — and sleep on a condition variable; they hold no database
connection while they wait. The hub learns of committed events

* in-process, right after commit (events.on_events_committed), at once;
* from other processes: on PostgreSQL through one LISTEN connection per process (the
  NOTIFY is sent in the event's transaction, so it is delivered at commit); on SQLite by
  re-checking the log's high-water mark every SQLITE_POLL_SECONDS while anyone waits.

Correctness never depends on a wake-up: streams re-read the log at least every heartbeat
and long-polls re-check at least every few seconds, so a lost notification (a LISTEN
connection that died with the database, say) costs latency, never an event.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import Counter
from contextlib import contextmanager
from typing import Iterator

import psycopg
from flask import Flask, current_app, has_app_context
from sqlalchemy import func, select

from .auth import Principal
from .events import NOTIFY_CHANNEL, list_events, on_events_committed
from .extensions import db
from .models import PENDING, Job, JobEvent
from .services.escalations import Escalation, get_escalation

log = logging.getLogger(__name__)

LONG_POLL_RECHECK_SECONDS = 5.0
FEED_IDLE_SECONDS = 60.0
STREAM_BATCH = 500


def job_key(job_id: str) -> str:
    return f"job:{job_id}"


def founder_key(founder_id: str) -> str:
    return f"founder:{founder_id}"


class EventHub:
    def __init__(self, app: Flask):
        self.app = app
        self._cond = threading.Condition()
        self._watchers: Counter[str] = Counter()
        self._latest: dict[str, int] = {}  # watched key -> highest committed event id seen
        self._feed_lock = threading.Lock()
        self._feed_pid: int | None = None
        self._listening = threading.Event()
        self._stopped = threading.Event()

    def stop(self) -> None:
        """Stop the feed thread (before the app's database goes away); waiters fall back to
        their periodic re-checks. For tests and embedders: a worker process simply exits."""
        self._stopped.set()

    # -- what waiters use
    @contextmanager
    def watch(self, key: str) -> Iterator[None]:
        with self._cond:
            self._watchers[key] += 1
            self._latest.setdefault(key, 0)
        self._ensure_feed()  # after registering: a feed thread about to idle out sees us
        try:
            yield
        finally:
            with self._cond:
                self._watchers[key] -= 1
                if self._watchers[key] <= 0:
                    del self._watchers[key]
                    self._latest.pop(key, None)

    def latest(self, key: str) -> int:
        with self._cond:
            return self._latest.get(key, 0)

    def wait(self, key: str, after_id: int, timeout: float) -> bool:
        """Sleep until an event above after_id is known for key, or timeout. True if woken."""
        if timeout <= 0:
            return self.latest(key) > after_id
        with self._cond:
            return self._cond.wait_for(lambda: self._latest.get(key, 0) > after_id, timeout)

    @property
    def watching(self) -> int:
        with self._cond:
            return sum(self._watchers.values())

    # -- what feeds use
    def publish(self, committed: list[tuple[int, str, str]]) -> None:
        with self._cond:
            woke = False
            for event_id, job_id, founder_id in committed:
                for key in (job_key(job_id), founder_key(founder_id)):
                    if key in self._watchers and event_id > self._latest.get(key, 0):
                        self._latest[key] = event_id
                        woke = True
            if woke:
                self._cond.notify_all()

    def _ensure_feed(self) -> None:
        """Start this process's feed thread on first use (after any fork)."""
        if self._feed_pid == os.getpid() or self._stopped.is_set():
            return
        with self._feed_lock:
            if self._feed_pid == os.getpid():
                return
            self._feed_pid = os.getpid()
            self._listening.clear()
            with self.app.app_context():
                dialect = db.engine.dialect.name
            target = self._listen_loop if dialect == "postgresql" else self._poll_loop
            threading.Thread(target=target, name=f"console-event-feed-{dialect}", daemon=True).start()
        # Do not miss a NOTIFY sent between this watch and the LISTEN: wait (briefly) for it.
        self._listening.wait(timeout=2.0)

    def _should_stop(self, idle_since: float | None) -> tuple[bool, float | None]:
        """A feed with nobody watching for FEED_IDLE_SECONDS stops (and lets its connection
        go); the next watch starts a new one, which catches up from the log."""
        if self._stopped.is_set():
            return True, None
        if self.watching:
            return False, None
        now = time.monotonic()
        if idle_since is None:
            return False, now
        if now - idle_since < FEED_IDLE_SECONDS:
            return False, idle_since
        with self._feed_lock:
            if self.watching:
                return False, None
            self._feed_pid = None
            return True, None

    def _high_water(self) -> int:
        with self.app.app_context():
            try:
                return db.session.scalar(select(func.max(JobEvent.id))) or 0
            finally:
                db.session.remove()

    def _catch_up(self, after_id: int) -> int:
        """Publish what was committed after after_id (another process's events, or events
        missed while the LISTEN connection was down); returns the new high-water mark."""
        with self.app.app_context():
            try:
                rows = db.session.execute(
                    select(JobEvent.job_id, Job.founder_id, func.max(JobEvent.id))
                    .join(Job, Job.id == JobEvent.job_id)
                    .where(JobEvent.id > after_id)
                    .group_by(JobEvent.job_id, Job.founder_id)
                ).all()
            finally:
                db.session.remove()
        if rows:
            self.publish([(last_id, job_id, founder_id) for job_id, founder_id, last_id in rows])
            return max(last_id for _, _, last_id in rows)
        return after_id

    def _poll_loop(self) -> None:
        interval = float(self.app.config.get("SQLITE_POLL_SECONDS", 0.5))
        high_water = None
        idle_since = None
        self._listening.set()
        while True:
            try:
                if high_water is None:
                    high_water = self._high_water()
                if self.watching:
                    high_water = self._catch_up(high_water)
            except Exception:  # the database may be away; try again next round
                log.debug("event poll failed", exc_info=True)
            stop, idle_since = self._should_stop(idle_since)
            if stop:
                return
            self._stopped.wait(interval)

    def _listen_loop(self) -> None:
        with self.app.app_context():
            conninfo = db.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        high_water = None
        idle_since = None
        backoff = 0.5
        while True:
            try:
                with psycopg.connect(conninfo, autocommit=True, connect_timeout=3) as conn:
                    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    high_water = self._catch_up(high_water) if high_water is not None else self._high_water()
                    self._listening.set()
                    backoff = 0.5
                    while True:
                        for notice in conn.notifies(timeout=5.0):
                            event_id, job_id, founder_id = json.loads(notice.payload)
                            high_water = max(high_water, event_id)
                            self.publish([(event_id, job_id, founder_id)])
                        stop, idle_since = self._should_stop(idle_since)
                        if stop:
                            return
                        conn.execute("SELECT 1")  # notice a dead connection within seconds
            except Exception as error:
                if self._stopped.is_set():
                    return
                log.warning("event LISTEN connection lost (%s); reconnecting in %.1f s", error, backoff)
                self._listening.set()  # waiters fall back to their periodic re-checks
                stop, idle_since = self._should_stop(idle_since)
                if stop:
                    return
                self._stopped.wait(backoff)
                backoff = min(backoff * 2, 5.0)


def init_app(app: Flask) -> None:
    app.extensions["console_event_hub"] = EventHub(app)


def current_hub() -> EventHub:
    return current_app.extensions["console_event_hub"]


def _publish_to_current_app(committed) -> None:
    if has_app_context():
        hub = current_app.extensions.get("console_event_hub")
        if hub is not None:
            hub.publish(committed)


on_events_committed(_publish_to_current_app)


# --- the long-poll -----------------------------------------------------------------------------

def wait_until_settled(escalation_id: str, principal: Principal, wait_seconds: float) -> Escalation:
    """The escalation once it is resolved or skipped, or as it is after wait_seconds."""
    escalation = get_escalation(escalation_id, principal)
    if escalation.status != PENDING:
        return escalation
    hub = current_hub()
    key = job_key(escalation.job_id)
    deadline = time.monotonic() + wait_seconds
    with hub.watch(key):
        while True:
            seen = hub.latest(key)
            escalation = get_escalation(escalation_id, principal)
            db.session.close()  # hold no connection while waiting
            remaining = deadline - time.monotonic()
            if escalation.status != PENDING or remaining <= 0:
                return escalation
            hub.wait(key, seen, min(remaining, LONG_POLL_RECHECK_SECONDS))


# --- Server-Sent Events ------------------------------------------------------------------------

def sse_frame(event: JobEvent) -> str:
    return f"id: {event.id}\nevent: {event.type}\ndata: {json.dumps(event.envelope())}\n\n"


HEARTBEAT_FRAME = "event: heartbeat\ndata: {}\n\n"


def job_event_stream(app: Flask, job_id: str, after: int, render=sse_frame) -> Iterator[str]:
    return _event_stream(app, job_key(job_id), lambda last: list_events(job_id, last, STREAM_BATCH), after, render)


def founder_event_stream(app: Flask, founder_id: str, after: int, render=sse_frame) -> Iterator[str]:
    def fetch(last: int) -> list[JobEvent]:
        query = (select(JobEvent).join(Job, Job.id == JobEvent.job_id)
                 .where(Job.founder_id == founder_id, JobEvent.id > last)
                 .order_by(JobEvent.id).limit(STREAM_BATCH))
        return list(db.session.scalars(query))

    return _event_stream(app, founder_key(founder_id), fetch, after, render)


def _event_stream(app: Flask, key: str, fetch, after: int, render) -> Iterator[str]:
    """Replay what is stored after `after`, then stream new events as they commit, each
    written by render(event) (an SSE frame of the JSON envelope, or the console's HTML).
    Heartbeats keep proxies (and the client's liveness check) happy; the stream ends after
    SSE_MAX_STREAM_SECONDS so that workers are not held forever (clients reconnect with
    Last-Event-ID and lose nothing)."""
    hub: EventHub = app.extensions["console_event_hub"]
    heartbeat = float(app.config["SSE_HEARTBEAT_SECONDS"])
    lifetime = float(app.config["SSE_MAX_STREAM_SECONDS"])

    def read(last: int) -> list[tuple[int, str]]:
        with app.app_context():
            try:
                return [(e.id, render(e)) for e in fetch(last)]
            finally:
                db.session.remove()

    def stream() -> Iterator[str]:
        with hub.watch(key):
            yield "retry: 2000\n\n"
            last = after
            now = time.monotonic()
            last_write, end = now, now + lifetime
            while True:
                try:
                    frames = read(last)
                except Exception:
                    log.warning("event stream %s ends: the database is not answering", key)
                    return  # the client reconnects with Last-Event-ID
                for _, frame in frames:
                    yield frame
                if frames:
                    last = frames[-1][0]
                    last_write = time.monotonic()
                    if len(frames) == STREAM_BATCH:
                        continue
                now = time.monotonic()
                if now >= end:
                    return
                if now - last_write >= heartbeat:
                    yield HEARTBEAT_FRAME
                    last_write = now
                woken = hub.wait(key, last, min(last_write + heartbeat, end) - now)
                if woken and not frames and hub.latest(key) > last:
                    time.sleep(0.02)  # a wake-up for an event not readable yet: do not spin

    return stream()

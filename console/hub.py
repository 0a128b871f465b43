"""The per-process event hub: who is waiting for which key, and the feed that wakes them.

One `EventHub` per app and process. A waiter (an SSE stream, a `?wait=` long-poll)
*watches* a key — a job, or a founder's whole inbox — and sleeps on that key's condition;
it holds no database connection while it waits. A committed event wakes only the waiters
of its job and its founder, never every waiter of the process (with thousands of open
streams, waking all of them on every event would cost more than the events).

The hub learns of committed events

* in-process, right after commit (`events.on_events_committed`), at once;
* from other processes, through the feed: on PostgreSQL one LISTEN connection per process
  (the NOTIFY is sent in the event's transaction, so it arrives at commit); on SQLite a
  re-check of the log's high-water mark every SQLITE_POLL_SECONDS while anyone waits.

The feed starts once per process (on the first watch after a fork) and runs until the hub
is stopped; it never stops itself, so there is no window in which a new waiter registers
with a feed that is on its way out. Correctness never depends on a wake-up: `generation`
changes whenever the feed may have missed one (it reconnected, or a poll failed), and
waiters then re-read the log, so a lost notification costs latency, never an event; while
the feed is healthy an idle waiter costs no query at all.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from contextlib import contextmanager
from typing import Any, Callable, Hashable, Iterator

import psycopg
from flask import Flask, current_app, has_app_context
from sqlalchemy import func, select

from .config import POSTGRES_LIVENESS
from .database import read_rows
from .events import JOB_EVENTS, NOTIFY_CHANNEL, on_events_committed
from .extensions import db

log = logging.getLogger(__name__)

LISTEN_CHECK_SECONDS = 5.0  # how often an idle LISTEN connection proves it is alive


def job_key(job_id: str) -> str:
    return f"job:{job_id}"


def founder_key(founder_id: str) -> str:
    return f"founder:{founder_id}"


class _Watched:
    """The waiters of one key: how many, the newest event id published for it, the
    condition they sleep on (sharing the hub's lock), and the reads they share."""

    __slots__ = ("waiters", "latest", "condition", "reads")

    def __init__(self, lock: threading.Lock):
        self.waiters = 0
        self.latest = 0
        self.condition = threading.Condition(lock)
        self.reads: dict[Hashable, _SharedRead] = {}


class _SharedRead:
    """One read of the database that every waiter asking the same question at the same
    point of the key's history gets the answer of (single flight)."""

    __slots__ = ("latest", "generation", "done", "result", "error")

    def __init__(self, latest: int, generation: int):
        self.latest, self.generation = latest, generation
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class EventHub:
    def __init__(self, app: Flask):
        self.app = app
        self._lock = threading.Lock()
        self._keys: dict[str, _Watched] = {}
        self._feed_lock = threading.Lock()
        self._feed_pid: int | None = None
        self._listening = threading.Event()
        self._stopped = threading.Event()
        # Changes whenever the feed may have missed a notification (it connected, lost its
        # connection, or a poll failed): waiters re-read the log then, and only then, when
        # nothing woke them.
        self.generation = 0

    def stop(self) -> None:
        """Stop the feed (before the app's database goes away); waiters fall back to their
        periodic re-checks. For tests and embedders: a worker process simply exits."""
        self._stopped.set()

    # -- what waiters use
    @contextmanager
    def watch(self, key: str) -> Iterator[None]:
        with self._lock:
            watched = self._keys.get(key)
            if watched is None:
                watched = self._keys[key] = _Watched(self._lock)
            watched.waiters += 1
        self._ensure_feed()
        try:
            yield
        finally:
            with self._lock:
                watched.waiters -= 1
                if watched.waiters <= 0:
                    del self._keys[key]

    def latest(self, key: str) -> int:
        """The newest event id published for a watched key since it was first watched."""
        with self._lock:
            watched = self._keys.get(key)
            return watched.latest if watched else 0

    def wait(self, key: str, after_id: int, timeout: float) -> bool:
        """Sleep until an event above after_id is published for the (watched) key, or the
        timeout passes. True if woken by such an event."""
        with self._lock:
            watched = self._keys.get(key)
            if watched is None:
                return False
            if timeout <= 0:
                return watched.latest > after_id
            return watched.condition.wait_for(lambda: watched.latest > after_id, timeout)

    def shared_read(self, key: str, question: Hashable, load: Callable[[], Any]) -> Any:
        """load()'s answer to `question` about a watched key, shared: when a hundred streams
        of one job are woken by the same event, one of them reads the log and the others
        take its rows (a read is reused only while no newer event is known for the key and
        the feed has not reconnected; otherwise it is made again)."""
        with self._lock:
            watched = self._keys.get(key)
            if watched is None:
                leader, flight = True, _SharedRead(0, self.generation)
            else:
                flight = watched.reads.get(question)
                leader = (flight is None or flight.latest != watched.latest
                          or flight.generation != self.generation or flight.error is not None)
                if leader:
                    flight = watched.reads[question] = _SharedRead(watched.latest, self.generation)
        if not leader:
            flight.done.wait()
            if flight.error is None:
                return flight.result
            return load()  # the leader's read failed: try for ourselves
        try:
            flight.result = load()
            return flight.result
        except BaseException as error:
            flight.error = error
            raise
        finally:
            flight.done.set()

    @property
    def watching(self) -> int:
        with self._lock:
            return sum(watched.waiters for watched in self._keys.values())

    # -- what feeds use
    def publish(self, committed: list[tuple[int, str, str]]) -> None:
        """Wake the waiters of the jobs and founders of these (event_id, job_id, founder_id)."""
        with self._lock:
            for event_id, job_id, founder_id in committed:
                for key in (job_key(job_id), founder_key(founder_id)):
                    watched = self._keys.get(key)
                    if watched is not None and event_id > watched.latest:
                        watched.latest = event_id
                        watched.condition.notify_all()

    def _ensure_feed(self) -> None:
        """Start this process's feed on first use (after any fork); it runs until stop()."""
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

    def _high_water(self) -> int:
        with self.app.app_context():
            return read_rows(select(func.max(JOB_EVENTS.c.id)))[0][0] or 0

    def _catch_up(self, after_id: int) -> int:
        """Publish what was committed after after_id (another process's events, or events
        missed while the LISTEN connection was down); returns the new high-water mark."""
        columns = JOB_EVENTS.c
        with self.app.app_context():
            rows = read_rows(select(columns.job_id, columns.founder_id, func.max(columns.id))
                             .where(columns.id > after_id).group_by(columns.job_id, columns.founder_id))
        if rows:
            self.publish([(last_id, job_id, founder_id) for job_id, founder_id, last_id in rows])
            return max(last_id for _, _, last_id in rows)
        return after_id

    def _poll_loop(self) -> None:
        interval = float(self.app.config.get("SQLITE_POLL_SECONDS", 0.5))
        high_water = None
        self._listening.set()
        while not self._stopped.is_set():
            try:
                if high_water is None:
                    high_water = self._high_water()
                if self._keys:
                    high_water = self._catch_up(high_water)
            except Exception:  # the database may be away; try again next round
                log.debug("event poll failed", exc_info=True)
                self.generation += 1
            self._stopped.wait(interval)

    def _listen_loop(self) -> None:
        with self.app.app_context():
            conninfo = db.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        high_water = None
        backoff = 0.5
        lost = False
        while not self._stopped.is_set():
            try:
                with psycopg.connect(conninfo, autocommit=True, **POSTGRES_LIVENESS) as conn:
                    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    high_water = self._catch_up(high_water) if high_water is not None else self._high_water()
                    self._listening.set()
                    self.generation += 1
                    if lost:
                        log.warning("event LISTEN connection is back")
                    lost, backoff = False, 0.5
                    while not self._stopped.is_set():
                        for notice in conn.notifies(timeout=LISTEN_CHECK_SECONDS):
                            event_id, job_id, founder_id = json.loads(notice.payload)
                            high_water = max(high_water, event_id)
                            self.publish([(event_id, job_id, founder_id)])
                        conn.execute("SELECT 1")  # notice a dead connection within seconds
            except Exception as error:
                if self._stopped.is_set():
                    return
                if not lost:  # said once per outage, not once per retry
                    log.warning("event LISTEN connection lost (%s); reconnecting with backoff", error)
                lost = True
                self.generation += 1
                self._listening.set()  # waiters fall back to their periodic re-checks
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

"""The two ways a client waits for events: an SSE stream of a job's (or a founder's)
events, and the `?wait=` long-poll of one escalation. Both sleep on the per-process
`console.hub.EventHub` and read the stored log (never the notification) for what to
send, so a lost wake-up costs latency, never an event.
"""
from __future__ import annotations

import json
import logging
import select
import socket
import time
from typing import Iterator

from flask import Flask, has_request_context, request
from sqlalchemy.exc import DBAPIError, TimeoutError as PoolTimeout

from .auth import AGENT, Principal
from .events import event_envelope, list_events, list_founder_events
from .hub import EventHub, current_hub, founder_key, job_key
from .models import PENDING
from .errors import NotFound
from .services.escalations import Escalation, find_escalation, get_escalation
from .text import one_line

log = logging.getLogger(__name__)

LONG_POLL_RECHECK_SECONDS = 5.0
STREAM_BATCH = 500
DATABASE_ERRORS = (DBAPIError, PoolTimeout)


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
            seen, generation = hub.latest(key), hub.generation
            # Every long-poll of this escalation woken by one event shares one read of it.
            escalation = hub.shared_read(key, ("escalation", escalation.id), lambda: find_escalation(escalation_id, AGENT))
            if escalation is None or not principal.sees(escalation.founder_id, escalation.job_id):
                raise NotFound(f"There is no escalation {str(escalation_id)!r}.")
            remaining = deadline - time.monotonic()
            if escalation.status != PENDING or remaining <= 0:
                return escalation
            while not hub.wait(key, seen, min(remaining, LONG_POLL_RECHECK_SECONDS)):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or hub.generation != generation:
                    break  # time is up, or the feed reconnected and may have missed a wake-up


# --- Server-Sent Events ------------------------------------------------------------------------

def sse_frame(event) -> str:
    return f"id: {event.id}\nevent: {event.type}\ndata: {json.dumps(event_envelope(event))}\n\n"


HEARTBEAT_FRAME = "event: heartbeat\ndata: {}\n\n"
CLIENT_CHECK_SECONDS = 5.0  # how often an idle stream looks whether its client is still there


def client_gone(client: socket.socket | None) -> bool:
    """Has the client closed its end of the connection? A closed socket reads as
    readable with nothing in it. (Without the server's socket, the next write tells.)"""
    if client is None:
        return False
    try:
        readable, _, _ = select.select([client], [], [], 0)
        return bool(readable) and client.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


def job_event_stream(app: Flask, job_id: str, after: int, render=sse_frame) -> Iterator[str]:
    return _event_stream(app, job_key(job_id), lambda last: list_events(job_id, last, STREAM_BATCH), after, render)


def founder_event_stream(app: Flask, founder_id: str, after: int, render=sse_frame) -> Iterator[str]:
    return _event_stream(app, founder_key(founder_id), lambda last: list_founder_events(founder_id, last, STREAM_BATCH),
                         after, render)


def _event_stream(app: Flask, key: str, fetch, after: int, render) -> Iterator[str]:
    """Replay what is stored after `after`, then stream new events as they commit, each
    written by render(event) (an SSE frame of the JSON envelope, or the console's HTML).
    Heartbeats keep proxies (and the client's liveness check) happy; the stream ends after
    SSE_MAX_STREAM_SECONDS so that workers are not held forever (clients reconnect with
    Last-Event-ID and lose nothing)."""
    hub: EventHub = app.extensions["console_event_hub"]
    client = (request.environ.get("gunicorn.socket") or request.environ.get("werkzeug.socket")) \
        if has_request_context() else None
    heartbeat = float(app.config["SSE_HEARTBEAT_SECONDS"])
    lifetime = float(app.config["SSE_MAX_STREAM_SECONDS"])

    def read(last: int) -> list[tuple[int, str]]:
        with app.app_context():
            # The streams of a key woken by one event share one read of the log (most of them
            # are at the same `last`); each renders its own frames.
            events = hub.shared_read(key, ("events", last), lambda: fetch(last))
            return [(e.id, render(e)) for e in events]

    def stream() -> Iterator[str]:
        with hub.watch(key):
            yield "retry: 2000\n\n"
            last = after
            now = time.monotonic()
            last_write, end = now, now + lifetime
            must_read = True
            while True:
                if must_read:
                    generation = hub.generation
                    try:
                        frames = read(last)
                    except DATABASE_ERRORS as error:
                        log.warning("event stream %s ends: the database is not answering (%s)", one_line(key, 300), error)
                        return  # the client reconnects with Last-Event-ID
                    except Exception:
                        log.exception("event stream %s failed", one_line(key, 300))
                        return
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
                    yield HEARTBEAT_FRAME  # also how a vanished client is noticed: the write fails
                    last_write = now
                if must_read and hub.latest(key) > last:
                    # Woken for an event not readable yet (it committed, but an older
                    # transaction is still in flight: console/events.py): do not spin.
                    time.sleep(0.02)
                woken = hub.wait(key, last, min(last_write + heartbeat, end, now + CLIENT_CHECK_SECONDS) - now)
                if not woken and client_gone(client):
                    return  # the client went away: let go of it now, not at the next failing write
                # Without a wake-up the log is re-read only when the feed may have missed
                # something (it reconnected since the last read): an idle stream costs no query.
                must_read = woken or hub.generation != generation

    return stream()

"""Webhook delivery (SPEC §13): the worker's `webhooks` task.

What is owed is stored by the database itself: a trigger on job_events (migration 0005)
inserts one webhook_deliveries row per enabled endpoint that takes the event's type, in
the transaction that stored the event, whichever statement stored it. A batch here is:

1. **claim** (one transaction): the due deliveries (`status = 'pending' AND
   next_attempt_at <= now`, a partial index; `FOR UPDATE SKIP LOCKED` on PostgreSQL, so
   any number of workers share them) get a lease: `locked_until = next_attempt_at = now +
   lease`. Commit. A worker that dies with them leaves them due again when the lease runs
   out, so delivery is at least once.
2. **send**, with no transaction open: a pool of threads POSTs each event's envelope,
   signed (Standard Webhooks), to its endpoint through the SSRF guard of console/outbound.py.
   A send starts only while the lease still covers its whole timeout; an endpoint that
   times out or refuses the connection gets no more sends in this batch (its other
   deliveries wait with it instead of holding every thread for 15 s each).
3. **record** (a second transaction): one webhook_attempts row per attempt; the delivery is
   delivered, scheduled again (5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h, ±10 %; at least
   Retry-After) or failed for good; 410 disables the endpoint, and so do 5 days of nothing
   but failures (said once in the log). Changes are conditional on the lease still being
   this batch's.
"""
from __future__ import annotations

import base64
import concurrent.futures
import dataclasses
import datetime as dt
import email.utils
import hashlib
import hmac
import json
import logging
import random
import threading
import time
from typing import Any

from flask import current_app
from sqlalchemy import bindparam, func, insert, literal_column, select, update

from . import outbound
from .database import write_transaction
from .events import JOB_EVENTS
from .extensions import db
from .inputs import ascii_int
from .models import (
    DELIVERY_CANCELLED, DELIVERY_DELIVERED, DELIVERY_FAILED, DELIVERY_PENDING, WebhookAttempt, WebhookDelivery,
    WebhookEndpoint, event_envelope,
)
from .text import one_line, origin
from .worker import task

log = logging.getLogger("console.webhooks")

ENDPOINTS = WebhookEndpoint.__table__
DELIVERIES = WebhookDelivery.__table__
ATTEMPTS = WebhookAttempt.__table__

CLAIM_BATCH = 100
SENDERS = 8  # concurrent POSTs of one worker
JITTER = 0.10
DISABLE_AFTER = dt.timedelta(days=5)  # of nothing but failures
MAX_RETRY_AFTER = 24 * 3600.0
SECRET_PREFIX = "whsec_"
USER_AGENT = "escalation-console-webhooks/1"


# --- signing (Standard Webhooks) ----------------------------------------------------------------

def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_…` secret: the base64-decoded bytes after the prefix."""
    encoded = secret[len(SECRET_PREFIX):] if secret.startswith(SECRET_PREFIX) else secret
    return base64.b64decode(encoded + "=" * (-len(encoded) % 4))


def signature_header(secrets: list[str], webhook_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, one per secret, space-separated."""
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    return " ".join("v1," + base64.b64encode(hmac.new(secret_key(s), signed, hashlib.sha256).digest()).decode()
                    for s in secrets)


def envelope_body(event: Any) -> bytes:
    """The event's envelope (SPEC §3) as the exact bytes that are signed and sent."""
    return json.dumps(event_envelope(event), ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def signing_secrets(endpoint: Any, at: dt.datetime) -> list[str]:
    """The current secret, and during the 24 h after a rotation the previous one too."""
    secrets = [endpoint.secret]
    if endpoint.previous_secret and endpoint.previous_secret_expires_at and endpoint.previous_secret_expires_at > at:
        secrets.append(endpoint.previous_secret)
    return secrets


# --- settings -----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Settings:
    schedule: tuple[float, ...]
    timeout: float
    lease: float
    allow_private: bool

    @classmethod
    def of(cls, config) -> "Settings":
        timeout = float(config["WEBHOOK_TIMEOUT_SECONDS"])
        lease = float(config["WEBHOOK_LEASE_SECONDS"])
        if timeout <= 0:
            raise RuntimeError(f"CONSOLE_WEBHOOK_TIMEOUT_SECONDS must be positive; it is {timeout!r}.")
        if lease < timeout + 2:
            raise RuntimeError(f"CONSOLE_WEBHOOK_LEASE_SECONDS ({lease:g}) must exceed the timeout "
                               f"({timeout:g}) by 2 s at least: a send must end within its lease.")
        return cls(parse_schedule(config["WEBHOOK_RETRY_SCHEDULE"]), timeout, lease,
                   _flag(config["WEBHOOK_ALLOW_PRIVATE"]))


def parse_schedule(raw: Any) -> tuple[float, ...]:
    """CONSOLE_WEBHOOK_RETRY_SCHEDULE: seconds separated by commas ("5,300,1800"); one
    number is one retry. Flask's from_prefixed_env may already have parsed it."""
    items = raw if isinstance(raw, (list, tuple)) else str(raw).split(",")
    try:
        schedule = tuple(float(item) for item in items if str(item).strip())
    except ValueError:
        raise RuntimeError(f"CONSOLE_WEBHOOK_RETRY_SCHEDULE must be seconds separated by commas; it is {raw!r}.") from None
    if any(delay < 0 for delay in schedule):
        raise RuntimeError(f"CONSOLE_WEBHOOK_RETRY_SCHEDULE has a negative delay: {raw!r}.")
    return schedule


def _flag(value: Any) -> bool:
    return value is True or str(value).strip().lower() in ("1", "true", "yes", "on")


def retry_after_seconds(value: str | None, at: dt.datetime) -> float | None:
    """Retry-After as seconds from `at`: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    seconds = ascii_int(value)
    if seconds is not None:
        return min(float(seconds), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return min(max((when - at).total_seconds(), 0.0), MAX_RETRY_AFTER)


# --- the task -----------------------------------------------------------------------------------

@dataclasses.dataclass
class Claimed:
    delivery_id: int
    event_id: int
    endpoint: Any  # a webhook_endpoints row
    event: Any | None  # a job_events row (None: gone)
    attempt: int  # the number of this attempt since the delivery was (re)queued


@dataclasses.dataclass
class Sent:
    claimed: Claimed
    at: dt.datetime | None  # None: not sent (deferred)
    outcome: outbound.Outcome | None = None
    deferred_because: str | None = None


_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _senders() -> concurrent.futures.ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = concurrent.futures.ThreadPoolExecutor(SENDERS, thread_name_prefix="webhook-sender")
        return _pool


@task("webhooks", batch=CLAIM_BATCH)
def deliver_webhooks(now: dt.datetime) -> int:
    """Claim a batch of due deliveries, POST them (no transaction open), record the outcomes."""
    settings = Settings.of(current_app.config)
    started = time.monotonic()

    def clock() -> dt.datetime:  # the worker's clock (a test's, perhaps), moving on in real time
        return now + dt.timedelta(seconds=time.monotonic() - started)

    lease_until = now + dt.timedelta(seconds=settings.lease)
    claimed = _claim(now, lease_until)
    if not claimed:
        return 0
    sent = _send_all(claimed, settings, clock, send_until=started + settings.lease - settings.timeout - 1.0)
    _record(sent, settings, lease_until, clock())
    return len(claimed)


def _claim(now: dt.datetime, lease_until: dt.datetime) -> list[Claimed]:
    d, e = DELIVERIES.c, ENDPOINTS.c
    due = (select(d.id, d.endpoint_id, d.event_id, d.attempts, d.locked_until)
           .join(ENDPOINTS, e.id == d.endpoint_id)
           # the status as a literal: a plan for any value of a parameter could not use the partial index
           .where(d.status == literal_column(f"'{DELIVERY_PENDING}'"), d.next_attempt_at <= now, e.enabled.is_(True))
           .order_by(d.next_attempt_at).limit(CLAIM_BATCH))
    if db.engine.dialect.name == "postgresql":
        due = due.with_for_update(of=DELIVERIES, skip_locked=True)
    with write_transaction() as session:
        rows = session.execute(due).all()
        if not rows:
            return []
        session.execute(update(DELIVERIES).where(d.id.in_([row.id for row in rows]))
                        .values(locked_until=lease_until, next_attempt_at=lease_until, attempts=d.attempts + 1))
        # A lease that ran out: the worker that held it stopped before it recorded anything.
        lost = [{"delivery_id": row.id, "attempted_at": row.locked_until, "status_code": None,
                 "error": "no outcome recorded: the worker sending it stopped (its lease ran out)",
                 "response_body": None, "duration_ms": None} for row in rows if row.locked_until is not None]
        if lost:
            session.execute(insert(ATTEMPTS), lost)
        endpoints = {row.id: row for row in session.execute(
            select(ENDPOINTS).where(e.id.in_({row.endpoint_id for row in rows})))}
        events = {row.id: row for row in session.execute(
            select(JOB_EVENTS).where(JOB_EVENTS.c.id.in_({row.event_id for row in rows})))}
    return [Claimed(row.id, row.event_id, endpoints[row.endpoint_id], events.get(row.event_id), row.attempts + 1) for row in rows]


def _send_all(claimed: list[Claimed], settings: Settings, clock, send_until: float) -> list[Sent]:
    unreachable: set[int] = set()  # endpoints that timed out or refused in this batch

    def send(item: Claimed) -> Sent:
        try:
            return attempt(item)
        except Exception as error:  # noqa: BLE001  (one bad piece never stops the others: SPEC §16)
            log.warning("webhook delivery %s raised: %s: %s", item.delivery_id, type(error).__name__,
                        one_line(error, 300), exc_info=item.attempt == 1)
            return Sent(item, clock(), outbound.Outcome(None, one_line(f"error: {type(error).__name__}: {error}", 300),
                                                        None, None, 0))

    def attempt(item: Claimed) -> Sent:
        if time.monotonic() > send_until:
            return Sent(item, None, deferred_because="lease")
        if item.endpoint.id in unreachable:
            return Sent(item, None, deferred_because="unreachable")
        at = clock()
        if item.event is None:
            return Sent(item, at, outbound.Outcome(None, f"event {item.event_id} no longer exists", None, None, 0))
        body = envelope_body(item.event)
        webhook_id, timestamp = f"evt_{item.event.id}", int(at.timestamp())
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT, "webhook-id": webhook_id,
                   "webhook-timestamp": str(timestamp),
                   "webhook-signature": signature_header(signing_secrets(item.endpoint, at), webhook_id, timestamp, body)}
        outcome = outbound.post(item.endpoint.url, body, headers, timeout=settings.timeout,
                                allow_private=settings.allow_private)
        if outcome.status is None:
            unreachable.add(item.endpoint.id)
        return Sent(item, at, outcome)

    return list(_senders().map(send, claimed))


def _record(sent: list[Sent], settings: Settings, lease_until: dt.datetime, now: dt.datetime) -> None:
    attempts, delivered, retry, failed, deferred = [], [], [], [], []
    succeeded: dict[int, dt.datetime] = {}
    failing: dict[int, dt.datetime] = {}  # endpoint → its first failure in this batch
    gone: dict[int, str] = {}  # endpoint → why it is disabled now (410)
    next_try: dict[int, dt.datetime] = {}  # endpoint → the soonest retry of its failures
    for item in sent:
        delivery_id, endpoint_id = item.claimed.delivery_id, item.claimed.endpoint.id
        if item.outcome is None:
            continue
        outcome = item.outcome
        attempts.append({"delivery_id": delivery_id, "attempted_at": item.at, "status_code": outcome.status,
                         "error": outcome.error, "response_body": outcome.body, "duration_ms": outcome.duration_ms})
        if outcome.ok:
            delivered.append({"d_id": delivery_id, "at": item.at})
            succeeded[endpoint_id] = max(item.at, succeeded.get(endpoint_id, item.at))
            continue
        failing[endpoint_id] = min(item.at, failing.get(endpoint_id, item.at))
        if outcome.status == 410:
            gone[endpoint_id] = f"the receiver answered 410 Gone on {item.at:%Y-%m-%d %H:%M} UTC"
            failed.append({"d_id": delivery_id})
            continue
        attempt = item.claimed.attempt
        if item.claimed.event is None or attempt > len(settings.schedule):
            failed.append({"d_id": delivery_id})
            continue
        delay = settings.schedule[attempt - 1] * random.uniform(1 - JITTER, 1 + JITTER)
        delay = max(delay, retry_after_seconds(outcome.retry_after, item.at) or 0.0)
        due = item.at + dt.timedelta(seconds=delay)
        retry.append({"d_id": delivery_id, "due": due})
        next_try[endpoint_id] = min(due, next_try.get(endpoint_id, due))
    for item in sent:
        if item.outcome is None:
            endpoint_id = item.claimed.endpoint.id
            due = now if item.deferred_because == "lease" else next_try.get(endpoint_id, now)
            deferred.append({"d_id": item.claimed.delivery_id, "due": due})

    d, e = DELIVERIES.c, ENDPOINTS.c
    ours = (d.id == bindparam("d_id")) & (d.locked_until == lease_until) & (d.status == DELIVERY_PENDING)
    with write_transaction() as session:
        # An endpoint removed meanwhile took its deliveries with it: record nothing for them
        # (FOR SHARE keeps the rest from going before this commits).
        still_there = set(session.execute(select(d.id).where(d.id.in_([item.claimed.delivery_id for item in sent]))
                                          .with_for_update(read=True)).scalars())
        attempts = [attempt for attempt in attempts if attempt["delivery_id"] in still_there]
        if attempts:
            session.execute(insert(ATTEMPTS), attempts)
        if delivered:
            session.execute(update(DELIVERIES).where(ours).values(
                status=DELIVERY_DELIVERED, delivered_at=bindparam("at"), locked_until=None), delivered)
        if retry:
            session.execute(update(DELIVERIES).where(ours).values(
                next_attempt_at=bindparam("due"), locked_until=None), retry)
        if failed:
            session.execute(update(DELIVERIES).where(ours).values(status=DELIVERY_FAILED, locked_until=None), failed)
        if deferred:  # never sent: not an attempt
            session.execute(update(DELIVERIES).where(ours).values(
                next_attempt_at=bindparam("due"), locked_until=None, attempts=d.attempts - 1), deferred)
        for endpoint_id, at in succeeded.items():
            session.execute(update(ENDPOINTS).where(e.id == endpoint_id)
                            .values(failing_since=None, last_success_at=at))
        for endpoint_id, at in failing.items():
            if endpoint_id in succeeded:
                continue
            failing_since = session.execute(
                update(ENDPOINTS).where(e.id == endpoint_id)
                .values(failing_since=func.coalesce(e.failing_since, at)).returning(e.failing_since)).scalar_one_or_none()
            if failing_since is not None and now - failing_since >= DISABLE_AFTER and endpoint_id not in gone:
                gone[endpoint_id] = (f"5 days of nothing but failures (since {failing_since:%Y-%m-%d %H:%M} UTC)")
        for endpoint_id, reason in gone.items():
            disable_endpoint(session, endpoint_id, reason, now)


def disable_endpoint(session, endpoint_id: int, reason: str, now: dt.datetime) -> bool:
    """Disable an endpoint (once: the log says so once) and cancel what it is still owed."""
    e, d = ENDPOINTS.c, DELIVERIES.c
    changed = session.execute(update(ENDPOINTS).where(e.id == endpoint_id, e.enabled.is_(True))
                              .values(enabled=False, disabled_at=now, disabled_reason=reason)
                              .returning(e.url)).scalar_one_or_none()
    if changed is None:
        return False
    cancelled = session.execute(update(DELIVERIES).where(d.endpoint_id == endpoint_id, d.status == DELIVERY_PENDING)
                                .values(status=DELIVERY_CANCELLED, locked_until=None)).rowcount
    log.warning("webhook endpoint %s (%s) disabled: %s; %d pending deliveries cancelled "
                "(`flask --app console webhook enable %s` turns it back on)", endpoint_id, origin(changed), one_line(reason, 300),
                cancelled, endpoint_id)
    return True

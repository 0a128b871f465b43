"""Webhook endpoints and their deliveries (SPEC §13): every rule of the operator's CLI
(console/webhook_cli.py). Delivering is the worker's (console/webhooks.py)."""
from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import secrets
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.engine import Row

from .. import outbound
from ..database import read_rows, write_transaction
from ..events import JOB_EVENTS, SSEEventType
from ..models import (
    DELIVERY_PENDING, WebhookAttempt, WebhookDelivery, WebhookEndpoint, utcnow,
)
from ..webhooks import SECRET_PREFIX

ENDPOINTS = WebhookEndpoint.__table__
DELIVERIES = WebhookDelivery.__table__
ATTEMPTS = WebhookAttempt.__table__

SECRET_BYTES = 32
ROTATION_OVERLAP = dt.timedelta(hours=24)


class WebhookError(Exception):
    """A refusal, said to the operator as it is."""


def new_secret() -> str:
    """`whsec_` + base64 of 32 random bytes (Standard Webhooks asks for 24 to 64)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def parse_event_types(raw: str | None) -> list[str] | None:
    """`--events TYPE,…` → the list (None: every type); unknown types are refused."""
    if raw is None:
        return None
    types = list(dict.fromkeys(part.strip() for part in raw.split(",") if part.strip()))
    if not types:
        raise WebhookError("--events names no event type (leave it out for every type).")
    unknown = [name for name in types if name not in SSEEventType.values()]
    if unknown:
        raise WebhookError(f"Not an event type: {', '.join(unknown)}. Known: {', '.join(sorted(SSEEventType.values()))}.")
    return types


def add_endpoint(url: str, event_types: list[str] | None, *, allow_private: bool,
                 now: dt.datetime | None = None) -> Row:
    """A new, enabled endpoint with a fresh secret (the row carries it, to be shown once).
    The URL is checked now (form, and what it resolves to) and again at every send."""
    url = url.strip()
    try:
        parts = outbound.check_url(url, allow_private)
        outbound.resolve(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80), allow_private)
    except outbound.RefusedTarget as refused:
        raise WebhookError(str(refused)) from None
    with write_transaction() as session:
        return session.execute(insert(ENDPOINTS).values(
            url=url, event_types=event_types, secret=new_secret(), enabled=True, created_at=now or utcnow(),
        ).returning(*ENDPOINTS.c)).one()


@dataclasses.dataclass(frozen=True)
class EndpointSummary:
    endpoint: Row
    pending: int  # deliveries still owed (due, waiting for a retry or in flight)


def list_endpoints() -> list[EndpointSummary]:
    pending = dict(read_rows(select(DELIVERIES.c.endpoint_id, func.count())
                             .where(DELIVERIES.c.status == DELIVERY_PENDING).group_by(DELIVERIES.c.endpoint_id)))
    return [EndpointSummary(row, pending.get(row.id, 0))
            for row in read_rows(select(ENDPOINTS).order_by(ENDPOINTS.c.id))]


def get_endpoint(endpoint_id: int) -> Row:
    rows = read_rows(select(ENDPOINTS).where(ENDPOINTS.c.id == endpoint_id))
    if not rows:
        raise WebhookError(f"There is no webhook endpoint {endpoint_id}.")
    return rows[0]


def remove_endpoint(endpoint_id: int) -> Row:
    """Remove an endpoint with its deliveries and their attempts (explicitly: SQLite does not
    enforce the foreign keys' ON DELETE CASCADE)."""
    with write_transaction() as session:
        removed = session.execute(delete(ENDPOINTS).where(ENDPOINTS.c.id == endpoint_id)
                                  .returning(*ENDPOINTS.c)).one_or_none()
        if removed is None:
            raise WebhookError(f"There is no webhook endpoint {endpoint_id}.")
        owed = select(DELIVERIES.c.id).where(DELIVERIES.c.endpoint_id == endpoint_id)
        session.execute(delete(ATTEMPTS).where(ATTEMPTS.c.delivery_id.in_(owed.scalar_subquery())))
        session.execute(delete(DELIVERIES).where(DELIVERIES.c.endpoint_id == endpoint_id))
    return removed


def rotate_secret(endpoint_id: int, *, now: dt.datetime | None = None) -> Row:
    """A new secret signs from now on; the one it replaces signs too for 24 hours, so the
    receiver can switch without losing a message (each carries both signatures)."""
    now = now or utcnow()
    with write_transaction() as session:
        current = session.execute(select(ENDPOINTS.c.secret).where(ENDPOINTS.c.id == endpoint_id)
                                  .with_for_update()).scalar_one_or_none()
        if current is None:
            raise WebhookError(f"There is no webhook endpoint {endpoint_id}.")
        return session.execute(update(ENDPOINTS).where(ENDPOINTS.c.id == endpoint_id).values(
            secret=new_secret(), previous_secret=current, previous_secret_expires_at=now + ROTATION_OVERLAP,
        ).returning(*ENDPOINTS.c)).one()


def enable_endpoint(endpoint_id: int) -> Row:
    """Turn a disabled endpoint back on: new events are owed to it again (what was cancelled
    while it was off stays so; `redeliver` sends one again)."""
    with write_transaction() as session:
        row = session.execute(update(ENDPOINTS).where(ENDPOINTS.c.id == endpoint_id).values(
            enabled=True, disabled_at=None, disabled_reason=None, failing_since=None,
        ).returning(*ENDPOINTS.c)).one_or_none()
    if row is None:
        raise WebhookError(f"There is no webhook endpoint {endpoint_id}.")
    return row


@dataclasses.dataclass(frozen=True)
class DeliveryRecord:
    delivery: Row
    event_type: str | None
    url: str
    attempts: list[Row]


def list_deliveries(endpoint_id: int | None = None, limit: int = 20) -> list[DeliveryRecord]:
    """The latest deliveries (of one endpoint, or of all), newest first, with every attempt."""
    d = DELIVERIES.c
    query = (select(DELIVERIES, JOB_EVENTS.c.type.label("event_type"), ENDPOINTS.c.url)
             .join(ENDPOINTS, ENDPOINTS.c.id == d.endpoint_id)
             .outerjoin(JOB_EVENTS, JOB_EVENTS.c.id == d.event_id))
    if endpoint_id is not None:
        get_endpoint(endpoint_id)
        query = query.where(d.endpoint_id == endpoint_id).order_by(d.event_id.desc())
    else:
        query = query.order_by(d.id.desc())
    rows = read_rows(query.limit(limit))
    attempts: dict[int, list[Row]] = {}
    if rows:
        for attempt in read_rows(select(ATTEMPTS).where(ATTEMPTS.c.delivery_id.in_([r.id for r in rows]))
                                 .order_by(ATTEMPTS.c.id)):
            attempts.setdefault(attempt.delivery_id, []).append(attempt)
    return [DeliveryRecord(row, row.event_type, row.url, attempts.get(row.id, [])) for row in rows]


def redeliver(delivery_id: int, *, now: dt.datetime | None = None) -> Row:
    """Queue a delivery again, whatever became of it: due now, a fresh retry schedule, the
    same webhook-id (receivers that saw it already drop it)."""
    now = now or utcnow()
    d = DELIVERIES.c
    with write_transaction() as session:
        found = session.execute(select(DELIVERIES.c.id, ENDPOINTS.c.id.label("endpoint_id"), ENDPOINTS.c.enabled,
                                       ENDPOINTS.c.disabled_reason)
                                .join(ENDPOINTS, ENDPOINTS.c.id == d.endpoint_id)
                                .where(d.id == delivery_id)).one_or_none()
        if found is None:
            raise WebhookError(f"There is no webhook delivery {delivery_id}.")
        if not found.enabled:
            raise WebhookError(f"Endpoint {found.endpoint_id} is disabled ({found.disabled_reason}); "
                               f"`webhook enable {found.endpoint_id}` first.")
        return session.execute(update(DELIVERIES).where(d.id == delivery_id).values(
            status=DELIVERY_PENDING, attempts=0, next_attempt_at=now, locked_until=None, delivered_at=None,
        ).returning(*DELIVERIES.c)).one()


def describe_attempt(attempt: Any) -> str:
    """One line of an attempt: when, and the status or the error."""
    when = f"{attempt.attempted_at:%Y-%m-%d %H:%M:%S}"
    if attempt.status_code is not None:
        outcome = f"HTTP {attempt.status_code}"
        if attempt.error and not attempt.error.startswith("HTTP"):
            outcome += f" ({attempt.error})"
    else:
        outcome = attempt.error or "no outcome"
    took = f" in {attempt.duration_ms} ms" if attempt.duration_ms is not None else ""
    body = f" — {attempt.response_body[:120]!r}" if attempt.response_body else ""
    return f"{when}  {outcome}{took}{body}"


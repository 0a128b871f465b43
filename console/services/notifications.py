"""Notifications (SPEC §11): the founders' settings, what is owed to them, and the signed
links of the messages. Sending is the worker's (console/notifications.py).

What is owed is stored in the transaction of the change that made it due: the create of an
escalation (`enqueue_question`, called inside create_escalation's transaction, only for a
question that is still pending — a rule's answer is never notified) and the reminder's sweep
(`enqueue_reminders`, inside the worker's reminder transaction). One statement inserts a
delivery per channel the founder has on (none without settings), so a founder who set
nothing costs one indexed look-up and no row.

Links in messages are signed with the app's secret key (itsdangerous, as sign-in links are):
an e-mail's option link names the escalation, the founder and the option, expires after 7
days and decides that one question once, with one Send (its nonce is spent in
`spent_mail_links`); it signs nobody in (SPEC §16). Slack's URL buttons and "Open in the
console" are plain links to the card's page (`card_link`), which needs a session. The
unsubscribe link names the founder and turns e-mail off with a POST, without a session.
"""
from __future__ import annotations

import datetime as dt
import functools
import hashlib
import hmac
import secrets
import uuid
from typing import Any
from urllib.parse import urlencode, urlsplit

from flask import current_app
from itsdangerous import BadSignature, SignatureExpired, URLSafeSerializer, URLSafeTimedSerializer
from pydantic import ValidationError
from sqlalchemy import Row, String, bindparam, delete, func, insert, literal, select, union_all

from ..database import read_rows, write_transaction
from ..errors import ValidationFailed
from ..extensions import db
from ..models import (
    CHANNEL_EMAIL, CHANNEL_SLACK, EMAIL_OFF, KIND_QUESTION, KIND_REMINDER, KIND_SLACK_UPDATE, NOTIFY_PENDING,
    AgentEscalation, NotificationAttempt, NotificationDelivery, NotificationSettings, SpentMailLink, UTCDateTime,
    utcnow,
)
from ..schemas import NotificationSettingsDocument, QuietHours, field_errors, timezone_names
from .jobs import dialect_insert

ESCALATIONS = AgentEscalation.__table__
SETTINGS = NotificationSettings.__table__
DELIVERIES = NotificationDelivery.__table__
ATTEMPTS = NotificationAttempt.__table__
SPENT = SpentMailLink.__table__

MAIL_LINK_MAX_AGE = 7 * 24 * 3600
_OPTION_SALT = "console-mail-option-link"
_UNSUBSCRIBE_SALT = "console-mail-unsubscribe"
RECENT_DELIVERIES = 20


# --- settings -------------------------------------------------------------------------------------

def settings_row(founder_id: str) -> Row | None:
    rows = read_rows(select(SETTINGS).where(SETTINGS.c.founder_id == founder_id))
    return rows[0] if rows else None


def document_of(row: Row | None) -> NotificationSettingsDocument:
    """The settings as the API shows them (the defaults when nothing is stored)."""
    if row is None:
        return NotificationSettingsDocument()
    quiet = (QuietHours.model_construct(start=row.quiet_start, end=row.quiet_end)
             if row.quiet_start and row.quiet_end else None)
    return NotificationSettingsDocument.model_construct(  # stored values were checked when they were saved
        email=row.email, email_mode=row.email_mode, slack_webhook_url=row.slack_webhook_url,
        slack_user_id=row.slack_user_id, timezone=row.timezone, quiet_hours=quiet)


def allow_private() -> bool:
    """CONSOLE_WEBHOOK_ALLOW_PRIVATE: http:// and private or loopback hosts (development, tests)."""
    value = current_app.config.get("WEBHOOK_ALLOW_PRIVATE")
    return value is True or str(value).strip().lower() in ("1", "true", "yes", "on")


def get_settings(founder_id: str) -> NotificationSettingsDocument:
    return document_of(settings_row(founder_id))


def parse_settings(data: Any) -> NotificationSettingsDocument:
    """Validate a whole settings document (422 per field); http:// and private Slack hosts only
    with CONSOLE_WEBHOOK_ALLOW_PRIVATE, as for webhooks."""
    context = {"allow_private": allow_private()}
    try:
        return NotificationSettingsDocument.model_validate(data, context=context)
    except ValidationError as error:
        raise ValidationFailed(field_errors(error)) from None


def save_settings(founder_id: str, document: NotificationSettingsDocument,
                  now: dt.datetime | None = None) -> NotificationSettingsDocument:
    """Replace the founder's settings with this document (the time of the last digest stays)."""
    quiet = document.quiet_hours
    values = {
        "email": document.email, "email_mode": document.email_mode, "slack_webhook_url": document.slack_webhook_url,
        "slack_user_id": document.slack_user_id, "timezone": document.timezone,
        "quiet_start": quiet.start if quiet else None, "quiet_end": quiet.end if quiet else None,
        "updated_at": now or utcnow(),
    }
    with write_transaction() as session:
        session.execute(dialect_insert(SETTINGS).values(founder_id=founder_id, **values)
                        .on_conflict_do_update(index_elements=["founder_id"], set_=values))
    return document


def turn_email_off(founder_id: str) -> None:
    """The one-click unsubscribe (RFC 8058): e-mail off, everything else as it was."""
    now = utcnow()
    with write_transaction() as session:
        session.execute(dialect_insert(SETTINGS).values(
            founder_id=founder_id, email=None, email_mode=EMAIL_OFF, timezone="UTC", updated_at=now,
        ).on_conflict_do_update(index_elements=["founder_id"], set_={"email_mode": EMAIL_OFF, "updated_at": now}))


def ensure_demo_settings(founder_id: str, email: str) -> None:
    """The demo founder gets an address (messages land in instance/mail/ without an SMTP server)."""
    if settings_row(founder_id) is None:
        try:
            document = NotificationSettingsDocument(email=email)
        except ValidationError:  # a founder id that makes no address: no e-mail
            return
        save_settings(founder_id, document)


# --- what is owed ---------------------------------------------------------------------------------

def _owed_rows(channel: str):
    e, s = ESCALATIONS.c, SETTINGS.c
    wanted = ((s.email.is_not(None)) & (s.email_mode != EMAIL_OFF) if channel == CHANNEL_EMAIL
              else s.slack_webhook_url.is_not(None))
    now = bindparam("now", type_=UTCDateTime)
    return (select(e.founder_id, e.id, bindparam("kind", type_=String), literal(channel), literal(NOTIFY_PENDING),
                   literal(0), now, now)
            .select_from(ESCALATIONS.join(SETTINGS, s.founder_id == e.founder_id))
            .where(e.id.in_(bindparam("ids", expanding=True)), wanted))


@functools.cache
def _enqueue_statement():
    """Built once (every create runs it): kind, now and ids are bound per call."""
    owed = union_all(_owed_rows(CHANNEL_EMAIL), _owed_rows(CHANNEL_SLACK))
    return insert(DELIVERIES).from_select(_OWED_COLUMNS, owed)


_OWED_COLUMNS = ["founder_id", "escalation_id", "kind", "channel", "status", "attempts", "next_attempt_at",
                 "created_at"]


def _enqueue(escalation_ids: list[uuid.UUID], kind: str, now: dt.datetime) -> None:
    """Inside the caller's write transaction: one delivery per escalation and channel its
    founder has on, due now."""
    if not escalation_ids:
        return
    db.session.execute(_enqueue_statement(), {"ids": list(escalation_ids), "kind": kind, "now": now})


def enqueue_question(escalation: Any, now: dt.datetime | None = None) -> None:
    """A new, still pending question (inside create_escalation's transaction)."""
    _enqueue([escalation.id], KIND_QUESTION, now or utcnow())


def enqueue_reminders(escalation_ids: list[uuid.UUID], now: dt.datetime) -> None:
    """The reminders of SPEC §10 (inside the reminder task's transaction)."""
    _enqueue(escalation_ids, KIND_REMINDER, now)


def enqueue_slack_update(escalation: Any, response_url: str, now: dt.datetime | None = None) -> None:
    """After a Slack button answered: the message is updated through its response_url, by the worker."""
    now = now or utcnow()
    with write_transaction() as session:
        session.execute(insert(DELIVERIES).values(
            founder_id=escalation.founder_id, escalation_id=escalation.id, kind=KIND_SLACK_UPDATE,
            channel=CHANNEL_SLACK, status=NOTIFY_PENDING, attempts=0, next_attempt_at=now, created_at=now,
            target=response_url))


def recent_deliveries(founder_id: str, limit: int = RECENT_DELIVERIES) -> list[Row]:
    """The founder's latest deliveries, newest first, with the question's project and problem
    and the time of the last attempt (the settings page: why nothing arrived)."""
    d, e, a = DELIVERIES.c, ESCALATIONS.c, ATTEMPTS.c
    last_attempt = (select(func.max(a.attempted_at)).where(a.delivery_id == d.id)
                    .correlate(DELIVERIES).scalar_subquery().label("last_attempt_at"))
    return read_rows(
        select(DELIVERIES, e.project_id, e.plain_english_problem, last_attempt)
        .outerjoin(ESCALATIONS, e.id == d.escalation_id)
        .where(d.founder_id == founder_id).order_by(d.id.desc()).limit(limit))


def attempts_of(delivery_id: int) -> list[Row]:
    return read_rows(select(ATTEMPTS).where(ATTEMPTS.c.delivery_id == delivery_id).order_by(ATTEMPTS.c.id))


# --- links ----------------------------------------------------------------------------------------

def _base_url() -> str:
    return str(current_app.config["BASE_URL"]).rstrip("/")


def _option_serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.config["SECRET_KEY"], salt=_OPTION_SALT)


def _unsubscribe_serializer() -> URLSafeSerializer:
    return URLSafeSerializer(current_app.config["SECRET_KEY"], salt=_UNSUBSCRIBE_SALT)


def decision_link(escalation_id: uuid.UUID, founder_id: str, decision: str) -> str:
    """An e-mail's option link (SPEC §16): it opens a page that decides this one question
    with this option after one Send, and signs nobody in. Bound to the founder, the escalation
    and the option; expires after 7 days; spent by the first decision made with it."""
    token = _option_serializer().dumps({"e": str(escalation_id), "f": founder_id, "d": decision,
                                        "n": secrets.token_urlsafe(18)})
    return f"{_base_url()}/mail/open?{urlencode({'t': token})}"


def card_link(escalation_id: uuid.UUID, decision: str | None = None) -> str:
    """The card's console page (a session is needed, as for every console page), with an
    option chosen: what Slack's URL buttons and every "Open in the console" link lead to."""
    query = f"?{urlencode({'decision': decision})}" if decision else ""
    return f"{_base_url()}/escalations/{escalation_id}{query}"


def read_option_link(token: str) -> dict[str, str] | None:
    """{"escalation_id", "founder_id", "decision", "nonce"} of a valid, unexpired link; else None."""
    try:
        data = _option_serializer().loads(token, max_age=MAIL_LINK_MAX_AGE)
    except (SignatureExpired, BadSignature):
        return None
    if not isinstance(data, dict) or not all(isinstance(data.get(key), str) for key in "efdn"):
        return None
    if not data["e"] or not data["f"] or not data["n"]:
        return None
    return {"escalation_id": data["e"], "founder_id": data["f"], "decision": data["d"], "nonce": data["n"]}


def option_link_spent(nonce: str) -> bool:
    return bool(read_rows(select(SPENT.c.nonce).where(SPENT.c.nonce == nonce)))


def spend_option_link(link: dict[str, str]) -> bool:
    """Spend the link's nonce: True for the one decision made with it (of any number, concurrent
    or later). Nonces older than a link's lifetime can never be presented again: they are forgotten."""
    now = utcnow()
    spend = (dialect_insert(SPENT).values(nonce=link["nonce"], founder_id=link["founder_id"], spent_at=now)
             .on_conflict_do_nothing(index_elements=["nonce"]).returning(SPENT.c.nonce))
    with write_transaction() as session:
        spent_now = session.execute(spend).first() is not None
        session.execute(delete(SPENT).where(SPENT.c.spent_at < now - dt.timedelta(seconds=MAIL_LINK_MAX_AGE + 86400)))
    return spent_now


def decision_form_token(link: dict[str, str]) -> str:
    """The CSRF token of a decision link's page. The page sets no cookie, so the token is
    derived from the link itself (HMAC with the app's key): a form posted from elsewhere
    lacks it, and it is good for this one link only."""
    key = str(current_app.config["SECRET_KEY"]).encode()
    return hmac.new(key, f"mail-decision-form:{link['nonce']}:{link['escalation_id']}".encode(),
                    hashlib.sha256).hexdigest()


def decision_form_token_valid(link: dict[str, str], token: str) -> bool:
    return hmac.compare_digest(decision_form_token(link), token or "")


def unsubscribe_link(founder_id: str) -> str:
    """The List-Unsubscribe URL: a POST to it turns e-mail off for this founder (RFC 8058)."""
    return f"{_base_url()}/mail/unsubscribe?{urlencode({'t': _unsubscribe_serializer().dumps({'f': founder_id})})}"


def read_unsubscribe(token: str) -> str | None:
    try:
        data = _unsubscribe_serializer().loads(token)
    except BadSignature:
        return None
    founder_id = data.get("f") if isinstance(data, dict) else None
    return founder_id if isinstance(founder_id, str) and founder_id else None


def inbox_link() -> str:
    return f"{_base_url()}/"


def settings_link() -> str:
    return f"{_base_url()}/settings"


def redact_url(url: str) -> str:
    """A webhook URL as it is recorded and shown: its secret path cut to its first segments."""
    parts = urlsplit(url)
    segments = [segment for segment in parts.path.split("/") if segment]
    shown = "/".join(segments[:2] if len(segments) > 2 else segments[:1])
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}/{shown}" + (
        "/…" if len(segments) > 1 else "")


# --- the console's settings form ------------------------------------------------------------------

def settings_form_document(form: Any) -> dict[str, Any]:
    """The settings form's fields as the API's document (blank fields are null; the quiet hours
    count only when their box is ticked)."""
    def field(name: str) -> str | None:
        value = (form.get(name) or "").strip()
        return value or None

    quiet = None
    if form.get("quiet_hours") == "on":
        quiet = {"start": (form.get("quiet_start") or "").strip()[:5], "end": (form.get("quiet_end") or "").strip()[:5]}
    return {"email": field("email"), "email_mode": field("email_mode") or "each",
            "slack_webhook_url": field("slack_webhook_url"), "slack_user_id": field("slack_user_id"),
            "timezone": field("timezone") or "UTC", "quiet_hours": quiet}


def notification_timezones() -> tuple[str, ...]:
    """Every IANA name, for the form's suggestions."""
    return timezone_names()

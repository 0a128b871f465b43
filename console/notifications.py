"""Sending notifications (SPEC §11): the worker's `notifications` task.

What is owed was stored by the transaction that made it due (console/services/notifications.py).
A batch is:

1. **claim** (one transaction): due deliveries (`FOR UPDATE SKIP LOCKED` on PostgreSQL, so any
   number of workers share them) get a lease (`locked_until = next_attempt_at = now + lease`),
   with their escalations and their founders' settings. A delivery still `sending` whose lease
   ran out belonged to a worker that died past the point of no return: it becomes `unknown`
   and is never sent again (see below). One still `pending` whose lease ran out was never
   handed to a server: it is simply sent now.
2. **decide and send**, no transaction open but one short one per message: a question no longer
   pending is skipped (and says so); within the founder's quiet hours it waits until they end;
   in digest mode the founder's e-mails wait for the hour and go out as one message; the rest
   is sent, one message at a time. Right before the point of no return — the SMTP `DATA`, the
   Slack POST — the delivery is marked `sending` in its own committed transaction.
3. **record** (a transaction): one notification_attempts row per attempt (when, to where, the
   server's status or the error, shortened); the delivery is sent, retried with backoff
   (temporary failures: connection errors, timeouts, SMTP 4xx, HTTP 408/429/5xx, honouring
   Retry-After), or failed (permanent: SMTP 5xx, other HTTP 4xx). Conditional on the lease.

**At most once, on both channels.** Neither SMTP nor Slack's incoming webhooks deduplicate, so
a message the server accepted but the worker did not record (it died in between) would be sent
twice by a blind retry. The `sending` mark makes that case visible instead: such a delivery
ends `unknown` ("may or may not have arrived") and is not retried, while every failure whose
outcome is known (refused, 4xx/5xx, timeouts before the server said it took the message) is
retried as the spec asks. A missed nudge costs little — the console's inbox always shows every
question — a duplicate costs the founder's trust in the channel.

When the SMTP server is unreachable (refused, timed out, dropped), the other e-mails of the batch
are not tried against it: they wait for the same retry. Slack URLs likewise, one by one.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import email.utils
import json
import logging
import os
import random
import smtplib
import socket
import ssl
import tempfile
import threading
import time
from email.message import EmailMessage
from typing import Any, Callable
from urllib.parse import unquote, urlsplit

from flask import Flask, current_app
from sqlalchemy import bindparam, func, insert, or_, select, text, update

from . import messages, outbound
from .database import read_rows, write_transaction
from .extensions import db
from .models import (
    CHANNEL_EMAIL, CHANNEL_SLACK, EMAIL_DIGEST, EMAIL_OFF, KIND_SLACK_UPDATE, NOTIFY_FAILED, NOTIFY_PENDING,
    NOTIFY_SENDING, NOTIFY_SENT, NOTIFY_SKIPPED, NOTIFY_UNKNOWN, PENDING, AgentEscalation, NotificationAttempt,
    NotificationDelivery, NotificationSettings,
)
from .services import notifications as service
from .text import one_line
from .worker import task

log = logging.getLogger("console.notifications")

DELIVERIES = NotificationDelivery.__table__
ATTEMPTS = NotificationAttempt.__table__
SETTINGS = NotificationSettings.__table__
ESCALATIONS = AgentEscalation.__table__

CLAIM_BATCH = 20
JITTER = 0.10
DIGEST_EVERY = dt.timedelta(hours=1)
OUTCOME_CHARS = 300
USER_AGENT = "escalation-console-notifications/1"


# --- configuration --------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class SmtpServer:
    """CONSOLE_SMTP_URL: smtp://[user:pass@]host[:port] (25), smtp+starttls:// (587), smtps:// (465)."""
    scheme: str
    host: str
    port: int
    username: str | None
    password: str | None = dataclasses.field(repr=False)

    @classmethod
    def parse(cls, url: str) -> "SmtpServer":
        parts = urlsplit(url.strip())
        ports = {"smtp": 25, "smtp+starttls": 587, "smtps": 465}
        if parts.scheme not in ports or not parts.hostname:
            raise RuntimeError("CONSOLE_SMTP_URL must look like smtp://[user:pass@]host:port, "
                               "smtp+starttls://… or smtps://…")  # the URL itself is not repeated: it may hold a password
        try:
            port = parts.port or ports[parts.scheme]
        except ValueError:
            raise RuntimeError("CONSOLE_SMTP_URL has a port out of range.") from None
        return cls(parts.scheme, parts.hostname, port, unquote(parts.username) if parts.username else None,
                   unquote(parts.password) if parts.password else None)

    @property
    def shown(self) -> str:
        """Where, as it is recorded and logged: never the credentials."""
        return f"{self.scheme}://{self.host}:{self.port}"


@dataclasses.dataclass(frozen=True)
class Settings:
    schedule: tuple[float, ...]
    timeout: float
    lease: float
    allow_private: bool
    smtp: SmtpServer | None
    mail_from: str
    mail_dir: str
    interactive: bool  # CONSOLE_SLACK_SIGNING_SECRET is set: Slack buttons decide in place
    helo_name: str
    max_per_hour: int  # CONSOLE_MAX_MESSAGES_PER_HOUR, per founder and channel (SPEC §16)

    @classmethod
    def of(cls, app: Flask) -> "Settings":
        config = app.config
        timeout, lease = float(config["NOTIFY_TIMEOUT_SECONDS"]), float(config["NOTIFY_LEASE_SECONDS"])
        if timeout <= 0 or lease < timeout + 5:
            raise RuntimeError("CONSOLE_NOTIFY_TIMEOUT_SECONDS must be positive and CONSOLE_NOTIFY_LEASE_SECONDS "
                               "exceed it by 5 s at least.")
        from .webhooks import parse_schedule  # noqa: PLC0415  (webhooks imports the worker, which imports us)

        smtp_url = config.get("SMTP_URL")
        return cls(
            schedule=parse_schedule(config["NOTIFY_RETRY_SCHEDULE"]), timeout=timeout, lease=lease,
            allow_private=service.allow_private(),
            smtp=SmtpServer.parse(str(smtp_url)) if smtp_url else None,
            mail_from=str(config["MAIL_FROM"]),
            mail_dir=str(config.get("MAIL_DIR") or os.path.join(app.instance_path, "mail")),
            interactive=bool(config.get("SLACK_SIGNING_SECRET")),
            helo_name=urlsplit(str(config["BASE_URL"])).hostname or "localhost",
            max_per_hour=int(config["MAX_MESSAGES_PER_HOUR"]),
        )


# --- what one send came to ------------------------------------------------------------------------

SENT, RETRY, FAILED, SKIPPED, POSTPONED, DEFERRED, UNKNOWN = (
    "sent", "retry", "failed", "skipped", "postponed", "deferred", "unknown")


@dataclasses.dataclass
class Item:
    delivery: Any  # a notification_deliveries row
    escalation: Any | None
    settings: Any | None


@dataclasses.dataclass
class Result:
    item: Item
    result: str  # SENT … UNKNOWN above
    at: dt.datetime
    outcome: str
    target: str | None = None
    status_code: int | None = None
    due: dt.datetime | None = None  # POSTPONED / DEFERRED / RETRY: when it is due again
    retry_after: float | None = None
    digest: tuple[str, dt.datetime, dt.datetime | None] | None = None  # (founder, sent at, the digest before)
    unreachable: bool = False  # no server answered

    @property
    def attempted(self) -> bool:
        return self.result in (SENT, RETRY, FAILED)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What a server made of one message."""
    result: str  # SENT, RETRY (temporary), FAILED (permanent), DEFERRED (not handed over: the lease was lost)
    outcome: str
    status_code: int | None = None
    unreachable: bool = False  # no server answered: the rest of the batch need not try it
    retry_after: str | None = None


def _short(text: str, limit: int = OUTCOME_CHARS) -> str:
    """One line, shortened: what is recorded and logged never carries a control character."""
    return one_line(text, limit)


# --- the task -------------------------------------------------------------------------------------

@task("notifications", batch=CLAIM_BATCH)
def send_notifications(now: dt.datetime) -> int:
    """Claim a batch of due deliveries, send them, record what came of each."""
    app = current_app._get_current_object()
    settings = Settings.of(app)
    started = time.monotonic()

    def clock() -> dt.datetime:  # the worker's clock (a test's, perhaps), moving on in real time
        return now + dt.timedelta(seconds=time.monotonic() - started)

    lease_until = now + dt.timedelta(seconds=settings.lease)
    items = _claim(now, lease_until)
    if not items:
        return 0
    results = _send_all(items, settings, clock, lease_until, send_until=started + settings.lease - settings.timeout - 3)
    _record(results, settings, lease_until)
    return len(items)


def _claim(now: dt.datetime, lease_until: dt.datetime) -> list[Item]:
    d = DELIVERIES.c
    # literal, so that the planner can use the partial index made for exactly this
    owed = (text("notification_deliveries.status IN ('pending', 'sending')"), d.next_attempt_at <= now)
    if not read_rows(select(d.id).where(*owed).limit(1)):  # the usual tick: one indexed read, no write lock
        return []
    due = select(DELIVERIES).where(*owed).order_by(d.next_attempt_at, d.id).limit(CLAIM_BATCH)
    if db.engine.dialect.name == "postgresql":
        due = due.with_for_update(skip_locked=True)
    with write_transaction() as session:
        rows = session.execute(due).all()
        if not rows:
            return []
        lost = [row for row in rows if row.status == NOTIFY_SENDING]
        if lost:  # its worker died between the point of no return and recording the outcome
            why = ("no outcome recorded: the worker stopped while the server had the message; not sent again "
                   "(at most once), it may or may not have arrived")
            session.execute(update(DELIVERIES).where(d.id.in_([row.id for row in lost]))
                            .values(status=NOTIFY_UNKNOWN, locked_until=None, outcome=why))
            session.execute(insert(ATTEMPTS), [{"delivery_id": row.id, "attempted_at": row.locked_until or now,
                                                "target": None, "status_code": None, "result": UNKNOWN,
                                                "outcome": why} for row in lost])
            for row in lost:
                log.warning("notification %s (%s, %s) may or may not have been sent: its worker stopped while "
                            "sending; it is not sent again", row.id, row.channel, row.kind)
        rows = [row for row in rows if row.status == NOTIFY_PENDING]
        if not rows:
            return []
        session.execute(update(DELIVERIES).where(d.id.in_([row.id for row in rows]))
                        .values(locked_until=lease_until, next_attempt_at=lease_until))
        escalations = {row.id: row for row in session.execute(
            select(ESCALATIONS).where(ESCALATIONS.c.id.in_({row.escalation_id for row in rows})))}
        founders = {row.founder_id: row for row in session.execute(
            select(SETTINGS).where(SETTINGS.c.founder_id.in_({row.founder_id for row in rows})))}
    return [Item(row, escalations.get(row.escalation_id), founders.get(row.founder_id)) for row in rows]


def quiet_until(at: dt.datetime, settings: Any) -> dt.datetime | None:
    """The end of the founder's quiet hours when `at` is within them (local time, may wrap
    midnight), else None."""
    if settings is None or not settings.quiet_start or not settings.quiet_end:
        return None
    tz = messages.zone(settings)
    start, end = dt.time.fromisoformat(settings.quiet_start), dt.time.fromisoformat(settings.quiet_end)
    local = at.astimezone(tz)
    now = local.time().replace(tzinfo=None)
    inside = start <= now < end if start < end else (now >= start or now < end)
    if not inside:
        return None
    day = local.date() if now < end else local.date() + dt.timedelta(days=1)
    ends = dt.datetime.combine(day, end, tzinfo=tz).astimezone(dt.UTC)
    return max(ends, at + dt.timedelta(minutes=1))  # a clock change cannot make it end in the past


def _check(item: Item, at: dt.datetime) -> Result | None:
    """Why this delivery is not sent now (skipped for good, or postponed), or None."""
    delivery, escalation, settings = item.delivery, item.escalation, item.settings
    if escalation is None:
        return Result(item, SKIPPED, at, "not sent: the question no longer exists")
    if delivery.kind == KIND_SLACK_UPDATE:
        return None  # the founder's own click: answered at once, quiet hours or not
    if escalation.status != PENDING:
        return Result(item, SKIPPED, at, f"not sent: the question was {_settled(escalation)} before it went out")
    if settings is None:
        return Result(item, SKIPPED, at, "not sent: no notification settings")
    if delivery.channel == CHANNEL_EMAIL:
        if settings.email_mode == EMAIL_OFF:
            return Result(item, SKIPPED, at, "not sent: e-mail is turned off")
        if not settings.email:
            return Result(item, SKIPPED, at, "not sent: no e-mail address in the settings")
    elif not settings.slack_webhook_url:
        return Result(item, SKIPPED, at, "not sent: no Slack webhook in the settings")
    ends = quiet_until(at, settings)
    if ends is not None:
        local = ends.astimezone(messages.zone(settings))
        return Result(item, POSTPONED, at, f"waiting for the quiet hours to end ({local:%H:%M} {settings.timezone})",
                      due=ends)
    return None


def _settled(escalation: Any) -> str:
    if escalation.status == "resolved":
        return {"expiry": "settled by its deadline", "rule": "answered by a rule"}.get(escalation.decided_by, "answered")
    return {"skipped": "withdrawn by the agent", "expired": "expired"}.get(escalation.status, escalation.status)


def _send_all(items: list[Item], settings: Settings, clock: Callable[[], dt.datetime], lease_until: dt.datetime,
              send_until: float) -> list[Result]:
    results: list[Result] = []
    digests: dict[str, list[Item]] = {}
    to_send: list[Item] = []
    for item in items:
        try:
            held = _check(item, clock())
        except Exception as error:  # noqa: BLE001  (one bad piece never stops the others: SPEC §16)
            results.append(_broken(item, error, settings, clock()))
            continue
        if held is not None:
            results.append(held)
        elif (item.delivery.channel == CHANNEL_EMAIL and item.delivery.kind != KIND_SLACK_UPDATE
              and item.settings.email_mode == EMAIL_DIGEST):
            digests.setdefault(item.delivery.founder_id, []).append(item)
        else:
            to_send.append(item)
    to_send, over_cap = _within_hourly_cap(to_send, settings, clock())
    results += over_cap.pop("held", [])
    for item in over_cap.pop(CHANNEL_EMAIL, []):  # past the cap, e-mail goes into the (hourly) digest
        digests.setdefault(item.delivery.founder_id, []).append(item)

    smtp_down: tuple[str, dt.datetime] | None = None  # why, and until when the e-mails wait
    slack_down: dict[str, tuple[str, dt.datetime]] = {}

    def waiting(group: list[Item], because: tuple[str, dt.datetime]) -> list[Result]:
        return [Result(item, DEFERRED, clock(), f"waiting: {because[0]}", due=because[1]) for item in group]

    def lease_short(group: list[Item]) -> list[Result] | None:
        if time.monotonic() > send_until:  # a send must end within the lease
            return [Result(item, DEFERRED, clock(), "waiting for the next batch", due=clock()) for item in group]
        return None

    for item in to_send:
        deferred = lease_short([item])
        if deferred:
            results += deferred
            continue
        if item.delivery.channel == CHANNEL_EMAIL:
            if smtp_down:
                results += waiting([item], smtp_down)
                continue
            result = _isolated(_send_email, item, settings, clock, lease_until)
            results.append(result)
            smtp_down = smtp_down or _down([result], settings)
        else:
            url = item.delivery.target if item.delivery.kind == KIND_SLACK_UPDATE else item.settings.slack_webhook_url
            if url in slack_down:
                results += waiting([item], slack_down[url])
                continue
            result = _isolated(_send_slack, item, settings, clock, lease_until, url=url)
            results.append(result)
            down = _down([result], settings)
            if down:
                slack_down[url] = down

    for founder_id, group in digests.items():
        deferred = lease_short(group) or (waiting(group, smtp_down) if smtp_down else None)
        if deferred:
            results += deferred
            continue
        try:
            sent = _send_digest(group, settings, clock, lease_until)
        except Exception as error:  # noqa: BLE001
            sent = [_broken(item, error, settings, clock()) for item in group]
        results += sent
        smtp_down = smtp_down or _down(sent, settings)

    for (founder_id, url), group in over_cap.get(CHANNEL_SLACK, {}).items():
        deferred = lease_short(group) or (waiting(group, slack_down[url]) if url in slack_down else None)
        if deferred:
            results += deferred
            continue
        try:
            results += _send_slack_summary(group, url, settings, clock, lease_until)
        except Exception as error:  # noqa: BLE001
            results += [_broken(item, error, settings, clock()) for item in group]
    return results


def _within_hourly_cap(items: list[Item], settings: Settings, at: dt.datetime):
    """SPEC §16: at most CONSOLE_MAX_MESSAGES_PER_HOUR messages per founder and channel in any
    hour (a digest or a summary counts as one; the founder's own Slack clicks are not counted).
    The items that still fit, oldest first, and the rest: {"email": [items]} (they go into the
    digest, which goes out at most once an hour) and {"slack": {(founder, url): [items]}} (one
    summary message when exactly the cap was sent this hour; later, after the hour)."""
    counted = [item for item in items if item.delivery.kind != KIND_SLACK_UPDATE]
    if not counted:
        return items, {}
    sent = _sent_in_the_last_hour({item.delivery.founder_id for item in counted}, at)
    fits: list[Item] = []
    email_over: list[Item] = []
    slack_over: dict[tuple[str, str], list[Item]] = {}
    for item in sorted(items, key=lambda i: (i.delivery.created_at, i.delivery.id)):
        if item.delivery.kind == KIND_SLACK_UPDATE:
            fits.append(item)
            continue
        key = (item.delivery.founder_id, item.delivery.channel)
        count, oldest = sent.get(key, (0, None))
        if count < settings.max_per_hour:
            sent[key] = (count + 1, oldest or at)
            fits.append(item)
        elif item.delivery.channel == CHANNEL_EMAIL:
            email_over.append(item)
        elif count == settings.max_per_hour:
            slack_over.setdefault((item.delivery.founder_id, item.settings.slack_webhook_url), []).append(item)
        else:  # this hour's summary went out already: the rest waits until the hour has room again
            slack_over.setdefault(("", ""), []).append(item)
    held = slack_over.pop(("", ""), [])
    over: dict[str, Any] = {CHANNEL_EMAIL: email_over, CHANNEL_SLACK: slack_over}
    if held:
        over["held"] = [Result(item, POSTPONED, at, f"over the hourly limit of {settings.max_per_hour} Slack "
                                                    "messages: in the next summary",
                               due=(sent[(item.delivery.founder_id, CHANNEL_SLACK)][1] or at) + dt.timedelta(hours=1))
                        for item in held]
    return fits, over


def _sent_in_the_last_hour(founder_ids: set[str], at: dt.datetime) -> dict[tuple[str, str], tuple[int, dt.datetime]]:
    """(founder, channel) → (messages sent in the hour before `at`, the oldest of them). A
    digest's deliveries share one sent_at: one message."""
    d = DELIVERIES.c
    rows = read_rows(
        select(d.founder_id, d.channel, func.count(d.sent_at.distinct()), func.min(d.sent_at))
        .where(d.founder_id.in_(founder_ids), d.status == NOTIFY_SENT, d.sent_at > at - dt.timedelta(hours=1),
               d.kind != KIND_SLACK_UPDATE)
        .group_by(d.founder_id, d.channel))
    return {(founder_id, channel): (count, oldest) for founder_id, channel, count, oldest in rows}


MAX_BROKEN_ATTEMPTS = 5  # a piece whose own work raises is tried this often, then failed (SPEC §16)


def _isolated(send: Callable[..., Result], item: Item, settings: Settings, clock, lease_until: dt.datetime,
              **more) -> Result:
    """One piece of work; an exception in it (rendering a message, a channel's code) is that
    piece's outcome, never the end of the batch or of the worker."""
    try:
        return send(item, settings, clock, lease_until, **more)
    except Exception as error:  # noqa: BLE001
        return _broken(item, error, settings, clock())


def _broken(item: Item, error: Exception, settings: Settings, at: dt.datetime) -> Result:
    """What an exception in one delivery's work comes to: recorded on it, retried with the
    backoff as a temporary failure, and failed on its fifth attempt. Logged once per attempt
    (each a backoff apart), with the traceback the first time."""
    attempt = item.delivery.attempts + 1
    why = _short(f"error while preparing or sending: {type(error).__name__}: {error}")
    log.warning("notification %s (%s, %s) raised on attempt %s of %s: %s", item.delivery.id, item.delivery.channel,
                item.delivery.kind, attempt, MAX_BROKEN_ATTEMPTS, why, exc_info=attempt == 1)
    due = _backoff(item, settings, at) if attempt < MAX_BROKEN_ATTEMPTS else None
    if due is None:
        return Result(item, FAILED, at, f"{why} (no retries left)")
    return Result(item, RETRY, at, why, due=due)


def _down(results: list[Result], settings: Settings) -> tuple[str, dt.datetime] | None:
    """When a server did not answer at all: why, and when the next try is (for the rest)."""
    for result in results:
        if result.result == RETRY and result.unreachable and result.due is not None:
            return f"the server was unreachable at {result.at:%H:%M} UTC ({result.outcome})", result.due
    return None


def _backoff(item: Item, settings: Settings, at: dt.datetime, retry_after: str | None = None) -> dt.datetime | None:
    """When a temporary failure is tried again; None when the schedule has run out."""
    from .webhooks import retry_after_seconds  # noqa: PLC0415  (see Settings.of)

    attempt = item.delivery.attempts + 1  # this one
    if attempt > len(settings.schedule):
        return None
    delay = settings.schedule[attempt - 1] * random.uniform(1 - JITTER, 1 + JITTER)
    delay = max(delay, retry_after_seconds(retry_after, at) or 0.0)
    return at + dt.timedelta(seconds=delay)


def _result(item: Item, outcome: Outcome, settings: Settings, at: dt.datetime, target: str, **extra) -> Result:
    if outcome.result == RETRY:
        due = _backoff(item, settings, at, outcome.retry_after)
        if due is None:
            return Result(item, FAILED, at, f"{outcome.outcome} (no retries left)", target, outcome.status_code, **extra)
        return Result(item, RETRY, at, outcome.outcome, target, outcome.status_code, due=due,
                      unreachable=outcome.unreachable, **extra)
    if outcome.result == DEFERRED:
        return Result(item, DEFERRED, at, outcome.outcome, due=at, **extra)
    return Result(item, outcome.result, at, outcome.outcome, target, outcome.status_code, **extra)


class _LeaseLost(Exception):
    pass


def _mark_sending(delivery_ids: list[int], lease_until: dt.datetime,
                  digest: tuple[str, dt.datetime] | None = None) -> bool:
    """The point of no return, committed before it is passed: the deliveries are `sending`
    (a worker that dies now leaves them so, and they are not sent again). False when the lease
    is no longer ours, or (a digest) another digest went out within the hour."""
    d, s = DELIVERIES.c, SETTINGS.c
    try:
        with write_transaction() as session:
            marked = session.execute(update(DELIVERIES).where(
                d.id.in_(delivery_ids), d.status == NOTIFY_PENDING, d.locked_until == lease_until,
            ).values(status=NOTIFY_SENDING)).rowcount
            if marked != len(delivery_ids):
                raise _LeaseLost
            if digest is not None:
                founder_id, at = digest
                claimed = session.execute(update(SETTINGS).where(
                    s.founder_id == founder_id,
                    or_(s.digest_sent_at.is_(None), s.digest_sent_at <= at - DIGEST_EVERY),
                ).values(digest_sent_at=at)).rowcount
                if claimed != 1:
                    raise _LeaseLost
    except _LeaseLost:
        return False
    return True


# --- e-mail ---------------------------------------------------------------------------------------

def _send_email(item: Item, settings: Settings, clock, lease_until: dt.datetime) -> Result:
    at = clock()
    message = messages.question_email(item.escalation, item.delivery.kind, item.settings, at)
    to = item.settings.email
    outcome, target = deliver_email(message, to, settings, lambda: _mark_sending([item.delivery.id], lease_until),
                                    f"{item.delivery.kind}-{item.delivery.id}")
    return _result(item, outcome, settings, at, target)


def _send_digest(group: list[Item], settings: Settings, clock, lease_until: dt.datetime) -> list[Result]:
    at = clock()
    founder = group[0].settings
    since = founder.digest_sent_at
    if since is not None and at < since + DIGEST_EVERY:
        due = since + DIGEST_EVERY
        local = due.astimezone(messages.zone(founder))
        return [Result(item, POSTPONED, at, f"in the next digest, at {local:%H:%M} {founder.timezone}", due=due)
                for item in group]
    group = sorted(group, key=lambda item: (item.delivery.created_at, item.delivery.id))
    message = messages.digest_email([(item.escalation, item.delivery.kind) for item in group], founder,
                                    founder.founder_id, at, since, f"{group[0].delivery.id}-{int(at.timestamp())}")
    ids = [item.delivery.id for item in group]
    outcome, target = deliver_email(message, founder.email, settings,
                                    lambda: _mark_sending(ids, lease_until, (founder.founder_id, at)),
                                    f"digest-{ids[0]}")
    if outcome.result == DEFERRED:  # another worker's digest went out meanwhile: the next one takes these
        return [Result(item, POSTPONED, at, "in the next digest", due=at + DIGEST_EVERY) for item in group]
    label = f"{outcome.outcome} (a digest of {len(group)})" if len(group) > 1 else outcome.outcome
    labelled = dataclasses.replace(outcome, outcome=label)
    return [_result(item, labelled, settings, at, target, digest=(founder.founder_id, at, since)) for item in group]


def deliver_email(message: EmailMessage, to: str, settings: Settings, mark_sending: Callable[[], bool],
                  file_stem: str) -> tuple[Outcome, str]:
    """Hand one message to the SMTP server (or, without one, write it into the mail folder).
    `mark_sending` commits the point of no return right before the DATA; False aborts."""
    if settings.smtp is None:
        if not mark_sending():
            return Outcome(DEFERRED, "not sent: the lease was lost"), to
        return _write_eml(message, settings.mail_dir, file_stem), f"{to} (file)"
    server = settings.smtp
    target = f"{to} via {server.shown}"
    connection = (smtplib.SMTP_SSL(timeout=settings.timeout, context=_TLS, local_hostname=settings.helo_name)
                  if server.scheme == "smtps" else smtplib.SMTP(timeout=settings.timeout, local_hostname=settings.helo_name))
    timed_out = threading.Event()
    watchdog = threading.Timer(settings.timeout, _abort_smtp, args=(connection, timed_out))
    watchdog.daemon = True
    watchdog.start()
    try:
        code, reply = connection.connect(server.host, server.port)
        if code != 220:
            return _smtp_refusal(code, reply, "greeting", unreachable=True), target
        connection.ehlo_or_helo_if_needed()
        if server.scheme == "smtp+starttls":
            connection.starttls(context=_TLS)
            connection.ehlo()
        if server.username:
            connection.login(server.username, server.password or "")
        code, reply = connection.mail(_address(settings.mail_from))
        if code != 250:
            return _smtp_refusal(code, reply, "MAIL FROM"), target
        code, reply = connection.rcpt(to)
        if code not in (250, 251):
            return _smtp_refusal(code, reply, "RCPT TO"), target
        if not mark_sending():
            connection.rset()
            return Outcome(DEFERRED, "not sent: the lease was lost"), target
        code, reply = connection.data(message.as_bytes())
        if code != 250:
            return _smtp_refusal(code, reply, "DATA"), target
        return Outcome(SENT, _short(f"{code} {_text(reply)}"), code), target
    except smtplib.SMTPNotSupportedError as error:  # STARTTLS or AUTH asked of a server without them
        return Outcome(FAILED, _short(f"the server does not support it: {error}")), target
    except smtplib.SMTPResponseException as error:  # a reply the exchange could not go on with
        return _smtp_refusal(error.smtp_code, error.smtp_error, "",
                             unreachable=isinstance(error, smtplib.SMTPConnectError)), target
    except (smtplib.SMTPServerDisconnected, TimeoutError, socket.timeout, OSError) as error:
        if timed_out.is_set() or isinstance(error, (TimeoutError, socket.timeout)):
            return Outcome(RETRY, f"timed out after {settings.timeout:g} s", unreachable=True), target
        return Outcome(RETRY, _short(f"{type(error).__name__}: {error}"), unreachable=True), target
    finally:
        watchdog.cancel()
        try:
            connection.quit()
        except (smtplib.SMTPException, OSError):
            connection.close()


_TLS = ssl.create_default_context()


def _address(mail_from: str) -> str:
    return email.utils.parseaddr(mail_from)[1] or mail_from


def _text(reply: Any) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)


def _smtp_refusal(code: int, reply: Any, step: str, unreachable: bool = False) -> Outcome:
    """SMTP 4xx is temporary (retried), 5xx permanent; anything else is treated as temporary."""
    said = _short(f"{code} {_text(reply)}" + (f" (at {step})" if step else ""))
    if 500 <= code < 600:
        return Outcome(FAILED, said, code)
    return Outcome(RETRY, said, code, unreachable=unreachable)


def _abort_smtp(connection: smtplib.SMTP, timed_out: threading.Event) -> None:
    timed_out.set()
    sock = getattr(connection, "sock", None)
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _write_eml(message: EmailMessage, folder: str, stem: str) -> Outcome:
    """Without an SMTP server: the message as an .eml file (what would have been sent)."""
    os.makedirs(folder, exist_ok=True)
    name = f"{time.strftime('%Y%m%dT%H%M%S')}-{stem}.eml"
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    with os.fdopen(fd, "wb") as fh:
        fh.write(message.as_bytes())
    os.replace(tmp, os.path.join(folder, name))
    return Outcome(SENT, f"written to {os.path.join(os.path.basename(folder), name)} (no CONSOLE_SMTP_URL)")


# --- Slack ----------------------------------------------------------------------------------------

def _send_slack(item: Item, settings: Settings, clock, lease_until: dt.datetime, *, url: str) -> Result:
    at = clock()
    if item.delivery.kind == KIND_SLACK_UPDATE:
        body = messages.slack_settled(item.escalation, item.settings)
    else:
        body = messages.slack_question(item.escalation, item.delivery.kind, item.settings,
                                       interactive=settings.interactive)
    target = service.redact_url(url)
    if not _mark_sending([item.delivery.id], lease_until):
        return _result(item, Outcome(DEFERRED, "not sent: the lease was lost"), settings, at, target)
    posted = outbound.post(url, json.dumps(body, ensure_ascii=False).encode(),
                           {"Content-Type": "application/json; charset=utf-8", "User-Agent": USER_AGENT},
                           timeout=settings.timeout, allow_private=settings.allow_private)
    return _result(item, slack_outcome(posted), settings, at, target)


def _send_slack_summary(group: list[Item], url: str, settings: Settings, clock, lease_until: dt.datetime) -> list[Result]:
    """Past the hourly cap: the rest of the hour's questions in one Slack message."""
    at = clock()
    group = sorted(group, key=lambda item: (item.delivery.created_at, item.delivery.id))
    body = messages.slack_summary([(item.escalation, item.delivery.kind) for item in group], group[0].settings)
    target = service.redact_url(url)
    if not _mark_sending([item.delivery.id for item in group], lease_until):
        return [_result(item, Outcome(DEFERRED, "not sent: the lease was lost"), settings, at, target) for item in group]
    posted = outbound.post(url, json.dumps(body, ensure_ascii=False).encode(),
                           {"Content-Type": "application/json; charset=utf-8", "User-Agent": USER_AGENT},
                           timeout=settings.timeout, allow_private=settings.allow_private)
    outcome = slack_outcome(posted)
    labelled = dataclasses.replace(outcome, outcome=f"{outcome.outcome} (a summary of {len(group)}: over the "
                                                    f"hourly limit of {settings.max_per_hour})")
    return [_result(item, labelled, settings, at, target) for item in group]


def slack_outcome(posted: outbound.Outcome) -> Outcome:
    """2xx sent; 408, 429 and 5xx temporary (Retry-After honoured); other answers permanent;
    no answer at all temporary, except a URL the SSRF guard refuses."""
    if posted.status is None:
        error = posted.error or "no answer"
        if error.startswith("refused:") and "does not resolve" not in error:
            return Outcome(FAILED, _short(error))
        return Outcome(RETRY, _short(error), unreachable=True)
    said = _short(f"HTTP {posted.status}" + (f" {posted.body.strip()}" if posted.body and posted.body.strip() else ""))
    if posted.ok:
        return Outcome(SENT, said, posted.status)
    if posted.status in (408, 429) or posted.status >= 500:
        return Outcome(RETRY, said, posted.status, retry_after=posted.retry_after)
    return Outcome(FAILED, said, posted.status)


# --- record ---------------------------------------------------------------------------------------

def _record(results: list[Result], settings: Settings, lease_until: dt.datetime) -> None:
    d, s = DELIVERIES.c, SETTINGS.c
    ours = ((d.id == bindparam("d_id")) & (d.locked_until == lease_until)
            & or_(d.status == NOTIFY_PENDING, d.status == NOTIFY_SENDING))  # executemany: no IN (…)
    attempts = [{"delivery_id": r.item.delivery.id, "attempted_at": r.at, "target": r.target,
                 "status_code": r.status_code, "result": r.result, "outcome": r.outcome}
                for r in results if r.attempted]
    final = {SENT: NOTIFY_SENT, FAILED: NOTIFY_FAILED, SKIPPED: NOTIFY_SKIPPED}
    done = [{"d_id": r.item.delivery.id, "new_status": final[r.result], "new_outcome": r.outcome,
             "new_sent_at": r.at if r.result == SENT else None, "tries": int(r.attempted)}
            for r in results if r.result in final]
    again = [{"d_id": r.item.delivery.id, "due": r.due, "new_outcome": r.outcome, "tries": int(r.attempted)}
             for r in results if r.result in (RETRY, POSTPONED, DEFERRED)]
    # A digest that failed for the time being did not go out: the hour starts again from the one before.
    undo_digest = {r.digest for r in results if r.digest and r.result == RETRY}
    with write_transaction() as session:
        if attempts:
            session.execute(insert(ATTEMPTS), attempts)
        if done:
            session.execute(update(DELIVERIES).where(ours).values(
                status=bindparam("new_status"), outcome=bindparam("new_outcome"), sent_at=bindparam("new_sent_at"),
                locked_until=None, attempts=d.attempts + bindparam("tries")), done)
        if again:
            session.execute(update(DELIVERIES).where(ours).values(
                status=NOTIFY_PENDING, next_attempt_at=bindparam("due"), outcome=bindparam("new_outcome"),
                locked_until=None, attempts=d.attempts + bindparam("tries")), again)
        for founder_id, at, before in undo_digest:
            session.execute(update(SETTINGS).where(s.founder_id == founder_id, s.digest_sent_at == at)
                            .values(digest_sent_at=before))
    for r in results:
        if r.result == FAILED:
            log.warning("notification %s (%s to %s) failed: %s", r.item.delivery.id, r.item.delivery.channel,
                        r.target, r.outcome)

"""Notifications (SPEC §11) on SQLite and PostgreSQL: a real SMTP server (aiosmtpd) receives
what the worker sends, a real HTTP server on 127.0.0.1 stands in for Slack, and the worker's
task runs in-process with a clock the test sets (console.worker.Worker(clock=...)).

The module has a database of its own per backend (the worker sweeps everything due in it), and
every test its own founder; what a test leaves owed is cancelled after it.
"""
from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import email
import email.policy
import hashlib
import hmac
import json
import re
import threading
import time
import uuid
import zoneinfo
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from unittest import mock
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import select, update

from conftest import AGENT_TOKEN, DEFAULT_OPTIONS, dispose, free_port, make_app, migrated_database, mint_jwt
from console.database import read_rows, write_transaction
from console.extensions import db
from console.models import AgentEscalation, NotificationAttempt, NotificationDelivery, utcnow
from console.services import notifications as service
from console.worker import Worker

BASE_URL = "https://console.example.com"
SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
RETRY = "60,120,240"
AGENT = {"Authorization": f"Bearer {AGENT_TOKEN}"}
DELIVERIES = NotificationDelivery.__table__
ATTEMPTS = NotificationAttempt.__table__


# --- a real SMTP server ----------------------------------------------------------------------------

@dataclasses.dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    raw: bytes

    @property
    def message(self) -> EmailMessage:
        return email.message_from_bytes(self.raw, policy=email.policy.default)


class Mailbox:
    """aiosmtpd's handler: keeps what it accepts; `rcpt` and `data` script the next replies."""

    def __init__(self):
        self.received: list[Received] = []
        self.rcpt: list[str] = []
        self.data: list[str] = []
        self.on_data = None  # called with the message before the reply (a test kills its worker there)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.rcpt:
            return self.rcpt.pop(0)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.data:
            return self.data.pop(0)
        self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        if self.on_data is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.on_data)
        return "250 2.0.0 Ok: queued as 4F2A1"

    def reset(self):
        self.received.clear()
        self.rcpt.clear()
        self.data.clear()
        self.on_data = None

    def to(self, address: str) -> list[Received]:
        return [r for r in self.received if address in r.rcpt_tos]


@pytest.fixture(scope="module")
def smtp_server():
    mailbox = Mailbox()
    controller = Controller(mailbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    mailbox.url = f"smtp://127.0.0.1:{controller.port}"
    yield mailbox
    controller.stop()


@pytest.fixture
def mailbox(smtp_server):
    smtp_server.reset()
    yield smtp_server
    smtp_server.reset()


# --- a real HTTP receiver standing in for Slack -----------------------------------------------------

class SlackStandIn:
    """Records every POST; answers each path with its scripted statuses in turn, then 200 "ok"."""

    def __init__(self):
        self.posts: list[tuple[str, dict]] = []
        self.answers: dict[str, list[int]] = {}
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                stand_in.posts.append((self.path, json.loads(body)))
                script = stand_in.answers.get(self.path)
                status = script.pop(0) if script else 200
                text = b"ok" if status == 200 else b"no_service"
                self.send_response(status)
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                self.wfile.write(text)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def at(self, path: str) -> list[dict]:
        return [body for got, body in self.posts if got == path]


@pytest.fixture(scope="module")
def slack():
    stand_in = SlackStandIn()
    yield stand_in
    stand_in.server.shutdown()
    stand_in.server.server_close()


# --- the app on a database of this module -----------------------------------------------------------

@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def notify_url(request, tmp_path_factory):
    with migrated_database(request, tmp_path_factory.mktemp("notify"), "console_notify") as url:
        yield url


CONFIG = {"BASE_URL": BASE_URL, "MAIL_FROM": "Escalations <escalations@console.example.com>",
          "NOTIFY_RETRY_SCHEDULE": RETRY, "NOTIFY_TIMEOUT_SECONDS": 2.0, "NOTIFY_LEASE_SECONDS": 10.0,
          "WEBHOOK_ALLOW_PRIVATE": True, "SLACK_SIGNING_SECRET": None}


@pytest.fixture(scope="module")
def module_app(notify_url, smtp_server, tmp_path_factory):
    app = make_app(notify_url, **CONFIG, SMTP_URL=smtp_server.url, MAIL_DIR=str(tmp_path_factory.mktemp("mail")))
    yield app
    dispose(app)


@pytest.fixture
def app(module_app, smtp_server):
    """The module's app, its configuration as at the start after the test, and nothing left owed."""
    saved = dict(module_app.config)
    yield module_app
    module_app.config.clear()
    module_app.config.update(saved)
    with module_app.app_context():
        with write_transaction() as session:
            session.execute(update(DELIVERIES).where(DELIVERIES.c.status.in_(["pending", "sending"]))
                            .values(status="skipped", outcome="cancelled after the test"))
        db.session.remove()


@pytest.fixture
def client(app):
    return app.test_client()


@dataclasses.dataclass
class Founder:
    app: object
    client: object
    founder_id: str
    job_id: str
    project_id: str

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {mint_jwt(self.founder_id)}"}

    @property
    def address(self) -> str:
        return f"{self.founder_id}@example.com"

    def settings(self, **document) -> dict:
        resp = self.client.put("/api/me/settings", json=document, headers=self.headers)
        assert resp.status_code == 200, resp.get_data(as_text=True)
        return resp.get_json()

    def escalate(self, expect: int = 201, **fields) -> dict:
        letters = uuid.uuid4().hex.translate(str.maketrans("0123456789", "ghijklmnop"))
        body = {"session_id": "sess", "project_id": self.project_id, "founder_id": self.founder_id,
                "error_type": "KeyError", "plain_english_problem": "I cannot find the user record the signup needs.",
                "recommended_action": "Build a simpler signup without the lookup.",
                "attempts_summary": ["Retried with a fresh cache", "Rebuilt the user index"],
                "options": [dict(option) for option in DEFAULT_OPTIONS],
                "error_message": f"KeyError: no {letters} in the index", **fields}
        if "error_signature" in fields:
            body.pop("error_message")
        resp = self.client.post(f"/api/jobs/{self.job_id}/escalations", json=body, headers=AGENT)
        assert resp.status_code == expect, resp.get_data(as_text=True)
        return resp.get_json()

    def deliveries(self) -> list:
        with self.app.app_context():
            return list(reversed(service.recent_deliveries(self.founder_id, 100)))

    def attempts(self) -> list:
        with self.app.app_context():
            return read_rows(select(ATTEMPTS).join(DELIVERIES, DELIVERIES.c.id == ATTEMPTS.c.delivery_id)
                             .where(DELIVERIES.c.founder_id == self.founder_id).order_by(ATTEMPTS.c.id))

    def stored_settings(self):
        with self.app.app_context():
            return service.settings_row(self.founder_id)


@pytest.fixture
def founder(app, client):
    tag = uuid.uuid4().hex[:10]
    return Founder(app, client, f"founder-{tag}", f"job-{tag}", f"proj-{tag}")


def run(app, at: dt.datetime | None = None) -> dict[str, int]:
    """One pass of the worker, its clock at `at` (default: now)."""
    return Worker(app, clock=lambda: at or utcnow()).run_once()


def later(**delta) -> dt.datetime:
    return utcnow() + dt.timedelta(**delta)


def header(message: EmailMessage, name: str) -> str:
    """A header's value, unfolded (long ones are folded onto a second line, as RFC 5322 allows)."""
    return " ".join(str(message[name]).split())


def text_and_html(message: EmailMessage) -> tuple[str, str]:
    return (message.get_body(preferencelist=("plain",)).get_content(),
            message.get_body(preferencelist=("html",)).get_content())


def links(text: str) -> list[str]:
    return re.findall(r"https://console\.example\.com/mail/open\?t=[A-Za-z0-9_.=%-]+", text)


# --- e-mail -------------------------------------------------------------------------------------------

def test_a_new_question_is_mailed_as_one_multipart_message(app, founder, mailbox):
    founder.settings(email=founder.address)
    raw_error = "psycopg.errors.UndefinedTable: relation secret_users_table does not exist"
    escalation = founder.escalate(
        plain_english_problem="Checkout <script>alert('x')</script> & co. fails.\nSecond line that is not in the subject.",
        recommended_action="Use the <b>sandbox</b> key for now.", error_message=raw_error)
    run(app)

    [received] = mailbox.to(founder.address)
    message = received.message
    assert received.mail_from == "escalations@console.example.com"
    assert message["Subject"] == f"[{founder.project_id}] Checkout <script>alert('x')</script> & co. fails."
    assert message.get_content_type() == "multipart/alternative"
    assert [part.get_content_type() for part in message.iter_parts()] == ["text/plain", "text/html"]
    assert header(message, "Message-ID") == f"<escalation-{escalation['id']}@console.example.com>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert re.fullmatch(r"<https://console\.example\.com/mail/unsubscribe\?t=\S+>", header(message, "List-Unsubscribe"))
    text, html = text_and_html(message)
    assert "Checkout <script>alert('x')</script> & co. fails." in text
    assert "<script>" not in html and "&lt;script&gt;alert(" in html and "&amp; co." in html
    assert "&lt;b&gt;sandbox&lt;/b&gt;" in html
    assert "Retried with a fresh cache" in text and "Use the <b>sandbox</b> key for now." in text
    assert raw_error not in received.raw.decode() and "secret_users_table" not in text + html
    # One decision link per option, each signed, naming this escalation and its option; "open the
    # question" is a plain console link (SPEC §16: no link signs anyone in).
    chosen = []
    with app.test_request_context():
        for link in dict.fromkeys(links(text)):
            read = service.read_option_link(parse_qs(urlsplit(link).query)["t"][0])
            assert read["escalation_id"] == escalation["id"] and read["founder_id"] == founder.founder_id
            chosen.append(read["decision"])
    assert chosen == [option["value"] for option in DEFAULT_OPTIONS]
    assert set(links(text)) == set(links(html.replace("&amp;", "&")))
    assert f"Open the question: https://console.example.com/escalations/{escalation['id']}\r\n" in text
    [delivery] = founder.deliveries()
    assert (delivery.channel, delivery.kind, delivery.status) == ("email", "question", "sent")
    [attempt] = founder.attempts()
    assert attempt.result == "sent" and attempt.status_code == 250 and attempt.outcome.startswith("250 2.0.0 Ok")
    assert attempt.target == f"{founder.address} via smtp://127.0.0.1:{urlsplit(mailbox.url).port}"


def test_the_reminder_answers_the_question_and_says_what_happens_when(app, founder, mailbox):
    founder.settings(email=founder.address, timezone="Europe/Berlin")
    escalation = founder.escalate(expires_in=4000, on_expiry="skip_feature")
    run(app)
    assert len(mailbox.to(founder.address)) == 1
    run(app, later(seconds=3001))  # three quarters of the time: the reminder is due, and sent in the same pass

    question, reminder = (r.message for r in mailbox.to(founder.address))
    question_id = f"<escalation-{escalation['id']}@console.example.com>"
    assert header(question, "Message-ID") == question_id
    assert header(reminder, "In-Reply-To") == question_id and header(reminder, "References") == question_id
    assert header(reminder, "Message-ID") != question_id
    assert reminder["Subject"] == "Re: " + question["Subject"]
    text, _ = text_and_html(reminder)
    assert text.startswith("Reminder: this question is still waiting for you.")
    deadline = dt.datetime.fromisoformat(escalation["expires_at"]).astimezone(zoneinfo.ZoneInfo("Europe/Berlin"))
    assert f"{deadline:%H:%M} (Europe/Berlin)" in text and "“Skip this feature”, its safe default" in text
    assert [d.kind for d in founder.deliveries()] == ["question", "reminder"]


def test_smtp_4xx_is_retried_with_backoff_and_5xx_is_not(app, founder, mailbox):
    founder.settings(email=founder.address)
    mailbox.data.append("451 4.3.0 Mailbox busy, try later")
    founder.escalate()
    at = utcnow()
    run(app, at)
    [delivery] = founder.deliveries()
    assert delivery.status == "pending" and delivery.attempts == 1
    wait = (delivery.next_attempt_at - at).total_seconds()
    assert 54 <= wait <= 66  # the first step of the schedule, ±10 %
    assert mailbox.received == []
    run(app, at + dt.timedelta(seconds=30))  # not due yet
    assert len(founder.attempts()) == 1
    run(app, at + dt.timedelta(seconds=67))
    assert len(mailbox.to(founder.address)) == 1
    assert [(a.result, a.status_code) for a in founder.attempts()] == [("retry", 451), ("sent", 250)]
    assert "451 4.3.0 Mailbox busy" in founder.attempts()[0].outcome

    other = Founder(app, founder.client, founder.founder_id + "-b", founder.job_id + "-b", founder.project_id)
    other.settings(email=other.address)
    mailbox.rcpt.append("550 5.1.1 No such user here")
    other.escalate()
    run(app, at)
    run(app, at + dt.timedelta(hours=2))
    [failed] = other.deliveries()
    assert failed.status == "failed" and failed.outcome.startswith("550 5.1.1 No such user here")
    assert [(a.result, a.status_code) for a in other.attempts()] == [("failed", 550)]
    assert mailbox.to(other.address) == []


def test_smtp_down_is_retried_with_backoff_and_the_batch_waits_with_it(app, founder, mailbox):
    founder.settings(email=founder.address)
    app.config["SMTP_URL"] = f"smtp://user:hunter2@127.0.0.1:{free_port()}"  # nothing listens there
    founder.escalate()
    founder.escalate()
    at = utcnow()
    run(app, at)
    first, second = founder.deliveries()
    assert first.status == second.status == "pending"
    [attempt] = founder.attempts()  # the second was not tried against a server that is not there
    assert attempt.result == "retry" and attempt.status_code is None
    assert "ConnectionRefusedError" in attempt.outcome and "hunter2" not in attempt.outcome + attempt.target
    assert second.outcome.startswith("waiting: the server was unreachable")
    assert second.next_attempt_at == first.next_attempt_at
    run(app, at + dt.timedelta(seconds=67))  # still down: the second step of the backoff
    first, _ = founder.deliveries()
    assert first.attempts == 2 and 108 <= (first.next_attempt_at - at - dt.timedelta(seconds=67)).total_seconds() <= 132

    app.config["SMTP_URL"] = mailbox.url  # back
    run(app, at + dt.timedelta(minutes=10))
    assert len(mailbox.to(founder.address)) == 2
    assert [d.status for d in founder.deliveries()] == ["sent", "sent"]


def test_a_worker_that_dies_after_the_server_took_the_message_never_sends_it_again(app, founder, mailbox):
    founder.settings(email=founder.address)
    founder.escalate()
    at = utcnow()
    with mock.patch("console.notifications._record", side_effect=SystemExit("killed")):
        with pytest.raises(SystemExit):
            run(app, at)
    assert len(mailbox.to(founder.address)) == 1
    [delivery] = founder.deliveries()
    assert delivery.status == "sending"
    run(app, at + dt.timedelta(seconds=5))  # its lease still runs: nobody touches it
    assert founder.deliveries()[0].status == "sending"
    run(app, at + dt.timedelta(seconds=11))  # the lease ran out
    [delivery] = founder.deliveries()
    assert delivery.status == "unknown" and "not sent again" in delivery.outcome
    run(app, at + dt.timedelta(hours=1))
    assert len(mailbox.to(founder.address)) == 1
    assert [a.result for a in founder.attempts()] == ["unknown"]


def test_a_worker_that_dies_before_the_data_leaves_it_to_be_sent(app, founder, mailbox):
    founder.settings(email=founder.address)
    founder.escalate()
    at = utcnow()
    with mock.patch("console.notifications._mark_sending", side_effect=SystemExit("killed")):
        with pytest.raises(SystemExit):
            run(app, at)
    assert mailbox.received == [] and founder.deliveries()[0].status == "pending"
    run(app, at + dt.timedelta(seconds=11))
    assert len(mailbox.to(founder.address)) == 1 and founder.deliveries()[0].status == "sent"


def test_without_an_smtp_server_each_message_is_an_eml_file(app, founder, tmp_path):
    app.config.update(SMTP_URL=None, MAIL_DIR=str(tmp_path / "mail"))
    founder.settings(email=founder.address)
    founder.escalate()
    run(app)
    [written] = list((tmp_path / "mail").glob("*.eml"))
    message = email.message_from_bytes(written.read_bytes(), policy=email.policy.default)
    assert message["To"] == founder.address and message.get_content_type() == "multipart/alternative"
    assert founder.deliveries()[0].outcome.startswith("written to mail/")


# --- what is sent, and when ---------------------------------------------------------------------------

def test_occurrence_bumps_and_rule_settled_questions_send_nothing(app, founder, mailbox):
    founder.settings(email=founder.address)
    first = founder.escalate(error_signature="sig-bump")
    founder.escalate(expect=200, error_signature="sig-bump")  # the same error again: occurrences + 1
    resp = founder.client.post(f"/api/escalations/{first['id']}/resolve", headers=founder.headers,
                               json={"decision": "skip_feature", "remember": True})
    assert resp.status_code == 200
    settled = founder.escalate(error_signature="sig-bump")  # answered at once by the rule
    assert settled["decided_by"] == "rule"
    run(app)
    assert [(d.escalation_id, d.kind) for d in founder.deliveries()] == [(uuid.UUID(first["id"]), "question")]
    assert founder.deliveries()[0].status == "skipped"  # decided before the worker got to it
    assert "answered before it went out" in founder.deliveries()[0].outcome
    assert mailbox.to(founder.address) == []


def test_without_settings_nothing_is_owed(app, founder):
    founder.escalate()
    assert founder.deliveries() == []


def test_quiet_hours_hold_messages_until_they_end_in_the_founders_time_zone(app, founder, mailbox):
    zone = zoneinfo.ZoneInfo("America/New_York")
    at = utcnow()
    local = at.astimezone(zone)
    start, end = (local - dt.timedelta(hours=1)), (local + dt.timedelta(hours=2))
    founder.settings(email=founder.address, timezone="America/New_York",
                     quiet_hours={"start": f"{start:%H:%M}", "end": f"{end:%H:%M}"})
    founder.escalate()
    run(app)
    [delivery] = founder.deliveries()
    assert delivery.status == "pending" and delivery.attempts == 0 and mailbox.received == []
    ends = end.replace(second=0, microsecond=0).astimezone(dt.UTC)
    assert delivery.next_attempt_at == ends
    assert delivery.outcome == f"waiting for the quiet hours to end ({end:%H:%M} America/New_York)"
    run(app, ends - dt.timedelta(minutes=1))
    assert mailbox.received == []
    run(app, ends + dt.timedelta(seconds=1))
    assert len(mailbox.to(founder.address)) == 1


def test_quiet_hours_may_wrap_midnight():
    from console.notifications import quiet_until

    settings = type("S", (), {"quiet_start": "22:00", "quiet_end": "08:00", "timezone": "Europe/Berlin"})
    berlin = zoneinfo.ZoneInfo("Europe/Berlin")
    at = dt.datetime(2026, 12, 3, 23, 30, tzinfo=berlin)
    assert quiet_until(at, settings) == dt.datetime(2026, 12, 4, 8, 0, tzinfo=berlin)
    assert quiet_until(dt.datetime(2026, 12, 4, 7, 59, tzinfo=berlin), settings) == dt.datetime(
        2026, 12, 4, 8, 0, tzinfo=berlin)
    assert quiet_until(dt.datetime(2026, 12, 4, 8, 0, tzinfo=berlin), settings) is None
    assert quiet_until(dt.datetime(2026, 12, 4, 21, 59, tzinfo=berlin), settings) is None


def test_a_digest_is_at_most_one_message_an_hour_listing_what_arrived_since(app, founder, mailbox):
    founder.settings(email=founder.address, email_mode="digest")
    founder.escalate(plain_english_problem="The first question.")
    at = utcnow()
    run(app, at)
    [first] = mailbox.to(founder.address)
    assert first.message["Subject"] == f"[{founder.project_id}] The first question."
    founder.escalate(plain_english_problem="The second question.")
    founder.escalate(plain_english_problem="The third question.")
    run(app, at + dt.timedelta(minutes=10))
    assert len(mailbox.to(founder.address)) == 1
    waiting = founder.deliveries()[1:]
    assert all(d.status == "pending" and d.outcome.startswith("in the next digest, at ") for d in waiting)
    run(app, at + dt.timedelta(minutes=61))
    first, digest = mailbox.to(founder.address)
    assert digest.message["Subject"] == f"[{founder.project_id}] 2 questions are waiting for you"
    text, html = text_and_html(digest.message)
    assert "The second question." in text and "The third question." in text and "The first question." not in text
    assert text.startswith("2 questions from your agents since ")
    assert len(set(links(text))) == 2 * len(DEFAULT_OPTIONS)  # one token per question and option
    assert digest.message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert [d.status for d in founder.deliveries()] == ["sent", "sent", "sent"]


def test_the_unsubscribe_link_turns_email_off_without_a_session(app, founder, mailbox, slack):
    founder.settings(email=founder.address, slack_webhook_url=f"{slack.url}/hook/{founder.founder_id}")
    founder.escalate()
    run(app)
    [received] = mailbox.to(founder.address)
    url = header(received.message, "List-Unsubscribe").strip("<>")
    anonymous = app.test_client()  # no session, no CSRF token: the mail provider posts it (RFC 8058)
    resp = anonymous.post(url.removeprefix(BASE_URL), data="List-Unsubscribe=One-Click",
                          content_type="application/x-www-form-urlencoded")
    assert resp.status_code == 200 and "E-mail is off" in resp.get_data(as_text=True)
    stored = founder.stored_settings()
    assert stored.email_mode == "off" and stored.email == founder.address and stored.slack_webhook_url
    founder.escalate()
    assert [d.channel for d in founder.deliveries()[2:]] == ["slack"]  # Slack goes on, e-mail is off
    tampered = url.removeprefix(BASE_URL)[:-3] + "abc"
    assert anonymous.post(tampered, data="List-Unsubscribe=One-Click").status_code == 400
    assert anonymous.get(url.removeprefix(BASE_URL)).status_code == 200  # a page with a button, nothing changes


# --- e-mail links ---------------------------------------------------------------------------------------

def _csrf(page: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


def _form(page: str) -> dict:
    return {name: re.search(rf'name="{name}" value="([^"]*)"', page).group(1) for name in ("t", "form_token")}


def _opened_link(app, founder: Founder, decision: str):
    """A new question, its e-mail link for `decision`, a browser without a session that opened
    the link, and the fields of the page's form."""
    escalation = founder.escalate()
    with app.test_request_context():
        link = service.decision_link(uuid.UUID(escalation["id"]), founder.founder_id, decision)
    browser = app.test_client()
    return escalation, link, browser, _form(browser.get(link.removeprefix(BASE_URL)).get_data(as_text=True))


def test_an_option_link_decides_its_one_question_and_signs_nobody_in(app, founder):
    escalation = founder.escalate()
    other_question = founder.escalate()
    with app.test_request_context():
        link = service.decision_link(uuid.UUID(escalation["id"]), founder.founder_id, "skip_feature")
    path = link.removeprefix(BASE_URL)
    browser = app.test_client()
    page = browser.get(path)
    text = page.get_data(as_text=True)
    assert page.status_code == 200 and "“Skip this feature”" in text and escalation["plain_english_problem"] in text
    assert "Set-Cookie" not in page.headers  # no session, no CSRF cookie
    assert other_question["id"] not in text and "Settings" not in text and "Sign out" not in text
    assert founder.client.get(f"/api/escalations/{escalation['id']}", headers=AGENT).get_json()["status"] == "pending"

    sent = browser.post("/mail/open", data=_form(text))
    assert sent.status_code == 200 and "Set-Cookie" not in sent.headers
    assert "You chose “Skip this feature”. The agent has your answer." in sent.get_data(as_text=True)
    record = founder.client.get(f"/api/escalations/{escalation['id']}", headers=AGENT).get_json()
    assert (record["status"], record["founder_decision"], record["decided_by"], record["decided_via"]) == (
        "resolved", "skip_feature", "founder", "email")
    # It signed nobody in: the console, the settings and the other question still need a session.
    assert browser.get("/").status_code == 303
    assert browser.get("/settings").status_code == 303
    assert browser.get(f"/escalations/{other_question['id']}").status_code == 303
    # Spent: a second Send is the card with its 409 notice; the page shows the settled card.
    again = browser.post("/mail/open", data=_form(text))
    assert again.status_code == 409 and "already decided" in again.get_data(as_text=True)
    assert "name=\"guidance\"" not in browser.get(path).get_data(as_text=True)


def test_an_option_link_needs_its_form_token_and_guidance_where_the_option_asks(app, founder):
    escalation, link, browser, form = _opened_link(app, founder, "provide_guidance")
    assert browser.post("/mail/open", data={"t": form["t"]}).status_code == 400  # no form token: a forged post
    assert browser.post("/mail/open", data={**form, "form_token": "0" * 64}).status_code == 400
    missing = browser.post("/mail/open", data={**form, "guidance": "  "})
    assert missing.status_code == 422 and "needs guidance" in missing.get_data(as_text=True)
    assert founder.client.get(f"/api/escalations/{escalation['id']}", headers=AGENT).get_json()["status"] == "pending"
    done = browser.post("/mail/open", data={**form, "guidance": "Use the staging key."})
    assert done.status_code == 200
    record = founder.client.get(f"/api/escalations/{escalation['id']}", headers=AGENT).get_json()
    assert (record["founder_decision"], record["founder_guidance"], record["decided_via"]) == (
        "provide_guidance", "Use the staging key.", "email")


def test_an_option_link_of_a_question_settled_elsewhere_shows_the_settled_card(app, founder):
    escalation, link, browser, form = _opened_link(app, founder, "skip_feature")
    resolved = founder.client.post(f"/api/escalations/{escalation['id']}/resolve", headers=founder.headers,
                                   json={"decision": "simpler_version"})
    assert resolved.status_code == 200
    page = browser.get(link.removeprefix(BASE_URL))
    assert page.status_code == 200 and "This question is settled" in page.get_data(as_text=True)
    late = browser.post("/mail/open", data=form)
    assert late.status_code == 409
    record = founder.client.get(f"/api/escalations/{escalation['id']}", headers=AGENT).get_json()
    assert record["founder_decision"] == "simpler_version" and record["decided_via"] == "api"


def test_an_option_link_for_another_founders_question_changes_nothing(app, founder):
    escalation = founder.escalate()
    with app.test_request_context():
        foreign = service.decision_link(uuid.UUID(escalation["id"]), "founder-somebody-else", "skip_feature")
    browser = app.test_client()
    assert browser.get(foreign.removeprefix(BASE_URL)).status_code == 404
    token = parse_qs(urlsplit(foreign).query)["t"][0]
    assert browser.post("/mail/open", data={"t": token, "form_token": "x"}).status_code == 404
    assert founder.client.get(f"/api/escalations/{escalation['id']}", headers=AGENT).get_json()["status"] == "pending"


def test_option_links_expire_after_seven_days_and_cannot_be_forged(app, founder):
    escalation = founder.escalate()
    with app.test_request_context():
        with mock.patch("itsdangerous.timed.time.time", return_value=time.time() - 7 * 86400 - 60):
            old = service.decision_link(uuid.UUID(escalation["id"]), founder.founder_id, "skip_feature")
        fresh = service.decision_link(uuid.UUID(escalation["id"]), founder.founder_id, "skip_feature")
    browser = app.test_client()
    assert browser.get(old.removeprefix(BASE_URL)).status_code == 400
    assert browser.get(fresh.removeprefix(BASE_URL)[:-2] + "xx").status_code == 400
    assert browser.get(fresh.removeprefix(BASE_URL)).status_code == 200


# --- Slack ------------------------------------------------------------------------------------------------

def _slack_settings(founder: Founder, slack: SlackStandIn, path: str = "/hook", **more) -> str:
    founder.settings(slack_webhook_url=slack.url + path + "/" + founder.founder_id, **more)
    return path + "/" + founder.founder_id


def test_slack_gets_block_kit_with_a_text_fallback_and_option_buttons(app, founder, slack):
    path = _slack_settings(founder, slack, timezone="Asia/Tokyo")
    escalation = founder.escalate(plain_english_problem="Payments <!channel> & refunds fail.", expires_in=7200,
                                  on_expiry="skip_feature")
    run(app)
    [message] = slack.at(path)
    assert message["text"] == f"[{founder.project_id}] New question: Payments &lt;!channel&gt; &amp; refunds fail."
    header, problem, recommended, context, actions = message["blocks"]
    assert header == {"type": "header", "text": {"type": "plain_text", "emoji": False,
                                                  "text": f"[{founder.project_id}] Your agent has a question"}}
    assert problem["text"] == {"type": "plain_text", "text": "Payments <!channel> & refunds fail.", "emoji": False}
    assert recommended["text"]["text"] == "Recommended: Build a simpler signup without the lookup."
    assert "(Asia/Tokyo), the agent goes ahead with “Skip this feature”" in context["elements"][0]["text"]
    assert actions["type"] == "actions" and actions["block_id"] == f"escalation:{escalation['id']}"
    buttons = actions["elements"]
    assert [b["text"]["text"] for b in buttons] == [o["label"] for o in DEFAULT_OPTIONS] + ["Open in the console"]
    # Plain console links (SPEC §16): a Slack channel is shared, so no button carries the founder's authority.
    card = f"{BASE_URL}/escalations/{escalation['id']}"
    assert [b["url"] for b in buttons] == [f"{card}?decision={o['value']}" for o in DEFAULT_OPTIONS] + [card]
    assert buttons[1]["style"] == "primary"  # the recommended option
    anonymous = app.test_client()
    assert anonymous.get(buttons[0]["url"].removeprefix(BASE_URL)).status_code == 303  # to /login: a session is needed
    [delivery] = founder.deliveries()
    assert delivery.status == "sent"
    [attempt] = founder.attempts()
    assert attempt.status_code == 200 and founder.founder_id not in attempt.target  # the URL's secret part is cut


@pytest.mark.parametrize("status, outcome", [(500, "retry"), (404, "failed")])
def test_slack_5xx_is_retried_and_other_4xx_is_not(app, founder, slack, status, outcome):
    path = _slack_settings(founder, slack)
    slack.answers[path] = [status]
    founder.escalate()
    at = utcnow()
    run(app, at)
    run(app, at + dt.timedelta(seconds=70))
    results = [(a.result, a.status_code) for a in founder.attempts()]
    assert results == ([("retry", 500), ("sent", 200)] if outcome == "retry" else [("failed", 404)])
    assert "no_service" in founder.attempts()[0].outcome


def sign(body: str, timestamp: int | None = None, secret: str = SIGNING_SECRET) -> dict:
    timestamp = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"v0:{timestamp}:{body}".encode(), hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": str(timestamp), "X-Slack-Signature": f"v0={digest}",
            "Content-Type": "application/x-www-form-urlencoded"}


def click(client, escalation: dict, option: str, user: str, response_url: str | None = None, headers=None):
    payload = {"type": "block_actions", "user": {"id": user}, "response_url": response_url,
               "actions": [{"action_id": f"decide:{option}", "value": f"{escalation['id']}:{option}",
                            "block_id": f"escalation:{escalation['id']}"}]}
    body = urlencode({"payload": json.dumps(payload)})
    return client.post("/integrations/slack/actions", data=body, headers=headers or sign(body))


def test_interactive_buttons_decide_only_for_the_linked_slack_user(app, founder, slack):
    app.config["SLACK_SIGNING_SECRET"] = SIGNING_SECRET
    path = _slack_settings(founder, slack, slack_user_id="U024BE7LH")
    escalation = founder.escalate()
    run(app)
    [message] = slack.at(path)
    buttons = message["blocks"][-1]["elements"]
    assert [b.get("action_id") for b in buttons] == ["decide:skip_feature", "decide:simpler_version",
                                                    "open:provide_guidance", "open"]
    assert buttons[0]["value"] == f"{escalation['id']}:skip_feature" and "url" not in buttons[0]
    assert buttons[2]["url"] == f"{BASE_URL}/escalations/{escalation['id']}?decision=provide_guidance"  # the console

    refused = click(founder.client, escalation, "skip_feature", "U999OTHER")
    assert refused.status_code == 200 and refused.get_json()["response_type"] == "ephemeral"
    assert "Nothing was decided" in refused.get_json()["text"]
    guidance = click(founder.client, escalation, "provide_guidance", "U024BE7LH")
    assert "answer it in the console" in guidance.get_json()["text"]
    assert founder.client.get(f"/api/escalations/{escalation['id']}", headers=AGENT).get_json()["status"] == "pending"

    decided = click(founder.client, escalation, "skip_feature", "U024BE7LH", response_url=f"{slack.url}/respond/{founder.founder_id}")
    assert decided.status_code == 200
    assert decided.get_json()["replace_original"] is True and "You chose “Skip this feature”" in decided.get_json()["text"]
    record = founder.client.get(f"/api/escalations/{escalation['id']}", headers=AGENT).get_json()
    assert (record["status"], record["founder_decision"], record["decided_by"], record["decided_via"]) == (
        "resolved", "skip_feature", "founder", "slack")
    run(app)  # the message itself is updated through response_url
    [update_] = slack.at(f"/respond/{founder.founder_id}")
    assert update_["replace_original"] is True and "Decided from Slack: “Skip this feature”" in update_["text"]
    assert not any(block["type"] == "actions" for block in update_["blocks"])

    again = click(founder.client, escalation, "simpler_version", "U024BE7LH")
    assert "already decided" in again.get_json()["text"] and "Skip this feature" in again.get_json()["text"]
    assert founder.client.get(f"/api/escalations/{escalation['id']}", headers=AGENT).get_json()["founder_decision"] == "skip_feature"


def test_slack_actions_need_a_valid_recent_signature(app, founder, slack):
    app.config["SLACK_SIGNING_SECRET"] = SIGNING_SECRET
    _slack_settings(founder, slack, slack_user_id="U024BE7LH")
    escalation = founder.escalate()
    payload = {"type": "block_actions", "user": {"id": "U024BE7LH"},
               "actions": [{"action_id": "decide:skip_feature", "value": f"{escalation['id']}:skip_feature"}]}
    body = urlencode({"payload": json.dumps(payload)})
    tampered = body.replace("skip_feature", "simpler_version")
    post = founder.client.post
    assert post("/integrations/slack/actions", data=tampered, headers=sign(body)).status_code == 401
    assert post("/integrations/slack/actions", data=body, headers=sign(body, int(time.time()) - 301)).status_code == 401
    assert post("/integrations/slack/actions", data=body, headers=sign(body, secret="another")).status_code == 401
    assert post("/integrations/slack/actions", data=body,
                headers={"X-Slack-Request-Timestamp": "soon", "X-Slack-Signature": "v0=00"}).status_code == 401
    assert post("/integrations/slack/actions", data=body).status_code == 401
    assert founder.client.get(f"/api/escalations/{escalation['id']}", headers=AGENT).get_json()["status"] == "pending"
    assert post("/integrations/slack/actions", data=body, headers=sign(body, int(time.time()) - 200)).status_code == 200
    app.config["SLACK_SIGNING_SECRET"] = None
    assert post("/integrations/slack/actions", data=body, headers=sign(body)).status_code == 404


# --- the settings ------------------------------------------------------------------------------------------

def test_settings_have_defaults_until_set_and_put_replaces_the_whole_document(client, founder):
    defaults = {"email": None, "email_mode": "each", "slack_webhook_url": None, "slack_user_id": None,
                "timezone": "UTC", "quiet_hours": None}
    assert client.get("/api/me/settings", headers=founder.headers).get_json() == defaults
    full = {"email": "maya@example.com", "email_mode": "digest",
            "slack_webhook_url": "https://hooks.slack.com/services/T000/B000/XXXX", "slack_user_id": "U024BE7LH",
            "timezone": "Europe/Berlin", "quiet_hours": {"start": "22:00", "end": "08:00"}}
    assert founder.settings(**full) == full
    assert client.get("/api/me/settings", headers=founder.headers).get_json() == full
    assert founder.settings(email="maya@example.com") == {**defaults, "email": "maya@example.com"}
    assert client.get("/api/me/settings", headers=AGENT).status_code == 403
    assert client.get("/api/me/settings").status_code == 401


@pytest.mark.parametrize("document, field", [
    ({"email": "not an address"}, "email"),
    ({"email": "maya@localhost"}, "email"),
    ({"email_mode": "sometimes"}, "email_mode"),
    ({"timezone": "Mars/Olympus_Mons"}, "timezone"),
    ({"timezone": "../../etc/passwd"}, "timezone"),
    ({"quiet_hours": {"start": "25:00", "end": "08:00"}}, "quiet_hours.start"),
    ({"quiet_hours": {"start": "08:00", "end": "08:00"}}, "quiet_hours"),
    ({"quiet_hours": {"start": "22:00"}}, "quiet_hours.end"),
    ({"slack_webhook_url": "http://hooks.slack.com/services/T/B/X"}, "slack_webhook_url"),
    ({"slack_webhook_url": "https://127.0.0.1/hook"}, "slack_webhook_url"),
    ({"slack_webhook_url": "https://10.1.2.3/hook"}, "slack_webhook_url"),
    ({"slack_webhook_url": "ftp://hooks.slack.com/x"}, "slack_webhook_url"),
    ({"slack_user_id": "maya"}, "slack_user_id"),
    ({"colour": "blue"}, "colour"),
])
def test_bad_settings_answer_422_with_the_field(app, client, founder, document, field):
    app.config["WEBHOOK_ALLOW_PRIVATE"] = False
    resp = client.put("/api/me/settings", json=document, headers=founder.headers)
    assert resp.status_code == 422 and resp.mimetype == "application/problem+json"
    assert [error["field"] for error in resp.get_json()["errors"]] == [field]
    assert founder.stored_settings() is None


def test_http_and_private_slack_urls_are_allowed_for_development(app, founder):
    app.config["WEBHOOK_ALLOW_PRIVATE"] = True
    assert founder.settings(slack_webhook_url="http://127.0.0.1:9/hook")["slack_webhook_url"] == "http://127.0.0.1:9/hook"


def test_the_settings_page_saves_the_form_and_lists_the_last_deliveries(app, founder, mailbox):
    browser = app.test_client()
    with app.test_request_context():
        from console.services import login_links
        token = login_links.new_login_token(founder.founder_id)
    page = browser.get(f"/login/link?t={token}")
    browser.post("/login/link", data={"t": token, "csrf_token": _csrf(page.get_data(as_text=True))})
    page = browser.get("/settings").get_data(as_text=True)
    assert 'id="notification-settings"' in page and "Nothing has been sent to you yet." in page
    form = {"csrf_token": _csrf(page), "email": f" {founder.address} ", "email_mode": "each", "timezone": "Europe/Paris",
            "quiet_hours": "on", "quiet_start": "23:00", "quiet_end": "07:00", "slack_webhook_url": "", "slack_user_id": ""}
    resp = browser.post("/settings/notifications", data=form)
    assert resp.status_code == 303 and resp.headers["Location"] == "/settings?saved=1"
    stored = founder.stored_settings()
    assert (stored.email, stored.timezone, stored.quiet_start, stored.quiet_end) == (
        founder.address, "Europe/Paris", "23:00", "07:00")
    bad = browser.post("/settings/notifications", data={**form, "email": "nope", "timezone": "Nowhere/Else"})
    assert bad.status_code == 422
    html = bad.get_data(as_text=True)
    assert "not an e-mail address" in html and "not an IANA time zone name" in html and 'value="nope"' in html
    assert founder.stored_settings().email == founder.address
    htmx = browser.post("/settings/notifications", data={**form, "quiet_hours": ""}, headers={"HX-Request": "true"})
    assert htmx.status_code == 200 and "Saved." in htmx.get_data(as_text=True)
    assert "<html" not in htmx.get_data(as_text=True) and founder.stored_settings().quiet_start is None
    assert browser.post("/settings/notifications", data={k: v for k, v in form.items() if k != "csrf_token"}).status_code == 400

    founder.escalate(plain_english_problem="The mail provider refuses our sender address.")
    mailbox.rcpt.append("550 5.7.1 Sender address rejected")
    run(app)
    page = browser.get("/settings").get_data(as_text=True)
    assert "E-mail" in page and "Failed" in page and "550 5.7.1 Sender address rejected" in page
    assert "The mail provider refuses our sender address." in page


def test_the_openapi_document_describes_the_settings(client):
    document = client.get("/api/openapi.json").get_json()
    assert set(document["paths"]["/api/me/settings"]) == {"get", "put"}
    schema = document["components"]["schemas"]["NotificationSettingsDocument"]
    assert set(schema["properties"]) == {"email", "email_mode", "slack_webhook_url", "slack_user_id", "timezone",
                                         "quiet_hours"}


# --- a real worker process --------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_worker_process_killed_during_the_data_leaves_one_message_and_an_unknown(app, founder, mailbox, notify_url):
    """`flask --app console worker` for real, SIGKILLed while the SMTP server holds the message
    (it has it, the worker never hears 250): the next worker does not send it again."""
    import os
    import signal
    import subprocess
    import sys

    from conftest import JWT_SECRET, REPO, SECRET_KEY

    founder.settings(email=founder.address)
    founder.escalate()
    env = {**os.environ, "DATABASE_URL": notify_url, "CONSOLE_JWT_SECRET": JWT_SECRET, "CONSOLE_AGENT_TOKEN": AGENT_TOKEN,
           "CONSOLE_SECRET_KEY": SECRET_KEY, "CONSOLE_SMTP_URL": mailbox.url, "CONSOLE_BASE_URL": BASE_URL,
           "CONSOLE_NOTIFY_TIMEOUT_SECONDS": "2", "CONSOLE_NOTIFY_LEASE_SECONDS": "8",
           "CONSOLE_WORKER_POLL_SECONDS": "0.2", "PYTHONUNBUFFERED": "1"}
    worker = subprocess.Popen([sys.executable, "-m", "flask", "--app", "console", "worker"], cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    mailbox.on_data = lambda: os.kill(worker.pid, signal.SIGKILL)
    try:
        assert worker.wait(timeout=30) == -signal.SIGKILL
    finally:
        if worker.poll() is None:
            worker.kill()
    assert len(mailbox.to(founder.address)) == 1
    [delivery] = founder.deliveries()
    assert delivery.status == "sending"
    run(app, later(seconds=9))  # the next worker, once the dead one's lease ran out
    [delivery] = founder.deliveries()
    assert delivery.status == "unknown"
    run(app, later(hours=1))
    assert len(mailbox.to(founder.address)) == 1


# --- trust (SPEC §16): one line per header, a bounded number of messages --------------------------------

def test_a_stored_identifier_with_line_breaks_still_makes_a_one_line_subject(app, founder, mailbox):
    """Identifiers with control characters are refused at the API now; a row stored before
    that (or by another path) still cannot add a header or stop the worker."""
    founder.settings(email=founder.address)
    escalation = founder.escalate(plain_english_problem="Checkout\tfails\x1b[31m today.\nSecond line.")
    with app.app_context():
        with write_transaction() as session:
            session.execute(update(AgentEscalation.__table__).where(AgentEscalation.__table__.c.id == uuid.UUID(escalation["id"]))
                            .values(project_id="p\r\nBcc: x@evil.example"))
    run(app)
    [received] = mailbox.to(founder.address)
    assert received.rcpt_tos == [founder.address]
    message = received.message
    assert message["Bcc"] is None and "evil.example" not in "".join(f"{k}: {v}" for k, v in message.items()
                                                                     if k != "Subject")
    assert header(message, "Subject") == "[p Bcc: x@evil.example] Checkout fails [31m today."


def test_past_the_hourly_cap_email_is_folded_into_one_digest(app, founder, mailbox):
    app.config["MAX_MESSAGES_PER_HOUR"] = 2
    founder.settings(email=founder.address)
    for n in range(4):
        founder.escalate(plain_english_problem=f"Question number {n}.")
    at = utcnow()
    run(app, at)
    received = mailbox.to(founder.address)
    assert len(received) == 3  # two messages, then one digest of the rest of the hour
    subjects = [header(r.message, "Subject") for r in received]
    assert subjects[:2] == [f"[{founder.project_id}] Question number 0.", f"[{founder.project_id}] Question number 1."]
    assert subjects[2] == f"[{founder.project_id}] 2 questions are waiting for you"
    founder.escalate(plain_english_problem="Question number 4.")
    run(app, at + dt.timedelta(minutes=5))
    assert len(mailbox.to(founder.address)) == 3  # the hour's digest went out: the next one waits
    [waiting] = [d for d in founder.deliveries() if d.status == "pending"]
    assert waiting.outcome.startswith("in the next digest")


def test_past_the_hourly_cap_slack_gets_one_summary_then_waits(app, founder, slack):
    app.config["MAX_MESSAGES_PER_HOUR"] = 1
    path = _slack_settings(founder, slack)
    for n in range(3):
        founder.escalate(plain_english_problem=f"Slack question {n}.")
    at = utcnow()
    run(app, at)
    first, summary = slack.at(path)
    assert first["text"].endswith("Slack question 0.")
    assert summary["text"] == "2 more questions are waiting for you (more than your hourly limit of messages)"
    lines = summary["blocks"][1]["text"]["text"]
    assert "Slack question 1." in lines and "Slack question 2." in lines
    assert summary["blocks"][2]["elements"][0]["url"] == f"{BASE_URL}/"  # a plain console link
    founder.escalate(plain_english_problem="Slack question 3.")
    run(app, at + dt.timedelta(minutes=1))
    assert len(slack.at(path)) == 2
    [held] = [d for d in founder.deliveries() if d.status == "pending"]
    assert "over the hourly limit of 1 Slack messages" in held.outcome
    run(app, at + dt.timedelta(minutes=62))  # the hour has room again
    assert slack.at(path)[-1]["text"].endswith("Slack question 3.")


def test_a_delivery_whose_rendering_raises_is_retried_then_failed_and_the_others_go_on(app, founder, mailbox):
    app.config["NOTIFY_RETRY_SCHEDULE"] = "1,1,1,1,1,1,1"
    founder.settings(email=founder.address)
    broken = founder.escalate(plain_english_problem="This one cannot be rendered.")
    with app.app_context():
        with write_transaction() as session:  # a row no renderer expects (options a JSON string)
            session.execute(update(AgentEscalation.__table__)
                            .where(AgentEscalation.__table__.c.id == uuid.UUID(broken["id"])).values(options="oops"))
    fine = founder.escalate(plain_english_problem="This one is fine.")
    at = utcnow() + dt.timedelta(seconds=1)
    for step in range(7):
        run(app, at + dt.timedelta(seconds=2 * step))
    assert [header(r.message, "Subject") for r in mailbox.to(founder.address)] == [
        f"[{founder.project_id}] This one is fine."]
    by_escalation = {str(d.escalation_id): d for d in founder.deliveries()}
    failed = by_escalation[broken["id"]]
    assert failed.status == "failed" and failed.attempts == 5 and "no retries left" in failed.outcome
    assert by_escalation[fine["id"]].status == "sent"
    outcomes = [a.outcome for a in founder.attempts() if a.delivery_id == failed.id]
    assert len(outcomes) == 5 and all(o.startswith("error while preparing or sending: TypeError") for o in outcomes)

"""Webhooks (SPEC §13) against a real HTTP receiver on 127.0.0.1, on SQLite and PostgreSQL.

Signatures are checked with the `standardwebhooks` package, never with the console's own
code. The worker's task runs in-process with a clock the test sets (console.worker.Worker),
except where the test is about processes (a worker killed mid-request, two workers on
PostgreSQL, a thousand events drained beside a server): those run `flask --app console
worker` for real and are marked slow. Retry delays are 0.2 s (CONSOLE_WEBHOOK_RETRY_SCHEDULE)
and the receiver's timeout 1 s, so nothing waits long.
"""
from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import email.utils
import json
import re
import signal
import threading
import time
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import create_engine, delete, func, select
from sqlalchemy.pool import NullPool
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

import test_worker_processes as worker_processes
from conftest import AGENT_TOKEN, GunicornServer, dispose, make_app, migrate, migrated_database, mint_jwt
from console import outbound
from console.database import write_transaction
from console.events import record_event
from console.extensions import db
from console.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint, utcnow
from console.services import webhooks as service
from console.webhooks import parse_schedule, retry_after_seconds
from console.worker import Worker

SETTINGS = {"WEBHOOK_ALLOW_PRIVATE": True, "WEBHOOK_RETRY_SCHEDULE": "0.2,0.2,0.2", "WEBHOOK_TIMEOUT_SECONDS": 1.0,
            "WEBHOOK_LEASE_SECONDS": 5.0}
AGENT = {"Authorization": f"Bearer {AGENT_TOKEN}"}


# --- a real receiver ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Answer:
    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b"thanks"
    delay: float = 0.0


@dataclasses.dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]


class Receiver:
    """A threaded http.server: answers each path with its scripted answers in turn, then
    with its default (200 unless set). Records every request, and how many requests of one
    webhook-id it held at once."""

    def __init__(self):
        self.received: list[Received] = []
        self.scripts: dict[str, list[Answer]] = {}
        self.defaults: dict[str, Answer] = {}
        self.lock = threading.Lock()
        self.in_flight: Counter[str] = Counter()
        self.most_at_once = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                got = Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                with receiver.lock:
                    receiver.received.append(got)
                    script = receiver.scripts.get(self.path)
                    answer = script.pop(0) if script else receiver.defaults.get(self.path, Answer())
                    key = got.headers.get("webhook-id", "")
                    receiver.in_flight[key] += 1
                    receiver.most_at_once = max(receiver.most_at_once, receiver.in_flight[key])
                try:
                    if answer.delay:
                        time.sleep(answer.delay)
                    self.send_response(answer.status)
                    for name, value in answer.headers:
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(answer.body)))
                    self.end_headers()
                    self.wfile.write(answer.body)
                except OSError:
                    pass  # the sender gave up (a timeout, a killed worker)
                finally:
                    with receiver.lock:
                        receiver.in_flight[key] -= 1

            do_GET = do_POST  # a followed redirect would show up here

            def log_message(self, *args):
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 128  # socketserver's 5 drops concurrent connects: 1 s SYN retries

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def at(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.path == path]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.close()


# --- an app on a database of this module's own --------------------------------------------------

@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def hooks_url(request, tmp_path_factory):
    """A database of its own: the worker delivers everything due in it, and the endpoints a
    test adds must not hear the events of the rest of the suite."""
    with migrated_database(request, tmp_path_factory.mktemp("webhooks"), "console_webhooks") as url:
        yield url


@pytest.fixture(scope="module")
def module_app(hooks_url):
    app = make_app(hooks_url, **SETTINGS)
    yield app
    dispose(app)


@pytest.fixture
def app(module_app):
    """The module's app; every endpoint, delivery and attempt is removed after each test."""
    yield module_app
    with module_app.app_context():
        with write_transaction() as session:
            for table in (WebhookAttempt, WebhookDelivery, WebhookEndpoint):
                session.execute(delete(table))
        db.session.remove()


@pytest.fixture
def client(app):
    return app.test_client()


def add_endpoint(app, url: str, events: list[str] | None = None):
    with app.app_context():
        return service.add_endpoint(url, events, allow_private=True)


def run_worker(app, at: dt.datetime | None = None) -> dict[str, int]:
    return Worker(app, clock=(lambda: at) if at else utcnow).run_once()


def deliver_until(app, predicate, timeout: float = 15.0) -> None:
    """Run the worker's tasks until `predicate()` holds (retries are 0.2 s apart)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "the deliveries did not happen in time"
        run_worker(app)
        time.sleep(0.05)


def verified(secret: str, request: Received) -> dict:
    """The body, verified with the standardwebhooks package (raises when it does not verify)."""
    return Webhook(secret).verify(request.body, request.headers)


def escalate(client, ids, **fields) -> dict:
    body = {"session_id": ids.session_id, "project_id": ids.project_id, "founder_id": ids.founder_id,
            "error_type": "KeyError", "error_message": f"KeyError: {ids.new('x')}",
            "plain_english_problem": "I cannot find the user record.", "recommended_action": "Skip it.",
            "options": [{"value": "skip_feature", "label": "Skip this feature", "recommended": True},
                        {"value": "simpler_version", "label": "Try a simpler version"}], **fields}
    resp = client.post(f"/api/jobs/{ids.job_id}/escalations", json=body, headers=AGENT)
    assert resp.status_code == 201, resp.get_json()
    return resp.get_json()


def post_event(client, ids, event_type: str = "agent.retrying", **payload) -> None:
    resp = client.post(f"/api/jobs/{ids.job_id}/events", headers=AGENT,
                       json={"type": event_type, "founder_id": ids.founder_id, **payload})
    assert resp.status_code == 201, resp.get_json()


def stored_events(client, ids) -> list[dict]:
    return client.get(f"/api/jobs/{ids.job_id}/events?limit=500", headers=AGENT).get_json()["items"]


def deliveries(app) -> list:
    with app.app_context():
        rows = db.session.execute(select(WebhookDelivery).order_by(WebhookDelivery.id)).scalars().all()
        db.session.remove()
    return rows


def attempts_of(app, delivery_id: int) -> list:
    with app.app_context():
        rows = db.session.execute(select(WebhookAttempt).where(WebhookAttempt.delivery_id == delivery_id)
                                  .order_by(WebhookAttempt.id)).scalars().all()
        db.session.remove()
    return rows


def endpoint_row(app, endpoint_id: int):
    with app.app_context():
        row = db.session.get(WebhookEndpoint, endpoint_id)
        db.session.remove()
    return row


# --- what is sent ---------------------------------------------------------------------------------

def test_every_event_is_posted_as_its_envelope_signed_with_the_standard_webhooks_headers(app, client, receiver, ids):
    endpoint = add_endpoint(app, receiver.url("/hooks"))
    record = escalate(client, ids)
    resolved = client.post(f"/api/escalations/{record['id']}/resolve", json={"decision": "skip_feature"},
                           headers={"Authorization": f"Bearer {mint_jwt(ids.founder_id)}"})
    assert resolved.status_code == 200  # on PostgreSQL, one statement stores its event (a CTE)
    post_event(client, ids, attempt=2, error_type="KeyError")
    started = int(time.time())
    deliver_until(app, lambda: len(receiver.at("/hooks")) == 3)

    stored = {f"evt_{event['id']}": event for event in stored_events(client, ids)}
    assert sorted(r.webhook_id for r in receiver.at("/hooks")) == sorted(stored)
    for request in receiver.at("/hooks"):
        assert verified(endpoint.secret, request) == stored[request.webhook_id]  # the §3 envelope
        assert request.headers["content-type"] == "application/json"
        assert started - 1 <= int(request.headers["webhook-timestamp"]) <= time.time() + 1
        assert request.headers["webhook-signature"].startswith("v1,")
    types = [json.loads(r.body)["type"] for r in sorted(receiver.at("/hooks"), key=lambda r: json.loads(r.body)["id"])]
    assert types == ["agent.waiting_for_input", "agent.escalation_resolved", "agent.retrying"]
    assert {d.status for d in deliveries(app)} == {"delivered"}


def test_a_tampered_body_or_another_secret_does_not_verify(app, client, receiver, ids):
    endpoint = add_endpoint(app, receiver.url("/hooks"))
    post_event(client, ids)
    deliver_until(app, lambda: receiver.at("/hooks"))
    request = receiver.at("/hooks")[0]
    with pytest.raises(WebhookVerificationError):
        Webhook(endpoint.secret).verify(request.body.replace(b"agent.retrying", b"agent.thinking"), request.headers)
    with pytest.raises(WebhookVerificationError):
        verified(service.new_secret(), request)


def test_the_secret_is_whsec_and_base64_of_at_least_24_random_bytes(app, receiver):
    secrets = {add_endpoint(app, receiver.url(f"/s{i}")).secret for i in range(3)}
    assert len(secrets) == 3
    for secret in secrets:
        assert secret.startswith("whsec_") and len(base64.b64decode(secret[len("whsec_"):], validate=True)) >= 24


def test_the_worker_s_bulk_expiry_events_are_delivered_too(app, client, receiver, ids):
    endpoint = add_endpoint(app, receiver.url("/hooks"), ["agent.escalation_resolved"])
    record = escalate(client, ids, expires_in=1)
    done = run_worker(app, at=utcnow() + dt.timedelta(seconds=2))  # settles it, then delivers its event
    assert done.get("expiry") == 1 and done.get("webhooks") == 1
    (request,) = receiver.at("/hooks")
    body = verified(endpoint.secret, request)
    assert (body["type"], body["escalation_id"], body["decided_by"]) == ("agent.escalation_resolved", record["id"], "expiry")


def test_an_endpoint_hears_only_the_types_it_takes(app, client, receiver, ids):
    add_endpoint(app, receiver.url("/all"))
    add_endpoint(app, receiver.url("/retries"), ["agent.retrying", "agent.build_paused"])
    post_event(client, ids, "agent.thinking")
    post_event(client, ids, "agent.retrying", attempt=1)
    deliver_until(app, lambda: len(receiver.at("/all")) == 2 and len(receiver.at("/retries")) == 1)
    run_worker(app)
    assert [json.loads(r.body)["type"] for r in receiver.at("/retries")] == ["agent.retrying"]


def test_a_delivery_is_stored_in_the_event_s_transaction_and_rolled_back_with_it(app, receiver, ids):
    add_endpoint(app, receiver.url("/hooks"))
    with app.app_context():
        with pytest.raises(RuntimeError):
            with write_transaction():
                record_event(ids.job_id, ids.founder_id, "agent.thinking", {})
                raise RuntimeError("the change that caused it failed")
        assert db.session.scalar(select(func.count()).select_from(WebhookDelivery)) == 0
        with write_transaction():
            event = record_event(ids.job_id, ids.founder_id, "agent.thinking", {})
        assert db.session.scalars(select(WebhookDelivery.event_id)).all() == [event.id]
        db.session.remove()


# --- retries ---------------------------------------------------------------------------------------

def test_failures_and_redirects_are_retried_with_the_same_webhook_id_and_every_attempt_is_recorded(
        app, client, receiver, ids):
    endpoint = add_endpoint(app, receiver.url("/flaky"))
    receiver.scripts["/flaky"] = [Answer(500, body=b"database down " * 100),
                                  Answer(302, (("Location", receiver.url("/elsewhere")),))]
    post_event(client, ids)
    deliver_until(app, lambda: [d.status for d in deliveries(app)] == ["delivered"])

    requests = receiver.at("/flaky")
    assert len(requests) == 3 and len({r.webhook_id for r in requests}) == 1
    assert all(verified(endpoint.secret, r) for r in requests)
    assert receiver.at("/elsewhere") == []  # the redirect was never followed
    (delivery,) = deliveries(app)
    recorded = attempts_of(app, delivery.id)
    assert [a.status_code for a in recorded] == [500, 302, 200]
    assert recorded[0].error == "HTTP 500 Internal Server Error" and len(recorded[0].response_body) == 500
    assert "not followed" in recorded[1].error and recorded[2].error is None
    assert all(a.attempted_at <= b.attempted_at for a, b in zip(recorded, recorded[1:]))
    assert endpoint_row(app, endpoint.id).failing_since is None  # the success ended the failing streak


def test_after_the_last_retry_the_delivery_fails_for_good(app, client, receiver, ids):
    add_endpoint(app, receiver.url("/down"))
    receiver.defaults["/down"] = Answer(503)
    post_event(client, ids)
    deliver_until(app, lambda: [d.status for d in deliveries(app)] == ["failed"])
    assert len(receiver.at("/down")) == 4  # the first attempt and the schedule's three retries
    run_worker(app)
    assert len(receiver.at("/down")) == 4


def test_retry_after_is_honoured_in_seconds_and_as_an_http_date(app, client, receiver, ids):
    add_endpoint(app, receiver.url("/busy"))
    later = email.utils.format_datetime(utcnow() + dt.timedelta(seconds=600), usegmt=True)
    receiver.scripts["/busy"] = [Answer(429, (("Retry-After", "120"),)), Answer(503, (("Retry-After", later),))]
    post_event(client, ids)
    run_worker(app)
    (delivery,) = deliveries(app)
    (first,) = attempts_of(app, delivery.id)
    assert first.status_code == 429 and delivery.status == "pending"
    assert delivery.next_attempt_at - first.attempted_at >= dt.timedelta(seconds=119)
    run_worker(app, at=delivery.next_attempt_at)  # the clock moves on to the retry
    (delivery,) = deliveries(app)
    assert delivery.next_attempt_at >= utcnow() + dt.timedelta(seconds=590)
    assert len(receiver.at("/busy")) == 2


def test_retry_after_and_the_schedule_setting_parse():
    at = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
    assert retry_after_seconds("30", at) == 30
    assert retry_after_seconds("Tue, 01 Dec 2026 12:05:00 GMT", at) == 300
    assert retry_after_seconds("Tue, 01 Dec 2026 11:00:00 GMT", at) == 0
    assert retry_after_seconds("soon", at) is None and retry_after_seconds(None, at) is None
    assert parse_schedule("5,300,1800,7200,18000,36000,36000") == (5, 300, 1800, 7200, 18000, 36000, 36000)
    assert parse_schedule("0.2, 0.2") == (0.2, 0.2) and parse_schedule(5) == (5.0,)
    with pytest.raises(RuntimeError):
        parse_schedule("5,soon")


def test_the_default_schedule_is_the_spec_s_with_ten_percent_of_jitter(app, hooks_url, receiver, ids):
    default = make_app(hooks_url, WEBHOOK_ALLOW_PRIVATE=True)
    try:
        assert parse_schedule(default.config["WEBHOOK_RETRY_SCHEDULE"]) == (5, 300, 1800, 7200, 18000, 36000, 36000)
        add_endpoint(default, receiver.url("/down"))
        receiver.defaults["/down"] = Answer(500)
        with default.app_context():
            with write_transaction():
                record_event(ids.job_id, ids.founder_id, "agent.thinking", {})
            db.session.remove()
        delays = []
        for expected in (5, 300, 1800):
            (due,) = deliveries(default)
            run_worker(default, at=due.next_attempt_at)
            (delivery,) = deliveries(default)
            delays.append(((delivery.next_attempt_at - attempts_of(default, delivery.id)[-1].attempted_at)
                           .total_seconds(), expected))
    finally:
        dispose(default)
    assert all(0.9 * expected <= delay <= 1.1 * expected for delay, expected in delays), delays


def test_a_receiver_slower_than_the_timeout_is_a_failure_retried(app, client, receiver, ids):
    add_endpoint(app, receiver.url("/slow"))
    receiver.scripts["/slow"] = [Answer(200, delay=2.5)]  # the timeout is 1 s
    post_event(client, ids)
    run_worker(app)
    (delivery,) = deliveries(app)
    (attempt,) = attempts_of(app, delivery.id)
    assert attempt.status_code is None and attempt.error == "timed out after 1 s"
    assert 900 <= attempt.duration_ms < 2400 and delivery.status == "pending"
    deliver_until(app, lambda: [d.status for d in deliveries(app)] == ["delivered"])


def test_410_disables_the_endpoint_and_the_list_says_why(app, client, receiver, ids):
    gone = add_endpoint(app, receiver.url("/gone"))
    receiver.defaults["/gone"] = Answer(410)
    post_event(client, ids)
    post_event(client, ids, "agent.thinking")
    deliver_until(app, lambda: not endpoint_row(app, gone.id).enabled)
    assert {d.status for d in deliveries(app)} <= {"failed", "cancelled"}
    post_event(client, ids)  # a disabled endpoint is owed nothing new
    assert len(deliveries(app)) == 2
    listing = app.test_cli_runner().invoke(args=["webhook", "list"]).output
    assert "DISABLED" in listing and "410 Gone" in listing, listing
    assert app.test_cli_runner().invoke(args=["webhook", "enable", str(gone.id)]).exit_code == 0
    post_event(client, ids)
    assert len(deliveries(app)) == 3


def test_five_days_of_nothing_but_failures_disable_the_endpoint_said_once_in_the_log(
        app, client, receiver, ids, caplog):
    endpoint = add_endpoint(app, receiver.url("/down"))
    receiver.defaults["/down"] = Answer(500)
    post_event(client, ids)
    start = utcnow()
    run_worker(app, at=start)
    assert endpoint_row(app, endpoint.id).failing_since is not None
    post_event(client, ids)
    run_worker(app, at=start + dt.timedelta(days=4, hours=23))
    assert endpoint_row(app, endpoint.id).enabled
    post_event(client, ids)
    with caplog.at_level("WARNING", logger="console.webhooks"):
        for _ in range(3):
            run_worker(app, at=start + dt.timedelta(days=5, minutes=1))
    row = endpoint_row(app, endpoint.id)
    assert not row.enabled and row.disabled_reason.startswith("5 days of nothing but failures")
    assert sum("disabled: 5 days of nothing but failures" in m for m in caplog.messages) == 1, caplog.messages
    assert "5 days of nothing but failures" in app.test_cli_runner().invoke(args=["webhook", "list"]).output


# --- secrets ------------------------------------------------------------------------------------------

def test_after_a_rotation_both_secrets_sign_for_24_hours_then_only_the_new_one(app, client, receiver, ids):
    first = add_endpoint(app, receiver.url("/hooks"))
    with app.app_context():  # rotated 23 hours ago: the overlap still runs
        second = service.rotate_secret(first.id, now=utcnow() - dt.timedelta(hours=23))
    post_event(client, ids)
    deliver_until(app, lambda: len(receiver.at("/hooks")) == 1)
    request = receiver.at("/hooks")[0]
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    assert verified(first.secret, request) == verified(second.secret, request)

    with app.app_context():  # rotated 25 hours ago: the overlap is over
        third = service.rotate_secret(first.id, now=utcnow() - dt.timedelta(hours=25))
    post_event(client, ids)
    deliver_until(app, lambda: len(receiver.at("/hooks")) == 2)
    request = receiver.at("/hooks")[1]
    assert len(request.headers["webhook-signature"].split(" ")) == 1
    assert verified(third.secret, request)
    for old in (first.secret, second.secret):
        with pytest.raises(WebhookVerificationError):
            verified(old, request)


# --- the guard against server-side request forgery ---------------------------------------------

@pytest.mark.parametrize("address", ["127.0.0.1", "10.1.2.3", "172.16.0.9", "192.168.1.1", "169.254.169.254",
                                     "100.64.0.1", "0.0.0.0", "224.0.0.1", "240.0.0.1", "::1", "fe80::1", "fc00::1",
                                     "::ffff:127.0.0.1", "::ffff:169.254.169.254", "ff02::1"])
def test_private_loopback_link_local_reserved_and_multicast_addresses_are_refused(address):
    assert outbound.forbidden_reason(address)


@pytest.mark.parametrize("address", ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses_are_allowed(address):
    assert outbound.forbidden_reason(address) is None


def test_add_refuses_http_and_private_targets_unless_allowed(app, receiver, monkeypatch):
    monkeypatch.setitem(app.config, "WEBHOOK_ALLOW_PRIVATE", False)
    runner = app.test_cli_runner()
    for url in (receiver.url("/hooks"), f"https://127.0.0.1:{receiver.port}/hooks", "https://localhost/hooks",
                "https://[::1]/hooks", "https://169.254.169.254/latest/meta-data", "ftp://example.com/x",
                "https://user:pw@localhost/x"):
        result = runner.invoke(args=["webhook", "add", url])
        assert result.exit_code != 0 and "Error" in result.output, (url, result.output)
    assert runner.invoke(args=["webhook", "list"]).output.startswith("No webhook endpoints")
    monkeypatch.setitem(app.config, "WEBHOOK_ALLOW_PRIVATE", True)
    assert runner.invoke(args=["webhook", "add", receiver.url("/hooks")]).exit_code == 0


def test_the_guard_runs_again_at_send_time_on_the_resolved_address(app, client, receiver, ids, monkeypatch):
    """A target that was fine when added (or whose name now resolves elsewhere) is checked
    at every send: with private addresses forbidden, localhost is never connected to."""
    add_endpoint(app, f"http://localhost:{receiver.port}/hooks")
    monkeypatch.setitem(app.config, "WEBHOOK_ALLOW_PRIVATE", False)
    post_event(client, ids)
    run_worker(app)
    (delivery,) = deliveries(app)
    (attempt,) = attempts_of(app, delivery.id)
    assert attempt.error.startswith("refused:") and attempt.status_code is None
    assert receiver.received == []
    monkeypatch.setitem(app.config, "WEBHOOK_ALLOW_PRIVATE", True)
    deliver_until(app, lambda: len(receiver.at("/hooks")) == 1)
    assert receiver.at("/hooks")[0].headers["host"] == f"localhost:{receiver.port}"


# --- the CLI -----------------------------------------------------------------------------------------

def test_the_cli_adds_lists_shows_deliveries_redelivers_and_removes(app, client, receiver, ids):
    runner = app.test_cli_runner()
    added = runner.invoke(args=["webhook", "add", receiver.url("/hooks"), "--events", "agent.retrying"])
    assert added.exit_code == 0, added.output
    endpoint_id = int(added.output.split()[1].rstrip(":"))
    secret = added.output.split("Secret (shown once; verify webhook-signature with it): ")[1].strip()
    assert secret.startswith("whsec_")
    assert runner.invoke(args=["webhook", "add", receiver.url("/x"), "--events", "agent.nope"]).exit_code != 0
    listing = runner.invoke(args=["webhook", "list"]).output
    assert f"{endpoint_id}  enabled  {receiver.url('/hooks')}" in listing and "agent.retrying" in listing
    assert secret not in listing

    post_event(client, ids)
    deliver_until(app, lambda: len(receiver.at("/hooks")) == 1)
    shown = runner.invoke(args=["webhook", "deliveries", str(endpoint_id)]).output
    (delivery,) = deliveries(app)
    assert f"delivery {delivery.id}" in shown and "delivered" in shown and "HTTP 200" in shown, shown

    assert runner.invoke(args=["webhook", "redeliver", str(delivery.id)]).exit_code == 0
    deliver_until(app, lambda: len(receiver.at("/hooks")) == 2)
    first, again = receiver.at("/hooks")
    assert first.webhook_id == again.webhook_id and verified(secret, again)

    rotated = runner.invoke(args=["webhook", "rotate", str(endpoint_id)])
    assert rotated.exit_code == 0 and "whsec_" in rotated.output
    assert runner.invoke(args=["webhook", "remove", str(endpoint_id)]).exit_code == 0
    assert deliveries(app) == []
    assert runner.invoke(args=["webhook", "remove", str(endpoint_id)]).exit_code != 0


# --- real processes ------------------------------------------------------------------------------

class WorkerProcess(worker_processes.WorkerProcess):
    """The worker process of tests/test_worker_processes.py, configured for a test receiver."""

    def __init__(self, database_url: str, *args: str, **env: str):
        super().__init__(database_url, *args, **{"CONSOLE_WEBHOOK_ALLOW_PRIVATE": "true",
                                                 "CONSOLE_WEBHOOK_RETRY_SCHEDULE": "0.2,0.2,0.2", **env})


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_url(request, tmp_path):
    with migrated_database(request, tmp_path, "console_webhook_worker") as url:
        yield url


def seed_events(url: str, receiver: Receiver, count: int, paths=("/hooks",), founders: int = 5):
    """Endpoints for `paths`, then `count` events, straight through the app (one transaction)."""
    app = make_app(url, **SETTINGS)
    try:
        with app.app_context():
            endpoints = [service.add_endpoint(receiver.url(path), None, allow_private=True) for path in paths]
            with write_transaction():
                events = [record_event(f"job-{i % founders}", f"founder-{i % founders}", "agent.retrying",
                                       {"attempt": i}) for i in range(count)]
            db.session.remove()
    finally:
        dispose(app)
    return endpoints, {f"evt_{event.id}" for event in events}


def delivery_statuses(url: str) -> Counter:
    """How many deliveries are in each status (a plain engine: cheap enough to poll)."""
    engine = _engines.get(url)
    if engine is None:
        engine = _engines[url] = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1),
                                               poolclass=NullPool)
    with engine.connect() as connection:
        return Counter(dict(connection.execute(
            select(WebhookDelivery.status, func.count()).group_by(WebhookDelivery.status)).all()))


_engines: dict = {}


@pytest.fixture(autouse=True)
def _dispose_polling_engines():
    yield
    while _engines:
        _engines.popitem()[1].dispose()


def wait_until(predicate, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


@pytest.mark.slow
def test_a_worker_killed_between_sending_and_recording_delivers_again_and_loses_none(fresh_url, receiver):
    (endpoint,), expected = seed_events(fresh_url, receiver, 5)
    receiver.defaults["/hooks"] = Answer(200, delay=1.5)  # holds each request while the worker is killed
    short_lease = {"CONSOLE_WEBHOOK_LEASE_SECONDS": "4", "CONSOLE_WEBHOOK_TIMEOUT_SECONDS": "2"}
    worker = WorkerProcess(fresh_url, **short_lease)
    try:
        assert wait_until(lambda: len(receiver.at("/hooks")) == 5, timeout=30), worker.text()
        worker.process.send_signal(signal.SIGKILL)  # sent, never recorded
        worker.process.wait(timeout=10)
    finally:
        worker.stop()
    assert delivery_statuses(fresh_url) == {"pending": 5}
    receiver.defaults["/hooks"] = Answer(200)
    restarted = WorkerProcess(fresh_url, **short_lease)
    try:
        assert wait_until(lambda: delivery_statuses(fresh_url) == {"delivered": 5}, timeout=30), restarted.text()
    finally:
        log = restarted.text()
        assert restarted.stop() == 0, log
    seen = Counter(r.webhook_id for r in receiver.at("/hooks"))
    assert set(seen) == expected and set(seen.values()) == {2}  # at least once: twice, and none lost
    for request in receiver.at("/hooks"):
        verified(endpoint.secret, request)
    app = make_app(fresh_url)
    try:
        with app.app_context():
            errors = db.session.scalars(select(WebhookAttempt.error).where(WebhookAttempt.status_code.is_(None))).all()
            db.session.remove()
    finally:
        dispose(app)
    assert len(errors) == 5 and all("the worker sending it stopped" in e for e in errors), errors
    assert "Traceback" not in log, log


@pytest.mark.slow
def test_two_workers_on_postgresql_never_send_one_delivery_twice(postgres, receiver):
    url = postgres.create("console_webhook_two_workers")
    migrate(url)
    try:
        receiver.defaults["/hooks"] = Answer(200, delay=0.02)
        workers = [WorkerProcess(url), WorkerProcess(url)]
        try:
            assert wait_until(lambda: all("worker started" in w.text() for w in workers), timeout=30)
            _, expected = seed_events(url, receiver, 400, founders=7)  # both are polling: both claim
            assert wait_until(lambda: delivery_statuses(url) == {"delivered": 400}, timeout=60), \
                [w.text() for w in workers]
        finally:
            assert [w.stop() for w in workers] == [0, 0], [w.final_text for w in workers]
        logs = [w.final_text for w in workers]
        seen = Counter(r.webhook_id for r in receiver.at("/hooks"))
        assert set(seen) == expected and set(seen.values()) == {1}
        assert receiver.most_at_once == 1
        assert all(re.search(r"done: .*\d+ webhooks", log) for log in logs), logs  # each took a share
        assert not any("Traceback" in log for log in logs), logs
    finally:
        postgres.drop(url)


@pytest.mark.slow
def test_a_thousand_events_to_three_endpoints_drain_while_the_api_answers(fresh_url, receiver):
    paths = ("/a", "/b", "/c")
    endpoints, expected = seed_events(fresh_url, receiver, 1000, paths)
    answers: Counter = Counter()
    stop = threading.Event()
    with GunicornServer(fresh_url) as server:
        def use_the_api():
            token = mint_jwt("founder-1")
            while not stop.is_set():
                for path, headers in (("/api/jobs/job-1/events?limit=20", AGENT),
                                      ("/api/escalations?status=pending", {"Authorization": f"Bearer {token}"})):
                    request = urllib.request.Request(server.url + path, headers=headers)
                    try:
                        with urllib.request.urlopen(request, timeout=10) as response:
                            answers[response.status] += 1
                    except OSError as error:
                        answers[repr(error)] += 1
                stop.wait(0.02)

        reader = threading.Thread(target=use_the_api)
        worker = WorkerProcess(fresh_url)
        reader.start()
        try:
            assert wait_until(lambda: delivery_statuses(fresh_url) == {"delivered": 3000}, timeout=120, interval=0.5), \
                worker.text()
        finally:
            stop.set()
            reader.join(timeout=15)
            assert worker.stop() == 0, worker.text()
    for endpoint, path in zip(endpoints, paths):
        requests = receiver.at(path)
        assert {r.webhook_id for r in requests} == expected and len(requests) == 1000
        verified(endpoint.secret, requests[-1])
    assert set(answers) == {200} and answers[200] > 0, answers


def test_an_endpoint_removed_while_its_delivery_is_in_flight_is_no_trouble(app, client, receiver, ids):
    endpoint = add_endpoint(app, receiver.url("/slowish"))
    receiver.scripts["/slowish"] = [Answer(200, delay=0.5)]
    post_event(client, ids)
    worker = threading.Thread(target=run_worker, args=(app,))
    worker.start()
    assert wait_until(lambda: receiver.at("/slowish"), timeout=10)
    with app.app_context():
        service.remove_endpoint(endpoint.id)  # while the worker waits for the receiver
        db.session.remove()
    worker.join(timeout=10)
    assert not worker.is_alive() and deliveries(app) == []
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(WebhookAttempt)) == 0
        db.session.remove()

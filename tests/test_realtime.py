"""Real time (SPEC §3, §6): SSE replay and live delivery, the long-poll, across processes.

PostgreSQL: two real gunicorn processes on one database (LISTEN/NOTIFY). SQLite: one
process (in-process wake-up) and two processes (the log re-check).
"""
from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from urllib.parse import urlsplit

import pytest

from conftest import AGENT_TOKEN, REPO, GunicornServer, ThreadedServer, dispose, make_app, migrate, mint_jwt

pytestmark = pytest.mark.slow


class SSE:
    """A tiny SSE reader; every read has a deadline."""

    def __init__(self, base_url: str, path: str, headers: dict):
        parts = urlsplit(base_url)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        self.conn.request("GET", path, headers={"Accept": "text/event-stream", **headers})
        self.sock = self.conn.sock  # http.client lets go of it when the server will close the connection
        self.resp = self.conn.getresponse()
        self.status = self.resp.status

    def next(self, timeout: float) -> dict | None:
        self.sock.settimeout(timeout)
        frame: dict = {}
        try:
            while True:
                line = self.resp.readline().decode()
                if not line:
                    return None
                line = line.rstrip("\n")
                if not line:
                    if frame.get("event") or frame.get("id"):
                        return frame
                    frame = {}
                    continue
                name, _, value = line.partition(": ")
                frame[name] = value
        except TimeoutError:
            return None

    def collect(self, count: int, timeout: float) -> list[dict]:
        deadline = time.monotonic() + timeout
        frames = []
        while len(frames) < count and time.monotonic() < deadline:
            frame = self.next(max(0.01, deadline - time.monotonic()))
            if frame is None:
                break
            if frame.get("event") != "heartbeat":
                frames.append(frame)
        return frames

    def close(self):
        self.resp.close()
        self.sock.close()
        self.conn.close()


def call(base_url: str, method: str, path: str, body=None, token: str = AGENT_TOKEN, timeout: float = 30):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base_url + path, data=data, method=method, headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def escalate(base_url: str, job_id: str, founder_id: str, message: str = "KeyError: missing") -> dict:
    status, body = call(base_url, "POST", f"/api/jobs/{job_id}/escalations", {
        "session_id": "s", "project_id": "p", "founder_id": founder_id, "error_type": "KeyError",
        "plain_english_problem": "Stuck.", "recommended_action": "Skip it.", "error_message": message,
        "options": [{"value": "skip_feature", "label": "Skip"}, {"value": "simpler_version", "label": "Simpler"}]})
    assert status == 201, body
    return body


def resolve(base_url: str, escalation: dict, decision: str = "simpler_version"):
    return call(base_url, "POST", f"/api/escalations/{escalation['id']}/resolve", {"decision": decision},
                token=mint_jwt(escalation["founder_id"]))


@pytest.fixture(scope="module")
def two_postgres_servers(postgres):
    url = postgres.create("console_rt")
    migrate(url)
    try:
        with GunicornServer(url, workers=1) as a, GunicornServer(url, workers=2) as b:
            yield a, b
    finally:
        postgres.drop(url)


@pytest.fixture(scope="module")
def two_sqlite_servers(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('rt') / 'console.db'}"
    migrate(url)
    with GunicornServer(url, workers=1, CONSOLE_SQLITE_POLL_SECONDS=0.2) as a, \
            GunicornServer(url, workers=1, CONSOLE_SQLITE_POLL_SECONDS=0.2) as b:
        yield a, b


@pytest.fixture(scope="module")
def one_sqlite_server(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('rt1') / 'console.db'}"
    migrate(url)
    app = make_app(url, SSE_HEARTBEAT_SECONDS=1.0)
    with ThreadedServer(app) as server:
        yield server, server
    dispose(app)


@pytest.fixture(params=["postgresql-two-processes", "sqlite-two-processes", "sqlite-one-process"])
def servers(request):
    fixture = {"postgresql-two-processes": "two_postgres_servers", "sqlite-two-processes": "two_sqlite_servers",
               "sqlite-one-process": "one_sqlite_server"}[request.param]
    return request.getfixturevalue(fixture)


def test_a_resolve_on_one_process_reaches_a_subscriber_on_the_other(servers, ids):
    a, b = servers
    escalation = escalate(b.url, ids.job_id, ids.founder_id)
    stream = SSE(a.url, f"/api/jobs/{ids.job_id}/events/stream?after=0",
                 {"Authorization": f"Bearer {mint_jwt(ids.founder_id)}"})
    try:
        assert stream.status == 200
        [waiting] = stream.collect(1, timeout=5)
        assert waiting["event"] == "agent.waiting_for_input"
        assert resolve(b.url, escalation)[0] == 200
        [resolved] = stream.collect(1, timeout=5)
    finally:
        stream.close()
    data = json.loads(resolved["data"])
    assert resolved["event"] == "agent.escalation_resolved" and resolved["id"] == str(data["id"])
    assert (data["escalation_id"], data["resolution"]) == (escalation["id"], "simpler_version")


def test_a_long_poll_on_one_process_returns_promptly_after_a_resolve_on_the_other(servers, ids):
    a, b = servers
    escalation = escalate(b.url, ids.job_id, ids.founder_id)
    result = {}

    def long_poll():
        started = time.monotonic()
        result["response"] = call(a.url, "GET", f"/api/escalations/{escalation['id']}?wait=30")
        result["returned"] = time.monotonic()
        result["started"] = started

    poller = threading.Thread(target=long_poll)
    poller.start()
    time.sleep(0.5)  # the long-poll is waiting
    resolved_at = time.monotonic()
    assert resolve(b.url, escalation)[0] == 200
    poller.join(35)
    status, body = result["response"]
    assert status == 200 and body["status"] == "resolved"
    assert result["returned"] - resolved_at < 3, "the long-poll was not woken by the resolve"


def test_reconnecting_with_last_event_id_replays_every_missed_event_once_in_order(servers, ids):
    a, b = servers
    posted = []
    for i in range(3):
        status, event = call(b.url, "POST", f"/api/jobs/{ids.job_id}/events",
                             {"type": "agent.thinking", "founder_id": ids.founder_id, "n": i})
        posted.append(event["id"])
    stream = SSE(a.url, f"/api/jobs/{ids.job_id}/events/stream", {"Authorization": f"Bearer {AGENT_TOKEN}",
                                                                  "Last-Event-ID": "0"})
    seen = [int(f["id"]) for f in stream.collect(3, timeout=5)]
    stream.close()  # the connection drops; meanwhile the agent keeps posting
    for i in range(3, 6):
        posted.append(call(b.url, "POST", f"/api/jobs/{ids.job_id}/events",
                           {"type": "agent.thinking", "founder_id": ids.founder_id, "n": i})[1]["id"])
    stream = SSE(a.url, f"/api/jobs/{ids.job_id}/events/stream", {"Authorization": f"Bearer {AGENT_TOKEN}",
                                                                  "Last-Event-ID": str(seen[-1])})
    try:
        seen += [int(f["id"]) for f in stream.collect(3, timeout=5)]
        posted.append(call(b.url, "POST", f"/api/jobs/{ids.job_id}/events",
                           {"type": "agent.thinking", "founder_id": ids.founder_id, "n": 6})[1]["id"])
        seen += [int(f["id"]) for f in stream.collect(1, timeout=5)]
        assert stream.collect(1, timeout=0.5) == []  # nothing twice
    finally:
        stream.close()
    assert seen == posted


def test_a_foreign_job_stream_is_404_and_heartbeats_arrive_when_idle(one_sqlite_server, ids):
    server, _ = one_sqlite_server
    escalate(server.url, ids.job_id, ids.founder_id)
    foreign = SSE(server.url, f"/api/jobs/{ids.job_id}/events/stream", {"Authorization": f"Bearer {mint_jwt('other')}"})
    assert foreign.status == 404
    foreign.close()
    stream = SSE(server.url, f"/api/jobs/{ids.job_id}/events/stream?after=999999999",
                 {"Authorization": f"Bearer {AGENT_TOKEN}"})
    try:
        frame = stream.next(timeout=5)
    finally:
        stream.close()
    assert frame == {"event": "heartbeat", "data": "{}"}


def test_the_example_agent_loop_gets_the_founders_decision_end_to_end(two_postgres_servers, ids):
    a, b = two_postgres_servers
    process = subprocess.Popen(
        [sys.executable, str(REPO / "examples" / "agent_loop.py"), "--url", a.url, "--token", AGENT_TOKEN,
         "--founder", ids.founder_id, "--job", ids.job_id, "--decision-timeout", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        escalation = None
        deadline = time.monotonic() + 30
        while escalation is None and time.monotonic() < deadline:
            listed = call(b.url, "GET", f"/api/jobs/{ids.job_id}/escalations?status=pending")[1]
            escalation = listed[0] if listed else None
            time.sleep(0.1)
        assert escalation is not None, "the agent never escalated"
        status, _ = call(b.url, "POST", f"/api/escalations/{escalation['id']}/resolve",
                         {"decision": "provide_guidance", "guidance": "Use a payment link"},
                         token=mint_jwt(ids.founder_id))
        assert status == 200
        output, _ = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, output
    assert "retrying payments with the founder's guidance: 'Use a payment link'" in output
    events = call(b.url, "GET", f"/api/jobs/{ids.job_id}/events?limit=500")[1]["items"]
    types = [e["type"] for e in events]
    assert types.count("agent.retrying") == 3
    assert types.index("agent.waiting_for_input") < types.index("agent.escalation_resolved") < types.index("agent.waking")


def test_open_streams_hold_no_database_connection(postgres, ids):
    """Ten open console live streams and ten API streams on an app whose pool has two
    connections: requests still get a connection at once."""
    import http.cookiejar
    import re

    url = postgres.create("console_pool")
    migrate(url)
    app = make_app(url, SQLALCHEMY_ENGINE_OPTIONS={"pool_size": 2, "max_overflow": 0, "pool_timeout": 2,
                                                  "isolation_level": "AUTOCOMMIT"})
    streams = []
    try:
        with ThreadedServer(app) as server:
            jobs = [f"{ids.job_id}-{i}" for i in range(10)]
            for job in jobs:
                escalate(server.url, job, ids.founder_id)
            jar = http.cookiejar.CookieJar()
            opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
            page = opener.open(server.url + "/login").read().decode()
            csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
            form = urllib.parse.urlencode({"csrf_token": csrf, "token": mint_jwt(ids.founder_id)}).encode()
            opener.open(server.url + "/login", data=form)
            cookie = "; ".join(f"{c.name}={c.value}" for c in jar)
            for job in jobs:  # distinct jobs: no owner is remembered from an earlier stream
                streams.append(SSE(server.url, f"/jobs/{job}/live", {"Cookie": cookie}))
                streams.append(SSE(server.url, f"/api/jobs/{job}/events/stream",
                                   {"Authorization": f"Bearer {AGENT_TOKEN}"}))
            assert {s.status for s in streams} == {200}
            for s in streams:
                assert s.collect(1, timeout=5)  # each replayed the waiting event, then idles
            from console.extensions import db
            with app.app_context():
                assert db.engine.pool.checkedout() == 0
            started = time.monotonic()
            status, body = call(server.url, "GET", f"/api/jobs/{jobs[0]}/escalations")
            assert status == 200 and len(body) == 1
            assert time.monotonic() - started < 1.5
    finally:
        for s in streams:
            s.close()
        dispose(app)
        postgres.drop(url)


def test_a_stream_whose_client_vanished_is_let_go_within_seconds(database_url, ids):
    """SPEC §14: let go within 30 s; here an idle stream looks every CLIENT_CHECK_SECONDS."""
    app = make_app(database_url)
    hub = app.extensions["console_event_hub"]
    try:
        with ThreadedServer(app) as server:
            escalate(server.url, ids.job_id, ids.founder_id)
            stream = SSE(server.url, f"/api/jobs/{ids.job_id}/events/stream", {"Authorization": f"Bearer {AGENT_TOKEN}"})
            assert stream.status == 200 and stream.collect(1, timeout=10)
            assert hub.watching == 1
            stream.close()  # the client goes away without a word
            deadline = time.monotonic() + 15
            while hub.watching and time.monotonic() < deadline:
                time.sleep(0.1)
            assert hub.watching == 0
    finally:
        dispose(app)

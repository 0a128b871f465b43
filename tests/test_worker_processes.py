"""The worker as production runs it (SPEC §9): real worker processes beside real server
processes, on SQLite and PostgreSQL; two workers sharing PostgreSQL; SIGTERM in the middle of
a batch; the database going away under a running worker. Deadlines are a second or two."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from urllib.parse import urlsplit, urlunsplit

import pytest

from conftest import (
    AGENT_TOKEN, JWT_SECRET, REPO, SECRET_KEY, GunicornServer, dispose, make_app, migrate, migrated_database, mint_jwt,
)
from test_outage import OutageProxy
from test_realtime import call

pytestmark = pytest.mark.slow


class WorkerProcess:
    """`flask --app console worker` in a process of its own, its log kept for the asserts."""

    def __init__(self, database_url: str, *args: str, **extra_env: str):
        self.log = tempfile.NamedTemporaryFile("w+", prefix="console-worker-", suffix=".log")
        env = {**os.environ, "DATABASE_URL": database_url, "CONSOLE_JWT_SECRET": JWT_SECRET,
               "CONSOLE_AGENT_TOKEN": AGENT_TOKEN, "CONSOLE_SECRET_KEY": SECRET_KEY,
               "CONSOLE_WORKER_POLL_SECONDS": "0.2", "PYTHONUNBUFFERED": "1", **extra_env}
        self.process = subprocess.Popen([sys.executable, "-m", "flask", "--app", "console", "worker", *args],
                                        cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def text(self) -> str:
        self.log.flush()
        with open(self.log.name) as fh:
            return fh.read()

    def stop(self, timeout: float = 20) -> int:
        # A SIGTERM before the worker installed its handler (still importing) would end it by
        # the default action: let it start first, as an operator's SIGTERM finds it running.
        deadline = time.monotonic() + 30
        while self.process.poll() is None and "worker started" not in self.text() and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
            self.final_text = self.text()  # everything it logged, to its last line
            self.log.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_url(request, tmp_path):
    """A database of its own (the worker sweeps everything that is due in it)."""
    with migrated_database(request, tmp_path, "console_worker") as url:
        yield url


def new_escalation(base_url: str, founder_id: str, job_id: str, tag: str, **fields) -> dict:
    letters = tag.translate(str.maketrans("0123456789", "abcdefghij"))
    status, body = call(base_url, "POST", f"/api/jobs/{job_id}/escalations", {
        "session_id": "s", "project_id": "p", "founder_id": founder_id, "error_type": "KeyError",
        "plain_english_problem": "Stuck.", "recommended_action": "Skip it.", "error_message": f"KeyError: {letters}",
        "options": [{"value": "skip_feature", "label": "Skip this feature", "recommended": True},
                    {"value": "simpler_version", "label": "Simpler"}], **fields})
    assert status == 201, body
    return body


def seed_due(url: str, count: int, founders: int = 5) -> list[str]:
    """`count` escalations whose deadline has passed (created in-process, expires_in=1)."""
    app = make_app(url, MAX_PENDING_PER_JOB=1_000_000)  # a backlog on purpose
    client = app.test_client()
    ids = []
    try:
        for i in range(count):
            founder = f"founder-{i % founders}"
            resp = client.post(f"/api/jobs/job-{founder}/escalations", headers={"Authorization": f"Bearer {AGENT_TOKEN}"},
                               json={"session_id": "s", "project_id": "p", "founder_id": founder, "error_type": "E",
                                     "plain_english_problem": "p", "recommended_action": "r", "expires_in": 1,
                                     "error_signature": f"sig-{uuid.uuid4().hex}"})
            assert resp.status_code == 201, resp.get_json()
            ids.append(resp.get_json()["id"])
    finally:
        dispose(app)
    time.sleep(1.1)
    return ids


def settlement(url: str) -> tuple[dict[str, str], dict[str, int]]:
    """Status of every escalation, and how many resolution events each one has."""
    from sqlalchemy import select

    from console.extensions import db
    from console.models import AgentEscalation, JobEvent

    app = make_app(url)
    try:
        with app.app_context():
            statuses = {str(i): s for i, s in db.session.execute(select(AgentEscalation.id, AgentEscalation.status))}
            counts: dict[str, int] = {}
            for payload in db.session.scalars(
                    select(JobEvent.payload).where(JobEvent.type == "agent.escalation_resolved")):
                counts[payload["escalation_id"]] = counts.get(payload["escalation_id"], 0) + 1
            db.session.remove()
    finally:
        dispose(app)
    return statuses, counts


def wait_until(predicate, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def test_the_clock_settles_an_escalation_while_long_polls_wait_on_two_servers(fresh_url, ids):
    with GunicornServer(fresh_url, CONSOLE_SQLITE_POLL_SECONDS=0.2) as a, \
            GunicornServer(fresh_url, CONSOLE_SQLITE_POLL_SECONDS=0.2) as b:
        worker = WorkerProcess(fresh_url)
        try:
            record = new_escalation(a.url, ids.founder_id, ids.job_id, "clock", expires_in=2)
            answers = {}

            def long_poll(server):
                started = time.monotonic()
                answers[server.url] = (call(server.url, "GET", f"/api/escalations/{record['id']}?wait=20",
                                            token=mint_jwt(ids.founder_id)), time.monotonic() - started)

            polls = [threading.Thread(target=long_poll, args=(server,)) for server in (a, b)]
            for poll in polls:
                poll.start()
            for poll in polls:
                poll.join(timeout=30)
        finally:
            assert worker.stop() == 0, worker.text()
        for (status, body), waited in answers.values():
            assert status == 200 and body["status"] == "resolved", body
            assert (body["founder_decision"], body["decided_by"]) == ("skip_feature", "expiry")
            assert waited < 15, waited  # woken by the settlement, not by the end of the wait
        assert len(answers) == 2
        events = call(b.url, "GET", f"/api/jobs/{ids.job_id}/events")[1]["items"]
        assert [e["type"] for e in events] == ["agent.waiting_for_input", "agent.escalation_resolved"]
        assert events[1]["decided_by"] == "expiry"


def test_two_workers_on_postgresql_never_settle_one_escalation_twice(postgres):
    url = postgres.create("console_two_workers")
    migrate(url)
    try:
        due = seed_due(url, 600, founders=7)
        workers = [WorkerProcess(url), WorkerProcess(url)]
        try:
            assert wait_until(lambda: set(settlement(url)[0].values()) == {"expired"}, timeout=60)
        finally:
            logs = [w.text() for w in workers]
            assert [w.stop() for w in workers] == [0, 0], logs
        statuses, counts = settlement(url)
        assert sorted(counts) == sorted(due) and set(counts.values()) == {1}, counts
        assert not any("Traceback" in log for log in logs), logs
    finally:
        postgres.drop(url)


def test_a_worker_stopped_mid_batch_loses_and_duplicates_nothing(fresh_url):
    due = seed_due(fresh_url, 1500)
    worker = WorkerProcess(fresh_url)
    assert wait_until(lambda: "worker started" in worker.text(), timeout=30), worker.text()
    worker.process.send_signal(signal.SIGTERM)  # most likely within its first batch of 500
    assert worker.process.wait(timeout=20) == 0, worker.text()  # the batch in hand finishes, then it exits
    assert "worker stopped" in worker.text() and "Traceback" not in worker.text(), worker.text()
    worker.stop()
    statuses, counts = settlement(fresh_url)
    settled = [i for i in due if statuses[i] != "pending"]
    assert all(counts.get(i) == 1 for i in settled) and not any(counts.get(i) for i in due if i not in settled)
    rerun = WorkerProcess(fresh_url, "--once")
    assert rerun.process.wait(timeout=60) == 0, rerun.text()
    statuses, counts = settlement(fresh_url)
    assert {statuses[i] for i in due} == {"expired"}  # no options, so no safe default
    assert sorted(counts) == sorted(due) and set(counts.values()) == {1}


def test_the_worker_survives_a_database_outage_and_says_so_once(postgres):
    url = postgres.create("console_worker_outage")
    migrate(url)
    parts = urlsplit(url)
    proxy = OutageProxy(parts.hostname, parts.port or 5432)
    proxy.up()
    proxied = urlunsplit((parts.scheme, f"{parts.username}@127.0.0.1:{proxy.port}", parts.path, "", ""))
    worker = WorkerProcess(proxied)
    try:
        assert wait_until(lambda: "worker started" in worker.text(), timeout=30), worker.text()
        proxy.down()
        time.sleep(3)  # several ticks without a database
        due = seed_due(url, 3)  # written straight to the database while the worker cannot reach it
        assert worker.process.poll() is None, worker.text()
        assert settlement(url)[0] == {i: "pending" for i in due}, worker.text()
        proxy.up()
        assert wait_until(lambda: set(settlement(url)[0].values()) == {"expired"}, timeout=20), worker.text()
        time.sleep(0.5)
        log = worker.text()
    finally:
        code = worker.stop()
        proxy.down()
        postgres.drop(url)
    assert code == 0
    assert log.count("the database is not answering") == 1, log  # said once, not once per retry
    assert "the database is back" in log and "Traceback" not in log, log


def run_agent_loop(server, ids, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(REPO / "examples" / "agent_loop.py"), "--url", server.url, "--token", AGENT_TOKEN,
         "--founder", ids.founder_id, "--project", ids.project_id, "--decision-timeout", "60", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_the_example_agent_goes_ahead_with_the_safe_default_when_nobody_answers(fresh_url, ids):
    with GunicornServer(fresh_url, CONSOLE_SQLITE_POLL_SECONDS=0.2) as server:
        worker = WorkerProcess(fresh_url)
        agent = run_agent_loop(server, ids, "--job", ids.job_id, "--expires-in", "2")
        try:
            output, _ = agent.communicate(timeout=60)
        finally:
            agent.kill()
            assert worker.stop() == 0
        events = call(server.url, "GET", f"/api/jobs/{ids.job_id}/events?limit=500")[1]["items"]
    assert agent.returncode == 0, output
    assert "payments (hosted payment link)" in output  # it acted on the safe default
    resolved = [e for e in events if e["type"] == "agent.escalation_resolved"]
    assert [(e["decided_by"], e["resolution"]) for e in resolved] == [("expiry", "simpler_version")]
    assert any(e.get("note") == "answered by the deadline (safe default): simpler_version" for e in events)


def test_the_second_occurrence_of_a_remembered_error_is_answered_in_the_create(fresh_url, ids):
    with GunicornServer(fresh_url) as server:
        first = run_agent_loop(server, ids, "--job", ids.new("job"))
        try:
            deadline = time.monotonic() + 30
            pending = []
            while not pending and time.monotonic() < deadline:
                pending = call(server.url, "GET", "/api/escalations?status=pending",
                               token=mint_jwt(ids.founder_id))[1]["items"]
                time.sleep(0.1)
            assert pending, "the agent never escalated"
            status, body = call(server.url, "POST", f"/api/escalations/{pending[0]['id']}/resolve",
                                {"decision": "skip_feature", "remember": True}, token=mint_jwt(ids.founder_id))
            assert status == 200, body
            output, _ = first.communicate(timeout=60)
        finally:
            first.kill()
        assert first.returncode == 0, output
        second = run_agent_loop(server, ids, "--job", ids.new("job"))
        output, _ = second.communicate(timeout=60)
    assert second.returncode == 0, output
    assert "answered at once (rule), no waiting" in output and "skipping payments" in output


def test_a_piece_whose_rendering_raises_never_stops_the_worker_nor_the_others(fresh_url, tmp_path):
    """SPEC §16: the real worker process is fed a delivery whose message cannot be rendered (its
    question's options are not a list): that delivery is recorded, retried and failed on its
    fifth attempt, and meanwhile another founder's mail goes out and a deadline is kept."""
    from sqlalchemy import select, update

    from console.extensions import db
    from console.models import AgentEscalation, NotificationAttempt, NotificationDelivery

    mail_dir = tmp_path / "mail"
    app = make_app(fresh_url)
    client = app.test_client()
    agent = {"Authorization": f"Bearer {AGENT_TOKEN}"}

    def ask(founder: str, problem: str, **fields) -> str:
        resp = client.post(f"/api/jobs/job-{founder}/escalations", headers=agent, json={
            "session_id": "s", "project_id": "p", "founder_id": founder, "error_type": "E",
            "plain_english_problem": problem, "recommended_action": "Skip it.",
            "options": [{"value": "skip_feature", "label": "Skip", "recommended": True}],
            "error_signature": f"sig-{uuid.uuid4().hex}", **fields})
        assert resp.status_code == 201, resp.get_json()
        return resp.get_json()["id"]

    try:
        for founder in ("founder-broken", "founder-fine"):
            resp = client.put("/api/me/settings", json={"email": f"{founder}@example.com"},
                              headers={"Authorization": f"Bearer {mint_jwt(founder)}"})
            assert resp.status_code == 200
        broken = ask("founder-broken", "This question cannot be rendered.")
        with app.app_context():
            db.session.execute(update(AgentEscalation).where(AgentEscalation.id == uuid.UUID(broken))
                               .values(options="not a list"))
            db.session.commit()
            db.session.remove()
        worker = WorkerProcess(fresh_url, CONSOLE_NOTIFY_RETRY_SCHEDULE="0.3,0.3,0.3,0.3,0.3,0.3",
                               CONSOLE_MAIL_DIR=str(mail_dir))
        try:
            ask("founder-fine", "This question is fine.")
            deadline_kept = ask("founder-other", "Nobody answers this one.", expires_in=1)

            def state():
                with app.app_context():
                    rows = db.session.execute(select(NotificationDelivery.escalation_id, NotificationDelivery.status,
                                                     NotificationDelivery.attempts)).all()
                    expiry = db.session.get(AgentEscalation, uuid.UUID(deadline_kept)).status
                    db.session.remove()
                return {str(e): (s, a) for e, s, a in rows}, expiry

            assert wait_until(lambda: state()[0].get(broken, ("", 0))[0] == "failed" and state()[1] == "resolved",
                              timeout=60), (state(), worker.text())
            assert worker.process.poll() is None, worker.text()  # still running
            deliveries, _ = state()
            assert deliveries[broken] == ("failed", 5)
            assert [p.name for p in mail_dir.glob("*.eml") if "founder-fine" in p.read_text()]
            assert not [p for p in mail_dir.glob("*.eml") if "cannot be rendered" in p.read_text()]
            with app.app_context():
                outcomes = db.session.scalars(
                    select(NotificationAttempt.outcome).join(NotificationDelivery,
                                                             NotificationDelivery.id == NotificationAttempt.delivery_id)
                    .where(NotificationDelivery.escalation_id == uuid.UUID(broken))).all()
                db.session.remove()
            assert len(outcomes) == 5 and all("TypeError" in o for o in outcomes)
        finally:
            assert worker.stop() == 0
        log = worker.final_text
        assert log.count("raised on attempt") == 5 and log.count("Traceback") == 1, log
    finally:
        dispose(app)

"""Least privilege for agents (SPEC §15): job-scoped agent tokens.

One parametrised matrix of endpoint × caller on SQLite and PostgreSQL, the scope honoured
by the stream and the long-poll across two real server processes, and the CLI that mints
the tokens.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid

import jwt
import pytest

from conftest import AGENT_JWT_SECRET, AGENT_TOKEN, JWT_SECRET, REPO, GunicornServer, migrate, mint_jwt

from console.auth import mint_agent_jwt
from console.client import ConsoleClient, token_scope


def scoped(job_id: str, founder_id: str, secret: str = AGENT_JWT_SECRET, exp_in: int = 3600, **extra) -> str:
    now = int(time.time())
    return jwt.encode({"role": "agent", "job_id": job_id, "founder_id": founder_id, "iat": now - 120,
                       "exp": now + exp_in, **extra}, secret, algorithm="HS256")


def caller_token(caller: str, job_id: str, founder_id: str) -> str:
    return {
        "orchestrator": lambda: AGENT_TOKEN,
        "scoped own job": lambda: scoped(job_id, founder_id),
        "scoped other job": lambda: scoped(f"{job_id}-other", founder_id),
        "scoped other founder": lambda: scoped(job_id, f"{founder_id}-other"),
        "founder (owner)": lambda: mint_jwt(founder_id),
        "scoped expired": lambda: scoped(job_id, founder_id, exp_in=-60),
        "scoped forged": lambda: scoped(job_id, founder_id, secret="not-the-agent-secret-" + uuid.uuid4().hex),
        "founder-signed role=agent": lambda: scoped(job_id, founder_id, secret=JWT_SECRET, sub=founder_id),
    }[caller]()


CALLERS = ["orchestrator", "scoped own job", "scoped other job", "scoped other founder", "founder (owner)",
           "scoped expired", "scoped forged", "founder-signed role=agent"]
ITEMS, EMPTY = "200 items", "200 empty"  # a list answer, and whether it holds the job's records

# endpoint -> the answer of each caller, in the order of CALLERS (the last three are always 401)
MATRIX = {
    "create": (201, 201, 403, 403, 403),
    "get": (200, 200, 404, 404, 200),
    "get ?wait=0.2": (200, 200, 404, 404, 200),
    "list job escalations": (ITEMS, ITEMS, EMPTY, EMPTY, ITEMS),
    "list founder escalations": (403, 403, 403, 403, ITEMS),
    "resolve": (403, 403, 403, 403, 200),
    "skip": (200, 200, 404, 404, 403),
    "post event": (201, 201, 403, 403, 403),
    "list events": (ITEMS, ITEMS, EMPTY, EMPTY, ITEMS),
    "stream": (200, 200, 404, 404, 200),
}
EXPECTED = {(endpoint, caller): answer
            for endpoint, answers in MATRIX.items()
            for caller, answer in zip(CALLERS, (*answers, 401, 401, 401))}


def request(client, endpoint: str, headers: dict, escalation: dict, ids, escalation_body):
    job, esc = ids.job_id, escalation["id"]
    if endpoint == "create":
        return client.post(f"/api/jobs/{job}/escalations", json=escalation_body(), headers=headers)
    if endpoint == "get":
        return client.get(f"/api/escalations/{esc}", headers=headers)
    if endpoint == "get ?wait=0.2":
        return client.get(f"/api/escalations/{esc}?wait=0.2", headers=headers)
    if endpoint == "list job escalations":
        return client.get(f"/api/jobs/{job}/escalations", headers=headers)
    if endpoint == "list founder escalations":
        return client.get(f"/api/escalations?job_id={job}", headers=headers)
    if endpoint == "resolve":
        return client.post(f"/api/escalations/{esc}/resolve", json={"decision": "skip_feature"}, headers=headers)
    if endpoint == "skip":
        return client.post(f"/api/escalations/{esc}/skip", json={"reason": "fixed"}, headers=headers)
    if endpoint == "post event":
        return client.post(f"/api/jobs/{job}/events", json={"type": "agent.retrying", "founder_id": ids.founder_id,
                                                            "attempt": 1}, headers=headers)
    if endpoint == "list events":
        return client.get(f"/api/jobs/{job}/events", headers=headers)
    assert endpoint == "stream"
    return client.get(f"/api/jobs/{job}/events/stream?after=0", headers=headers)


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("endpoint", list(MATRIX))
def test_the_scope_matrix(client, ids, escalation_body, make_escalation, endpoint, caller):
    escalation = make_escalation()  # by the orchestrator: job ids.job_id, founder ids.founder_id
    headers = {"Authorization": f"Bearer {caller_token(caller, ids.job_id, ids.founder_id)}"}
    expected = EXPECTED[endpoint, caller]
    resp = request(client, endpoint, headers, escalation, ids, escalation_body)
    try:
        status = expected if isinstance(expected, int) else 200
        assert resp.status_code == status, resp.get_data(as_text=True) if endpoint != "stream" else resp.status
        if status == 401:
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        if endpoint == "stream":
            if status == 200:
                assert next(resp.iter_encoded()).startswith(b"retry:")  # the first bytes only
            else:
                assert resp.mimetype == "application/problem+json"
            return
        body = resp.get_json()
        if status >= 400:
            assert resp.mimetype == "application/problem+json" and body["status"] == status
        if isinstance(expected, str):
            items = body if isinstance(body, list) else body["items"]
            assert bool(items) == (expected == ITEMS), items
            if items and endpoint != "list events":
                assert {item["id"] for item in items} == {escalation["id"]}
        if endpoint in ("get", "get ?wait=0.2") and status == 200:
            assert body["id"] == escalation["id"] and body["status"] == "pending"
        if status in (200, 201) and endpoint in ("create", "skip", "resolve"):
            assert body["job_id"] == ids.job_id and body["founder_id"] == ids.founder_id
    finally:
        resp.close()
    # A refused write changed nothing.
    if status >= 400 and endpoint in ("create", "skip", "resolve", "post event"):
        after = client.get(f"/api/jobs/{ids.job_id}/escalations", headers={"Authorization": f"Bearer {AGENT_TOKEN}"})
        assert [(e["id"], e["status"]) for e in after.get_json()] == [(escalation["id"], "pending")]
        events = client.get(f"/api/jobs/{ids.job_id}/events", headers={"Authorization": f"Bearer {AGENT_TOKEN}"})
        assert [e["type"] for e in events.get_json()["items"]] == ["agent.waiting_for_input"]


def test_a_scoped_agent_naming_its_own_founder_for_a_foreign_job_is_refused(client, ids, make_escalation,
                                                                            escalation_body):
    """The token's founder is not the job's owner: nothing is visible, and a write is 409
    (a job has one founder) — the token cannot claim another founder's job."""
    make_escalation()
    other = f"{ids.founder_id}-other"
    headers = {"Authorization": f"Bearer {scoped(ids.job_id, other)}"}
    resp = client.post(f"/api/jobs/{ids.job_id}/escalations", json=escalation_body(founder_id=other), headers=headers)
    assert resp.status_code == 409
    assert client.get(f"/api/jobs/{ids.job_id}/escalations", headers=headers).get_json() == []


def test_malformed_scoped_tokens_are_401(client, ids, make_escalation):
    escalation = make_escalation()
    now = int(time.time())
    for claims in ({"role": "agent", "job_id": ids.job_id, "founder_id": ids.founder_id},  # no exp
                   {"role": "agent", "job_id": ids.job_id, "exp": now + 60},  # no founder_id
                   {"role": "agent", "founder_id": ids.founder_id, "exp": now + 60},  # no job_id
                   {"role": "agent", "job_id": "", "founder_id": ids.founder_id, "exp": now + 60},
                   {"role": "agent", "job_id": 42, "founder_id": ids.founder_id, "exp": now + 60}):
        token = jwt.encode(claims, AGENT_JWT_SECRET, algorithm="HS256")
        resp = client.get(f"/api/escalations/{escalation['id']}", headers={"Authorization": f"Bearer {token}"})
        assert resp.status_code == 401, claims
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    # Signed with the agent secret but without role=agent: checked as a founder token, refused.
    token = jwt.encode({"sub": ids.founder_id, "exp": now + 60}, AGENT_JWT_SECRET, algorithm="HS256")
    assert client.get(f"/api/escalations/{escalation['id']}",
                      headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_a_scoped_token_is_not_a_console_login(client, ids):
    page = client.get("/login")
    csrf = page.get_data(as_text=True).split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    resp = client.post("/login", data={"token": scoped(ids.job_id, ids.founder_id), "csrf_token": csrf})
    assert resp.status_code == 401
    assert client.get("/").status_code in (302, 303)


def test_the_agent_jwt_secret_must_differ_from_the_founder_secret(configured_app):
    with pytest.raises(RuntimeError, match="CONSOLE_AGENT_JWT_SECRET"):
        configured_app(AGENT_JWT_SECRET=JWT_SECRET)


# --- the CLI ------------------------------------------------------------------------------------

def test_agent_token_cli_mints_scoped_tokens(app):
    runner = app.test_cli_runner()
    plain = runner.invoke(args=["agent-token"])
    assert plain.exit_code == 0 and plain.output.strip() == AGENT_TOKEN

    before = int(time.time())
    result = runner.invoke(args=["agent-token", "--job", "job-cli", "--founder", "founder-cli", "--ttl", "120"])
    assert result.exit_code == 0, result.output
    token = result.output.strip()
    claims = jwt.decode(token, AGENT_JWT_SECRET, algorithms=["HS256"])
    assert claims["role"] == "agent" and claims["job_id"] == "job-cli" and claims["founder_id"] == "founder-cli"
    assert before + 120 <= claims["exp"] <= int(time.time()) + 120
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, JWT_SECRET, algorithms=["HS256"])
    assert token_scope(token) == {"job_id": "job-cli", "founder_id": "founder-cli"}
    assert token_scope(AGENT_TOKEN) is None

    default = runner.invoke(args=["agent-token", "--job", "job-cli", "--founder", "founder-cli"])
    exp = jwt.decode(default.output.strip(), AGENT_JWT_SECRET, algorithms=["HS256"])["exp"]
    assert abs(exp - (time.time() + 24 * 3600)) < 60

    for args in (["--job", "job-cli"], ["--founder", "founder-cli"], ["--ttl", "60"],
                 ["--job", "job-cli", "--founder", "founder-cli", "--ttl", "0"],
                 ["--job", "x" * 256, "--founder", "founder-cli"]):
        refused = runner.invoke(args=["agent-token", *args])
        assert refused.exit_code == 2, (args, refused.output)


# --- two real server processes --------------------------------------------------------------------

@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def two_servers(request, tmp_path_factory):
    if request.param == "postgresql":
        scratch = request.getfixturevalue("postgres")
        url = scratch.create("console_scope")
    else:
        scratch, url = None, f"sqlite:///{tmp_path_factory.mktemp('scope') / 'console.db'}"
    migrate(url)
    try:
        with GunicornServer(url, workers=1, CONSOLE_SQLITE_POLL_SECONDS=0.2) as a, \
                GunicornServer(url, workers=2, CONSOLE_SQLITE_POLL_SECONDS=0.2) as b:
            yield a, b
    finally:
        if scratch is not None:
            scratch.drop(url)


@pytest.mark.slow
def test_the_stream_and_the_long_poll_honour_the_scope_across_processes(two_servers, ids):
    from test_realtime import SSE, call, escalate, resolve

    a, b = two_servers
    own, other = scoped(ids.job_id, ids.founder_id), scoped(f"{ids.job_id}-other", ids.founder_id)
    escalation = escalate(a.url, ids.job_id, ids.founder_id)

    # Another job's token: the stream and the long-poll answer like a missing record, at once.
    foreign = SSE(b.url, f"/api/jobs/{ids.job_id}/events/stream?after=0", {"Authorization": f"Bearer {other}"})
    try:
        assert foreign.status == 404
    finally:
        foreign.close()
    started = time.monotonic()
    assert call(b.url, "GET", f"/api/escalations/{escalation['id']}?wait=5", token=other)[0] == 404
    assert time.monotonic() - started < 2

    # The job's own token: on process B it streams and long-polls what process A decides.
    stream = SSE(b.url, f"/api/jobs/{ids.job_id}/events/stream?after=0", {"Authorization": f"Bearer {own}"})
    try:
        assert stream.status == 200
        [waiting] = stream.collect(1, timeout=5)
        assert waiting["event"] == "agent.waiting_for_input"
        answer: dict = {}
        poller = threading.Thread(target=lambda: answer.update(
            zip(("status", "body"), call(b.url, "GET", f"/api/escalations/{escalation['id']}?wait=20", token=own))))
        poller.start()
        time.sleep(0.5)
        assert resolve(a.url, escalation)[0] == 200
        poller.join(timeout=10)
        assert answer["status"] == 200 and answer["body"]["status"] == "resolved"
        [resolved] = stream.collect(1, timeout=5)
        assert resolved["event"] == "agent.escalation_resolved"
    finally:
        stream.close()


@pytest.mark.slow
def test_the_example_agent_runs_on_a_scoped_token_only(two_servers, ids):
    """examples/agent_loop.py with a scoped token and nothing else: its job and founder come
    from the token, and the founder's decision on the other process reaches it."""
    a, b = two_servers
    token = mint_agent_jwt(AGENT_JWT_SECRET, ids.job_id, ids.founder_id, 600)
    process = subprocess.Popen(
        [sys.executable, str(REPO / "examples" / "agent_loop.py"), "--url", a.url, "--decision-timeout", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "CONSOLE_AGENT_TOKEN": token})
    try:
        client = ConsoleClient(b.url, token)
        assert client.scope == {"job_id": ids.job_id, "founder_id": ids.founder_id}
        pending = []
        deadline = time.monotonic() + 30
        while not pending and time.monotonic() < deadline:
            pending = [e for e in client._request("GET", f"/api/jobs/{ids.job_id}/escalations?status=pending")]
            time.sleep(0.1)
        assert pending, "the agent never escalated"
        from test_realtime import resolve

        assert resolve(b.url, pending[0], decision="skip_feature")[0] == 200
        output, _ = process.communicate(timeout=30)
        assert process.returncode == 0, output
        assert "job-scoped token" in output and "skipping payments" in output
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

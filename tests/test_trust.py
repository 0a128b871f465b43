"""Trust (SPEC §16), as an attacker would try it: agent strings that are not data, a job that
changes project, an open redirect after sign-in, payloads that nest or sprawl, callers without
bounds, sessions that outlive their sign-out, an identity provider without an audience, and
demo data in a production database. On SQLite and PostgreSQL; the sessions and the streams also
against real server processes.

(The e-mail and Slack links of point 1 and the worker's isolation of point 2 are in
tests/test_notifications.py and tests/test_worker_processes.py, beside the rest of their channels.)
"""
from __future__ import annotations

import http.client
import http.cookiejar
import json
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import pytest

from conftest import AGENT_JWT_SECRET, GunicornServer, ThreadedServer, make_app, mint_jwt
from console import create_app
from console.auth import mint_agent_jwt
from test_realtime import SSE

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
CONTROL_CHARACTERS = ["\r\nBcc: x@evil.example", "\x00", "\x1b[31m", "\x7f", "\x85", "\u2028", "\u2029", "\t"]


def problem(resp, status: int) -> dict:
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.mimetype == "application/problem+json"
    return resp.get_json()


# --- agent strings are data ------------------------------------------------------------------------

@pytest.mark.parametrize("field", ["session_id", "project_id", "founder_id", "error_type", "error_signature"])
@pytest.mark.parametrize("bad", CONTROL_CHARACTERS)
def test_an_identifier_with_a_control_character_is_422_naming_the_field(client, agent, escalation_body, ids,
                                                                        field, bad):
    body = escalation_body(**{field: f"ok{bad}ok"})
    if field == "error_signature":
        body.pop("error_message")
    body_problem = problem(client.post(f"/api/jobs/{ids.job_id}/escalations", json=body, headers=agent), 422)
    assert [e["field"] for e in body_problem["errors"]] == [field]
    assert client.get(f"/api/jobs/{ids.job_id}/escalations", headers=agent).get_json() == []  # nothing stored


@pytest.mark.parametrize("bad", CONTROL_CHARACTERS[1:])
def test_a_job_id_or_an_event_founder_with_a_control_character_is_422(client, agent, escalation_body, ids, bad):
    job = urllib.parse.quote(f"job{bad}x", safe="")
    assert [e["field"] for e in problem(client.post(f"/api/jobs/{job}/escalations", json=escalation_body(),
                                                    headers=agent), 422)["errors"]] == ["job_id"]
    event = {"type": "agent.build_paused", "founder_id": f"f{bad}"}
    assert [e["field"] for e in problem(client.post(f"/api/jobs/{ids.job_id}/events", json=event, headers=agent),
                                        422)["errors"]] == ["founder_id"]


def test_free_text_keeps_its_newlines_but_not_nul(client, agent, make_escalation, escalation_body, ids):
    kept = make_escalation(plain_english_problem="Line one.\nLine two.\r\n\u2028Three.")
    assert kept["plain_english_problem"] == "Line one.\nLine two.\r\n\u2028Three."
    body = escalation_body(recommended_action="Try\x00this")
    assert [e["field"] for e in problem(client.post(f"/api/jobs/{ids.new('job')}/escalations", json=body,
                                                    headers=agent), 422)["errors"]] == ["recommended_action"]


@pytest.mark.parametrize("depth", [33, 400, 5000])
def test_an_event_payload_nested_deeper_than_32_levels_is_422(client, agent, ids, depth):
    body = '{"type": "agent.build_paused", "founder_id": "%s", "x": %s1%s}' % (ids.founder_id, "[" * depth, "]" * depth)
    resp = client.post(f"/api/jobs/{ids.job_id}/events", data=body, content_type="application/json", headers=agent)
    assert problem(resp, 422)["errors"] == [{"field": "payload", "message": "nests deeper than 32 levels"}]


def test_an_event_payload_of_32_levels_is_stored(client, agent, ids):
    nested: object = "deep"
    for _ in range(31):  # the payload object itself is the first level
        nested = {"k": nested}
    resp = client.post(f"/api/jobs/{ids.job_id}/events", json={"type": "agent.build_paused",
                                                                "founder_id": ids.founder_id, "x": nested},
                       headers=agent)
    assert resp.status_code == 201, resp.get_data(as_text=True)


def test_an_event_payload_of_more_than_10000_values_is_422(client, agent, ids):
    many = {"type": "agent.build_paused", "founder_id": ids.founder_id, "x": [0] * 10_001}
    resp = client.post(f"/api/jobs/{ids.job_id}/events", json=many, headers=agent)
    assert problem(resp, 422)["errors"] == [{"field": "payload", "message": "holds more than 10,000 values"}]


# --- a job has one project --------------------------------------------------------------------------

def test_a_create_naming_another_project_for_the_job_is_409(client, agent, make_escalation, escalation_body, ids):
    make_escalation()
    other = escalation_body(project_id=ids.new("proj"))
    body = problem(client.post(f"/api/jobs/{ids.job_id}/escalations", json=other, headers=agent), 409)
    assert f"belongs to project {ids.project_id!r}" in body["detail"]
    assert len(client.get(f"/api/jobs/{ids.job_id}/escalations", headers=agent).get_json()) == 1
    event = {"type": "agent.build_paused", "founder_id": ids.founder_id, "project_id": ids.new("proj")}
    problem(client.post(f"/api/jobs/{ids.job_id}/events", json=event, headers=agent), 409)


def test_a_job_first_seen_without_a_project_takes_the_first_one_named(client, agent, make_escalation,
                                                                       escalation_body, ids):
    first = {"type": "agent.build_paused", "founder_id": ids.founder_id}
    assert client.post(f"/api/jobs/{ids.job_id}/events", json=first, headers=agent).status_code == 201
    make_escalation()
    other = escalation_body(project_id=ids.new("proj"))
    problem(client.post(f"/api/jobs/{ids.job_id}/escalations", json=other, headers=agent), 409)


def test_a_scoped_agent_cannot_read_another_projects_remembered_guidance(client, agent, founder, escalation_body,
                                                                         ids):
    """The issue's attack: a token scoped to one job names another project and that project's
    error, hoping its rule answers with the guidance (a credential)."""
    shop = ids.new("proj-shop")
    secret_guidance = "Use sk_live_51Habc for the payment provider."
    asked = client.post(f"/api/jobs/{ids.new('job')}/escalations", headers=agent,
                        json=escalation_body(project_id=shop, error_signature="shop-payments", error_message=...))
    assert asked.status_code == 201
    resolved = client.post(f"/api/escalations/{asked.get_json()['id']}/resolve", headers=founder(),
                           json={"decision": "provide_guidance", "guidance": secret_guidance, "remember": True})
    assert resolved.status_code == 200

    blog_job = ids.new("job-blog")
    unbound = {"Authorization": f"Bearer {mint_agent_jwt(AGENT_JWT_SECRET, blog_job, ids.founder_id)}"}
    own = client.post(f"/api/jobs/{blog_job}/escalations", headers=unbound,
                      json=escalation_body(project_id=ids.new("proj-blog")))
    assert own.status_code == 201
    attack = escalation_body(project_id=shop, error_signature="shop-payments", error_message=...)
    refused = problem(client.post(f"/api/jobs/{blog_job}/escalations", headers=unbound, json=attack), 409)
    assert secret_guidance not in json.dumps(refused)

    bound_job = ids.new("job-blog")
    bound = {"Authorization": "Bearer " + mint_agent_jwt(AGENT_JWT_SECRET, bound_job, ids.founder_id,
                                                          project_id="proj-blog")}
    forbidden = problem(client.post(f"/api/jobs/{bound_job}/escalations", headers=bound, json=attack), 403)
    assert "scoped to project 'proj-blog'" in forbidden["detail"] and secret_guidance not in json.dumps(forbidden)
    allowed = client.post(f"/api/jobs/{bound_job}/escalations", headers=bound,
                          json=escalation_body(project_id="proj-blog"))
    assert allowed.status_code == 201
    event = {"type": "agent.build_paused", "founder_id": ids.founder_id, "project_id": shop}
    problem(client.post(f"/api/jobs/{bound_job}/events", headers=bound, json=event), 403)


def test_agent_token_project_binds_the_printed_token(app):
    import jwt

    runner = app.test_cli_runner()
    result = runner.invoke(args=["agent-token", "--job", "job-1", "--founder", "f-1", "--project", "proj-1"])
    assert result.exit_code == 0, result.output
    claims = jwt.decode(result.output.strip(), AGENT_JWT_SECRET, algorithms=["HS256"])
    assert (claims["job_id"], claims["founder_id"], claims["project_id"]) == ("job-1", "f-1", "proj-1")
    assert runner.invoke(args=["agent-token", "--project", "proj-1"]).exit_code == 2
    assert runner.invoke(args=["agent-token", "--job", "j", "--founder", "f", "--project", "p\nq"]).exit_code == 2


# --- sign-in: no open redirect ----------------------------------------------------------------------

@pytest.mark.parametrize("target", ["/\t/evil.example", "//evil.example", "/\\evil.example", "https://evil.example",
                                    "/\r\n/evil.example", "\t//evil.example", "/%09/x", "javascript:alert(1)"])
def test_next_is_used_only_as_a_path_on_this_site(app, ids, target):
    browser = app.test_client()
    page = browser.get("/login?" + urllib.parse.urlencode({"next": target}))
    token = CSRF.search(page.get_data(as_text=True)).group(1)
    resp = browser.post("/login", data={"csrf_token": token, "token": mint_jwt(ids.founder_id), "next": target})
    assert resp.status_code == 303
    location = resp.headers["Location"]
    assert location.startswith("/") and not location.startswith(("//", "/\\")), location
    assert "evil.example" not in location or target == "/%09/x"
    if target == "/%09/x":
        assert location == "/%09/x"  # a percent-encoded tab is a path character, not a way out


def test_next_keeps_a_local_path_with_its_query(app, ids):
    browser = app.test_client()
    token = CSRF.search(browser.get("/login").get_data(as_text=True)).group(1)
    resp = browser.post("/login", data={"csrf_token": token, "token": mint_jwt(ids.founder_id),
                                        "next": "/jobs/j-1?x=1"})
    assert resp.headers["Location"] == "/jobs/j-1?x=1"


# --- sessions end on the server -----------------------------------------------------------------------

def _signed_in(app, founder_id):
    browser = app.test_client()
    token = CSRF.search(browser.get("/login").get_data(as_text=True)).group(1)
    assert browser.post("/login", data={"csrf_token": token, "token": mint_jwt(founder_id)}).status_code == 303
    return browser


def _copy(app, browser):
    """Another client holding the same session cookie (a copied cookie)."""
    other = app.test_client()
    cookie = browser.get_cookie("console_session")
    other.set_cookie("console_session", cookie.value)
    return other


def test_a_session_cookie_replayed_after_logout_reaches_login(app, ids):
    browser = _signed_in(app, ids.founder_id)
    thief = _copy(app, browser)
    assert thief.get("/").status_code == 200
    csrf = CSRF.search(browser.get("/").get_data(as_text=True)).group(1)
    assert browser.post("/logout", data={"csrf_token": csrf}).status_code == 303
    replayed = thief.get("/")
    assert replayed.status_code == 303 and replayed.headers["Location"].startswith("/login")
    assert thief.get("/settings").status_code == 303


def test_sign_out_everywhere_ends_every_session_of_the_founder_only(app, ids):
    laptop, phone = _signed_in(app, ids.founder_id), _signed_in(app, ids.founder_id)
    someone_else = _signed_in(app, ids.new("founder"))
    settings = laptop.get("/settings").get_data(as_text=True)
    assert "Sign out everywhere" in settings
    csrf = CSRF.search(settings).group(1)
    resp = laptop.post("/logout/everywhere", data={"csrf_token": csrf})
    assert resp.status_code == 303 and resp.headers["Location"] == "/login?signed_out=everywhere"
    assert "You are signed out on every device." in laptop.get(resp.headers["Location"]).get_data(as_text=True)
    for browser in (laptop, phone):
        assert browser.get("/").status_code == 303
    assert someone_else.get("/").status_code == 200
    assert _signed_in(app, ids.founder_id).get("/").status_code == 200  # signing in again works


def test_logout_and_its_replay_across_real_server_processes(postgres, tmp_path):
    """Two gunicorn processes sharing PostgreSQL: a cookie signed out on one is refused by both."""
    from conftest import migrate

    url = postgres.create("console_trust")
    try:
        migrate(url)
        with GunicornServer(url) as first, GunicornServer(url) as second:
            jar = http.cookiejar.CookieJar()
            opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar), _NoRedirects)
            page = opener.open(first.url + "/login").read().decode()
            data = urllib.parse.urlencode({"csrf_token": CSRF.search(page).group(1),
                                           "token": mint_jwt("founder-procs")}).encode()
            assert _status(opener, first.url + "/login", data) == 303
            cookie = next(c.value for c in jar if c.name == "console_session")
            assert _get_status(second.url + "/", cookie) == 200
            inbox = opener.open(first.url + "/").read().decode()
            logout = urllib.parse.urlencode({"csrf_token": CSRF.search(inbox).group(1)}).encode()
            assert _status(opener, first.url + "/logout", logout) == 303
            assert _get_status(first.url + "/", cookie) == 303
            assert _get_status(second.url + "/", cookie) == 303
    finally:
        postgres.drop(url)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def _status(opener, url: str, data: bytes | None = None) -> int:
    try:
        return opener.open(url, data).status
    except urllib.error.HTTPError as error:
        return error.code


def _get_status(url: str, cookie: str) -> int:
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request("GET", parts.path, headers={"Cookie": f"console_session={cookie}"})
        return conn.getresponse().status
    finally:
        conn.close()


# --- bounds on one caller -----------------------------------------------------------------------------

def test_past_max_pending_per_job_a_create_is_429_but_a_duplicate_is_an_occurrence(configured_app, agent,
                                                                                   escalation_body, ids):
    client = configured_app(MAX_PENDING_PER_JOB=3).test_client()
    made = []
    for n in range(3):
        resp = client.post(f"/api/jobs/{ids.job_id}/escalations", headers=agent,
                           json=escalation_body(error_message=f"KeyError: number {'abc'[n]}"))
        assert resp.status_code == 201
        made.append(resp.get_json())
    refused = client.post(f"/api/jobs/{ids.job_id}/escalations", headers=agent,
                          json=escalation_body(error_message="KeyError: one too many"))
    body = problem(refused, 429)
    assert refused.headers["Retry-After"] == "60" and "CONSOLE_MAX_PENDING_PER_JOB" in body["detail"]
    again = client.post(f"/api/jobs/{ids.job_id}/escalations", headers=agent,
                        json=escalation_body(error_message="KeyError: number a"))
    assert again.status_code == 200 and again.get_json()["occurrences"] == 2
    assert len(client.get(f"/api/jobs/{ids.job_id}/escalations", headers=agent).get_json()) == 3
    assert client.post(f"/api/escalations/{made[0]['id']}/skip", headers=agent, json={}).status_code == 200
    assert client.post(f"/api/jobs/{ids.job_id}/escalations", headers=agent,
                       json=escalation_body(error_message="KeyError: one too many")).status_code == 201


def test_concurrent_creates_never_pass_max_pending_per_job(configured_app, agent, escalation_body, ids, dialect):
    app = configured_app(MAX_PENDING_PER_JOB=5)
    statuses: list[int] = []
    lock = threading.Barrier(12)

    def create(n: int) -> None:
        client = app.test_client()
        body = escalation_body(error_message=f"KeyError: {'abcdefghijkl'[n]} went missing")
        lock.wait()
        statuses.append(client.post(f"/api/jobs/{ids.job_id}/escalations", headers=agent, json=body).status_code)

    threads = [threading.Thread(target=create, args=(n,)) for n in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(statuses) == [201] * 5 + [429] * 7
    pending = app.test_client().get(f"/api/jobs/{ids.job_id}/escalations?status=pending", headers=agent).get_json()
    assert len(pending) == 5


def test_the_job_list_is_paged_with_a_link_header(client, agent, make_escalation, ids):
    made = [make_escalation(error_message=f"KeyError: page {letter}") for letter in "abcde"]
    newest_first = [m["id"] for m in reversed(made)]
    seen, path = [], f"/api/jobs/{ids.job_id}/escalations?limit=2"
    while path:
        resp = client.get(path, headers=agent)
        assert resp.status_code == 200 and isinstance(resp.get_json(), list)
        seen += [e["id"] for e in resp.get_json()]
        link = resp.headers.get("Link")
        if link is None:
            break
        match = re.fullmatch(r'<(/api/jobs/[^>]+)>; rel="next"', link)
        assert match, link
        path = match.group(1)
    assert seen == newest_first
    whole = client.get(f"/api/jobs/{ids.job_id}/escalations", headers=agent)
    assert [e["id"] for e in whole.get_json()] == newest_first and "Link" not in whole.headers
    for bad in ("limit=0", "limit=501", "limit=x", "cursor=not-a-cursor"):
        problem(client.get(f"/api/jobs/{ids.job_id}/escalations?{bad}", headers=agent), 422)


def test_past_max_streams_per_token_a_stream_or_long_poll_is_429(database_url, ids):
    app = make_app(database_url, MAX_STREAMS_PER_TOKEN=2, SSE_HEARTBEAT_SECONDS=0.5)
    from conftest import AGENT_TOKEN, dispose

    headers = {"Authorization": f"Bearer {AGENT_TOKEN}"}
    other = {"Authorization": "Bearer " + mint_agent_jwt(AGENT_JWT_SECRET, ids.job_id, ids.founder_id)}
    try:
        with ThreadedServer(app) as server:
            client = app.test_client()
            created = client.post(f"/api/jobs/{ids.job_id}/escalations", headers=headers, json={
                "session_id": "s", "project_id": "p", "founder_id": ids.founder_id, "error_type": "E",
                "plain_english_problem": "Stuck.", "recommended_action": "Skip.", "error_signature": "sig"})
            assert created.status_code == 201
            path = f"/api/jobs/{ids.job_id}/events/stream"
            streams = [SSE(server.url, path, headers) for _ in range(2)]
            assert [s.status for s in streams] == [200, 200]
            third = SSE(server.url, path, headers)
            assert third.status == 429 and third.resp.getheader("Retry-After") == "5"
            assert "CONSOLE_MAX_STREAMS_PER_TOKEN" in json.loads(third.resp.read())["detail"]
            third.close()
            poll = client.get(f"/api/escalations/{created.get_json()['id']}?wait=1", headers=headers)
            assert poll.status_code == 429
            assert SSE(server.url, path, other).status == 200  # another credential has slots of its own
            streams[0].close()
            deadline = time.monotonic() + 10
            while True:  # the server lets the closed stream go at its next heartbeat
                again = SSE(server.url, path, headers)
                if again.status == 200 or time.monotonic() > deadline:
                    break
                again.close()
                time.sleep(0.2)
            assert again.status == 200
    finally:
        dispose(app)


# --- smaller points ---------------------------------------------------------------------------------

def test_an_identity_provider_without_an_audience_refuses_to_start(tmp_path):
    with pytest.raises(RuntimeError, match="Set CONSOLE_JWT_AUDIENCE"):
        create_app({"SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'idp.db'}", "SECRET_KEY": "k" * 32,
                    "AGENT_TOKEN": "a" * 32, "JWKS_URL": "https://id.example/.well-known/jwks.json"})


def test_demo_data_goes_into_postgresql_only_when_the_operator_agrees(configured_app, dialect, monkeypatch):
    if dialect != "postgresql":
        pytest.skip("the embedded SQLite database is the demo's own")
    import console.cli

    app = configured_app()
    founder_id = f"founder-demo-{uuid.uuid4().hex[:8]}"
    client = app.test_client()
    headers = {"Authorization": f"Bearer {mint_jwt(founder_id)}"}
    monkeypatch.setattr(console.cli, "_interactive", lambda: True)  # an operator at a terminal
    refused = app.test_cli_runner().invoke(args=["demo", "--founder", founder_id], input="n\n")
    assert refused.exit_code == 1 and "Nothing was written" in refused.output
    assert client.get("/api/escalations", headers=headers).get_json()["items"] == []
    loaded = app.test_cli_runner().invoke(args=["demo", "--founder", founder_id, "--yes"])
    assert loaded.exit_code == 0, loaded.output
    assert client.get("/api/escalations", headers=headers).get_json()["items"]

"""The JSON API (SPEC §6) through Flask's test client, on SQLite and PostgreSQL."""
import time
import uuid

import pytest

from conftest import AGENT_TOKEN, mint_jwt


def problem(resp, status):
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.mimetype == "application/problem+json"
    body = resp.get_json()
    assert body["status"] == status and body["title"] and body["detail"]
    return body


def fields_named(body):
    return {e["field"] for e in body["errors"]}


def job_events(client, job_id):
    return client.get(f"/api/jobs/{job_id}/events?limit=500",
                      headers={"Authorization": f"Bearer {AGENT_TOKEN}"}).get_json()["items"]


# --- create -----------------------------------------------------------------------------------

def test_create_returns_201_with_every_field_and_emits_waiting_for_input(make_escalation, client, ids):
    esc = make_escalation()
    assert esc["status"] == "pending" and esc["occurrences"] == 1
    assert esc["error_signature"].startswith(f"{ids.project_id}:KeyError:")
    assert esc["created_at"].endswith("+00:00")
    [event] = job_events(client, ids.job_id)
    assert event["type"] == "agent.waiting_for_input"
    assert event["escalation_id"] == esc["id"] and event["plain_english_problem"] == esc["plain_english_problem"]


def test_duplicate_create_counts_occurrences_without_a_new_event(client, agent, escalation_body, ids):
    body = escalation_body()
    url = f"/api/jobs/{ids.job_id}/escalations"
    first = client.post(url, json=body, headers=agent)
    second = client.post(url, json=body, headers=agent)
    assert (first.status_code, second.status_code) == (201, 200)
    assert second.get_json()["id"] == first.get_json()["id"]
    assert second.get_json()["occurrences"] == 2
    assert second.get_json()["last_seen_at"] >= first.get_json()["last_seen_at"]
    assert len(job_events(client, ids.job_id)) == 1


def test_the_raw_error_message_is_never_stored(client, make_escalation, ids):
    esc = make_escalation(error_message="ValueError: secret-token-abcdefgh leaked")
    assert "secret-token" not in str(esc) and "secret-token" not in str(job_events(client, ids.job_id))


def test_create_in_a_job_of_another_founder_is_409(make_escalation, ids, client, agent, escalation_body):
    make_escalation()
    resp = client.post(f"/api/jobs/{ids.job_id}/escalations", headers=agent,
                       json=escalation_body(founder_id=ids.new("founder")))
    problem(resp, 409)
    assert len(client.get(f"/api/jobs/{ids.job_id}/escalations", headers=agent).get_json()) == 1


@pytest.mark.parametrize("change,field", [
    ({"session_id": ...}, "session_id"),
    ({"plain_english_problem": "   "}, "plain_english_problem"),
    ({"project_id": "p" * 101}, "project_id"),
    ({"error_type": "e" * 101}, "error_type"),
    ({"founder_id": "f" * 256}, "founder_id"),
    ({"recommended_action": "r" * 10_001}, "recommended_action"),
    ({"attempts_summary": ["a"] * 51}, "attempts_summary"),
    ({"attempts_summary": [1, 2]}, "attempts_summary.0"),
    ({"options": [{"value": "a b", "label": "x"}]}, "options.0.value"),
    ({"options": [{"value": "a", "label": "x"}, {"value": "a", "label": "y"}]}, "options"),
    ({"options": [{"value": f"o{i}", "label": "x"} for i in range(11)]}, "options"),
    ({"options": [{"id": "a", "label": "x"}]}, "options.0.value"),  # the old frontend's field name
    ({"error_message": ..., "error_signature": ...}, "error_message"),
    ({"error_signature": "mine"}, "error_message"),  # both given
])
def test_invalid_create_is_422_naming_the_field_and_stores_nothing(client, agent, escalation_body, ids, change, field):
    body = problem(client.post(f"/api/jobs/{ids.job_id}/escalations", json=escalation_body(**change),
                               headers=agent), 422)
    assert field in fields_named(body), body["errors"]
    assert client.get(f"/api/jobs/{ids.job_id}/escalations", headers=agent).get_json() == []
    assert job_events(client, ids.job_id) == []


def test_job_id_longer_than_255_is_422(client, agent, escalation_body):
    body = problem(client.post(f"/api/jobs/{'j' * 256}/escalations", json=escalation_body(), headers=agent), 422)
    assert "job_id" in fields_named(body)


@pytest.mark.parametrize("content,content_type,status", [
    (b'{"session_id": ', "application/json", 400),
    (b"[1, 2]", "application/json", 400),
    (b"", "application/json", 400),
    (b"session_id=x", "application/x-www-form-urlencoded", 415),
])
def test_bodies_that_are_not_a_json_object_are_rejected(client, agent, ids, content, content_type, status):
    problem(client.post(f"/api/jobs/{ids.job_id}/escalations", data=content,
                        headers={**agent, "Content-Type": content_type}), status)


def test_body_over_256_kib_is_413(client, agent, escalation_body, ids):
    problem(client.post(f"/api/jobs/{ids.job_id}/escalations",
                        json=escalation_body(plain_english_problem="x" * 300_000), headers=agent), 413)


# --- auth -------------------------------------------------------------------------------------

@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": "Bearer"},
    {"Authorization": "Token abc"},
    {"Authorization": "Bearer not.a.jwt"},
    {"Authorization": f"Bearer {mint_jwt('f', exp_in=-300)}"},
    {"Authorization": f"Bearer {mint_jwt('f', exp_in=None)}"},
    {"Authorization": f"Bearer {mint_jwt(None)}"},
    {"Authorization": f"Bearer {mint_jwt('f', secret='another-secret-0123456789abcdef0123456789')}"},
    {"Authorization": f"Bearer {mint_jwt('f', nbf=int(time.time()) + 600)}"},
    {"Authorization": f"Bearer {AGENT_TOKEN}x"},
], ids=["none", "empty", "scheme", "garbage", "expired", "no-exp", "no-sub", "bad-signature", "nbf", "agent-typo"])
def test_bad_credentials_are_401_with_www_authenticate(client, headers):
    resp = client.get("/api/escalations", headers=headers)
    problem(resp, 401)
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")


def test_agent_may_not_resolve_and_founder_may_not_create_skip_or_post_events(client, agent, founder, make_escalation,
                                                                              escalation_body, ids):
    esc = make_escalation()
    problem(client.post(f"/api/escalations/{esc['id']}/resolve", json={"decision": "skip_feature"}, headers=agent), 403)
    problem(client.post(f"/api/jobs/{ids.job_id}/escalations", json=escalation_body(), headers=founder()), 403)
    problem(client.post(f"/api/escalations/{esc['id']}/skip", json={}, headers=founder()), 403)
    problem(client.post(f"/api/jobs/{ids.job_id}/events", json={"type": "agent.thinking", "founder_id": ids.founder_id},
                        headers=founder()), 403)
    problem(client.get("/api/escalations", headers=agent), 403)
    assert client.get(f"/api/escalations/{esc['id']}", headers=agent).get_json()["status"] == "pending"


def test_issuer_and_audience_are_checked_when_configured(configured_app):
    app = configured_app(JWT_ISSUER="https://id.example", JWT_AUDIENCE="console")
    client = app.test_client()
    good = mint_jwt("f", iss="https://id.example", aud="console")
    assert client.get("/api/escalations", headers={"Authorization": f"Bearer {good}"}).status_code == 200
    for claims in ({"iss": "https://evil.example", "aud": "console"}, {"iss": "https://id.example", "aud": "other"}, {}):
        token = mint_jwt("f", **claims)
        assert client.get("/api/escalations", headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_rs256_tokens_verify_with_the_configured_public_key(configured_app):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    import jwt

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    client = configured_app(JWT_PUBLIC_KEY=public_pem, JWT_AUDIENCE="console").test_client()
    now = int(time.time())
    token = jwt.encode({"sub": "f-rsa", "exp": now + 60, "iat": now, "aud": "console"}, key, algorithm="RS256")
    assert client.get("/api/escalations", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    # a token the identity provider issued for another app does not sign in here (SPEC §16)
    elsewhere = jwt.encode({"sub": "f-rsa", "exp": now + 60, "iat": now, "aud": "another-app"}, key, algorithm="RS256")
    assert client.get("/api/escalations", headers={"Authorization": f"Bearer {elsewhere}"}).status_code == 401
    # the public key used as an HMAC secret (algorithm confusion) is refused
    forged = jwt.encode({"sub": "f-rsa", "exp": now + 60}, "x" * 32, algorithm="HS256", headers={"alg": "HS256"})
    assert client.get("/api/escalations", headers={"Authorization": f"Bearer {forged}"}).status_code == 401


# --- read -------------------------------------------------------------------------------------

def test_foreign_escalation_answers_exactly_like_a_missing_one(client, founder, make_escalation, ids):
    esc = make_escalation()
    intruder = founder(ids.new("founder"))
    foreign = problem(client.get(f"/api/escalations/{esc['id']}", headers=intruder), 404)
    missing_id = str(uuid.uuid4())
    missing = problem(client.get(f"/api/escalations/{missing_id}", headers=intruder), 404)
    assert foreign["detail"].replace(esc["id"], "X") == missing["detail"].replace(missing_id, "X")
    assert client.get(f"/api/jobs/{ids.job_id}/escalations", headers=intruder).get_json() == []
    assert client.get(f"/api/jobs/{ids.job_id}/events", headers=intruder).get_json()["items"] == []


@pytest.mark.parametrize("bad_id", ["nope", "123", "%00", "' OR 1=1 --"])
def test_malformed_ids_are_404(client, agent, bad_id):
    problem(client.get(f"/api/escalations/{bad_id}", headers=agent), 404)
    problem(client.post(f"/api/escalations/{bad_id}/skip", json={}, headers=agent), 404)


def test_inbox_pages_with_a_cursor_newest_first(client, founder, make_escalation, ids):
    created = [make_escalation(job_id=ids.new("job"))["id"] for _ in range(5)]
    seen, cursor = [], None
    for _ in range(5):
        resp = client.get("/api/escalations", query_string={"limit": 2, **({"cursor": cursor} if cursor else {})},
                          headers=founder()).get_json()
        seen += [e["id"] for e in resp["items"]]
        cursor = resp["next_cursor"]
        if not cursor:
            break
    assert seen == list(reversed(created))


@pytest.mark.parametrize("query", [{"limit": 0}, {"limit": 201}, {"limit": "x"}, {"status": "open"},
                                   {"cursor": "garbage!"}, {"cursor": "WzEsMl0"}])
def test_inbox_bad_query_is_422(client, founder, query):
    problem(client.get("/api/escalations", query_string=query, headers=founder()), 422)


@pytest.mark.parametrize("query", [{"after": -1}, {"after": "x"}, {"limit": 0}, {"limit": 501}])
def test_events_bad_query_is_422(client, agent, ids, query):
    problem(client.get(f"/api/jobs/{ids.job_id}/events", query_string=query, headers=agent), 422)


@pytest.mark.parametrize("wait", ["0", "56", "-3", "soon"])
def test_wait_out_of_range_is_422(client, agent, make_escalation, wait):
    esc = make_escalation()
    problem(client.get(f"/api/escalations/{esc['id']}?wait={wait}", headers=agent), 422)


# --- resolve and skip ---------------------------------------------------------------------------

def test_resolve_then_identical_retry_is_200_and_a_different_one_409(client, founder, make_escalation, ids):
    esc = make_escalation()
    url = f"/api/escalations/{esc['id']}/resolve"
    first = client.post(url, json={"decision": "provide_guidance", "guidance": "  Use the v2 API  "}, headers=founder())
    assert first.status_code == 200 and first.get_json()["founder_guidance"] == "Use the v2 API"
    again = client.post(url, json={"decision": "provide_guidance", "guidance": "Use the v2 API"}, headers=founder())
    assert again.status_code == 200 and again.get_json()["resolved_at"] == first.get_json()["resolved_at"]
    conflict = problem(client.post(url, json={"decision": "skip_feature"}, headers=founder()), 409)
    assert conflict["escalation"]["founder_decision"] == "provide_guidance"
    resolved = [e for e in job_events(client, ids.job_id) if e["type"] == "agent.escalation_resolved"]
    assert [(e["resolution"], e["guidance"], e["status"]) for e in resolved] == \
        [("provide_guidance", "Use the v2 API", "resolved")]


@pytest.mark.parametrize("body,field", [
    ({"decision": "launch_rockets"}, "decision"),
    ({"decision": ""}, "decision"),
    ({"guidance": "hm"}, "decision"),
    ({"decision": 3}, "decision"),
    ({"decision": "d" * 256}, "decision"),
    ({"decision": "provide_guidance", "guidance": " \n "}, "guidance"),
    ({"decision": "skip_feature", "guidance": "g" * 10_001}, "guidance"),
])
def test_invalid_resolve_is_422_and_changes_nothing(client, founder, agent, make_escalation, ids, body, field):
    esc = make_escalation()
    result = problem(client.post(f"/api/escalations/{esc['id']}/resolve", json=body, headers=founder()), 422)
    assert field in fields_named(result)
    assert client.get(f"/api/escalations/{esc['id']}", headers=agent).get_json()["status"] == "pending"
    assert [e["type"] for e in job_events(client, ids.job_id)] == ["agent.waiting_for_input"]


def test_option_marked_requires_guidance_needs_guidance(client, founder, make_escalation):
    esc = make_escalation(options=[{"value": "custom", "label": "Custom", "requires_guidance": True}])
    url = f"/api/escalations/{esc['id']}/resolve"
    problem(client.post(url, json={"decision": "custom"}, headers=founder()), 422)
    assert client.post(url, json={"decision": "custom", "guidance": "Postgres"}, headers=founder()).status_code == 200


def test_skip_then_skip_again_is_200_with_one_event_and_resolve_after_is_409(client, agent, founder, make_escalation, ids):
    esc = make_escalation()
    url = f"/api/escalations/{esc['id']}/skip"
    assert client.post(url, json={"reason": "went away"}, headers=agent).get_json()["status"] == "skipped"
    assert client.post(url, headers=agent).status_code == 200
    resolved = [e for e in job_events(client, ids.job_id) if e["type"] == "agent.escalation_resolved"]
    assert [(e["status"], e["resolution"], e["reason"]) for e in resolved] == [("skipped", None, "went away")]
    problem(client.post(f"/api/escalations/{esc['id']}/resolve", json={"decision": "skip_feature"},
                        headers=founder()), 409)


def test_every_escalation_request_runs_on_a_pool_of_one_connection(configured_app, database_url, agent, founder,
                                                                     escalation_body, ids):
    """Reads borrow a connection per statement, writes hold one for their transaction, and a
    read inside a write (the 409 path) runs on the write's connection: never two at once,
    which on a one-connection pool would time out as 503."""
    from console.config import engine_options

    app = configured_app(SQLALCHEMY_ENGINE_OPTIONS={**engine_options(database_url), "pool_size": 1,
                                                     "max_overflow": 0, "pool_timeout": 1})
    client = app.test_client()
    created = client.post(f"/api/jobs/{ids.job_id}/escalations", json=escalation_body(), headers=agent)
    assert created.status_code == 201, created.get_data(as_text=True)
    url = f"/api/escalations/{created.get_json()['id']}"
    assert client.get(url, headers=founder()).status_code == 200
    assert client.get(f"/api/jobs/{ids.job_id}/escalations", headers=founder()).status_code == 200
    assert client.get("/api/escalations", headers=founder()).status_code == 200
    assert client.post(url + "/resolve", json={"decision": "skip_feature"}, headers=founder()).status_code == 200
    assert client.post(url + "/resolve", json={"decision": "skip_feature"}, headers=founder()).status_code == 200
    problem(client.post(url + "/resolve", json={"decision": "simpler_version"}, headers=founder()), 409)
    problem(client.post(url + "/skip", headers=agent), 409)
    assert client.get(f"/api/jobs/{ids.job_id}/events", headers=agent).status_code == 200


# --- events ---------------------------------------------------------------------------------------

def test_agent_events_round_trip_in_id_order(client, agent, founder, ids):
    url = f"/api/jobs/{ids.job_id}/events"
    posted = [client.post(url, json={"type": "agent.retrying", "founder_id": ids.founder_id, "project_id": ids.project_id,
                                     "attempt": i, "error_type": "KeyError"}, headers=agent) for i in range(3)]
    assert all(p.status_code == 201 for p in posted)
    listed = client.get(url, headers=founder()).get_json()
    assert [e["attempt"] for e in listed["items"]] == [0, 1, 2]
    assert listed["next_after"] == listed["items"][-1]["id"]
    assert listed["items"][0]["project_id"] == ids.project_id
    page = client.get(url, query_string={"after": listed["items"][0]["id"], "limit": 1}, headers=founder()).get_json()
    assert [e["attempt"] for e in page["items"]] == [1]


@pytest.mark.parametrize("body,field", [
    ({"type": "agent.waiting_for_input"}, "type"),
    ({"type": "agent.escalation_resolved"}, "type"),
    ({"type": "agent.made_up"}, "type"),
    ({"type": "agent.thinking", "id": 5}, "payload"),
    ({"type": "agent.thinking", "timestamp": "now"}, "payload"),
    ({"type": "agent.thinking", "blob": "x" * 17_000}, "payload"),
])
def test_invalid_events_are_422_and_not_stored(client, agent, ids, body, field):
    resp = client.post(f"/api/jobs/{ids.job_id}/events", json={"founder_id": ids.founder_id, **body}, headers=agent)
    assert field in fields_named(problem(resp, 422))
    assert job_events(client, ids.job_id) == []


def test_event_for_a_job_of_another_founder_is_409(client, agent, make_escalation, ids):
    make_escalation()
    resp = client.post(f"/api/jobs/{ids.job_id}/events", json={"type": "agent.thinking", "founder_id": "someone-else"},
                       headers=agent)
    problem(resp, 409)


# --- the rest ---------------------------------------------------------------------------------------

def test_unknown_route_and_method_are_problem_details(client, agent):
    problem(client.get("/api/nothing-here", headers=agent), 404)
    resp = client.delete(f"/api/escalations/{uuid.uuid4()}", headers=agent)
    problem(resp, 405)
    assert "GET" in resp.headers["Allow"]


def test_healthz_and_openapi_document_every_api_route(client, app):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    doc = client.get("/api/openapi.json").get_json()
    assert doc["openapi"].startswith("3.1")
    documented = {(path, method) for path, item in doc["paths"].items() for method in item}
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/api/") and rule.endpoint != "openapi":
            path = rule.rule.replace("<", "{").replace(">", "}")
            for method in rule.methods - {"HEAD", "OPTIONS"}:
                assert (path, method.lower()) in documented, (path, method)
    assert "EscalationResponse" in doc["components"]["schemas"]


def test_cors_is_off_by_default_and_allows_configured_origins(configured_app):
    plain = configured_app().test_client()
    assert "Access-Control-Allow-Origin" not in plain.get("/healthz", headers={"Origin": "https://app.example"}).headers
    client = configured_app(CORS_ORIGINS="https://app.example").test_client()
    resp = client.options("/api/escalations", headers={"Origin": "https://app.example",
                                                       "Access-Control-Request-Method": "GET",
                                                       "Access-Control-Request-Headers": "Authorization"})
    assert resp.headers.get("Access-Control-Allow-Origin") == "https://app.example"
    other = client.get("/api/escalations", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers

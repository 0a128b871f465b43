"""The API against its own OpenAPI document (GET /api/openapi.json), with Schemathesis.

For every documented operation, as a founder (a JWT) and as the agent (the agent token),
Schemathesis generates requests from the document — valid ones and, where the operation
has inputs, invalid ones — and checks each response: never a 5xx, a status/content type the
document declares for it, and a body that matches the declared schema. It runs on both
databases through the WSGI app (no sockets).

Random ids mostly answer 404 or []: so that the records' own responses (an escalation, a
409 with the current record, a page of events) are checked too, about half of the requests
target seeded records of one founder's job (pending, resolved, skipped; with and without
options).

Not excluded, but bounded:
* `?wait=S` long-polls while an escalation is pending: the seeded ids given to the GET
  operation are settled ones (which answer at once), and random ids answer 404 at once.
* the SSE stream (`/api/jobs/{job_id}/events/stream`) is held open by the server for
  SSE_MAX_STREAM_SECONDS; the test lowers that to a fraction of a second, so each streamed
  response is complete (replay, then the end) and quick.
"""
from __future__ import annotations

import uuid
from types import SimpleNamespace

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import content_type_conformance, not_a_server_error, response_schema_conformance

from conftest import AGENT_TOKEN, DEFAULT_OPTIONS, mint_jwt
from console.openapi import OPERATIONS

MAX_EXAMPLES = 25  # per operation and caller
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]
DOCUMENTED = [(method.upper(), path) for method, path, *_ in OPERATIONS] + [("GET", "/healthz")]

# When a failing case holds long strings, Hypothesis warns that its report is large; the
# report is what we want to read, so that one warning is not turned into the error.
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr:hypothesis.errors.HypothesisWarning")


@pytest.fixture(scope="module")
def api_schema(app):
    return schemathesis.openapi.from_wsgi("/api/openapi.json", app)


@pytest.fixture(scope="module")
def world(app):
    """One founder's job with an escalation in every state, and an event."""
    client = app.test_client()
    founder_id, job_id = f"founder-{uuid.uuid4().hex[:12]}", f"job-{uuid.uuid4().hex[:12]}"
    agent = {"Authorization": f"Bearer {AGENT_TOKEN}"}
    founder = {"Authorization": f"Bearer {mint_jwt(founder_id)}"}

    def create(options=DEFAULT_OPTIONS) -> str:
        resp = client.post(f"/api/jobs/{job_id}/escalations", headers=agent, json={
            "session_id": "sess-schemathesis", "project_id": "proj-schemathesis", "founder_id": founder_id,
            "error_type": "KeyError", "plain_english_problem": "The signup page cannot find the user.",
            "recommended_action": "Build it without the lookup.", "attempts_summary": ["Retried"],
            "options": options, "error_signature": f"schemathesis:{uuid.uuid4().hex}"})
        assert resp.status_code == 201, resp.get_data(as_text=True)
        return resp.get_json()["id"]

    pending = [create() for _ in range(3)]
    any_decision = create(options=[])  # the first decision resolves it; later ones get 409
    resolved, skipped = create(), create()
    assert client.post(f"/api/escalations/{resolved}/resolve", headers=founder,
                       json={"decision": "skip_feature"}).status_code == 200
    assert client.post(f"/api/escalations/{skipped}/skip", headers=agent, json={"reason": "gone"}).status_code == 200
    assert client.post(f"/api/jobs/{job_id}/events", headers=agent,
                       json={"type": "agent.retrying", "founder_id": founder_id, "attempt": 2}).status_code == 201
    return SimpleNamespace(founder_id=founder_id, job_id=job_id, pending=pending, any_decision=any_decision,
                           resolved=resolved, skipped=skipped)


def seeded_path_parameters(method: str, path: str, world) -> list[dict]:
    if "{job_id}" in path:
        return [{"job_id": world.job_id}]
    if path == "/api/escalations/{escalation_id}":
        return [{"escalation_id": world.resolved}, {"escalation_id": world.skipped}]  # never a pending one: ?wait=
    if "{escalation_id}" in path:
        return [{"escalation_id": e} for e in (*world.pending, world.any_decision, world.resolved, world.skipped)]
    return []


def has_inputs(operation) -> bool:
    return any(len(part) for part in (operation.path_parameters, operation.query, operation.headers)) or \
        bool(list(operation.body))


@pytest.mark.parametrize("caller", ["founder", "agent"])
@pytest.mark.parametrize(("method", "path"), DOCUMENTED, ids=[f"{m} {p}" for m, p in DOCUMENTED])
def test_api_conforms_to_its_openapi_document(app, api_schema, world, monkeypatch, caller, method, path):
    monkeypatch.setitem(app.config, "SSE_MAX_STREAM_SECONDS", 0.1)
    operation = api_schema[path][method]
    token = mint_jwt(world.founder_id) if caller == "founder" else AGENT_TOKEN
    headers = {"Authorization": f"Bearer {token}"}
    modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE] if has_inputs(operation) else \
        [GenerationMode.POSITIVE]
    strategies = []
    for mode in modes:
        strategies.append(operation.as_strategy(generation_mode=mode))
        for parameters in seeded_path_parameters(method, path, world):
            strategies.append(operation.as_strategy(generation_mode=mode, path_parameters=parameters))

    @settings(max_examples=MAX_EXAMPLES, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large,
                                     HealthCheck.large_base_example])
    @given(case=st.one_of(strategies))
    def check(case):
        case.call_and_validate(headers=headers, checks=CHECKS)

    check()

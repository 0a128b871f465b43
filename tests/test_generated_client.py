"""The OpenAPI document as the main frontend's developers use it (issue 15): fetched from a
running server, it validates (openapi-spec-validator), a client generated from it by
openapi-python-client imports, and that client drives create → list → get → resolve → 409 →
422 → skip → events → the stream against the real server, with typed results."""
from __future__ import annotations

import datetime as dt
import importlib
import json
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import pytest
from openapi_spec_validator import validate

from conftest import AGENT_TOKEN, DEFAULT_OPTIONS, GunicornServer, migrate, mint_jwt

pytestmark = pytest.mark.slow

GENERATOR = Path(sys.executable).parent / "openapi-python-client"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('client') / 'client.db'}"
    migrate(url)
    # Short streams, so that the generated (blocking) stream call returns.
    with GunicornServer(url, workers=1, CONSOLE_SSE_MAX_STREAM_SECONDS=2) as running:
        yield running


@pytest.fixture(scope="module")
def api(server, tmp_path_factory):
    """The generated client package, imported."""
    work = tmp_path_factory.mktemp("generated")
    with urllib.request.urlopen(server.url + "/api/openapi.json", timeout=10) as resp:
        document = json.loads(resp.read())
    validate(document)  # OpenAPI 3.1, as served
    (work / "openapi.json").write_text(json.dumps(document))
    (work / "config.yml").write_text("post_hooks: []\n")  # no formatter run on the generated code
    done = subprocess.run([str(GENERATOR), "generate", "--path", str(work / "openapi.json"), "--meta", "none",
                           "--output-path", str(work / "console_api_client"), "--config", str(work / "config.yml")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Warning" not in done.stdout, done.stdout  # every schema understood
    sys.path.insert(0, str(work))
    try:
        yield importlib.import_module("console_api_client")
    finally:
        sys.path.remove(str(work))
        for name in [name for name in sys.modules if name.split(".")[0] == "console_api_client"]:
            del sys.modules[name]


def test_a_generated_client_drives_every_step_with_typed_results(server, api):
    from console_api_client import AuthenticatedClient

    founder_id, job_id = f"founder-{uuid.uuid4().hex[:8]}", f"job-{uuid.uuid4().hex[:8]}"
    with AuthenticatedClient(base_url=server.url, token=AGENT_TOKEN) as agent, \
            AuthenticatedClient(base_url=server.url, token=mint_jwt(founder_id)) as founder:
        drive(agent, founder, founder_id, job_id)


def drive(agent, founder, founder_id: str, job_id: str) -> None:
    from console_api_client.api.default import (
        get_api_escalations_escalation_id, get_api_jobs_job_id_escalations, get_api_jobs_job_id_events,
        get_api_jobs_job_id_events_stream, post_api_escalations_escalation_id_resolve,
        post_api_escalations_escalation_id_skip, post_api_jobs_job_id_escalations,
    )
    from console_api_client.models import (
        EscalationCreate, EscalationOption, EscalationResponse, EventPage, ProblemDetails, ResolveRequest, SkipRequest,
    )

    options = [EscalationOption(value=o["value"], label=o["label"], description=o.get("description", ""),
                                requires_guidance=o.get("requires_guidance")) for o in DEFAULT_OPTIONS]

    def body(**extra):
        return EscalationCreate(session_id="s-1", project_id="p-1", founder_id=founder_id, error_type="KeyError",
                                plain_english_problem="The signup page cannot find the user.",
                                recommended_action="Build it without the lookup.", options=options, **extra)

    created = post_api_jobs_job_id_escalations.sync_detailed(job_id, client=agent,
                                                              body=body(error_signature=f"sig-{uuid.uuid4().hex}"))
    assert created.status_code == 201 and isinstance(created.parsed, EscalationResponse)
    escalation = created.parsed
    assert escalation.status == "pending" and isinstance(escalation.created_at, dt.datetime)

    listed = get_api_jobs_job_id_escalations.sync(job_id, client=founder)
    assert [e.id for e in listed] == [escalation.id]
    read = get_api_escalations_escalation_id.sync(str(escalation.id), client=founder)
    assert isinstance(read, EscalationResponse) and read.id == escalation.id

    resolved = post_api_escalations_escalation_id_resolve.sync(
        str(escalation.id), client=founder, body=ResolveRequest(decision="simpler_version"))
    assert isinstance(resolved, EscalationResponse) and resolved.status == "resolved"
    conflict = post_api_escalations_escalation_id_resolve.sync_detailed(
        str(escalation.id), client=founder, body=ResolveRequest(decision="skip_feature"))
    assert conflict.status_code == 409 and isinstance(conflict.parsed, ProblemDetails)
    assert conflict.parsed.escalation.founder_decision == "simpler_version"

    invalid = post_api_jobs_job_id_escalations.sync_detailed(
        job_id, client=agent, body=body(error_message="KeyError: x", error_signature="sig-both"))
    assert invalid.status_code == 422 and isinstance(invalid.parsed, ProblemDetails)
    assert invalid.parsed.errors[0].field == "error_message" and invalid.parsed.errors[0].message  # typed items

    second = post_api_jobs_job_id_escalations.sync(job_id, client=agent,
                                                   body=body(error_message="ValueError: bad date in form"))
    skipped = post_api_escalations_escalation_id_skip.sync(str(second.id), client=agent,
                                                           body=SkipRequest(reason="found another way"))
    assert isinstance(skipped, EscalationResponse) and skipped.status == "skipped"

    page = get_api_jobs_job_id_events.sync(job_id, client=agent)
    assert isinstance(page, EventPage)
    types = [event.type_ for event in page.items]
    assert types == ["agent.waiting_for_input", "agent.escalation_resolved",
                     "agent.waiting_for_input", "agent.escalation_resolved"]
    assert all(isinstance(event.timestamp, dt.datetime) for event in page.items)  # date-time, like the rest
    assert page.items[1].additional_properties["resolution"] == "simpler_version"

    stream = get_api_jobs_job_id_events_stream.sync(job_id, client=agent, after=0)  # the server ends it after 2 s
    assert isinstance(stream, str)
    ids = [int(line[4:]) for line in stream.splitlines() if line.startswith("id: ")]
    assert ids == [event.id for event in page.items]

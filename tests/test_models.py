"""The model (SPEC §2) and the event vocabulary (SPEC §3)."""
import uuid

from sqlalchemy import inspect

from console.events import AGENT_EVENT_TYPES, SERVER_OWNED_EVENT_TYPES, SSEEventType
from console.models import AgentEscalation


def new_escalation(**fields) -> AgentEscalation:
    required = dict(session_id="s", job_id="j", project_id="p", founder_id="f", error_type="E",
                    error_signature="p:E:0123abcd", plain_english_problem="x", recommended_action="y")
    return AgentEscalation(**{**required, **fields})


def test_unflushed_escalation_already_has_its_defaults():
    escalation = new_escalation()
    assert escalation.status == "pending"
    assert escalation.attempts_summary == []
    assert escalation.options == []
    assert escalation.occurrences == 1
    assert escalation.founder_decision is None and escalation.founder_guidance is None
    assert escalation.resolved_at is None


def test_default_lists_are_not_shared_between_objects():
    a, b = new_escalation(), new_escalation()
    a.options.append({"value": "x"})
    assert b.options == []


def test_explicit_values_win_over_defaults():
    escalation = new_escalation(status="resolved", options=[{"value": "a", "label": "A", "description": ""}])
    assert escalation.status == "resolved"
    assert escalation.option("a")["label"] == "A"
    assert escalation.option("missing") is None


def test_model_has_every_spec_column():
    columns = {c.key for c in inspect(AgentEscalation).columns}
    assert columns == {
        "id", "session_id", "job_id", "project_id", "founder_id", "error_type", "error_signature",
        "plain_english_problem", "attempts_summary", "recommended_action", "options", "status",
        "founder_decision", "founder_guidance", "resolved_at", "created_at", "occurrences", "last_seen_at",
        # SPEC §10: the deadline, its outcome, the reminder, and who decided
        "expires_at", "on_expiry", "reminder_at", "reminded_at", "decided_by", "decided_via",
        "rule_id"}  # SPEC §12
    assert AgentEscalation.__tablename__ == "agent_escalations"


def test_escalation_is_saved_with_defaults_and_aware_timestamps(app):
    from console.extensions import db

    with app.app_context():
        escalation = new_escalation(job_id=f"job-{uuid.uuid4()}")
        db.session.add(escalation)
        db.session.commit()
        loaded = db.session.get(AgentEscalation, escalation.id, populate_existing=True)
        assert isinstance(loaded.id, uuid.UUID)
        assert loaded.created_at.tzinfo is not None and loaded.last_seen_at.utcoffset().total_seconds() == 0
        assert (loaded.status, loaded.attempts_summary, loaded.options) == ("pending", [], [])


def test_the_four_escalation_event_types_have_their_values():
    assert SSEEventType.AGENT_WAITING_FOR_INPUT == "agent.waiting_for_input"
    assert SSEEventType.AGENT_RETRYING == "agent.retrying"
    assert SSEEventType.AGENT_ESCALATION_RESOLVED == "agent.escalation_resolved"
    assert SSEEventType.AGENT_BUILD_PAUSED == "agent.build_paused"


def test_vocabulary_has_sixteen_types_two_of_them_server_owned():
    assert len(SSEEventType.values()) == 16
    assert SERVER_OWNED_EVENT_TYPES == {"agent.waiting_for_input", "agent.escalation_resolved"}
    assert AGENT_EVENT_TYPES == SSEEventType.values() - SERVER_OWNED_EVENT_TYPES
    for name, value in vars(SSEEventType).items():
        if name.isupper():
            assert name == value.upper().replace(".", "_")


def test_secrets_from_the_environment_are_taken_verbatim(monkeypatch, tmp_path):
    from console import create_app

    monkeypatch.setenv("CONSOLE_AGENT_TOKEN", "1e3")
    monkeypatch.setenv("CONSOLE_JWT_SECRET", "true")
    app = create_app({"SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'x.db'}"})
    assert app.config["AGENT_TOKEN"] == "1e3" and app.config["JWT_SECRET"] == "true"

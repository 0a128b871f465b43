"""PostgreSQL builds the JSON of the two hottest reads (console/services/json_reads.py): it
must be the API's EscalationResponse exactly — the same as pydantic's serialisation of the
same rows, for every state and for awkward text."""
from __future__ import annotations

import datetime as dt
import json

import pytest
from sqlalchemy import text

from console.auth import AGENT, Principal
from console.extensions import db
from console.schemas import escalation_json_bytes, escalation_list_json_bytes
from console.services import escalations as service
from console.services import json_reads


def whole_job(job_id, principal, status):
    """The first (here: the only) page of a job's documents, as the database builds it."""
    document, last = json_reads.job_escalations_page(job_id, principal, status,
                                                     (service.FAR_FUTURE, service.LAST_ID), 100)
    assert last is None
    return document


@pytest.fixture
def pg_app(app, dialect):
    if dialect != "postgresql":
        pytest.skip("PostgreSQL builds these documents; SQLite serialises rows in Python")
    return app


AWKWARD = "Quotes \" and \\ backslashes, a tab\t, a newline\n, <b>markup</b>, émoji 🚀, \u2028 and \x01"


def test_the_databases_documents_equal_the_pydantic_serialisation(pg_app, client, agent, founder, ids,
                                                                  escalation_body):
    def create(**fields):
        resp = client.post(f"/api/jobs/{ids.job_id}/escalations", json=escalation_body(**fields), headers=agent)
        assert resp.status_code == 201, resp.get_json()
        return resp.get_json()

    same_error = {"error_message": "KeyError: 'user_1' at /srv/app/x.py:1"}
    decided = create(**same_error, plain_english_problem=AWKWARD, attempts_summary=[AWKWARD, "two"])
    client.post(f"/api/escalations/{decided['id']}/resolve", headers=founder(),
                json={"decision": "provide_guidance", "guidance": AWKWARD})
    create(**same_error)  # pending, with a previous decision
    create(expires_in=600, on_expiry="skip_feature")  # a deadline
    create(options=[])  # no options at all
    skipped = create()
    client.post(f"/api/escalations/{skipped['id']}/skip", json={"reason": "gone"}, headers=agent)
    with pg_app.app_context():
        # timestamps on a whole second: isoformat() then has no fraction, and neither may the database
        db.session.execute(text("UPDATE agent_escalations SET created_at = date_trunc('second', created_at) "
                                "WHERE id = :id"), {"id": skipped["id"]})
        db.session.commit()
        for principal in (AGENT, Principal("founder", ids.founder_id)):
            rows = service.list_job_escalations(ids.job_id, principal)
            assert len(rows) == 5
            assert json.loads(whole_job(ids.job_id, principal, None)) == \
                json.loads(escalation_list_json_bytes(rows))
            for row in rows:
                assert json.loads(json_reads.escalation_document(row.id, principal)) == \
                    json.loads(escalation_json_bytes(row))
            pending = service.list_job_escalations(ids.job_id, principal, "pending")
            assert json.loads(whole_job(ids.job_id, principal, "pending")) == \
                json.loads(escalation_list_json_bytes(pending))
        row = service.get_escalation(skipped["id"], AGENT)
        assert row.created_at.microsecond == 0
        assert json.loads(json_reads.escalation_document(row.id, AGENT))["created_at"] == row.created_at.isoformat()
        db.session.remove()


def test_the_documents_keep_ownership(pg_app, make_escalation, ids):
    record = make_escalation()
    with pg_app.app_context():
        stranger = Principal("founder", ids.new("founder"))
        assert json_reads.escalation_document(service.get_escalation(record["id"], AGENT).id, stranger) is None
        assert whole_job(ids.job_id, stranger, None) == b"[]"
        other_job = Principal("agent", founder_id=ids.founder_id, job_id=ids.new("job"))
        assert json_reads.escalation_document(service.get_escalation(record["id"], AGENT).id, other_job) is None


def test_timestamps_are_utc_whatever_the_sessions_time_zone(pg_app, make_escalation):
    record = make_escalation()
    with pg_app.app_context():
        with db.engine.connect() as connection:
            connection.exec_driver_sql("SET TIME ZONE 'America/Los_Angeles'")
            document = connection.execute(json_reads._ONE, {"id": service.get_escalation(record["id"], AGENT).id}).one()
        stored = dt.datetime.fromisoformat(json.loads(document.document)["created_at"])
    assert stored.utcoffset() == dt.timedelta(0) and stored == dt.datetime.fromisoformat(record["created_at"])


def test_the_resolve_answers_with_the_same_document(pg_app, client, founder, make_escalation, ids):
    record = make_escalation()
    answered = client.post(f"/api/escalations/{record['id']}/resolve", headers=founder(),
                           json={"decision": "provide_guidance", "guidance": AWKWARD})
    assert answered.status_code == 200
    with pg_app.app_context():
        stored = escalation_json_bytes(service.get_escalation(record["id"], AGENT))
    assert answered.get_json() == json.loads(stored)

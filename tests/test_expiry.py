"""Expiry and the reminder (SPEC §10), the worker's tasks run in-process with a clock the
test moves (console.worker.Worker(clock=...)), on SQLite and PostgreSQL."""
from __future__ import annotations

import datetime as dt
import threading

import pytest

from console.auth import AGENT
from console.services.escalations import find_escalation
from console.worker import Worker


def later(seconds: float) -> dt.datetime:
    return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)


def run_worker(app, at: dt.datetime) -> dict[str, int]:
    return Worker(app, clock=lambda: at).run_once()


def events_of(client, agent, job_id):
    return client.get(f"/api/jobs/{job_id}/events?limit=500", headers=agent).get_json()["items"]


# --- create ---------------------------------------------------------------------------------------

def test_an_expiring_escalation_carries_its_deadline_and_safe_default(make_escalation):
    before = dt.datetime.now(dt.UTC)
    record = make_escalation(expires_in=3600)
    expires_at = dt.datetime.fromisoformat(record["expires_at"])
    assert before + dt.timedelta(seconds=3599) <= expires_at <= later(3601)
    assert record["on_expiry"] == "simpler_version"  # the recommended option, which needs no guidance
    assert (record["decided_by"], record["decided_via"]) == (None, None)


def test_without_a_deadline_nothing_expires(make_escalation):
    record = make_escalation()
    assert (record["expires_at"], record["on_expiry"]) == (None, None)


def test_the_agent_chooses_what_happens_at_the_deadline(make_escalation):
    assert make_escalation(expires_in=60, on_expiry="skip_feature")["on_expiry"] == "skip_feature"


def test_a_recommended_option_that_needs_guidance_is_no_default(make_escalation, ids):
    options = [{"value": "ask", "label": "Ask me", "recommended": True, "requires_guidance": True},
               {"value": "skip", "label": "Skip"}]
    record = make_escalation(expires_in=60, options=options)
    assert record["expires_at"] is not None and record["on_expiry"] is None


@pytest.mark.parametrize("fields, field", [
    ({"expires_in": 0}, "expires_in"),
    ({"expires_in": 2_592_001}, "expires_in"),
    ({"expires_in": "60"}, "expires_in"),
    ({"expires_in": 1.5}, "expires_in"),
    ({"expires_in": True}, "expires_in"),
    ({"expires_in": 60, "on_expiry": "launch_rockets"}, "on_expiry"),
    ({"expires_in": 60, "on_expiry": "provide_guidance"}, "on_expiry"),
    ({"expires_in": 60, "on_expiry": "bad value!"}, "on_expiry"),
])
def test_bad_deadlines_are_refused_and_nothing_is_stored(client, agent, ids, escalation_body, fields, field):
    resp = client.post(f"/api/jobs/{ids.job_id}/escalations", json=escalation_body(**fields), headers=agent)
    assert resp.status_code == 422, resp.get_json()
    assert field in [error["field"] for error in resp.get_json()["errors"]]
    assert client.get(f"/api/jobs/{ids.job_id}/escalations", headers=agent).get_json() == []


def test_on_expiry_needs_an_option_to_name(client, agent, ids, escalation_body):
    resp = client.post(f"/api/jobs/{ids.job_id}/escalations", headers=agent,
                       json=escalation_body(options=[], expires_in=60, on_expiry="skip_feature"))
    assert resp.status_code == 422 and resp.get_json()["errors"][0]["field"] == "on_expiry"


def test_the_default_deadline_comes_from_the_configuration(configured_app, agent, ids, escalation_body):
    client = configured_app(DEFAULT_EXPIRES_IN=120).test_client()
    record = client.post(f"/api/jobs/{ids.job_id}/escalations", json=escalation_body(), headers=agent).get_json()
    assert dt.datetime.fromisoformat(record["expires_at"]) <= later(121)
    explicit = client.post(f"/api/jobs/{ids.job_id}/escalations", headers=agent,
                           json=escalation_body(expires_in=30000)).get_json()
    assert dt.datetime.fromisoformat(explicit["expires_at"]) >= later(29000)


def test_a_duplicate_create_keeps_the_first_deadline(client, agent, ids, escalation_body):
    body = escalation_body(expires_in=600, on_expiry="skip_feature")
    first = client.post(f"/api/jobs/{ids.job_id}/escalations", json=body, headers=agent).get_json()
    again = client.post(f"/api/jobs/{ids.job_id}/escalations", headers=agent,
                        json={**body, "expires_in": 9000, "on_expiry": "simpler_version"})
    assert again.status_code == 200 and again.get_json()["occurrences"] == 2
    assert (again.get_json()["expires_at"], again.get_json()["on_expiry"]) == (first["expires_at"], "skip_feature")


# --- the deadline ---------------------------------------------------------------------------------

def test_at_the_deadline_the_safe_default_is_applied_once(app, client, agent, founder, ids, make_escalation):
    record = make_escalation(expires_in=60, on_expiry="skip_feature")
    run_worker(app, later(59))  # not yet (the sweep may settle other tests' rows of this shared database)
    assert client.get(f"/api/escalations/{record['id']}", headers=founder()).get_json()["status"] == "pending"
    assert run_worker(app, later(61))["expiry"] >= 1
    settled = client.get(f"/api/escalations/{record['id']}", headers=founder()).get_json()
    assert settled["status"] == "resolved" and settled["founder_decision"] == "skip_feature"
    assert (settled["founder_guidance"], settled["decided_by"], settled["decided_via"]) == (None, "expiry", None)
    run_worker(app, later(120))  # a second sweep finds nothing more to do
    resolved = [e for e in events_of(client, agent, ids.job_id) if e["type"] == "agent.escalation_resolved"]
    assert len(resolved) == 1
    assert resolved[0]["status"] == "resolved" and resolved[0]["resolution"] == "skip_feature"
    assert resolved[0]["decided_by"] == "expiry" and resolved[0]["escalation_id"] == record["id"]


def test_without_a_safe_default_it_expires_with_no_decision(app, client, agent, founder, ids, make_escalation):
    record = make_escalation(expires_in=60, options=[{"value": "a", "label": "A"}, {"value": "b", "label": "B"}])
    run_worker(app, later(61))
    settled = client.get(f"/api/escalations/{record['id']}", headers=founder()).get_json()
    assert (settled["status"], settled["founder_decision"], settled["decided_by"]) == ("expired", None, "expiry")
    assert settled["resolved_at"] is not None
    [event] = [e for e in events_of(client, agent, ids.job_id) if e["type"] == "agent.escalation_resolved"]
    assert (event["status"], event["resolution"], event["decided_by"]) == ("expired", None, "expiry")
    expired = client.get("/api/escalations?status=expired", headers=founder()).get_json()["items"]
    assert [e["id"] for e in expired] == [record["id"]]
    assert client.get(f"/api/jobs/{ids.job_id}/escalations?status=expired", headers=agent).get_json()[0]["id"] == record["id"]


@pytest.mark.parametrize("on_expiry", ["skip_feature", None])
def test_after_the_deadline_a_decision_or_a_skip_is_a_conflict(app, client, agent, founder, make_escalation, on_expiry):
    fields = {"on_expiry": on_expiry} if on_expiry else {"options": [{"value": "skip_feature", "label": "Skip"}]}
    record = make_escalation(expires_in=60, **fields)
    run_worker(app, later(61))
    # even the very decision the clock applied: the safe retry is for a founder's own decision
    resolve = client.post(f"/api/escalations/{record['id']}/resolve", json={"decision": "skip_feature"},
                          headers=founder())
    assert resolve.status_code == 409
    assert resolve.get_json()["escalation"]["decided_by"] == "expiry"
    assert "in time" in resolve.get_json()["detail"]
    skip = client.post(f"/api/escalations/{record['id']}/skip", json={}, headers=agent)
    assert skip.status_code == 409 and skip.get_json()["escalation"]["decided_by"] == "expiry"


def test_a_founder_who_answered_in_time_is_not_overruled(app, client, founder, make_escalation):
    record = make_escalation(expires_in=60)
    client.post(f"/api/escalations/{record['id']}/resolve", json={"decision": "skip_feature"}, headers=founder())
    run_worker(app, later(61))
    settled = client.get(f"/api/escalations/{record['id']}", headers=founder()).get_json()
    assert (settled["founder_decision"], settled["decided_by"], settled["decided_via"]) == ("skip_feature", "founder", "api")


def test_who_decided_is_on_record_for_a_skip(client, agent, make_escalation):
    record = make_escalation()
    skipped = client.post(f"/api/escalations/{record['id']}/skip", json={"reason": "gone"}, headers=agent).get_json()
    assert (skipped["decided_by"], skipped["decided_via"]) == ("agent", None)


def test_a_founder_deciding_at_the_deadline_races_the_worker_with_one_winner(app, client, agent, founder, ids,
                                                                          make_escalation):
    """Many rounds of a resolve and a sweep at the same instant: exactly one of them settles
    each escalation, and exactly one event is stored for it."""
    token = founder()
    records = [make_escalation(expires_in=1, error_message=f"KeyError: race {chr(97 + i)}") for i in range(12)]
    barrier = threading.Barrier(2)
    outcomes = []

    def sweep():
        barrier.wait()
        run_worker(app, later(5))

    for record in records:
        thread = threading.Thread(target=sweep)
        thread.start()
        barrier.wait()
        with app.test_client() as racer:
            status = racer.post(f"/api/escalations/{record['id']}/resolve", json={"decision": "skip_feature"},
                                headers=token).status_code
        thread.join()
        outcomes.append(status)
    assert set(outcomes) <= {200, 409}
    events = [e for e in events_of(client, agent, ids.job_id) if e["type"] == "agent.escalation_resolved"]
    assert sorted(e["escalation_id"] for e in events) == sorted(r["id"] for r in records)  # one each
    for record, status in zip(records, outcomes):
        stored = client.get(f"/api/escalations/{record['id']}", headers=token).get_json()
        assert stored["decided_by"] == ("founder" if status == 200 else "expiry"), (status, stored)


# --- the reminder ---------------------------------------------------------------------------------

def test_one_reminder_falls_due_at_three_quarters_of_the_time(app, client, founder, make_escalation):
    record = make_escalation(expires_in=400)

    def reminded_at():
        with app.app_context():
            return find_escalation(record["id"], AGENT).reminded_at

    run_worker(app, later(290))  # (other tests' rows of this shared database may fall due: look at this one)
    assert reminded_at() is None
    assert run_worker(app, later(301))["reminder"] >= 1
    first = reminded_at()
    assert first is not None
    run_worker(app, later(320))
    assert reminded_at() == first  # once
    answered = make_escalation(expires_in=400, error_message="KeyError: answered first")
    client.post(f"/api/escalations/{answered['id']}/resolve", json={"decision": "skip_feature"}, headers=founder())
    run_worker(app, later(301))
    with app.app_context():
        reminded = {escalation_id: find_escalation(escalation_id, AGENT).reminded_at
                    for escalation_id in (record["id"], answered["id"])}
    assert reminded[record["id"]] is not None
    assert reminded[answered["id"]] is None  # nobody is reminded of what they already answered

"""Decision memory (SPEC §12): previous decisions and rules, on SQLite and PostgreSQL."""
from __future__ import annotations

import re
import threading

import pytest

from conftest import DEFAULT_OPTIONS
from test_pages import card, console  # noqa: F401  (the signed-in console fixture)


@pytest.fixture
def same_error(escalation_body, ids):
    """create(job, **fields): the same project's same error (one signature), in any job."""
    def body(**fields):
        return escalation_body(error_message="KeyError: 'user_42' at /srv/app/signup.py:17", **fields)
    return body


def create(client, agent, job_id, body, expect=201):
    resp = client.post(f"/api/jobs/{job_id}/escalations", json=body, headers=agent)
    assert resp.status_code == expect, resp.get_json()
    return resp.get_json()


def resolve(client, founder, escalation, decision="simpler_version", guidance=None, remember=False, expect=200):
    resp = client.post(f"/api/escalations/{escalation['id']}/resolve", headers=founder(),
                       json={"decision": decision, "guidance": guidance, "remember": remember})
    assert resp.status_code == expect, resp.get_json()
    return resp.get_json()


def events(client, agent, job_id):
    return client.get(f"/api/jobs/{job_id}/events?limit=500", headers=agent).get_json()["items"]


# --- previous_decision ----------------------------------------------------------------------------

def test_the_previous_decision_comes_from_any_job_of_the_same_project(client, agent, founder, ids, same_error):
    first = create(client, agent, ids.new("job"), same_error())
    assert first["previous_decision"] is None
    resolve(client, founder, first, "simpler_version", "Email only")
    second = create(client, agent, ids.new("job"), same_error())
    previous = second["previous_decision"]
    assert previous["escalation_id"] == first["id"] and previous["decision"] == "simpler_version"
    assert (previous["label"], previous["guidance"]) == ("Try a simpler version", "Email only")
    assert previous["decided_at"].endswith("+00:00")
    for read in (client.get(f"/api/escalations/{second['id']}", headers=founder()).get_json(),
                 client.get(f"/api/jobs/{second['job_id']}/escalations", headers=agent).get_json()[0],
                 client.get("/api/escalations?status=pending", headers=founder()).get_json()["items"][0]):
        assert read["previous_decision"] == previous
    # the latest decision wins
    resolve(client, founder, second, "skip_feature")
    third = create(client, agent, ids.new("job"), same_error())
    assert third["previous_decision"]["decision"] == "skip_feature"
    assert third["previous_decision"]["escalation_id"] == second["id"]


def test_no_previous_decision_across_founders_or_projects_or_from_skips(client, agent, founder, ids, same_error):
    first = create(client, agent, ids.new("job"), same_error())
    resolve(client, founder, first)
    other_founder = create(client, agent, ids.new("job"), same_error(founder_id=ids.new("founder")))
    other_project = create(client, agent, ids.new("job"), same_error(project_id=ids.new("proj")))
    assert other_founder["previous_decision"] is None and other_project["previous_decision"] is None
    skipped = create(client, agent, ids.new("job"), same_error(project_id=other_project["project_id"]))
    client.post(f"/api/escalations/{skipped['id']}/skip", json={}, headers=agent)
    again = create(client, agent, ids.new("job"), same_error(project_id=other_project["project_id"]))
    assert again["previous_decision"] is None  # a withdrawn question is nobody's decision


# --- rules -----------------------------------------------------------------------------------------

def test_a_remembered_decision_answers_the_next_occurrence_at_once(client, agent, founder, ids, same_error):
    first = create(client, agent, ids.new("job"), same_error())
    resolve(client, founder, first, "simpler_version", "Email only", remember=True)
    [rule] = client.get("/api/me/rules", headers=founder()).get_json()["items"]
    assert (rule["decision"], rule["label"], rule["guidance"]) == ("simpler_version", "Try a simpler version", "Email only")
    assert rule["created_from"] == first["id"] and rule["times_applied"] == 0 and rule["last_applied_at"] is None
    assert rule["error_signature"] == first["error_signature"] and rule["error_type"] == "KeyError"

    job = ids.new("job")
    answered = create(client, agent, job, same_error())  # 201, already answered
    assert answered["status"] == "resolved" and answered["decided_by"] == "rule" and answered["rule_id"] == rule["id"]
    assert (answered["founder_decision"], answered["founder_guidance"], answered["decided_via"]) == (
        "simpler_version", "Email only", None)
    assert [e["type"] for e in events(client, agent, job)] == ["agent.waiting_for_input", "agent.escalation_resolved"]
    resolved_event = events(client, agent, job)[1]
    assert (resolved_event["decided_by"], resolved_event["rule_id"]) == ("rule", rule["id"])
    [rule] = client.get("/api/me/rules", headers=founder()).get_json()["items"]
    assert rule["times_applied"] == 1 and rule["last_applied_at"] is not None
    # a rule's answer is not the founder's own: a late resolve is a conflict, not a retry
    resolve(client, founder, answered, "simpler_version", "Email only", expect=409)


def test_a_rule_whose_decision_is_not_an_option_leaves_the_question_to_the_founder(client, agent, founder, ids,
                                                                                  same_error, console):
    resolve(client, founder, create(client, agent, ids.new("job"), same_error()), "skip_feature", remember=True)
    options = [o for o in DEFAULT_OPTIONS if o["value"] != "skip_feature"]
    pending = create(client, agent, ids.new("job"), same_error(options=options))
    assert pending["status"] == "pending" and pending["rule_id"] is None
    page = console().get(f"/escalations/{pending['id']}").get_data(as_text=True)
    assert "Your rule for this error answers “Skip this feature”, which is not one of this question&#39;s options" in page


def test_a_newer_remember_replaces_the_rule_and_revoking_stops_it(client, agent, founder, ids, same_error):
    resolve(client, founder, create(client, agent, ids.new("job"), same_error()), "skip_feature", remember=True)
    resolve(client, founder, create(client, agent, ids.new("job"), same_error(options=[
        {"value": "simpler_version", "label": "Simpler"}, {"value": "other", "label": "Other"}])),
        "simpler_version", remember=True)
    [rule] = client.get("/api/me/rules", headers=founder()).get_json()["items"]
    assert rule["decision"] == "simpler_version"
    assert create(client, agent, ids.new("job"), same_error())["founder_decision"] == "simpler_version"

    assert client.delete(f"/api/me/rules/{rule['id']}", headers=founder(ids.new("founder"))).status_code == 404
    assert client.delete("/api/me/rules/not-a-uuid", headers=founder()).status_code == 404
    assert client.delete(f"/api/me/rules/{rule['id']}", headers=founder()).status_code == 204
    assert client.delete(f"/api/me/rules/{rule['id']}", headers=founder()).status_code == 404
    assert client.get("/api/me/rules", headers=founder()).get_json()["items"] == []
    assert create(client, agent, ids.new("job"), same_error())["status"] == "pending"


def test_rules_are_the_founders_own(client, agent, founder, ids):
    assert client.get("/api/me/rules", headers=agent).status_code == 403
    assert client.get("/api/me/rules", headers=founder(ids.new("founder"))).get_json() == {"items": []}


def test_remember_must_be_a_boolean(client, agent, founder, ids, same_error):
    first = create(client, agent, ids.new("job"), same_error())
    resp = client.post(f"/api/escalations/{first['id']}/resolve", headers=founder(),
                       json={"decision": "skip_feature", "remember": "yes"})
    assert resp.status_code == 422 and resp.get_json()["errors"][0]["field"] == "remember"
    assert client.get(f"/api/escalations/{first['id']}", headers=founder()).get_json()["status"] == "pending"


def test_concurrent_matching_creates_are_each_settled_once_with_their_events_in_order(app, agent, founder, ids,
                                                                                     same_error, dialect):
    client = app.test_client()
    resolve(client, founder, create(client, agent, ids.new("job"), same_error()), "skip_feature", remember=True)
    jobs = [ids.new("job") for _ in range(8)]
    results = {}

    def create_in(job):
        with app.test_client() as racer:
            results[job] = racer.post(f"/api/jobs/{job}/escalations", json=same_error(), headers=agent)

    threads = [threading.Thread(target=create_in, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {job: r.status_code for job, r in results.items()} == {job: 201 for job in jobs}
    for job in jobs:
        assert results[job].get_json()["decided_by"] == "rule"
        kinds = [(e["type"], e["id"]) for e in events(client, agent, job)]
        assert [k for k, _ in kinds] == ["agent.waiting_for_input", "agent.escalation_resolved"]
        assert kinds[0][1] < kinds[1][1]
    [rule] = client.get("/api/me/rules", headers=founder()).get_json()["items"]
    assert rule["times_applied"] == len(jobs)


# --- the console -----------------------------------------------------------------------------------

def test_the_card_offers_the_last_decision_and_the_link_opens_it_chosen(client, agent, founder, ids, same_error,
                                                                       console):
    resolve(client, founder, create(client, agent, ids.new("job"), same_error()), "simpler_version", "Email only")
    pending = create(client, agent, ids.new("job"), same_error())
    browser = console()
    html = card(browser.get("/").get_data(as_text=True), pending["id"])
    assert "Last time you chose “Try a simpler version”, saying “Email only”" in html
    link = re.search(r'<a class="button button--quiet memory__fill"\s+href="([^"]+)"', html).group(1)
    assert "Email" not in link and "guidance" not in link  # guidance (often a secret) never goes in a URL
    opened = card(browser.get(link.replace("&amp;", "&")).get_data(as_text=True), pending["id"])
    assert re.search(r'value="simpler_version"\s+checked', opened)  # chosen, not decided
    assert ">Email only</textarea>" in opened  # filled in by the server from the previous decision
    assert client.get(f"/api/escalations/{pending['id']}", headers=founder()).get_json()["status"] == "pending"


def test_the_console_checkbox_remembers_and_the_settings_page_revokes(client, agent, founder, ids, same_error,
                                                                     console):
    browser = console()
    first = create(client, agent, ids.new("job"), same_error())
    resp = browser.post(f"/escalations/{first['id']}/resolve", headers={"HX-Request": "true"},
                        data={"csrf_token": browser.csrf, "decision": "skip_feature", "remember": "true"})
    assert resp.status_code == 200 and "answered the same way from now on" in resp.get_data(as_text=True)
    [rule] = client.get("/api/me/rules", headers=founder()).get_json()["items"]
    assert client.get(f"/api/escalations/{first['id']}", headers=founder()).get_json()["decided_via"] == "console"

    answered = create(client, agent, ids.new("job"), same_error())
    html = card(browser.get(f"/jobs/{answered['job_id']}").get_data(as_text=True), answered["id"])
    assert "Answered by your rule from" in html and "“Skip this feature”" in html
    assert f'href="/settings#rule-{rule["id"]}"' in html
    timeline = browser.get(f"/jobs/{answered['job_id']}").get_data(as_text=True)
    assert "Answered by your rule: Skip this feature" in timeline

    settings = browser.get("/settings").get_data(as_text=True)
    assert f'id="rule-{rule["id"]}"' in settings and "answered 1 time since" in settings
    # someone else's rule cannot be revoked from their session, nor without a CSRF token
    stranger = console(ids.new("founder"))
    assert stranger.post(f"/settings/rules/{rule['id']}/revoke", data={"csrf_token": stranger.csrf}).status_code == 404
    assert browser.post(f"/settings/rules/{rule['id']}/revoke").status_code == 400
    assert len(client.get("/api/me/rules", headers=founder()).get_json()["items"]) == 1
    revoked = browser.post(f"/settings/rules/{rule['id']}/revoke", data={"csrf_token": browser.csrf})
    assert revoked.status_code == 303 and revoked.headers["Location"] == "/settings"
    assert client.get("/api/me/rules", headers=founder()).get_json()["items"] == []
    assert "You have no remembered decisions yet" in browser.get("/settings").get_data(as_text=True)

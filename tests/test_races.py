"""Races across two real server processes on one PostgreSQL (issue 5's drills): counts and
events exactly right."""
from __future__ import annotations

import threading

import pytest

from conftest import GunicornServer, migrate, mint_jwt
from test_realtime import call, escalate

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_servers(postgres):
    url = postgres.create("console_races")
    migrate(url)
    try:
        with GunicornServer(url, workers=1) as a, GunicornServer(url, workers=1) as b:
            yield a, b
    finally:
        postgres.drop(url)


def at_once(calls):
    barrier = threading.Barrier(len(calls))
    results = [None] * len(calls)

    def run(i, fn):
        barrier.wait(timeout=30)
        try:
            results[i] = fn()
        except Exception as error:  # asserted below
            results[i] = error

    threads = [threading.Thread(target=run, args=(i, fn)) for i, fn in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not [r for r in results if isinstance(r, Exception)], results
    return results


def events_of(server, job_id):
    return call(server.url, "GET", f"/api/jobs/{job_id}/events?limit=500")[1]["items"]


def test_fifty_concurrent_resolves_through_two_processes_have_one_winner(two_servers, ids):
    a, b = two_servers
    escalation = escalate(a.url, ids.job_id, ids.founder_id)
    token = mint_jwt(ids.founder_id)
    calls = [lambda i=i: call((a, b)[i % 2].url, "POST", f"/api/escalations/{escalation['id']}/resolve",
                              {"decision": ("skip_feature", "simpler_version")[i % 2], "guidance": f"from {i}"},
                              token=token)[0] for i in range(50)]
    statuses = at_once(calls)
    assert sorted(statuses) == [200] + [409] * 49
    resolved = [e for e in events_of(b, ids.job_id) if e["type"] == "agent.escalation_resolved"]
    stored = call(b.url, "GET", f"/api/escalations/{escalation['id']}")[1]
    assert len(resolved) == 1 and resolved[0]["guidance"] == stored["founder_guidance"]


def test_twenty_identical_creates_through_two_processes_make_one_row(two_servers, ids):
    a, b = two_servers
    body = {"session_id": "s", "project_id": "p", "founder_id": ids.founder_id, "error_type": "E",
            "plain_english_problem": "x", "recommended_action": "y", "error_message": "KeyError: 'k'"}
    statuses = at_once([lambda i=i: call((a, b)[i % 2].url, "POST", f"/api/jobs/{ids.job_id}/escalations", body)[0]
                        for i in range(20)])
    assert sorted(statuses) == [200] * 19 + [201]
    [row] = call(a.url, "GET", f"/api/jobs/{ids.job_id}/escalations")[1]
    assert row["occurrences"] == 20
    assert [e["type"] for e in events_of(a, ids.job_id)] == ["agent.waiting_for_input"]


def test_two_hundred_escalations_resolved_concurrently_give_two_hundred_events_in_order(two_servers, ids):
    a, b = two_servers
    escalations = [escalate(a.url, ids.job_id, ids.founder_id, message=f"E{chr(97 + i % 26)}{'x' * (i // 26)}")
                   for i in range(200)]
    token = mint_jwt(ids.founder_id)
    statuses = at_once([lambda i=i, e=e: call((a, b)[i % 2].url, "POST", f"/api/escalations/{e['id']}/resolve",
                                              {"decision": "skip_feature"}, token=token)[0]
                        for i, e in enumerate(escalations)])
    assert statuses == [200] * 200
    events = events_of(b, ids.job_id)
    resolved = [e["escalation_id"] for e in events if e["type"] == "agent.escalation_resolved"]
    assert sorted(resolved) == sorted(e["id"] for e in escalations)
    ids_in_order = [e["id"] for e in events]
    assert ids_in_order == sorted(ids_in_order) and len(set(ids_in_order)) == 400

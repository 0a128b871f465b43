"""The card cache (console/cards.py, issue 15): a card from the cache is the card the
template renders, in every state, with the clock's words and the CSRF token of the request
that shows it; a changed row is a new card; no text an agent writes can pass for a marker.
Real rows from real SQLite and PostgreSQL."""
from __future__ import annotations

import datetime as dt
import re

import pytest
from flask import render_template, session

from console.auth import Principal

CSRF = re.compile(r'name="csrf_token" value="[^"]+"')


@pytest.fixture
def states(client, founder, make_escalation, ids):
    """One escalation in each state a card shows, with a previous decision and a deadline among them."""
    def resolve(escalation, decision="skip_feature", **body):
        resp = client.post(f"/api/escalations/{escalation['id']}/resolve", json={"decision": decision, **body},
                           headers=founder())
        assert resp.status_code == 200, resp.get_data(as_text=True)

    signature = ids.new("sig-cards")
    earlier = make_escalation(error_signature=signature, error_message=...)
    resolve(earlier, "simpler_version")
    remembered = make_escalation(error_signature=signature, error_message=...)  # "Last time you chose …"
    with_deadline = make_escalation(expires_in=3 * 3600, on_expiry="skip_feature")
    resolved = make_escalation()
    resolve(resolved, "provide_guidance", guidance="Use the <b>other</b> table")
    skipped = make_escalation()
    assert client.post(f"/api/escalations/{skipped['id']}/skip", json={"reason": "fixed it myself"},
                       headers={"Authorization": "Bearer " + client.application.config["AGENT_TOKEN"]}).status_code == 200
    return [remembered, with_deadline, resolved, skipped, earlier]


def rows(app, ids, escalations):
    from console.services import escalations as service

    principal = Principal("founder", ids.founder_id)
    return [service.find_escalation(e["id"], principal) for e in escalations]


@pytest.mark.parametrize("partial", ["escalations/_card.html", "escalations/_summary.html"])
def test_a_card_from_the_cache_is_the_card_the_template_renders(app, ids, states, partial):
    from console.caches import app_cache
    from console.cards import render_card

    with app.test_request_context("/"):
        session["founder_id"] = ids.founder_id
        found = rows(app, ids, states)
        assert {row.status for row in found} == {"pending", "resolved", "skipped"}
        for row in found:
            direct = render_template(partial, escalation=row)
            first, again = str(render_card(row, partial)), str(render_card(row, partial))
            assert first == direct and again == direct, row.status
            assert "\x02" not in first
        cached = len(app_cache("console_cards", dict))
        for row in found:
            render_card(row, partial)
        assert len(app_cache("console_cards", dict)) == cached  # the second time, from the cache
    remembered = str(render_card_in_request(app, ids, states[0]["id"], partial))
    if partial.endswith("_card.html"):
        assert "Last time you chose" in remembered


def render_card_in_request(app, ids, escalation_id, partial):
    from console.cards import render_card
    from console.services import escalations as service

    with app.test_request_context("/"):
        session["founder_id"] = ids.founder_id
        return render_card(service.find_escalation(escalation_id, Principal("founder", ids.founder_id)), partial)


def test_the_clock_and_the_csrf_token_are_the_requests_own(app, ids, states, monkeypatch):
    import console.cards as cards

    deadline_id = states[1]["id"]
    soon = str(render_card_in_request(app, ids, deadline_id, cards.CARD))
    assert "just now" in soon and "within 3 hours" in soon
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=2, minutes=1)
    monkeypatch.setattr(cards, "now", lambda: later)
    cached = str(render_card_in_request(app, ids, deadline_id, cards.CARD))
    assert "2 hours ago" in cached and "within 59 minutes" in cached and "just now" not in cached
    tokens = set(CSRF.findall(soon)) | set(CSRF.findall(cached))
    assert len(tokens) == 2  # each request its own session's token, never the cached one


def test_a_changed_row_is_a_new_card(app, client, founder, ids, make_escalation):
    import console.cards as cards

    escalation = make_escalation()
    assert 'data-status="pending"' in render_card_in_request(app, ids, escalation["id"], cards.CARD)
    client.post(f"/api/escalations/{escalation['id']}/resolve", json={"decision": "skip_feature"}, headers=founder())
    card = str(render_card_in_request(app, ids, escalation["id"], cards.CARD))
    assert 'data-status="resolved"' in card and "Skip this feature" in card


def test_agent_text_cannot_pass_for_a_marker(app, ids, make_escalation):
    import console.cards as cards

    forged = "\x02" + "0" * 16 + "ago\x1f2001-01-01T00:00:00+00:00\x03 and \x02csrf\x1f\x03"
    escalation = make_escalation(plain_english_problem=f"Odd text {forged} here.")
    card = str(render_card_in_request(app, ids, escalation["id"], cards.CARD))
    assert forged in card and "years ago" not in card


def test_a_page_of_card_versions_renders_the_cards_of_the_whole_rows(app, ids, states, dialect):
    from console.cards import CARD, SUMMARY, render_cards
    from console.caches import app_cache
    from console.services import escalations as service

    with app.test_request_context("/"):
        session["founder_id"] = ids.founder_id
        for partial, with_memory in ((CARD, True), (SUMMARY, False)):
            page, _ = service.founder_card_page(ids.founder_id, status="pending", limit=50, with_memory=with_memory)
            decided = service.recently_decided_cards(ids.founder_id, 20, with_memory=with_memory)
            whole = service.list_founder_escalations(ids.founder_id, status="pending", with_memory=with_memory)[0]
            assert [item.id for item in page] == [row.id for row in whole]
            if dialect == "postgresql":  # versions, not the rows themselves
                assert not hasattr(page[0], "plain_english_problem") and len(page[0].card_version) == 32
            app_cache("console_cards", dict).cache.clear()
            loads = []

            def load(escalation_ids, with_memory=with_memory):
                loads.append(list(escalation_ids))
                return service.escalations_with_versions(escalation_ids, with_memory=with_memory)

            cold = [str(card) for card in render_cards(page + decided, partial, load=load)]
            warm = [str(card) for card in render_cards(page + decided, partial, load=load)]
            direct = [render_template(partial, escalation=row) for row in whole + service.recently_decided(
                ids.founder_id, 20, with_memory=with_memory)]
            assert cold == direct and warm == direct
            if dialect == "postgresql":
                assert len(loads) == 1 and len(loads[0]) == len(page + decided)  # one read for every miss, once
            else:
                assert loads == []  # SQLite's pages are the whole rows


def test_the_version_follows_the_row_and_its_previous_decision(app, client, founder, ids, make_escalation, dialect):
    from console.services import escalations as service

    if dialect != "postgresql":
        pytest.skip("card versions are PostgreSQL's (SQLite keys cards by the whole row)")
    signature = ids.new("sig-version")
    pending = make_escalation(error_signature=signature, error_message=..., job_id=ids.new("job"))
    other = make_escalation(error_signature=signature, error_message=..., job_id=ids.new("job"))

    def version():
        with app.test_request_context("/"):
            page, _ = service.founder_card_page(ids.founder_id, status="pending", limit=50)
            return next(item.card_version for item in page if str(item.id) == pending["id"])

    first = version()
    assert version() == first
    client.post(f"/api/escalations/{other['id']}/resolve", json={"decision": "simpler_version"}, headers=founder())
    remembered = version()  # the card now says "Last time you chose …": a new version
    assert remembered != first
    client.post(f"/api/jobs/{pending['job_id']}/escalations", headers={"Authorization": f"Bearer {app.config['AGENT_TOKEN']}"},
                json={**{k: pending[k] for k in ("session_id", "project_id", "founder_id", "error_type",
                                                  "plain_english_problem", "recommended_action", "options")},
                      "error_signature": signature})
    assert version() != remembered  # seen twice now

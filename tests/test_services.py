"""Service-level rules that the HTTP tests do not reach directly."""
from console.auth import AGENT, Principal
from console.services import escalations as service
from console.services import jobs as job_service


def test_recent_job_events_are_the_last_ones_oldest_first(app, ids):
    with app.app_context():
        posted = [job_service.post_job_event(ids.job_id, "agent.thinking", ids.founder_id, None, {"n": i}).id
                  for i in range(5)]
        recent = job_service.recent_job_events(ids.job_id, Principal("founder", ids.founder_id), 2)
        foreign = job_service.recent_job_events(ids.job_id, Principal("founder", "someone-else"), 2)
    assert [e.id for e in recent] == posted[-2:]
    assert foreign == []


def test_an_invalid_decision_rolls_back_the_decide_first_update(app, make_escalation, ids):
    from console.errors import ValidationFailed

    esc = make_escalation()
    with app.app_context():
        try:
            service.resolve_escalation(esc["id"], ids.founder_id, "launch_rockets", None)
        except ValidationFailed as error:
            assert [e.field for e in error.errors] == ["decision"]
        else:
            raise AssertionError("an invalid decision was accepted")
        stored = service.get_escalation(esc["id"], AGENT)
        assert (stored.status, stored.founder_decision, stored.resolved_at) == ("pending", None, None)
        assert [e.type for e in job_service.list_job_events(ids.job_id, AGENT, 0, 10)] == ["agent.waiting_for_input"]


def test_recently_decided_orders_by_decision_time(app, make_escalation, ids):
    first, second = make_escalation(), make_escalation()
    with app.app_context():
        service.resolve_escalation(second["id"], ids.founder_id, "skip_feature", None)
        service.skip_escalation(first["id"], "went away")
        decided = service.recently_decided(ids.founder_id, 10)
        assert [str(e.id) for e in decided] == [first["id"], second["id"]]
        assert service.count_pending(ids.founder_id) == 0


def test_a_write_transaction_refuses_to_commit_changes_made_outside_it(app, ids):
    import pytest

    from console.database import write_transaction
    from console.extensions import db
    from console.models import Job

    with app.app_context():
        db.session.add(Job(id=ids.new("job"), founder_id=ids.founder_id))  # a stray change, in no transaction
        with pytest.raises(RuntimeError, match="would commit changes made outside it"):
            with write_transaction():
                pass
        db.session.rollback()
        with write_transaction() as session:  # inside, the same change is what it commits
            session.add(Job(id=ids.new("job"), founder_id=ids.founder_id))
        db.session.remove()


def test_the_caches_are_bounded_and_forget_the_least_recently_used(app, ids):
    from console.services import jobs

    with app.app_context():
        owners = jobs._known_owners()
        maxsize = owners.cache.maxsize
        assert maxsize == jobs._KNOWN_OWNERS_MAX
        for n in range(maxsize + 10):
            owners[f"cache-job-{n}"] = "f"
        assert len(owners) == maxsize and owners.get("cache-job-0") is None
        assert owners.get(f"cache-job-{maxsize + 9}") == "f"


def test_a_remembered_token_is_verified_again_after_its_time_in_the_cache(app, ids, monkeypatch):
    import time

    from conftest import mint_jwt
    from console import auth
    from console.errors import Unauthorized

    token = mint_jwt(ids.founder_id, exp_in=3600)
    with app.test_request_context():
        assert auth.verify_founder_token(token) == ids.founder_id
        cache = app.extensions["console_verified_tokens"]
        assert token in cache
        # The key behind it is withdrawn (here: the secret changes): the cached verdict stands
        # only until the entry expires, then the token is checked afresh and refused.
        monkeypatch.setitem(app.config, "JWT_SECRET", "a-rotated-secret-" + "x" * 32)
        assert auth.verify_founder_token(token) == ids.founder_id
        cache.cache.expire(time.monotonic() + auth._VERIFIED_FOR_SECONDS + 1)
        try:
            auth.verify_founder_token(token)
        except Unauthorized:
            pass
        else:
            raise AssertionError("a token was still accepted after its cache entry expired")

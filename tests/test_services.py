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

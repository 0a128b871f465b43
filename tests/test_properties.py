"""Property-based tests of the JSON API through Flask's test client, on both databases.

Each property throws generated input at one endpoint and checks what must hold whatever
the input: never a 5xx; a 2xx stores (and answers) exactly what was sent; a 4xx is RFC 9457
problem details and stores nothing at all — no escalation, no event, no half-applied
decision. Where the rules of SPEC §6 decide the outcome, a small oracle predicts it
(`OK`, `INVALID`); for inputs a correct server may reasonably either store or refuse
(text with NUL characters, which PostgreSQL cannot store; lenient coercions), it is
`EITHER`, and only the invariants are checked.

Every example uses fresh job (and, where it matters, founder) ids, so examples never see
each other's records. The signature normaliser has its own properties in
test_signatures.py.
"""
from __future__ import annotations

import base64
import datetime as dt
import json
import re
import uuid
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, event, example, given, note, settings
from hypothesis import strategies as st

from conftest import DEFAULT_OPTIONS, mint_jwt
from console.events import AGENT_EVENT_TYPES, SERVER_OWNED_EVENT_TYPES
from console.signatures import error_signature

# When a failing example holds long strings, Hypothesis warns that its report is large; the
# report is what we want to see, so that one warning is not turned into the error.
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr:hypothesis.errors.HypothesisWarning")

PROPERTY = settings(max_examples=80, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large, HealthCheck.large_base_example])
FEW = settings(PROPERTY, max_examples=50)

PROBLEM_JSON = "application/problem+json"
MAX_BODY = 256 * 1024
MAX_PAYLOAD = 16 * 1024
OK, INVALID, EITHER = "ok", "invalid", "either"
DROP = object()  # "leave this key out of the body"

ESCALATION_KEYS = {
    "id", "session_id", "job_id", "project_id", "founder_id", "error_type", "error_signature",
    "plain_english_problem", "attempts_summary", "recommended_action", "options", "status",
    "founder_decision", "founder_guidance", "created_at", "resolved_at", "occurrences", "last_seen_at",
    "expires_at", "on_expiry", "decided_by", "decided_via",  # SPEC §10
    "rule_id", "previous_decision",  # SPEC §12
}
OPTION_KEYS = {"value", "label", "description", "requires_guidance", "recommended"}
ENVELOPE_KEYS = {"id", "type", "job_id", "timestamp"}
OPTION_VALUE = re.compile(r"[A-Za-z0-9_.:-]{1,100}")


# --- strategies ----------------------------------------------------------------------------------

NASTY_STRINGS = [
    "", " ", "\t\n ", "\u3000", "\x1f", "\x00", "a\x00b", "\ud800", "x\udfffy", "\u202eevil", "\ufeff", "null",
    "None", "0", "-1", "1e400", "NaN", "true", "💥", "👩‍👩‍👧", "Ωmega", "<script>alert(1)</script>",
    "' OR 1=1 --", "%00", "../../etc/passwd", "\\", '"', "skip_feature", " skip_feature ", "provide_guidance",
]
# Long strings are built by .map(), never listed: Hypothesis warns (an error here) about huge strategy reprs.
LENGTHS = [100, 101, 255, 256, 10_000, 10_001]

strings = st.one_of(
    st.text(max_size=40),
    st.text(st.characters(codec="utf-8", exclude_categories=[]), max_size=20),  # control characters too
    st.sampled_from(NASTY_STRINGS),
    st.tuples(st.sampled_from("aé💥"), st.sampled_from(LENGTHS)).map(lambda c_n: c_n[0] * c_n[1]),
    st.builds(lambda a, b, c: a + b + c, st.text(max_size=5), st.sampled_from(["\x00", "\ud83d", "\udc00", "\n"]),
              st.text(max_size=5)),
    st.integers(min_value=90, max_value=110).map(lambda n: "p" * n),
    st.integers(min_value=250, max_value=260).map(lambda n: "i" * n),
    st.integers(min_value=9_995, max_value=10_005).map(lambda n: "t" * n),
)
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=-(2**70), max_value=2**70),
                    st.floats(allow_nan=False, allow_infinity=False), strings)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
junk = st.one_of(scalars, st.lists(json_values, max_size=3), st.dictionaries(strings, json_values, max_size=3))


KEEP = object()  # "the valid value the test fills in (fresh ids, a unique error message)"

option_values = st.one_of(st.from_regex(OPTION_VALUE, fullmatch=True), strings)
_option_extras = {
    "description": st.one_of(st.text(max_size=60), st.text(max_size=60), junk),
    "requires_guidance": st.one_of(st.none(), st.booleans(), junk),
    "recommended": st.one_of(st.none(), st.booleans(), junk),
}
valid_ish_option = st.one_of(
    st.fixed_dictionaries({"value": option_values, "label": st.one_of(st.text(min_size=1, max_size=30), junk)},
                          optional=_option_extras),
    st.fixed_dictionaries({"value": option_values}, optional={**_option_extras, "label": junk, "extra": junk}),
)
options_lists = st.one_of(
    st.just(KEEP),
    st.just(DROP),
    st.lists(st.one_of(valid_ish_option, valid_ish_option, junk), max_size=12),
    st.lists(valid_ish_option, max_size=11, unique_by=lambda o: repr(o.get("value"))),
    junk,
)


def mostly_valid(valid: dict[str, Any], mutations: dict[str, st.SearchStrategy], *, at_most: int = 3):
    """Bodies that are mostly valid: up to `at_most` fields replaced by junk or left out (and, now
    and then, not an object at all) — so that both the accepted and the refused paths are exercised."""

    @st.composite
    def bodies(draw):
        if draw(st.integers(0, 9)) == 0:
            return draw(junk)  # not even an object
        body = {name: draw(value) if isinstance(value, st.SearchStrategy) else value for name, value in valid.items()}
        for name in sorted(draw(st.sets(st.sampled_from(sorted(mutations)), max_size=at_most))):
            body[name] = draw(mutations[name])
        return body

    return bodies()


def junk_or(*strategies: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(st.just(DROP), junk, strings, *strategies)


create_bodies = mostly_valid(
    {"session_id": KEEP, "project_id": KEEP, "founder_id": KEEP,
     "error_type": st.sampled_from(["KeyError", "TimeoutError", "E" * 100, "类型错误"]),
     "plain_english_problem": KEEP, "recommended_action": KEEP,
     "attempts_summary": st.lists(st.text(min_size=1, max_size=30), max_size=3),
     "options": KEEP, "error_message": KEEP},
    {"session_id": junk_or(), "project_id": junk_or(), "founder_id": junk_or(),
     "error_type": junk_or(st.sampled_from(["E" * 101, "  "])),
     "plain_english_problem": junk_or(), "recommended_action": junk_or(),
     "attempts_summary": junk_or(st.lists(strings, max_size=52)),
     "options": options_lists,
     "error_message": junk_or(st.none()),
     "error_signature": junk_or(st.none(), st.text(min_size=1, max_size=30)),
     "unexpected": junk, "id": junk, "status": junk, "occurrences": junk},
)


def build(template: Any, fresh: dict[str, Any]) -> Any:
    """The body to send: KEEP replaced by the fresh valid value, DROP keys left out."""
    if not isinstance(template, dict):
        return template
    body = {}
    for key, value in template.items():
        if value is DROP:
            continue
        body[key] = fresh[key] if value is KEEP else value
    return body


# --- helpers -------------------------------------------------------------------------------------

def _reject_constant(name: str):
    raise AssertionError(f"the response is not JSON: it contains {name}")


def strict_json(resp) -> Any:
    """The response body as RFC 8259 JSON (Python's parser would accept NaN and Infinity)."""
    return json.loads(resp.get_data(as_text=True), parse_constant=_reject_constant)


def assert_problem(resp) -> dict:
    assert 400 <= resp.status_code < 500, (resp.status_code, resp.get_data(as_text=True)[:500])
    assert resp.mimetype == PROBLEM_JSON, resp.mimetype
    body = strict_json(resp)
    assert body["status"] == resp.status_code
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    if resp.status_code == 422:
        assert isinstance(body["errors"], list) and body["errors"], body
        for error in body["errors"]:
            assert set(error) == {"field", "message"}, error
            assert isinstance(error["field"], str) and isinstance(error["message"], str), error
    if resp.status_code == 401:
        assert resp.headers.get("WWW-Authenticate", "").startswith("Bearer")
    return body


def assert_not_5xx(resp) -> None:
    assert resp.status_code < 500, (resp.status_code, resp.get_data(as_text=True)[:500])
    if resp.status_code >= 400:
        assert_problem(resp)


def assert_status_as_predicted(resp, body: Any, verdict: str, success: int) -> None:
    """The status the oracle's verdict predicts: `success` for OK, 422 for INVALID, either
    for what a correct server may store or refuse; 413 and 400 for oversized and non-object
    bodies whatever the verdict. Records verdict -> status for hypothesis's statistics."""
    event(f"{verdict} -> {resp.status_code}")
    assert_not_5xx(resp)
    detail = resp.get_data(as_text=True)[:1000]
    if size(body) > MAX_BODY:
        assert resp.status_code == 413
    elif not isinstance(body, dict):
        assert resp.status_code == 400, detail
    elif verdict == OK:
        assert resp.status_code == success, detail
    elif verdict == INVALID:
        assert resp.status_code == 422, detail
    else:
        assert resp.status_code in (success, 422), detail


def shorten(value: Any, limit: int = 600) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} chars)"


def post_json(client, url: str, body: Any, headers: dict):
    """POST exactly json.dumps(body) (so its size is known), as application/json."""
    return client.post(url, data=json.dumps(body), content_type="application/json", headers=headers)


def size(body: Any) -> int:
    return len(json.dumps(body).encode())


def strings_in(value: Any):
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from strings_in(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from strings_in(item)


def has_surrogate(value: Any) -> bool:
    return any(0xD800 <= ord(c) <= 0xDFFF for s in strings_in(value) for c in s)


def has_nul(value: Any) -> bool:
    return any("\x00" in s for s in strings_in(value))


def is_text(value: Any, low: int, high: int, *, not_blank: bool = False) -> bool:
    return (isinstance(value, str) and low <= len(value) <= high and not has_surrogate(value)
            and (not not_blank or bool(value.strip())))


IDENTIFIERS = {"session_id", "job_id", "project_id", "founder_id", "error_type", "error_signature"}
CONTROL_OR_SEPARATOR = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def is_id(value: Any, low: int, high: int, *, not_blank: bool = False) -> bool:
    """SPEC §16: an identifier is text without control characters or line separators."""
    return is_text(value, low, high, not_blank=not_blank) and not CONTROL_OR_SEPARATOR.search(value)


def json_equal(a: Any, b: Any) -> bool:
    """Equal as JSON documents: numbers compare as numbers (1e300 may come back as 1000…0
    from PostgreSQL's jsonb, which is the same JSON number)."""
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return a is b or (a == b and type(a) is type(b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b if isinstance(a, int) and isinstance(b, int) else float(a) == float(b)
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    return False


def parse_timestamp(value: Any) -> dt.datetime:
    assert isinstance(value, str), value
    parsed = dt.datetime.fromisoformat(value)
    assert parsed.utcoffset() is not None, f"timestamp without a UTC offset: {value}"
    return parsed


def job_escalations(client, job_id: str, headers: dict) -> list:
    resp = client.get(f"/api/jobs/{quote(job_id, safe='')}/escalations", headers=headers)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return strict_json(resp)


def job_events(client, job_id: str, headers: dict) -> list:
    resp = client.get(f"/api/jobs/{quote(job_id, safe='')}/events?limit=500", headers=headers)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    page = strict_json(resp)
    assert isinstance(page["next_after"], int)
    return page["items"]


def assert_nothing_stored(client, job_id: str, agent: dict) -> None:
    assert job_escalations(client, job_id, agent) == []
    assert job_events(client, job_id, agent) == []


def founder_headers(founder_id: str) -> dict:
    return {"Authorization": f"Bearer {mint_jwt(founder_id)}"}


# --- create --------------------------------------------------------------------------------------

REQUIRED_CREATE = {"session_id": 255, "project_id": 100, "founder_id": 255, "error_type": 100,
                   "plain_english_problem": 10_000, "recommended_action": 10_000}


def lax_bool(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return OK
    if isinstance(value, (int, float, str)):
        return EITHER  # pydantic's lax mode reads 1, "yes", "true"… as booleans
    return INVALID


def option_verdict(option: Any) -> str:
    if not isinstance(option, dict) or not set(option) <= OPTION_KEYS:
        return INVALID
    value, label = option.get("value"), option.get("label")
    if not (isinstance(value, str) and OPTION_VALUE.fullmatch(value)):
        return INVALID
    if not is_text(label, 1, 500):
        return INVALID
    if "description" in option and not is_text(option["description"], 0, 10_000):
        return INVALID
    verdicts = [lax_bool(option.get(key)) for key in ("requires_guidance", "recommended")]
    return INVALID if INVALID in verdicts else EITHER if EITHER in verdicts else OK


def create_verdict(body: Any) -> str:
    if not isinstance(body, dict):
        return INVALID
    verdict = OK
    for field, longest in REQUIRED_CREATE.items():
        check = is_id if field in IDENTIFIERS else is_text
        if not check(body.get(field), 1, longest, not_blank=True):
            return INVALID
    attempts = body.get("attempts_summary", [])
    if not isinstance(attempts, list) or len(attempts) > 50 or not all(is_text(a, 1, 10_000) for a in attempts):
        return INVALID
    options = body.get("options", [])
    if not isinstance(options, list) or len(options) > 10:
        return INVALID
    for option in options:
        v = option_verdict(option)
        if v == INVALID:
            return INVALID
        if v == EITHER:
            verdict = EITHER
    values = [o["value"] for o in options]
    if len(values) != len(set(values)):
        return INVALID
    message, signature = body.get("error_message"), body.get("error_signature")
    if (message is None) == (signature is None):
        return INVALID
    if message is not None and not is_text(message, 1, 10_000):
        return INVALID
    if signature is not None and not is_id(signature, 1, 255):
        return INVALID
    stored = {k: v for k, v in body.items() if k in REQUIRED_CREATE or k in ("attempts_summary", "options",
                                                                             "error_signature")}
    if has_nul(stored):
        return EITHER  # PostgreSQL cannot store NUL: refusing it (422) is as right as storing it
    return verdict


def expected_options(options: list[dict]) -> list[dict]:
    out = []
    for option in options:
        expected = {"value": option["value"], "label": option["label"], "description": option.get("description", "")}
        for key in ("requires_guidance", "recommended"):
            if option.get(key) is not None:
                expected[key] = option[key]
        out.append(expected)
    return out


def assert_escalation_shape(record: Any) -> None:
    assert isinstance(record, dict) and set(record) == ESCALATION_KEYS, record
    uuid.UUID(record["id"])
    assert record["status"] in ("pending", "resolved", "skipped", "expired")
    parse_timestamp(record["created_at"])
    parse_timestamp(record["last_seen_at"])
    if record["resolved_at"] is not None:
        parse_timestamp(record["resolved_at"])
    assert isinstance(record["occurrences"], int) and record["occurrences"] >= 1


def assert_created_as_sent(record: dict, body: dict, job_id: str) -> None:
    assert_escalation_shape(record)
    for field in REQUIRED_CREATE:
        assert record[field] == body[field], field
    assert record["job_id"] == job_id
    assert record["attempts_summary"] == body.get("attempts_summary", [])
    sent_options = body.get("options", [])
    assert len(record["options"]) == len(sent_options)
    for stored, sent in zip(record["options"], expected_options(sent_options)):
        for key in ("requires_guidance", "recommended"):  # lax booleans: any bool for a non-bool
            if key in sent and not isinstance(sent[key], bool):
                assert isinstance(stored.get(key), bool)
                sent[key] = stored[key]
        assert stored == sent
    if body.get("error_signature") is not None:
        assert record["error_signature"] == body["error_signature"]
    else:
        assert record["error_signature"] == error_signature(body["project_id"], body["error_type"],
                                                            body["error_message"])
    assert "error_message" not in record
    assert (record["status"], record["founder_decision"], record["founder_guidance"], record["resolved_at"],
            record["occurrences"]) == ("pending", None, None, None, 1)


@PROPERTY
@given(template=create_bodies)
@example(template={"session_id": KEEP, "project_id": KEEP, "founder_id": KEEP, "error_type": "KeyError",
                   "plain_english_problem": "a\x00b", "recommended_action": KEEP, "error_message": KEEP})
@example(template={"session_id": KEEP, "project_id": KEEP, "founder_id": KEEP, "error_type": "KeyError",
                   "plain_english_problem": KEEP, "recommended_action": KEEP, "error_message": KEEP,
                   "attempts_summary": ["tried \x00"]})
@example(template={"session_id": KEEP, "project_id": KEEP, "founder_id": KEEP, "error_type": "KeyError",
                   "plain_english_problem": "\ud800", "recommended_action": KEEP, "error_message": KEEP})
@example(template={"session_id": KEEP, "project_id": KEEP, "founder_id": KEEP, "error_type": "KeyError",
                   "plain_english_problem": KEEP, "recommended_action": KEEP, "error_message": KEEP,
                   "options": [{"value": "ok\n", "label": "trailing newline"}]})
def test_create_never_fails_and_stores_exactly_or_nothing(client, agent, ids, template):
    job_id = ids.new("job")
    fresh = {"session_id": ids.new("sess"), "project_id": ids.new("proj"), "founder_id": ids.new("founder"),
             "plain_english_problem": "The signup page cannot find the user record.",
             "recommended_action": "Build a simpler version without the lookup.",
             "error_message": f"KeyError: 'user' {uuid.uuid4()}", "options": [dict(o) for o in DEFAULT_OPTIONS]}
    body = build(template, fresh)
    verdict = create_verdict(body)
    note(f"body={shorten(body)} verdict={verdict}")

    resp = post_json(client, f"/api/jobs/{job_id}/escalations", body, agent)
    assert_status_as_predicted(resp, body, verdict, success=201)

    if resp.status_code >= 400:
        assert_nothing_stored(client, job_id, agent)
        return
    record = strict_json(resp)
    assert_created_as_sent(record, body, job_id)
    # It is stored as answered, visible to its founder, and announced exactly once.
    for headers in (agent, founder_headers(body["founder_id"])):
        again = client.get(f"/api/escalations/{record['id']}", headers=headers)
        assert again.status_code == 200 and strict_json(again) == record
        assert job_escalations(client, job_id, headers) == [record]
    events = job_events(client, job_id, agent)
    assert [e["type"] for e in events] == ["agent.waiting_for_input"]
    assert events[0]["escalation_id"] == record["id"]
    assert events[0]["plain_english_problem"] == record["plain_english_problem"]


# --- resolve and skip ----------------------------------------------------------------------------

OPTION_SETS = {
    "default": [dict(o) for o in DEFAULT_OPTIONS],
    "none": [],
    "requires_guidance": [
        {"value": "do_it_my_way", "label": "Do it my way", "description": "", "requires_guidance": True},
        {"value": "skip", "label": "Skip it", "description": "Skip and continue"},
    ],
}
ALL_OPTION_VALUES = sorted({o["value"] for options in OPTION_SETS.values() for o in options})

valid_decisions = st.one_of(
    st.sampled_from(ALL_OPTION_VALUES),
    st.builds(lambda pad, v, end: pad + v + end, st.sampled_from([" ", "\t", "\n ", "\u3000"]),
              st.sampled_from(ALL_OPTION_VALUES), st.sampled_from(["", " ", "\n"])),
)
resolve_bodies = mostly_valid(
    {"decision": valid_decisions,
     "guidance": st.one_of(st.just(DROP), st.none(), st.text(max_size=80),
                           st.sampled_from(["   ", "\n\t", " use the v2 API "]))},
    {"decision": junk_or(), "guidance": junk_or(st.none()), "extra": junk},
    at_most=2,
)


def resolve_verdict(body: Any, options: list[dict]) -> str:
    if not isinstance(body, dict):
        return INVALID
    decision, guidance = body.get("decision"), body.get("guidance")
    if not is_text(decision, 0, 255) or (guidance is not None and not is_text(guidance, 0, 10_000)):
        return INVALID
    decision = decision.strip()
    if not decision or (options and decision not in {o["value"] for o in options}):
        return INVALID
    option = next((o for o in options if o["value"] == decision), None)
    needs_guidance = decision == "provide_guidance" or bool(option and option.get("requires_guidance"))
    if needs_guidance and not (guidance or "").strip():
        return INVALID
    return EITHER if has_nul([decision, guidance]) else OK


def resolved_events(client, job_id: str, agent: dict) -> list[dict]:
    return [e for e in job_events(client, job_id, agent) if e["type"] == "agent.escalation_resolved"]


def assert_still_pending(client, escalation: dict, agent: dict) -> None:
    current = client.get(f"/api/escalations/{escalation['id']}", headers=agent)
    assert current.status_code == 200
    record = strict_json(current)
    assert (record["status"], record["founder_decision"], record["founder_guidance"], record["resolved_at"]) == \
        ("pending", None, None, None)
    assert resolved_events(client, escalation["job_id"], agent) == []


@PROPERTY
@given(option_set=st.sampled_from(sorted(OPTION_SETS)), body=resolve_bodies)
@example(option_set="none", body={"decision": "anything\x00"})
@example(option_set="default", body={"decision": "skip_feature", "guidance": "use \x00 carefully"})
@example(option_set="default", body={"decision": "provide_guidance", "guidance": "  \n "})
@example(option_set="requires_guidance", body={"decision": " do_it_my_way ", "guidance": None})
def test_resolve_never_fails_and_decides_exactly_or_not_at_all(client, agent, founder, ids, make_escalation,
                                                               option_set, body):
    options = OPTION_SETS[option_set]
    body = build(body, {})
    escalation = make_escalation(job_id=ids.new("job"), options=options)
    verdict = resolve_verdict(body, options)
    note(f"options={option_set} body={shorten(body)} verdict={verdict}")

    resp = post_json(client, f"/api/escalations/{escalation['id']}/resolve", body, founder())
    assert_status_as_predicted(resp, body, verdict, success=200)

    if resp.status_code >= 400:
        assert_still_pending(client, escalation, agent)
        return
    record = strict_json(resp)
    assert_escalation_shape(record)
    decision = body["decision"].strip()
    guidance = (body.get("guidance") or "").strip() or None
    assert not options or decision in {o["value"] for o in options}
    assert (record["status"], record["founder_decision"], record["founder_guidance"]) == \
        ("resolved", decision, guidance)
    resolved_at = parse_timestamp(record["resolved_at"])
    assert resolved_at >= parse_timestamp(record["created_at"])
    stored = client.get(f"/api/escalations/{escalation['id']}", headers=agent)
    assert strict_json(stored) == record
    (announced,) = resolved_events(client, escalation["job_id"], agent)
    assert (announced["escalation_id"], announced["status"], announced["resolution"], announced["guidance"]) == \
        (record["id"], "resolved", decision, guidance)
    assert parse_timestamp(announced["resolved_at"]) == resolved_at
    # The very same decision again is a safe retry: 200, the same record, no second event.
    retry = post_json(client, f"/api/escalations/{escalation['id']}/resolve", body, founder())
    assert retry.status_code == 200 and strict_json(retry) == record
    assert len(resolved_events(client, escalation["job_id"], agent)) == 1


skip_bodies = st.one_of(
    st.just(DROP),  # no body at all
    mostly_valid({"reason": st.one_of(st.just(DROP), st.none(), st.text(max_size=80))},
                 {"reason": junk_or(st.none()), "extra": junk}, at_most=2),
)


@FEW
@given(body=skip_bodies)
@example(body={"reason": "the job ended \x00"})
@example(body={"reason": "  "})
def test_skip_never_fails_and_withdraws_exactly_or_not_at_all(client, agent, ids, make_escalation, body):
    if body is not DROP:
        body = build(body, {})
    escalation = make_escalation(job_id=ids.new("job"))
    url = f"/api/escalations/{escalation['id']}/skip"
    note(f"body={'(none)' if body is DROP else shorten(body)}")
    if body is DROP:
        resp, verdict = client.post(url, headers=agent), OK
    else:
        resp = post_json(client, url, body, agent)
        reason = body.get("reason") if isinstance(body, dict) else None
        if not isinstance(body, dict) or (reason is not None and not is_text(reason, 0, 10_000)):
            verdict = INVALID
        else:
            verdict = EITHER if has_nul(reason) else OK

    event(f"{verdict} -> {resp.status_code}")
    assert_not_5xx(resp)
    if body is not DROP and size(body) > MAX_BODY:
        assert resp.status_code == 413
    elif verdict == OK:
        assert resp.status_code == 200, resp.get_data(as_text=True)[:1000]
    elif verdict == INVALID:
        assert resp.status_code in (400, 422), resp.get_data(as_text=True)[:1000]
    if resp.status_code >= 400:
        assert_still_pending(client, escalation, agent)
        return
    record = strict_json(resp)
    assert_escalation_shape(record)
    assert (record["status"], record["founder_decision"]) == ("skipped", None)
    parse_timestamp(record["resolved_at"])
    (announced,) = resolved_events(client, escalation["job_id"], agent)
    assert (announced["escalation_id"], announced["status"], announced["resolution"]) == \
        (record["id"], "skipped", None)
    sent_reason = body.get("reason") if isinstance(body, dict) else None
    assert announced["reason"] == ((sent_reason or "").strip() or None)


# --- job events ----------------------------------------------------------------------------------

event_types = st.one_of(
    st.sampled_from(sorted(AGENT_EVENT_TYPES)),
    st.sampled_from(sorted(AGENT_EVENT_TYPES)),
    st.sampled_from(sorted(SERVER_OWNED_EVENT_TYPES)),
    st.sampled_from(["agent.retrying ", "AGENT.RETRYING", "agent", "heartbeat", "message", ""]),
    strings, junk, st.just(DROP),
)
payload_keys = st.one_of(st.text(max_size=12), st.sampled_from(["id", "type", "job_id", "timestamp", "attempt",
                                                                 "reason", "error_type", "founder_id", "\x00", ""]))
payloads = st.one_of(
    st.dictionaries(payload_keys, json_values, max_size=6),
    # near the 16 KiB limit, counted in ASCII JSON and in UTF-8
    st.builds(lambda n, extra: {"blob": "x" * n, **extra}, st.integers(16_350, 16_400),
              st.dictionaries(st.sampled_from(["attempt", "reason"]), st.integers(0, 9), max_size=1)),
    st.builds(lambda n: {"blob": "é" * n}, st.sampled_from([2_700, 2_727, 2_728, 2_729, 2_760, 8_180, 8_200])),
)
event_bodies = st.builds(
    lambda body, payload: {**payload, **body} if isinstance(body, dict) else body,
    mostly_valid({"type": st.sampled_from(sorted(AGENT_EVENT_TYPES)), "founder_id": KEEP, "project_id": KEEP},
                 {"type": event_types, "founder_id": junk_or(), "project_id": junk_or(st.none())}, at_most=2),
    payloads,
)


def event_verdict(body: Any) -> str:
    if not isinstance(body, dict):
        return INVALID
    payload = {k: v for k, v in body.items() if k not in ("type", "founder_id", "project_id")}
    if not (isinstance(body.get("type"), str) and body["type"] in AGENT_EVENT_TYPES):
        return INVALID
    if not is_id(body.get("founder_id"), 1, 255):
        return INVALID
    project_id = body.get("project_id")
    if project_id is not None and not is_id(project_id, 1, 100):
        return INVALID
    if set(payload) & ENVELOPE_KEYS or has_surrogate(list(payload)):
        return INVALID
    with_project = {**payload, "project_id": project_id}
    sizes = [len(json.dumps(p, ensure_ascii=ascii).encode(errors="surrogatepass"))
             for p in (payload, with_project) for ascii in (True, False)]
    if min(sizes) > MAX_PAYLOAD:
        return INVALID
    if max(sizes) > MAX_PAYLOAD or has_nul(body) or has_surrogate(payload):
        return EITHER  # NUL and lone surrogates: jsonb cannot store them; either store exactly or refuse
    if not body["founder_id"].strip():
        return EITHER  # a blank founder id: create refuses it; events may too
    return OK


@PROPERTY
@given(template=event_bodies)
@example(template={"type": "agent.retrying", "founder_id": KEEP, "note": "a\x00b"})
@example(template={"type": "agent.retrying", "founder_id": KEEP, "\x00": 1})
@example(template={"type": "agent.retrying", "founder_id": KEEP, "note": "\ud800"})
@example(template={"type": "agent.build_paused", "founder_id": KEEP, "reason": "x", "timestamp": "now"})
@example(template={"type": "agent.escalation_resolved", "founder_id": KEEP})
@example(template={"type": "agent.retrying", "founder_id": KEEP, "big": 1e300, "small": 5e-324, "neg": -0.0})
def test_posted_events_round_trip_exactly_or_are_not_stored(client, agent, ids, template):
    job_id = ids.new("job")
    body = build(template, {"founder_id": ids.new("founder"), "project_id": ids.new("proj")})
    verdict = event_verdict(body)
    note(f"body={shorten(body)} verdict={verdict}")

    resp = post_json(client, f"/api/jobs/{job_id}/events", body, agent)
    assert_status_as_predicted(resp, body, verdict, success=201)

    if resp.status_code >= 400:
        assert job_events(client, job_id, agent) == []
        return
    envelope = strict_json(resp)
    payload = {k: v for k, v in body.items() if k not in ("type", "founder_id", "project_id")}
    if body.get("project_id") is not None:
        payload["project_id"] = body["project_id"]
    assert isinstance(envelope["id"], int) and envelope["id"] > 0
    parse_timestamp(envelope["timestamp"])
    expected = {**payload, "id": envelope["id"], "type": body["type"], "job_id": job_id,
                "timestamp": envelope["timestamp"]}
    assert json_equal(envelope, expected), (envelope, expected)
    for headers in (agent, founder_headers(body["founder_id"])):
        stored = job_events(client, job_id, headers)
        assert len(stored) == 1 and json_equal(stored[0], expected), (stored, expected)


# --- raw bodies ----------------------------------------------------------------------------------

def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


raw_bodies = st.one_of(
    st.binary(max_size=64),
    st.text(max_size=64).map(str.encode),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.sampled_from([b"", b" ", b"null", b"[]", b"{", b"{}", b'{"a":1,}', b"\xff\xfe{}", b"\xef\xbb\xbf{}",
                     b'{"a": NaN}', b'{"a": Infinity}', b'{"a": -Infinity}', b'{"a": 1e400}']),
    st.sampled_from([900, 1_000, 3_000, 100_000]).map(lambda depth: nested(depth).encode()),
    st.sampled_from([4_000, 5_000]).map(lambda digits: ("1" * digits).encode()),
)
content_types = st.sampled_from(["application/json", "application/json; charset=utf-8", "application/problem+json",
                                 "text/plain", "application/x-www-form-urlencoded", "multipart/form-data", None])


@FEW
@given(raw=raw_bodies, content_type=content_types)
@example(raw=nested(3_000).encode(), content_type="application/json")
@example(raw=b'{"type": "agent.retrying", "founder_id": "f", "attempt": NaN}', content_type="application/json")
@example(raw=b'{"type": "agent.retrying", "founder_id": "f", "attempt": Infinity}', content_type="application/json")
@example(raw=b'{"type": "agent.retrying", "founder_id": "f", "x": ' + nested(3_000).encode() + b"}",
         content_type="application/json")
def test_raw_bodies_never_fail_and_refusals_store_nothing(client, agent, founder, ids, make_escalation, raw,
                                                          content_type):
    note(f"raw={shorten(raw)} content_type={content_type!r}")
    escalation = make_escalation(job_id=ids.new("job"))
    headers = {"Content-Type": content_type} if content_type else {}
    other_job = ids.new("job")
    statuses = {}
    for name, url, who in (("create", f"/api/jobs/{other_job}/escalations", agent),
                           ("event", f"/api/jobs/{other_job}/events", agent),
                           ("resolve", f"/api/escalations/{escalation['id']}/resolve", founder()),
                           ("skip", f"/api/escalations/{escalation['id']}/skip", agent)):
        resp = client.post(url, data=raw, headers={**who, **headers})
        assert_not_5xx(resp)
        if resp.status_code < 300:
            strict_json(resp)
        statuses[name] = resp.status_code
    if statuses["create"] >= 400:
        assert job_escalations(client, other_job, agent) == []
    if statuses["event"] >= 400:
        assert all(e["type"] == "agent.waiting_for_input" for e in job_events(client, other_job, agent))
    if statuses["resolve"] >= 400 and statuses["skip"] >= 400:
        assert_still_pending(client, escalation, agent)


# --- query strings -------------------------------------------------------------------------------

def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


int_strings = st.one_of(
    st.integers(-5, 600).map(str), st.integers().map(str), st.integers(2**62, 2**64).map(str),
    st.sampled_from(["", " ", "1.0", "1.5", "1e3", "-0", "+5", "0x10", "5_0", "nan", "inf", "-inf", "１", "٣",
                     "9999999999999999999999999999", " 5 ", "null", "true"]),
    strings,
)
cursors = st.one_of(
    strings,
    json_values.map(lambda v: b64(json.dumps(v).encode())),
    st.tuples(st.one_of(st.sampled_from(["2020-01-01T00:00:00+00:00", "0001-01-01T00:00:00+14:00",
                                         "9999-12-31T23:59:59-14:00", "2020-01-01T00:00:00"]), json_values),
              st.one_of(st.uuids().map(lambda u: u.hex), json_values))
      .map(lambda pair: b64(json.dumps(list(pair)).encode())),
    st.binary(max_size=40).map(b64),
    st.just(501).map(lambda n: "x" * n),
)
statuses = st.one_of(st.sampled_from(["pending", "resolved", "skipped", "PENDING", "", "all", "pending "]), strings)
query_values = {"limit": int_strings, "after": int_strings, "cursor": cursors, "status": statuses,
                "wait": st.one_of(int_strings, st.sampled_from(["0", "0.001", "55", "55.0001", "1e-300"])),
                "project_id": strings, "job_id": strings}


def canonical_int(value: str) -> int | None:
    return int(value) if re.fullmatch(r"-?[0-9]{1,30}", value) else None


def int_verdict(value: str, low: int, high: int) -> str:
    number = canonical_int(value)
    if number is not None:
        return OK if low <= number <= high else INVALID
    if not value.strip() or re.search(r"[g-zG-Z]", value.replace("inf", "").replace("nan", "")):
        return INVALID if not re.search(r"[٠-٩０-９]", value) else EITHER
    return EITHER


def query_verdict(params: dict[str, str], allowed: set[str], limit_high: int = 500) -> str:
    verdicts = []
    for name, value in params.items():
        if name not in allowed:
            continue  # unknown parameters are ignored
        if name == "limit":
            verdicts.append(int_verdict(value, 1, limit_high))
        elif name == "after":
            verdicts.append(int_verdict(value, 0, 2**63 - 1))
        elif name == "status":
            verdicts.append(OK if value in ("pending", "resolved", "skipped") else INVALID)
        elif name in ("project_id", "job_id"):
            verdicts.append(INVALID if not 1 <= len(value) <= 255 else EITHER if "\x00" in value else OK)
        elif name == "cursor":
            verdicts.append(INVALID if len(value) > 500 else EITHER)
        elif name == "wait":
            try:
                number = float(value)
            except ValueError:
                verdicts.append(EITHER)
                continue
            verdicts.append(OK if 0 < number <= 55 and canonical_int(value) is not None else
                            INVALID if number != number or not 0 < number <= 55 else EITHER)
    return INVALID if INVALID in verdicts else EITHER if EITHER in verdicts else OK


def query_string(params: dict[str, str]) -> str:
    return "&".join(f"{quote(k, safe='')}={quote(v, safe='', errors='surrogatepass')}" for k, v in params.items())


@pytest.fixture
def settled_escalation(client, agent, make_escalation, ids):
    """A skipped escalation: `?wait=` on it answers at once (a pending one would hold the request)."""
    escalation = make_escalation(job_id=ids.new("job"))
    resp = client.post(f"/api/escalations/{escalation['id']}/skip", json={}, headers=agent)
    assert resp.status_code == 200
    return strict_json(resp)


@PROPERTY
@given(endpoint=st.sampled_from(["inbox", "job_escalations", "job_events", "escalation"]),
       as_agent=st.booleans(),
       params=st.dictionaries(st.sampled_from(sorted(query_values)), st.just(None), max_size=4).flatmap(
           lambda names: st.fixed_dictionaries({n: query_values[n] for n in names})))
@example(endpoint="inbox", as_agent=False,
         params={"cursor": b64(json.dumps(["2020-01-01T00:00:00+00:00", 5]).encode())})
@example(endpoint="inbox", as_agent=False, params={"cursor": b64(json.dumps(["2020-01-01T00:00:00+00:00",
                                                                             [1]]).encode())})
@example(endpoint="inbox", as_agent=False, params={"project_id": "p\x00"})
@example(endpoint="job_events", as_agent=True, params={"after": str(2**63), "limit": "0"})
@example(endpoint="escalation", as_agent=True, params={"wait": "nan"})
def test_query_strings_never_fail(client, agent, founder, ids, settled_escalation, endpoint, as_agent, params):
    owner = founder(settled_escalation["founder_id"])
    job = quote(settled_escalation["job_id"], safe="")
    url, allowed = {
        "inbox": ("/api/escalations", {"limit", "cursor", "status", "project_id", "job_id"}),
        "job_escalations": (f"/api/jobs/{job}/escalations", {"status", "limit", "cursor"}),  # paged: SPEC §16
        "job_events": (f"/api/jobs/{job}/events", {"after", "limit"}),
        "escalation": (f"/api/escalations/{settled_escalation['id']}", {"wait"}),
    }[endpoint]
    if endpoint == "inbox":
        as_agent = False  # founders only (the agent's 403 is covered elsewhere)
    note(f"GET {url}?{shorten(query_string(params))} as {'agent' if as_agent else 'founder'}")
    resp = client.get(f"{url}?{query_string(params)}", headers=agent if as_agent else owner)
    verdict = query_verdict(params, allowed, 200 if endpoint == "inbox" else 500)
    event(f"{endpoint}: {verdict} -> {resp.status_code}")

    assert_not_5xx(resp)
    if verdict == OK:
        assert resp.status_code == 200, resp.get_data(as_text=True)[:1000]
    elif verdict == INVALID:
        assert resp.status_code == 422, resp.get_data(as_text=True)[:1000]
    else:
        assert resp.status_code in (200, 422), resp.get_data(as_text=True)[:1000]
    if resp.status_code != 200:
        return
    body = strict_json(resp)
    if endpoint == "inbox":
        assert set(body) == {"items", "next_cursor"}
        for item in body["items"]:
            assert_escalation_shape(item)
            assert item["founder_id"] == settled_escalation["founder_id"]
    elif endpoint == "job_escalations":
        assert [e["id"] for e in body] in ([settled_escalation["id"]], [])
    elif endpoint == "job_events":
        assert set(body) == {"items", "next_after"} and isinstance(body["next_after"], int)
        assert all(e["job_id"] == settled_escalation["job_id"] for e in body["items"])
    else:
        assert body == settled_escalation


# --- ids in paths --------------------------------------------------------------------------------

path_ids = st.one_of(
    st.text(min_size=1, max_size=40),
    st.sampled_from(["0", "-1", ".", "..", "%", "%2F", "a/b", "null", " ", "\x00", "a\x00", "\ud800", "é", "💥",
                     str(uuid.UUID(int=0)), str(uuid.UUID(int=2**128 - 1)), "{" + str(uuid.uuid4()) + "}",
                     uuid.uuid4().hex, "urn:uuid:" + str(uuid.uuid4())]),
    st.sampled_from([254, 255, 256, 5000]).map(lambda n: "j" * n),
    st.uuids().map(str),
)


def enc(value: str) -> str:
    return quote(value, safe="", errors="surrogatepass")


@PROPERTY
@given(raw_id=path_ids)
@example(raw_id="\x00")
@example(raw_id="j" * 256)
def test_ids_in_paths_never_fail(app, client, agent, founder, ids, escalation_body, raw_id, monkeypatch):
    # Streams are closed unread below; should one be read, it still ends at once.
    monkeypatch.setitem(app.config, "SSE_MAX_STREAM_SECONDS", 0.2)
    me = founder(ids.new("stranger"))  # owns nothing: sees nothing, whatever the id
    x = enc(raw_id)
    note(f"raw_id={shorten(raw_id)} path segment={shorten(x)}")
    # An id with a "/" (or a dot segment) is not one path segment: no route, another route, or
    # werkzeug's redirect of "//" to "/".
    not_a_segment = "/" in raw_id or raw_id in (".", "..")
    other_route = (301, 308, 404, 405)
    for method, url, headers, body in (
        ("get", f"/api/escalations/{x}", agent, None),
        ("get", f"/api/escalations/{x}", me, None),
        ("get", f"/api/escalations/{x}?wait=0.01", agent, None),
        ("post", f"/api/escalations/{x}/resolve", me, {"decision": "skip_feature"}),
        ("post", f"/api/escalations/{x}/skip", agent, {}),
    ):
        resp = getattr(client, method)(url, headers=headers, json=body)
        assert resp.status_code in (other_route if not_a_segment else (404,)), \
            (url, resp.status_code, resp.get_data(as_text=True)[:300])
        if resp.status_code >= 400:
            assert_problem(resp)

    for headers in (agent, me):
        resp = client.get(f"/api/jobs/{x}/escalations", headers=headers)
        assert_not_5xx(resp)
        assert resp.status_code in ((200, *other_route) if not_a_segment else (200,))
        known = False
        if resp.status_code == 200:
            items = strict_json(resp)
            assert isinstance(items, list)
            for item in items:
                assert_escalation_shape(item)
            if headers is me:
                assert items == []
            known = bool(items)
        resp = client.get(f"/api/jobs/{x}/events", headers=headers)
        assert_not_5xx(resp)
        if resp.status_code == 200:
            page = strict_json(resp)
            if headers is me:
                assert page == {"items": [], "next_after": 0}
            known = known or bool(page["items"])
        resp = client.get(f"/api/jobs/{x}/events/stream", headers=headers)
        try:
            assert_not_5xx(resp)
            if not known and not not_a_segment:  # nobody ever escalated or posted on this job: unknown
                assert resp.status_code == 404, f"the stream of an unknown job answers {resp.status_code}, not 404"
        finally:
            resp.close()

    # Creating under that job id: stored under exactly that id, or refused with nothing stored.
    # (A lone surrogate cannot travel in a URL: the server reads U+FFFD in its place.)
    received = raw_id.encode(errors="surrogatepass").decode(errors="replace")
    job_ok = 1 <= len(received) <= 255 and not CONTROL_OR_SEPARATOR.search(received.replace("\x00", ""))
    marker = ids.new("marker")
    for kind, url, body in (("escalation", f"/api/jobs/{x}/escalations", escalation_body(session_id=marker)),
                            ("event", f"/api/jobs/{x}/events",
                             {"type": "agent.retrying", "founder_id": ids.founder_id, "marker": marker})):
        resp = client.post(url, json=body, headers=agent)
        assert_not_5xx(resp)
        if not_a_segment or resp.status_code == 409:
            continue  # another route; or the job id was taken by another founder in an earlier test
        if job_ok and "\x00" not in received:
            assert resp.status_code == 201, (kind, resp.get_data(as_text=True)[:500])
        elif not job_ok:
            assert resp.status_code == 422, (kind, resp.status_code, resp.get_data(as_text=True)[:500])
        if resp.status_code == 201:
            assert strict_json(resp)["job_id"] == received
        else:
            listed = strict_json(client.get(f"/api/jobs/{x}/{kind}s", headers=agent))
            items = listed if kind == "escalation" else listed["items"]
            assert not [item for item in items if marker in (item.get("session_id"), item.get("marker"))]

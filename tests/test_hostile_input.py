"""Hostile input meets one strict rule and a clear 4xx, in the real server (gunicorn, as
production runs it): numbers in headers are ASCII digits within bounds, and the body limit
holds for chunked bodies too (issue 14)."""
from __future__ import annotations

import http.client
import json

import pytest

from conftest import AGENT_TOKEN, GunicornServer, migrate
from console.inputs import ascii_int
from console.webhooks import retry_after_seconds

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('hostile') / 'hostile.db'}"
    migrate(url)
    with GunicornServer(url, workers=1) as running:
        yield running


def request(server, method, path, body=None, headers=None, chunked=False):
    host, port = server.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=20)
    try:
        connection.request(method, path, body=body, encode_chunked=chunked,
                           headers={"Authorization": f"Bearer {AGENT_TOKEN}", **(headers or {})})
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type"), response.read()
    finally:
        connection.close()


@pytest.mark.parametrize("value", ["²", "٣", "1٣", "-1", "+1", "1e3", " 1 2", "9" * 20, "9223372036854775808"])
def test_a_last_event_id_that_is_not_ascii_digits_within_bounds_is_422_naming_the_header(server, value):
    status, content_type, body = request(server, "GET", "/api/jobs/job-hostile/events/stream",
                                         headers={"Last-Event-ID": value.encode().decode("latin-1")})
    assert status == 422, body
    assert content_type == "application/problem+json"
    assert json.loads(body)["errors"][0]["field"] == "Last-Event-ID"


def test_a_chunked_body_over_the_limit_is_refused_with_413_not_cut_and_parsed(server):
    big = json.dumps({"type": "agent.thinking", "founder_id": "f", "note": "x" * (300 * 1024)}).encode()

    def chunks():
        for start in range(0, len(big), 16 * 1024):
            yield big[start:start + 16 * 1024]

    status, content_type, body = request(server, "POST", "/api/jobs/job-hostile/events", body=chunks(),
                                         headers={"Content-Type": "application/json"}, chunked=True)
    assert status == 413, (body, server.log_text()[-3000:])
    assert content_type == "application/problem+json"
    small = json.dumps({"type": "agent.thinking", "founder_id": "f"}).encode()
    status, _, body = request(server, "POST", "/api/jobs/job-hostile/events", body=iter([small]),
                              headers={"Content-Type": "application/json"}, chunked=True)
    assert status == 201, body  # a chunked body within the limit is fine


def test_a_body_whose_chunked_framing_is_broken_is_400_not_500(server):
    broken = b"not-hex\r\n{}\r\n0\r\n\r\n"  # a chunk size that is no number
    status, content_type, body = request(server, "POST", "/api/jobs/job-hostile/events", body=broken,
                                         headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    assert status == 400, (body, server.log_text()[-2000:])
    assert content_type == "application/problem+json" and b"body" in body


def test_the_one_rule_for_numbers_in_text():
    assert ascii_int("0") == 0 and ascii_int("42") == 42 and ascii_int(str(2**63 - 1)) == 2**63 - 1
    for bad in ("", "²", "٣", "-1", "1.0", "1e3", " 1", str(2**63)):
        assert ascii_int(bad) is None, bad
    assert ascii_int("120", maximum=100) is None


def test_retry_after_takes_ascii_seconds_or_an_http_date_and_nothing_else():
    import datetime as dt

    at = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
    assert retry_after_seconds("30", at) == 30.0
    assert retry_after_seconds("Tue, 01 Dec 2026 12:01:00 GMT", at) == 60.0
    assert retry_after_seconds("٣٠", at) is None

"""Fault drill: the database goes away while requests run, then comes back (SPEC §6).

A TCP proxy in front of PostgreSQL plays the outage (it refuses and cuts every connection),
so the drill never touches the shared server that other tests use.
"""
import json
import socket
import threading
import time
import urllib.request
from urllib.parse import urlsplit, urlunsplit

import pytest

from conftest import AGENT_TOKEN, ThreadedServer, dispose, free_port, make_app, migrate, mint_jwt

pytestmark = pytest.mark.slow


class OutageProxy:
    """Forwards TCP to PostgreSQL until down(), which refuses new connections and cuts the
    open ones; up() serves again on the same port.

    The proxy runs in the app's process, so a socket is closed only by the last of its
    pair's two pump threads, never while another thread may still read or write it: a
    closed descriptor can be reused at once by one of the app's own sockets, and a stale
    pump would then read the app's replies (the request hangs) or write into them.
    """

    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self.port = free_port()
        self.pairs: set[tuple[socket.socket, socket.socket]] = set()
        self.lock = threading.Lock()
        self.listener = None
        self.serving = False

    def up(self):
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        with self.lock:
            self.listener, self.serving = listener, True
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self):
        with self.lock:
            self.serving = False
            pairs, self.pairs = self.pairs, set()
        # shutdown() wakes the accept() blocked in the other thread, which then closes the
        # listener; close() alone would leave it listening.
        _shutdown(self.listener)
        for pair in pairs:
            for s in pair:
                _shutdown(s)

    def _accept(self, listener):
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                listener.close()
                return
            upstream = socket.create_connection(self.target)
            pair = (client, upstream)
            with self.lock:
                cut = not self.serving  # down() ran while this one was being accepted
                if not cut:
                    self.pairs.add(pair)
            if cut:
                for s in pair:
                    s.close()
                continue
            running = [2]  # pumps of this pair still running
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst, pair, running), daemon=True).start()

    def _pump(self, src, dst, pair, running):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in pair:  # wakes the other pump of the pair
            _shutdown(s)
        with self.lock:
            running[0] -= 1
            if running[0]:
                return  # the other pump still runs; it closes the pair
            self.pairs.discard(pair)
        for s in pair:
            s.close()


def _shutdown(s):
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def call(base, method, path, body=None, token=AGENT_TOKEN, timeout=20):
    request = urllib.request.Request(base + path, method=method, data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read()), resp.headers, time.monotonic() - started
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), error.headers, time.monotonic() - started


@pytest.fixture
def outage(postgres):
    url = postgres.create("console_outage")
    migrate(url)
    parts = urlsplit(url)
    proxy = OutageProxy(parts.hostname, parts.port or 5432)
    proxy.up()
    proxied = urlunsplit((parts.scheme, f"{parts.username}@127.0.0.1:{proxy.port}", parts.path, "", ""))
    app = make_app(proxied)
    with ThreadedServer(app) as server:
        yield server, proxy
    dispose(app)
    postgres.drop(url)


def escalate(base, job, founder):
    status, body, _, _ = call(base, "POST", f"/api/jobs/{job}/escalations", {
        "session_id": "s", "project_id": "p", "founder_id": founder, "error_type": "E", "plain_english_problem": "x",
        "recommended_action": "y", "error_signature": f"sig-{time.monotonic_ns()}",
        "options": [{"value": "a", "label": "A"}, {"value": "b", "label": "B"}]})
    assert status == 201, body
    return body


def test_database_outage_answers_503_and_the_app_recovers_by_itself(outage, ids):
    server, proxy = outage
    founder = mint_jwt(ids.founder_id)
    escalations = [escalate(server.url, ids.job_id, ids.founder_id) for _ in range(30)]
    assert call(server.url, "GET", "/api/escalations", token=founder)[0] == 200

    # Resolves in flight while the database goes away: each is all-or-nothing.
    results = {}

    def resolve(esc):
        results[esc["id"]] = call(server.url, "POST", f"/api/escalations/{esc['id']}/resolve", {"decision": "a"},
                                  token=founder)[0]

    threads = [threading.Thread(target=resolve, args=(e,)) for e in escalations]
    for i, t in enumerate(threads):
        t.start()
        if i == len(threads) // 2:
            proxy.down()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads), "a resolve hung through the outage"

    status, body, headers, elapsed = call(server.url, "GET", "/api/escalations", token=founder)
    assert status == 503 and body["status"] == 503 and body["detail"] and elapsed < 10
    assert headers["Content-Type"] == "application/problem+json" and "Traceback" not in json.dumps(body)
    assert call(server.url, "GET", "/healthz")[0] == 503
    # the documents PostgreSQL builds (read off the driver: database.fetch_one) say 503 too
    for path in (f"/api/escalations/{escalations[0]['id']}", f"/api/jobs/{ids.job_id}/escalations"):
        status, body, headers, _ = call(server.url, "GET", path, token=founder)
        assert status == 503 and headers["Content-Type"] == "application/problem+json", (path, body)
    assert set(results.values()) <= {200, 503}

    proxy.up()
    deadline = time.monotonic() + 10
    while call(server.url, "GET", "/healthz")[0] != 200:
        assert time.monotonic() < deadline, "the app did not recover within 10 s"
        time.sleep(0.2)
    assert call(server.url, "GET", "/api/escalations", token=founder)[0] == 200

    events = call(server.url, "GET", f"/api/jobs/{ids.job_id}/events?limit=500")[1]["items"]
    resolved_events = {e["escalation_id"] for e in events if e["type"] == "agent.escalation_resolved"}
    for esc in escalations:
        status, stored, _, _ = call(server.url, "GET", f"/api/escalations/{esc['id']}")
        assert status == 200, stored
        seen = f"resolve answered {results.get(esc['id'])}, stored {stored['status']}"
        assert (stored["status"] == "resolved") == (esc["id"] in resolved_events), seen
        if results.get(esc["id"]) == 200:
            assert stored["status"] == "resolved", seen

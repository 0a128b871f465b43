"""Outage drill against the real server: stop this machine's PostgreSQL under a running
gunicorn, then start it again (issue 5). The test suite plays the outage with a TCP proxy
(tests/test_outage.py) so that it never stops the shared server; this drill stops the real
one, so run it alone, never beside the tests:

    .venv/bin/python bench/pg_restart_drill.py [--down 2] [--no-outage]

(--no-outage runs every step but the stop and the 503 checks: it shows that the server, its
stream and the checks work, without touching the shared PostgreSQL.)

It checks, and exits 1 if any fails: with the server down, reads, writes and /healthz
answer 503 problem details within 1 s; once the server is back, /healthz answers 200
within 10 s, reads and writes work again; an agent's SSE stream opened before the outage
is still open and delivers the event of an escalation created after it.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
# The production command (console/gunicorn_conf.py: gevent workers, 2 of them, reuse_port).
SERVE = ["gunicorn", "-c", "python:console.gunicorn_conf"]


def cluster(action: str) -> None:
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action], check=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Drill:
    def __init__(self, base: str, agent: str):
        self.base, self.agent, self.failures = base, agent, []

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict, float]:
        request = urllib.request.Request(self.base + path, method=method,
                                         data=None if body is None else json.dumps(body).encode(),
                                         headers={"Authorization": f"Bearer {self.agent}",
                                                  "Content-Type": "application/json"})
        started = time.monotonic()
        try:
            with urllib.request.urlopen(request, timeout=20) as response:
                return response.status, json.loads(response.read()), time.monotonic() - started
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}"), time.monotonic() - started

    def check(self, ok: bool, what: str) -> None:
        print(("ok   " if ok else "FAIL ") + what)
        if not ok:
            self.failures.append(what)

    def escalate(self, signature: str) -> tuple[int, dict, float]:
        return self.call("POST", "/api/jobs/drill-job/escalations", {
            "session_id": "s", "project_id": "p", "founder_id": "drill-founder", "error_type": "E",
            "plain_english_problem": "The drill needs an escalation.", "recommended_action": "Nothing.",
            "options": [{"value": "a", "label": "A"}], "error_signature": signature})


def read_stream(url: str, agent: str, frames: list[str], stop: threading.Event) -> None:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {agent}"})
    with urllib.request.urlopen(request, timeout=120) as response:
        for raw in response:
            line = raw.decode().rstrip("\n")
            if line.startswith("data: "):
                frames.append(line[len("data: "):])
            if stop.is_set():
                return


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--down", type=float, default=2.0, help="seconds the server stays stopped")
    parser.add_argument("--no-outage", action="store_true",
                        help="skip stopping PostgreSQL (and the 503 checks); everything else runs")
    args = parser.parse_args()
    database = f"drill_{secrets.token_hex(4)}"
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    agent = secrets.token_urlsafe(24)
    env = {**os.environ, "DATABASE_URL": f"postgresql://postgres@127.0.0.1:5432/{database}",
           "CONSOLE_AGENT_TOKEN": agent, "CONSOLE_JWT_SECRET": secrets.token_urlsafe(32),
           "CONSOLE_SECRET_KEY": secrets.token_urlsafe(32)}
    python = str(ROOT / ".venv/bin/python")
    subprocess.run([python, "-m", "flask", "--app", "console", "db", "upgrade"], env=env, cwd=ROOT, check=True,
                   capture_output=True)
    port = free_port()
    server = subprocess.Popen([python, "-m", *SERVE, "-b", f"127.0.0.1:{port}", "console:create_app()"],
                              env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    drill = Drill(f"http://127.0.0.1:{port}", agent)
    stop = threading.Event()
    try:
        for _ in range(100):
            try:
                if drill.call("GET", "/healthz")[0] == 200:
                    break
            except OSError:
                time.sleep(0.1)
        status, first, _ = drill.escalate("drill-before")
        drill.check(status == 201, f"an escalation is created before the outage ({status})")
        frames: list[str] = []
        reader = threading.Thread(target=read_stream, daemon=True,
                                  args=(f"{drill.base}/api/jobs/drill-job/events/stream", agent, frames, stop))
        reader.start()
        time.sleep(1.0)

        if not args.no_outage:
            cluster("stop")
            print(f"PostgreSQL stopped for {args.down} s")
            for what, (status, body, took) in {
                "GET an escalation": drill.call("GET", f"/api/escalations/{first['id']}"),
                "POST an escalation": drill.escalate("drill-during"),
                "GET /healthz": drill.call("GET", "/healthz"),
            }.items():
                drill.check(status == 503 and body.get("status") == 503 and took < 1.0,
                            f"{what} while the database is down: {status} in {took * 1000:.0f} ms")
            time.sleep(args.down)
            cluster("start")
        started = time.monotonic()
        while drill.call("GET", "/healthz")[0] != 200 and time.monotonic() - started < 10:
            time.sleep(0.1)
        back = time.monotonic() - started
        drill.check(back < 10, f"/healthz answers 200 {back:.2f} s after PostgreSQL is up")
        statuses = [drill.call("GET", f"/api/escalations/{first['id']}")[0] for _ in range(20)]
        drill.check(set(statuses) == {200}, f"20 reads after recovery: {sorted(set(statuses))}")
        status, after, _ = drill.escalate("drill-after")
        drill.check(status == 201, f"an escalation is created after recovery ({status})")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(after.get("id", "-") in frame for frame in frames):
            time.sleep(0.1)
        drill.check(any(after.get("id", "-") in frame for frame in frames),
                    "the SSE stream opened before the outage delivers the event created after it")
    finally:
        stop.set()
        server.terminate()  # graceful: a worker waits for its open streams (the reader's) up to graceful_timeout
        try:
            server.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)  # the master and its workers
            server.wait(5)
        if not args.no_outage:
            subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", sorted(os.listdir("/etc/postgresql"))[-1],
                            "main", "start"], capture_output=True)  # never leave the server stopped
        with psycopg.connect(ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    print("PASS" if not drill.failures else f"FAIL: {len(drill.failures)} check(s)")
    return 1 if drill.failures else 0


if __name__ == "__main__":
    sys.exit(main())

"""Webhook benchmark (SPEC §13): what one worker sustains, and how long the main product
waits for a decision's webhook.

    .venv/bin/python bench/webhooks.py [--events 3000] [--resolves 60] [--sqlite] [--no-write]

All on 127.0.0.1. A throw-away database (PostgreSQL `webhooks_bench_<pid>`, or with
--sqlite a file in /tmp), migrated with `flask --app console db upgrade`; a receiver in
this process (asyncio, answers 200 at once, so it is not what is measured); one endpoint
taking every event (`CONSOLE_WEBHOOK_ALLOW_PRIVATE=true`, for 127.0.0.1).

1. throughput: --events events stored in one transaction (the trigger owes each to the
   endpoint), then one `flask --app console worker` started: deliveries per second from the
   first webhook's arrival to the last's.
2. latency: the production server (`gunicorn -c python:console.gunicorn_conf`) beside that
   worker; --resolves escalations created, then resolved one at a time through the API
   (a random pause of up to one poll interval between them): the time from sending the resolve to its
   `agent.escalation_resolved` webhook arriving at the receiver, p50 / p99. The worker
   polls every CONSOLE_WORKER_POLL_SECONDS (1 s by default, --poll to change): that is the
   figure's floor and most of it.

Prints a Markdown report; writes bench/results/webhooks.md and webhooks.json unless
--no-write. Every process it starts is stopped and the database dropped at the end.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import jwt
import psycopg

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PYTHON = str(ROOT / ".venv" / "bin" / "python")
PG_ADMIN = os.environ.get("BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


class Receiver:
    """An asyncio HTTP/1.1 receiver in a thread: records (monotonic arrival, envelope) per request."""

    def __init__(self):
        self.arrivals: list[tuple[float, dict]] = []
        self.by_escalation: dict[str, float] = {}
        self.changed = threading.Condition()
        self.loop = asyncio.new_event_loop()
        self.port = free_port()
        ready = threading.Event()
        threading.Thread(target=self._run, args=(ready,), daemon=True).start()
        ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port, backlog=1024))
        ready.set()
        self.loop.run_forever()
        server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                body = await reader.readexactly(length)
                arrived = time.monotonic()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                envelope = json.loads(body)
                with self.changed:
                    self.arrivals.append((arrived, envelope))
                    if envelope.get("type") == "agent.escalation_resolved":
                        self.by_escalation[envelope["escalation_id"]] = arrived
                    self.changed.notify_all()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def wait_for(self, predicate, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.changed:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.changed.wait(remaining)
        return True

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(base: str, method: str, path: str, token: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(base + path, method=method, data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--resolves", type=int, default=60)
    parser.add_argument("--poll", type=float, default=None, help="CONSOLE_WORKER_POLL_SECONDS of the worker [1]")
    parser.add_argument("--sqlite", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="webhooks-bench-"))
    db_name = f"webhooks_bench_{os.getpid()}"
    url = f"sqlite:///{workdir / 'bench.db'}" if args.sqlite else PG_ADMIN.rsplit("/", 1)[0] + "/" + db_name
    env = {**os.environ, "DATABASE_URL": url, "CONSOLE_WEBHOOK_ALLOW_PRIVATE": "true",
           "CONSOLE_JWT_SECRET": secrets.token_urlsafe(32), "CONSOLE_AGENT_TOKEN": secrets.token_urlsafe(32),
           "CONSOLE_AGENT_JWT_SECRET": secrets.token_urlsafe(32), "CONSOLE_SECRET_KEY": secrets.token_urlsafe(32),
           "PYTHONUNBUFFERED": "1"}
    if args.poll is not None:
        env["CONSOLE_WORKER_POLL_SECONDS"] = str(args.poll)
    processes: list[subprocess.Popen] = []

    def start(name: str, argv: list[str]) -> subprocess.Popen:
        log = open(workdir / f"{name}.log", "w")
        process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        processes.append(process)
        return process

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    receiver = Receiver()
    if not args.sqlite:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{db_name}"')
    try:
        subprocess.run([PYTHON, "-m", "flask", "--app", "console", "db", "upgrade"], cwd=ROOT, env=env, check=True,
                       capture_output=True)
        os.environ.update(env)  # the in-process app below reads the same settings
        sys.path.insert(0, str(ROOT))
        from console import create_app
        from console.database import write_transaction
        from console.events import record_event
        from console.extensions import db
        from console.services.webhooks import add_endpoint

        app = create_app()
        with app.app_context():
            add_endpoint(f"http://127.0.0.1:{receiver.port}/hooks", None, allow_private=True)
            with write_transaction():
                for i in range(args.events):
                    record_event(f"bench-job-{i % 20}", f"bench-founder-{i % 20}", "agent.retrying", {"attempt": i})
            db.session.remove()
            db.engine.dispose()

        # 1. throughput of one worker
        started = time.monotonic()
        worker = start("worker", [PYTHON, "-m", "flask", "--app", "console", "worker"])
        if not receiver.wait_for(lambda: len(receiver.arrivals) >= args.events, timeout=600):
            raise RuntimeError(f"only {len(receiver.arrivals)} of {args.events} webhooks arrived; see {workdir}")
        first, last = receiver.arrivals[0][0], receiver.arrivals[args.events - 1][0]
        rate = (args.events - 1) / (last - first)
        drained = last - started

        # 2. resolve (API) → webhook at the receiver
        port = free_port()
        server = start("server", [PYTHON, "-m", "gunicorn", "-c", "python:console.gunicorn_conf",
                                  "-b", f"127.0.0.1:{port}", "console:create_app()"])
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(base + "/healthz", timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(f"the server did not start; see {workdir}")
                time.sleep(0.2)
        agent, founder = env["CONSOLE_AGENT_TOKEN"], "bench-founder"
        founder_token = jwt.encode({"sub": founder, "exp": int(time.time()) + 3600}, env["CONSOLE_JWT_SECRET"],
                                   algorithm="HS256")
        ids = [call(base, "POST", "/api/jobs/bench-latency/escalations", agent, {
            "session_id": "s", "project_id": "p", "founder_id": founder, "error_type": "E",
            "plain_english_problem": "p", "recommended_action": "r", "error_signature": f"sig-{i}",
            "options": [{"value": "skip_feature", "label": "Skip"}]})["id"] for i in range(args.resolves)]
        latencies = []
        poll = args.poll or 1.0
        for escalation_id in ids:
            time.sleep(random.uniform(0, poll))  # resolves land at random points of the worker's tick
            sent = time.monotonic()
            call(base, "POST", f"/api/escalations/{escalation_id}/resolve", founder_token, {"decision": "skip_feature"})
            if not receiver.wait_for(lambda: escalation_id in receiver.by_escalation, timeout=30):
                raise RuntimeError(f"the webhook of {escalation_id} never arrived; see {workdir}")
            latencies.append((receiver.by_escalation[escalation_id] - sent) * 1000)
        worker_alive = worker.poll() is None
    finally:
        for process in reversed(processes):
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
        receiver.stop()
        if not args.sqlite:
            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')

    result = {
        "when": time.strftime("%Y-%m-%d %H:%M"), "database": "sqlite" if args.sqlite else "postgresql",
        "cpus": os.cpu_count(), "python": platform.python_version(), "events": args.events,
        "deliveries_per_second": round(rate), "drain_seconds_including_worker_start": round(drained, 2),
        "resolves": args.resolves, "poll_seconds": args.poll or 1.0,
        "latency_ms": {"p50": round(statistics.median(latencies), 1), "p99": round(percentile(latencies, 99), 1),
                       "min": round(min(latencies), 1), "max": round(max(latencies), 1)},
        "worker_alive_at_end": worker_alive,
    }
    report = "\n".join([
        f"# Webhooks benchmark ({result['when']}, {result['database']}, {result['cpus']} cores)", "",
        "| measure | value |", "|---|---:|",
        f"| deliveries per second, one worker ({args.events} events, local receiver) | {result['deliveries_per_second']} |",
        f"| drain time incl. worker start | {result['drain_seconds_including_worker_start']} s |",
        f"| resolve → webhook at the receiver, p50 ({args.resolves} resolves, poll {result['poll_seconds']:g} s) "
        f"| {result['latency_ms']['p50']} ms |",
        f"| resolve → webhook at the receiver, p99 | {result['latency_ms']['p99']} ms |",
        f"| min / max | {result['latency_ms']['min']} / {result['latency_ms']['max']} ms |", ""])
    print(report)
    if not args.no_write:
        (BENCH / "results").mkdir(exist_ok=True)
        (BENCH / "results" / "webhooks.md").write_text(report)
        (BENCH / "results" / "webhooks.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0 if worker_alive else 1


if __name__ == "__main__":
    sys.exit(main())

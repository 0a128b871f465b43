"""The worker's expiry sweep over a million due escalations (issue 9), and what the API's
latency does meanwhile; plus the create latency of an escalation a founder's rule answers
at once (issue 11).

    .venv/bin/python bench/sweep.py [--rows 1000000] [--workers 1] [--no-write]

On 127.0.0.1's PostgreSQL (user postgres, trust): creates `sweep_<pid>`, migrates it,
inserts --rows pending escalations whose deadline has passed (1000 founders × 5 jobs, half
with a safe default, half without) plus 10,000 not yet due, serves the console with the
production command, and probes the API (GET one escalation, GET a job's list) at a steady
rate before and during the sweep. Then runs --workers `flask --app console worker`
processes until nothing is due and reports the sweep's time and rate, the API's p50/p99
before and during, and checks the result (every due row settled exactly once, one event
each, the not-yet-due untouched). Finally: create latency of a plain create vs one that a
rule answers. Everything it starts is stopped and the database dropped (also on Ctrl-C).
Writes bench/results/sweep.md unless --no-write.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import jwt
import psycopg

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
RESULTS = ROOT / "bench" / "results"


def log(message: str) -> None:
    print(f"[sweep {time.strftime('%H:%M:%S')}] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


SEED_SQL = """
INSERT INTO jobs (id, founder_id, project_id, created_at)
SELECT 'job-' || f || '-' || j, 'founder-' || f, 'proj-' || f, now()
  FROM generate_series(1, 1000) AS f, generate_series(1, 5) AS j;

INSERT INTO agent_escalations (id, session_id, job_id, project_id, founder_id, error_type, error_signature,
    plain_english_problem, attempts_summary, recommended_action, options, status, created_at, occurrences,
    last_seen_at, expires_at, on_expiry, reminder_at)
SELECT gen_random_uuid(), 'sess', 'job-' || (n %% 1000 + 1) || '-' || (n %% 5 + 1), 'proj-' || (n %% 1000 + 1),
       'founder-' || (n %% 1000 + 1), 'KeyError', 'proj-' || (n %% 1000 + 1) || ':KeyError:' || lpad(to_hex(n), 8, '0'),
       'The signup page cannot find the user record.', '["Retried"]'::jsonb, 'Build a simpler version.',
       '[{"value": "skip_feature", "label": "Skip this feature", "description": ""},
         {"value": "simpler_version", "label": "Try a simpler version", "description": ""}]'::jsonb,
       'pending', now() - interval '2 hours', 1, now() - interval '2 hours',
       CASE WHEN n <= %(due)s THEN now() - interval '1 minute' ELSE now() + interval '1 day' END,
       CASE WHEN n %% 2 = 0 THEN 'skip_feature' END,
       now() - interval '30 minutes'
  FROM generate_series(1, %(total)s) AS n;
"""


PROBE_SQL = """
INSERT INTO jobs (id, founder_id, project_id, created_at) VALUES ('probe-job', 'probe-founder', 'probe', now());
INSERT INTO agent_escalations (id, session_id, job_id, project_id, founder_id, error_type, error_signature,
    plain_english_problem, attempts_summary, recommended_action, options, status, created_at, occurrences, last_seen_at)
SELECT gen_random_uuid(), 'sess', 'probe-job', 'probe', 'probe-founder', 'KeyError', 'probe:KeyError:' || lpad(to_hex(n), 8, '0'),
       'The signup page cannot find the user record.', '["Retried"]'::jsonb, 'Build a simpler version.',
       '[{"value": "skip_feature", "label": "Skip this feature", "description": ""}]'::jsonb,
       'pending', now(), 1, now()
  FROM generate_series(1, 20) AS n;
"""


class Probe(threading.Thread):
    """GET one escalation and a job's list, alternately, at `rate` per second."""

    def __init__(self, base: str, token: str, escalation_id: str, job_id: str, rate: float):
        super().__init__(daemon=True)
        self.base, self.token, self.rate = base, token, rate
        self.paths = [f"/api/escalations/{escalation_id}", f"/api/jobs/{job_id}/escalations"]
        self.samples: list[tuple[float, float, int]] = []  # (when, ms, status)
        self.stopping = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.stopping.is_set():
            started = time.monotonic()
            request = urllib.request.Request(self.base + self.paths[i % 2],
                                             headers={"Authorization": f"Bearer {self.token}"})
            try:
                with urllib.request.urlopen(request, timeout=10) as resp:
                    resp.read()
                    status = resp.status
            except urllib.error.HTTPError as error:
                status = error.code
            except OSError:
                status = 0
            self.samples.append((started, (time.monotonic() - started) * 1000, status))
            i += 1
            self.stopping.wait(max(0.0, 1 / self.rate - (time.monotonic() - started)))

    def window(self, start: float, end: float) -> dict:
        inside = [(ms, status) for when, ms, status in self.samples if start <= when < end]
        times = [ms for ms, _ in inside]
        return {"n": len(inside), "p50": percentile(times, 50), "p99": percentile(times, 99),
                "max": max(times, default=float("nan")), "errors": sum(1 for _, s in inside if s != 200)}


def call(base: str, method: str, path: str, token: str, body: dict | None = None) -> tuple[int, dict, float]:
    started = time.perf_counter()
    request = urllib.request.Request(base + path, method=method, data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read()), (time.perf_counter() - started) * 1000
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}"), (time.perf_counter() - started) * 1000


def create_latency(base: str, agent: str, founder_token: str, samples: int) -> dict:
    """p50 of a plain create (201 pending) vs a create answered by a rule (201 resolved)."""
    def body(signature: str) -> dict:
        return {"session_id": "s", "project_id": "proj-rule", "founder_id": "founder-rule", "error_type": "KeyError",
                "plain_english_problem": "p", "recommended_action": "r", "error_signature": signature,
                "options": [{"value": "skip_feature", "label": "Skip"}, {"value": "simpler_version", "label": "Simpler"}]}

    status, first, _ = call(base, "POST", "/api/jobs/job-rule-0/escalations", agent, body("proj-rule:KeyError:remember"))
    assert status == 201, first
    status, _, _ = call(base, "POST", f"/api/escalations/{first['id']}/resolve", founder_token,
                        {"decision": "skip_feature", "remember": True})
    assert status == 200
    plain, ruled = [], []
    for i in range(samples):
        status, record, ms = call(base, "POST", f"/api/jobs/job-plain-{i}/escalations", agent,
                                  body(f"proj-rule:KeyError:plain{i}"))
        assert status == 201 and record["status"] == "pending", record
        plain.append(ms)
        status, record, ms = call(base, "POST", f"/api/jobs/job-rule-{i + 1}/escalations", agent,
                                  body("proj-rule:KeyError:remember"))
        assert status == 201 and record["decided_by"] == "rule", record
        ruled.append(ms)
    return {"plain_p50": statistics.median(plain), "plain_p99": percentile(plain, 99),
            "rule_p50": statistics.median(ruled), "rule_p99": percentile(ruled, 99), "samples": samples}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="due escalations (default 1,000,000)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes sweeping at once")
    parser.add_argument("--rate", type=float, default=20.0, help="API probe requests per second")
    parser.add_argument("--create-samples", type=int, default=200)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    name = f"sweep_{os.getpid()}"
    url = f"postgresql://postgres@127.0.0.1:5432/{name}"
    secret, agent_token = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    env = {**os.environ, "DATABASE_URL": url, "CONSOLE_JWT_SECRET": secret, "CONSOLE_AGENT_TOKEN": agent_token,
           "CONSOLE_SECRET_KEY": secrets.token_urlsafe(32), "CONSOLE_AGENT_JWT_SECRET": secrets.token_urlsafe(32),
           "PYTHONUNBUFFERED": "1"}
    processes: list[subprocess.Popen] = []

    def stop(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    report: dict = {"rows": args.rows, "workers": args.workers, "started": dt.datetime.now(dt.UTC).isoformat()}
    try:
        subprocess.run([str(VENV_BIN / "flask"), "--app", "console", "db", "upgrade"], cwd=ROOT, env=env,
                       check=True, capture_output=True)
        log(f"seeding {args.rows:,} due escalations (+10,000 not yet due)")
        started = time.monotonic()
        with psycopg.connect(url, autocommit=True) as conn:
            jobs_sql, escalations_sql = SEED_SQL.split(";\n\n", 1)
            conn.execute(jobs_sql)
            conn.execute(escalations_sql, {"due": args.rows, "total": args.rows + 10_000})
            conn.execute("VACUUM (ANALYZE) agent_escalations")
            # The probe reads a job of its own: 20 escalations, none due (the bulk jobs hold
            # hundreds each at this scale, which would measure the list's size, not the sweep).
            conn.execute(PROBE_SQL)
            sample = conn.execute("SELECT id, job_id, founder_id FROM agent_escalations "
                                  "WHERE job_id = 'probe-job' LIMIT 1").fetchone()
        report["seed_seconds"] = round(time.monotonic() - started, 1)
        log(f"seeded in {report['seed_seconds']} s")

        port = free_port()
        base = f"http://127.0.0.1:{port}"
        server = subprocess.Popen([str(VENV_BIN / "gunicorn"), "-c", "python:console.gunicorn_conf", "-b",
                                   f"127.0.0.1:{port}", "console:create_app()"], cwd=ROOT, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        processes.append(server)
        for _ in range(100):
            try:
                urllib.request.urlopen(base + "/healthz", timeout=1).read()
                break
            except OSError:
                time.sleep(0.1)
        founder_token = jwt.encode({"sub": sample[2], "exp": int(time.time()) + 7200}, secret, algorithm="HS256")
        probe = Probe(base, founder_token, str(sample[0]), sample[1], args.rate)
        probe.start()
        time.sleep(10)
        before_end = time.monotonic()

        log(f"sweeping with {args.workers} worker process(es)")
        sweep_start = time.monotonic()
        workers = [subprocess.Popen([str(VENV_BIN / "flask"), "--app", "console", "worker"], cwd=ROOT,
                                    env={**env, "CONSOLE_WORKER_POLL_SECONDS": "0.5"},
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                   for _ in range(args.workers)]
        processes.extend(workers)
        with psycopg.connect(url, autocommit=True) as conn:
            while True:
                left = conn.execute("SELECT count(*) FROM agent_escalations WHERE status = 'pending' "
                                    "AND expires_at <= now()").fetchone()[0]
                if left == 0:
                    break
                time.sleep(0.5)
        sweep_seconds = time.monotonic() - sweep_start
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=30)
        probe.stopping.set()
        probe.join()
        report["sweep_seconds"] = round(sweep_seconds, 1)
        report["rows_per_second"] = round(args.rows / sweep_seconds)
        report["api_before"] = probe.window(0, before_end)
        report["api_during"] = probe.window(sweep_start, sweep_start + sweep_seconds)
        log(f"swept {args.rows:,} in {sweep_seconds:.1f} s ({report['rows_per_second']:,}/s)")

        with psycopg.connect(url, autocommit=True) as conn:
            counts = dict(conn.execute("SELECT status, count(*) FROM agent_escalations GROUP BY status").fetchall())
            events = conn.execute("SELECT count(*), count(DISTINCT payload->>'escalation_id') FROM job_events "
                                  "WHERE type = 'agent.escalation_resolved'").fetchone()
            plan = conn.execute("EXPLAIN SELECT id FROM agent_escalations WHERE status = 'pending' "
                                "AND expires_at IS NOT NULL AND expires_at <= now() ORDER BY expires_at LIMIT 500").fetchall()
        report["check"] = {"statuses": counts, "events": events[0], "distinct_escalations": events[1],
                           "ok": events[0] == events[1] == args.rows and counts.get("pending") == 10_020}
        report["plan"] = [row[0] for row in plan]
        log(f"check: {report['check']}")

        rule_founder = jwt.encode({"sub": "founder-rule", "exp": int(time.time()) + 3600}, secret, algorithm="HS256")
        report["create"] = create_latency(base, agent_token, rule_founder, args.create_samples)
        log(f"create: {report['create']}")
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
        with psycopg.connect(ADMIN, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    before, during, create = report["api_before"], report["api_during"], report["create"]
    lines = [
        f"# Expiry sweep — {report['started'][:16]} UTC", "",
        f"`.venv/bin/python bench/sweep.py --rows {args.rows} --workers {args.workers}` on PostgreSQL, "
        f"gunicorn with `console.gunicorn_conf`; 2 cores shared by server, workers, database and probe.", "",
        f"* seeded {args.rows:,} due + 10,000 not-yet-due escalations (+ the probe's job of 20) in {report['seed_seconds']} s",
        f"* **sweep: {args.rows:,} settled in {report['sweep_seconds']} s = {report['rows_per_second']:,} per second** "
        f"({args.workers} worker process(es), batches of 500, one statement per batch)",
        f"* check: {report['check']}",
        f"* the due query's plan: `{' / '.join(report['plan'])}`", "",
        "| API (GET one + GET a job's list of 20, alternately) | n | p50 ms | p99 ms | max ms | errors |",
        "|---|---:|---:|---:|---:|---:|",
        f"| before the sweep | {before['n']} | {before['p50']:.1f} | {before['p99']:.1f} | {before['max']:.1f} | {before['errors']} |",
        f"| during the sweep | {during['n']} | {during['p50']:.1f} | {during['p99']:.1f} | {during['max']:.1f} | {during['errors']} |",
        "",
        f"Create latency, {create['samples']} each, one at a time: a plain create (201 pending) p50 "
        f"{create['plain_p50']:.1f} ms / p99 {create['plain_p99']:.1f} ms; a create answered by the founder's rule "
        f"(201 resolved, both events stored in the same transaction) p50 {create['rule_p50']:.1f} ms / p99 "
        f"{create['rule_p99']:.1f} ms.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "sweep.md").write_text(text)
        (RESULTS / "sweep.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0 if report["check"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

"""Soak run of the escalation console (issue 5): mixed agents and founders for a few minutes
against a real gunicorn + PostgreSQL; steady worker RSS, zero errors, and every resolve or
skip producing exactly one event.

    .venv/bin/python bench/soak.py [--seconds 180] [--agents 6] [--founders 3] [--no-write]

Creates `soak_<pid>`, migrates it, serves it with the production command (SERVE below:
`gunicorn -c python:console.gunicorn_conf`, gevent, 2 workers), runs the load, verifies the
event log through the API, writes bench/results/soak.{md,json} (unless --no-write), then
stops gunicorn and drops the database (also on Ctrl-C / SIGTERM). Exit 0 only if there were
no errors, no violations and no worker RSS growth over 20 % and 20 MB after warm-up.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from itertools import pairwise
from pathlib import Path

import jwt
import psycopg

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
HOST, PG = "127.0.0.1", "postgresql://postgres@127.0.0.1:5432"
# The production command (console/gunicorn_conf.py: gevent workers, 2 of them, reuse_port); the
# address and the app are added at start.
SERVE = ["gunicorn", "-c", "python:console.gunicorn_conf"]
OPTIONS = [{"value": "retry", "label": "Retry with a clean cache", "recommended": True},
           {"value": "skip_feature", "label": "Skip this feature"},
           {"value": "provide_guidance", "label": "Tell me what to do", "requires_guidance": True}]
STOP = threading.Event()


class Stats:
    """Per endpoint: requests, statuses, latencies; plus errors and legitimate races."""

    def __init__(self):
        self.lock = threading.Lock()
        self.status = defaultdict(Counter)
        self.latency = defaultdict(list)
        self.errors, self.error_samples, self.races = Counter(), [], Counter()

    def record(self, name, status, seconds):
        with self.lock:
            self.status[name][status] += 1
            self.latency[name].append(seconds * 1000)

    def error(self, name, detail):
        with self.lock:
            self.errors[name] += 1
            if len(self.error_samples) < 30:
                self.error_samples.append(f"{name}: {detail}"[:400])

    def race(self, name):
        with self.lock:
            self.races[name] += 1


class Run:
    """Shared state of one soak run: the server, tokens, what the actors saw."""

    def __init__(self, port, agent_token, jwt_secret):
        self.base, self.port, self.agent_token, self.jwt_secret = f"http://{HOST}:{port}", port, agent_token, jwt_secret
        self.stats, self.lock = Stats(), threading.Lock()
        self.seen = {}            # escalation id -> {"job", "dedupes", "decision", "skipped"}
        self.jobs = set()
        self.posted = Counter()   # job -> agent.retrying events answered 201
        self.ready = defaultdict(threading.Event)  # agent index -> its first job exists
        self.sse = {}             # job -> event ids received on the stream, in order
        self.sse_conns = []

    def founder_token(self, founder):
        return jwt.encode({"sub": founder, "exp": int(time.time()) + 3600}, self.jwt_secret, algorithm="HS256")

    def call(self, name, method, path, token, body=None, wait=0.0, ok=(200,), race=()):
        """One request (timeout 15 s + wait); any status outside ok/race counts as an error."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        t0 = time.monotonic()
        try:
            with urllib.request.urlopen(request, timeout=15 + wait) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as error:
            status, raw = error.code, error.read()
        except (OSError, http.client.HTTPException) as error:  # URLError, timeouts, resets
            self.stats.record(name, "transport", time.monotonic() - t0)
            self.stats.error(name, f"{method} {path}: {error!r}")
            return None, None
        self.stats.record(name, status, time.monotonic() - t0)
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            payload = None
        if status in race:
            self.stats.race(name)
        elif status not in ok:
            self.stats.error(name, f"{method} {path}: {status} {raw[:200]!r}")
        return status, payload


# --- actors ------------------------------------------------------------------------------------

def agent(run: Run, i: int, founder: str, seed: int):
    rnd, n, tok = random.Random(seed), 0, run.agent_token
    while not STOP.is_set():
        job = f"soak-a{i}-j{n % 4}"  # four jobs per agent, round robin
        n += 1
        with run.lock:
            run.jobs.add(job)
        for attempt in range(1, rnd.randint(1, 3) + 1):
            status, _ = run.call("events.post", "POST", f"/api/jobs/{job}/events", tok, ok=(201,), body={
                "type": "agent.retrying", "founder_id": founder, "attempt": attempt, "error_type": "KeyError"})
            with run.lock:
                run.posted[job] += status == 201
        run.ready[i].set()
        body = {"session_id": f"sess-a{i}", "project_id": f"proj-a{i}", "founder_id": founder,
                "error_type": "KeyError", "error_signature": f"proj-a{i}:KeyError:{n:08x}",
                "plain_english_problem": f"Step {n} keeps failing with a KeyError I cannot explain.",
                "recommended_action": "Retry once with a clean cache.", "options": OPTIONS,
                "attempts_summary": ["Cleared the cache", "Pinned the dependency"]}
        status, esc = run.call("escalate", "POST", f"/api/jobs/{job}/escalations", tok, body, ok=(201,))
        if status != 201:
            STOP.wait(0.5)
            continue
        waiting = [esc["id"]]
        with run.lock:
            run.seen[esc["id"]] = {"job": job, "dedupes": 0, "decision": None, "skipped": False}
        if rnd.random() < 0.2:  # the same error again while the question is open: dedupe
            status, again = run.call("escalate.dup", "POST", f"/api/jobs/{job}/escalations", tok, body, ok=(200,),
                                     race=(201,))
            if status == 200 and (again["id"] != esc["id"] or again["occurrences"] != esc["occurrences"] + 1):
                run.stats.error("escalate.dup", f"dedupe answered {again['id']} x{again['occurrences']} "
                                                f"for {esc['id']} x{esc['occurrences']}")
            elif status == 200:
                with run.lock:
                    run.seen[esc["id"]]["dedupes"] += 1
            elif status == 201:  # the founder settled the first one in between: a new question
                waiting.append(again["id"])
                with run.lock:
                    run.seen[again["id"]] = {"job": job, "dedupes": 0, "decision": None, "skipped": False}
        for eid in waiting:
            settle(run, rnd, eid, skip=rnd.random() < 0.1)
        STOP.wait(rnd.uniform(0.05, 0.3))


def settle(run: Run, rnd: random.Random, eid: str, skip: bool):
    """Long-poll until the founder decides; or withdraw the question after a moment."""
    if skip:
        STOP.wait(rnd.uniform(0.0, 0.4))
        status, esc = run.call("skip", "POST", f"/api/escalations/{eid}/skip", run.agent_token,
                               {"reason": "the error went away"}, race=(409,))
        if status == 200 and esc["status"] == "skipped":
            with run.lock:
                run.seen[eid]["skipped"] = True
        elif status == 200 or (status == 409 and (esc or {}).get("escalation", {}).get("status") != "resolved"):
            run.stats.error("skip", f"{status} for {eid}: {esc}")  # 409 only when the founder decided first
        return
    while not STOP.is_set():
        status, esc = run.call("escalation.wait", "GET", f"/api/escalations/{eid}?wait=10", run.agent_token, wait=10)
        if status != 200:
            STOP.wait(0.5)
        elif esc["status"] != "pending":
            return


def founder_loop(run: Run, founder: str, seed: int):
    rnd, token, cursors = random.Random(seed), run.founder_token(founder), {}
    while not STOP.is_set():
        status, page = run.call("inbox", "GET", "/api/escalations?status=pending&limit=50", token)
        items = page["items"] if status == 200 else []
        if any(e["founder_id"] != founder or e["status"] != "pending" for e in items):
            run.stats.error("inbox", "a foreign or non-pending escalation in the pending inbox")
        rnd.shuffle(items)
        for esc in items[:rnd.randint(1, 3)]:
            option = rnd.choice(esc["options"])
            guidance = "Use the email address only." if option.get("requires_guidance") or rnd.random() < .5 else None
            status, got = run.call("resolve", "POST", f"/api/escalations/{esc['id']}/resolve", token,
                                   {"decision": option["value"], "guidance": guidance}, race=(409,))
            if status == 200 and (got["status"] != "resolved" or got["founder_decision"] != option["value"]):
                run.stats.error("resolve", f"200 but {got['status']}/{got['founder_decision']}")
            elif status == 200:
                with run.lock:
                    run.seen.setdefault(esc["id"], {"job": esc["job_id"], "dedupes": 0, "skipped": False})
                    run.seen[esc["id"]]["decision"] = option["value"]
            elif status == 409 and (got or {}).get("escalation", {}).get("status") != "skipped":
                run.stats.error("resolve", f"409 for {esc['id']} that the agent did not skip: {got}")
            if rnd.random() < 0.3:  # read the job's log from where this founder left off
                job, after = esc["job_id"], cursors.get(esc["job_id"], 0)
                status, log = run.call("events.list", "GET", f"/api/jobs/{job}/events?after={after}", token)
                ids = [e["id"] for e in log["items"]] if status == 200 else []
                if any(b <= a for a, b in pairwise([after, *ids])):
                    run.stats.error("events.list", f"ids not increasing after {after}: {ids[:20]}")
                cursors[job] = max([after] + ids)
        STOP.wait(rnd.uniform(0.1, 0.6))


def sse_reader(run: Run, founder: str, job: str, agent_index: int):
    """One SSE subscriber on a founder's first job; records the ids it receives."""
    run.ready[agent_index].wait(30)
    received = run.sse.setdefault(job, [])
    while not STOP.is_set():
        conn = http.client.HTTPConnection(HOST, run.port, timeout=40)
        run.sse_conns.append(conn)
        t0 = time.monotonic()
        try:
            conn.request("GET", f"/api/jobs/{job}/events/stream?after={received[-1] if received else 0}",
                         headers={"Authorization": f"Bearer {run.founder_token(founder)}"})
            resp = conn.getresponse()
            run.stats.record("sse", resp.status, time.monotonic() - t0)
            if resp.status != 200:
                run.stats.error("sse", f"stream answered {resp.status}")
                STOP.wait(1)
                continue
            for line in resp:
                if line.startswith(b"id: "):
                    received.append(int(line[4:]))
        except (OSError, http.client.HTTPException, ValueError) as error:
            if not STOP.is_set():
                run.stats.error("sse", repr(error))
        finally:
            conn.close()


# --- measurement and verification --------------------------------------------------------------

def worker_rss(master: int) -> dict[int, int]:
    """VmRSS in kB of each child (gunicorn worker) of the master."""
    out = {}
    try:
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    except OSError:
        return out
    for pid in map(int, children):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    out[pid] = int(line.split()[1])
        except OSError:
            pass
    return out


def verify(run: Run) -> dict:
    """Through the API, agent token: each escalation against its job's event log."""
    tok, v = run.agent_token, Counter()
    problems = []

    def bad(kind, detail):
        v[kind] += 1
        if len(problems) < 30:
            problems.append(f"{kind}: {detail}"[:300])

    events = defaultdict(lambda: defaultdict(list))  # escalation id -> type -> [events]
    for job in sorted(run.jobs):
        after, ids, retrying = 0, [], 0
        while True:
            status, page = run.call("verify.events", "GET", f"/api/jobs/{job}/events?after={after}&limit=500", tok)
            if status != 200 or not page["items"]:
                break
            for e in page["items"]:
                ids.append(e["id"])
                retrying += e["type"] == "agent.retrying"
                if e["type"] in ("agent.waiting_for_input", "agent.escalation_resolved"):
                    events[e["escalation_id"]][e["type"]].append(e)
            after = page["next_after"]
        if any(b <= a for a, b in pairwise(ids)):
            bad("event ids not increasing", job)
        if retrying != run.posted[job]:
            bad("agent.retrying stored != posted", f"{job}: {retrying} != {run.posted[job]}")
        if job in run.sse:  # the stream must have delivered every stored id up to the last it saw
            got = run.sse[job]
            if any(b <= a for a, b in pairwise(got)) or {i for i in ids if got and i <= got[-1]} - set(got):
                bad("sse gap or disorder", job)
            v["sse_received"] += len(got)
            v["sse_stored"] += len(ids)
        v["events"] += len(ids)
    for eid in sorted(set(events) - set(run.seen)):
        bad("event of an unknown escalation", eid)
    statuses = Counter()
    for eid, mine in sorted(run.seen.items()):
        status, esc = run.call("verify.get", "GET", f"/api/escalations/{eid}", tok)
        if status != 200:
            bad("unreadable escalation", eid)
            continue
        statuses[esc["status"]] += 1
        waiting, done = events[eid]["agent.waiting_for_input"], events[eid]["agent.escalation_resolved"]
        if len(waiting) != 1:
            bad("waiting_for_input events != 1", f"{eid}: {len(waiting)}")
        if esc["status"] == "pending" and done:
            bad("pending escalation with a resolution event", eid)
        elif esc["status"] != "pending" and (len(done) != 1 or done[0]["status"] != esc["status"]):
            bad(f"{esc['status']} escalation without exactly one matching event", f"{eid}: {done}")
        elif esc["status"] == "resolved" and done[0]["resolution"] != esc["founder_decision"]:
            bad("resolution != founder_decision", eid)
        if esc["status"] == "resolved" and esc["founder_decision"] != mine.get("decision"):
            bad("resolved, but not by this run's 200 resolve", eid)
        if (esc["status"] == "skipped") != mine.get("skipped", False):
            bad("skip answered 200 <-> skipped status mismatch", eid)
        if esc["occurrences"] != 1 + mine.get("dedupes", 0):
            bad("occurrences != 1 + dedupes", f"{eid}: {esc['occurrences']}")
    sse = {"received": v.pop("sse_received", 0), "stored": v.pop("sse_stored", 0)}  # of the subscribed jobs
    return {"escalations": len(run.seen), "jobs": len(run.jobs), "events": v.pop("events", 0), "sse_events": sse,
            "statuses": dict(statuses), "violations": sum(v.values()), "by_kind": dict(v), "samples": problems}


# --- the run -----------------------------------------------------------------------------------

def pct(values, q):
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 1) if values else None


def report(args, run, load_s, rss, warm_at, verification, server_errors) -> tuple[dict, str]:
    s = run.stats
    endpoints = {name: {"requests": sum(c.values()), "statuses": {str(k): v for k, v in sorted(c.items(), key=str)},
                        "p50_ms": pct(s.latency[name], .5), "p99_ms": pct(s.latency[name], .99),
                        "errors": s.errors[name], "races": s.races[name]} for name, c in sorted(s.status.items())}
    requests = sum(e["requests"] for k, e in endpoints.items() if not k.startswith("verify"))
    workers = {}
    for pid in sorted({p for _, sample in rss for p in sample}):
        series = [(t, sample[pid]) for t, sample in rss if pid in sample]
        warm = next((kb for t, kb in series if t >= warm_at), series[-1][1])
        end, peak = series[-1][1], max(kb for _, kb in series)
        workers[pid] = {"warm_mb": round(warm / 1024, 1), "end_mb": round(end / 1024, 1),
                        "max_mb": round(peak / 1024, 1), "growth_mb": round((end - warm) / 1024, 1),
                        "growth_pct": round(100 * (end - warm) / warm, 1)}
    leaking = [pid for pid, w in workers.items() if w["growth_pct"] > 20 and w["growth_mb"] > 20]
    errors = sum(s.errors.values()) + server_errors
    passed = errors == 0 and verification["violations"] == 0 and not leaking and len(workers) == 2
    data = {"command": " ".join([".venv/bin/python", "bench/soak.py", *sys.argv[1:]]), "load_seconds": round(load_s, 1),
            "agents": args.agents, "founders": args.founders, "requests": requests,
            "requests_per_s": round(requests / load_s, 1), "errors": errors, "server_log_errors": server_errors,
            "races": dict(s.races), "error_samples": s.error_samples, "endpoints": endpoints,
            "rss_warm_at_s": warm_at, "workers": workers, "rss_leaking_workers": leaking,
            "verification": verification, "passed": passed}
    v = verification
    md = [(f"# Soak run\n\n`{data['command']}`: {data['load_seconds']} s of load, {args.agents} agents, "
           f"{args.founders} founders; {' '.join(SERVE)} (gevent, 2 workers), PostgreSQL\n"),
          (f"**{'PASS' if passed else 'FAIL'}**: {requests} requests ({data['requests_per_s']}/s), errors {errors} "
           f"(server log {server_errors}), races {sum(s.races.values())}, violations {v['violations']}\n"),
          "| endpoint | requests | statuses | p50 ms | p99 ms | errors | races |",
          "|---|---:|---|---:|---:|---:|---:|"]
    md += [(f"| {k} | {e['requests']} | {' '.join(f'{c}:{n}' for c, n in e['statuses'].items())} | "
            f"{e['p50_ms']} | {e['p99_ms']} | {e['errors']} | {e['races']} |") for k, e in endpoints.items()]
    md += ["", f"Worker RSS in MB (warm: the first sample at >= {warm_at:g} s; sampled every 5 s)", "",
           "| worker | warm | end | max | growth MB | growth % |", "|---|---:|---:|---:|---:|---:|"]
    md += [f"| {pid} | {w['warm_mb']} | {w['end_mb']} | {w['max_mb']} | {w['growth_mb']} | {w['growth_pct']} |"
           for pid, w in workers.items()]
    md += ["", (f"Verification: {v['escalations']} escalations {v['statuses']} in {v['jobs']} jobs, "
                f"{v['events']} events (SSE subscribers received {v['sse_events']['received']} of the "
                f"{v['sse_events']['stored']} stored in their jobs), {v['violations']} violations {v['by_kind'] or ''}")]
    md += [f"* {line}" for line in s.error_samples + v["samples"]]
    return data, "\n".join(md) + "\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _interrupt(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=180)
    parser.add_argument("--agents", type=int, default=6)
    parser.add_argument("--founders", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="print the results, leave bench/results/soak.* alone")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _interrupt)
    db, port = f"soak_{os.getpid()}", free_port()
    # A prefix keeps the secrets strings: Flask's from_prefixed_env parses values as JSON.
    secret = {k: "soak-" + secrets.token_urlsafe(32) for k in ("JWT_SECRET", "AGENT_TOKEN", "SECRET_KEY")}
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONSOLE_")}
    env.update({f"CONSOLE_{k}": v for k, v in secret.items()}, DATABASE_URL=f"{PG}/{db}", PYTHONUNBUFFERED="1")
    log_path = Path(tempfile.gettempdir()) / f"soak-{os.getpid()}-gunicorn.log"
    server = None
    try:
        with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{db}"')
        subprocess.run([str(ROOT / ".venv/bin/flask"), "--app", "console", "db", "upgrade"], cwd=ROOT, env=env,
                       check=True, timeout=120, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with open(log_path, "wb") as log:
            server = subprocess.Popen(
                [str(ROOT / ".venv/bin/python"), "-m", *SERVE, "-b", f"{HOST}:{port}", "console:create_app()"],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)  # its own process group, stopped in finally
        for _ in range(150):  # /healthz within ~30 s
            try:
                if urllib.request.urlopen(f"http://{HOST}:{port}/healthz", timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.2)
        else:
            raise RuntimeError(f"gunicorn did not become healthy; see {log_path}")

        run = Run(port, secret["AGENT_TOKEN"], secret["JWT_SECRET"])
        founders = [f"soak-founder-{k}" for k in range(args.founders)]
        actors = [threading.Thread(target=agent, args=(run, i, founders[i % len(founders)], i), daemon=True)
                  for i in range(args.agents)]
        actors += [threading.Thread(target=founder_loop, args=(run, f, 1000 + k), daemon=True)
                   for k, f in enumerate(founders)]
        # Founder k's SSE subscriber follows the first job of agent k (whose founder is k).
        readers = [threading.Thread(target=sse_reader, args=(run, f, f"soak-a{k}-j0", k), daemon=True)
                   for k, f in enumerate(founders) if k < args.agents]
        print(f"soak: {args.seconds:g} s, {args.agents} agents, {args.founders} founders on :{port}, db {db}",
              flush=True)
        t0, rss, warm_at = time.monotonic(), [], min(30.0, args.seconds / 3)
        for thread in actors + readers:
            thread.start()
        while (elapsed := time.monotonic() - t0) < args.seconds:
            rss.append((round(elapsed, 1), worker_rss(server.pid)))
            time.sleep(min(5.0, args.seconds - elapsed))
        load_s = time.monotonic() - t0
        rss.append((round(load_s, 1), worker_rss(server.pid)))
        STOP.set()
        for thread in actors:  # agents finish their current long-poll (<= 10 s)
            thread.join(timeout=30)
        for conn in run.sse_conns:  # unblock the SSE readers
            try:
                if conn.sock:
                    conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in readers:
            thread.join(timeout=5)
        print(f"soak: load stopped after {load_s:.0f} s (drained at {time.monotonic() - t0:.0f} s); verifying",
              flush=True)
        verification = verify(run)
        server_errors = sum(1 for line in log_path.read_text(errors="replace").splitlines()
                            if any(w in line for w in ("Traceback", "[ERROR]", "[CRITICAL]", "WORKER TIMEOUT")))
        data, md = report(args, run, load_s, rss, warm_at, verification, server_errors)
        if not args.no_write:
            RESULTS.mkdir(parents=True, exist_ok=True)
            (RESULTS / "soak.json").write_text(json.dumps(data, indent=2) + "\n")
            (RESULTS / "soak.md").write_text(md)
        print(md)
        return 0 if data["passed"] else 1
    except KeyboardInterrupt:
        print("soak: interrupted", file=sys.stderr)
        return 130
    finally:
        STOP.set()
        if server is not None and server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=5)
        with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        print(f"soak: server stopped, database {db} dropped (server log {log_path})", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())

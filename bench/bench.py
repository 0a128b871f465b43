"""The escalation console benchmark (issue 5). Run it with `bench/run` (see bench/README.md).

What it does, in order, all on 127.0.0.1:

1. creates a throw-away PostgreSQL database, migrates it (`flask --app console db upgrade`)
   and seeds it (10k escalations by default: bulk rows over 1000 founders x 5 jobs, plus
   fixed-size fixtures that the measured requests read, identical at every scale), plus the
   peers' `bench_peer_events` table;
2. serves three contenders on that database: the console the way production serves it
   (`gunicorn -c python:console.gunicorn_conf`: gevent, 2 workers, reuse_port) and the two
   yardsticks of ../shared/peers, each from a virtual environment of its own made on demand in
   bench/.peers/: `ceiling` (bare Flask + psycopg pool, gunicorn 2 x 8 gthread) and
   `seedstack` (FastAPI + async SQLAlchemy, uvicorn --workers 2);
3. drives each endpoint with wrk (bench/lua/requests.lua replaying pre-rendered requests),
   rotating the contenders' order every round (A B C, B C A, C A B, ...) so that drift falls
   on all; get / list / resolve on all three, the console-only endpoints on the console;
4. measures event latency: resolve on one console instance, receive
   `agent.escalation_resolved` on an SSE stream of another;
5. measures CPU per request in-process (console vs ceiling, through their WSGI apps);
6. with --scale: seeds a second database with 1M rows and alternates console@10k with
   console@1M for get / list / inbox / resolve (the ceiling as a control for resolve);
   prints EXPLAIN (ANALYZE, BUFFERS) of the main queries, captured from the app's own
   SQLAlchemy statements;
7. prints a table and writes bench/results/latest.json and bench/results/latest.md.

Every process it starts is stopped at the end (finally + signal handlers); every loop is
bounded in count and time; the databases are dropped unless --keep-db.
"""
from __future__ import annotations

import argparse
import datetime as dt
import http.client
import importlib
import importlib.util
import itertools
import json
import math
import os
import platform
import random
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import jwt
import psycopg

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
VENV_BIN = ROOT / ".venv" / "bin"
RESULTS = BENCH / "results"
LUA = BENCH / "lua" / "requests.lua"
HOST = "127.0.0.1"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
# The console contender, served with its production settings (console/gunicorn_conf.py: gevent
# workers, 2 of them, reuse_port, no control socket). {bind} and {app} are filled in per server.
CONSOLE_COMMAND = ["gunicorn", "-c", "python:console.gunicorn_conf", "-b", "{bind}", "{app}"]

# The yardsticks (../shared/peers/README.md), each run from a virtual environment of its own in
# bench/.peers/ (created on demand, reused while its requirements are unchanged). Additions to the
# peers' own commands: the address; --reuse-port for the ceiling (the console has it too: without
# it one gthread worker often accepts every keep-alive connection of wrk and the other idles);
# --no-access-log for uvicorn (neither gunicorn writes an access log).
PEERS_VENVS = BENCH / ".peers"
PEER_REQUIREMENTS = {
    "ceiling": ["flask", "gunicorn", "psycopg[binary,pool]", "PyJWT"],
    "seedstack": ["fastapi", "uvicorn[standard]", "pydantic", "sqlalchemy[asyncio]", "asyncpg", "PyJWT"],
}
PEER_COMMANDS = {
    "ceiling": ["gunicorn", "-w", "2", "-k", "gthread", "--threads", "8", "--reuse-port",
                "--chdir", "{peers}/ceiling", "-b", "{bind}", "app:create_app()"],
    "seedstack": ["uvicorn", "--app-dir", "{peers}/seedstack", "app:app", "--workers", "2", "--no-access-log",
                  "--host", "{host}", "--port", "{port}"],
}
PEER_POOL_SIZE = 8  # BENCH_POOL_SIZE: connections per peer process (= the ceiling's --threads)
PEERS = ("ceiling", "seedstack")
# The console's throughput at least TARGET x the peer's (peers/README.md), per endpoint.
TARGETS = {"ceiling": 0.7, "seedstack": 1.5}
COMPARED = ("get", "list", "resolve")
PEER_EVENTS_SQL = """
    CREATE TABLE IF NOT EXISTS bench_peer_events (
        id bigserial PRIMARY KEY, job_id varchar(255) NOT NULL, founder_id varchar(255) NOT NULL,
        type varchar(64) NOT NULL, payload jsonb NOT NULL, created_at timestamptz NOT NULL DEFAULT now())
"""

OPTIONS = [
    {"value": "retry", "label": "Retry with a clean cache",
     "description": "Clear the build cache and run the failing step again.", "recommended": True},
    {"value": "skip_feature", "label": "Skip this feature",
     "description": "Leave the feature out of this build and carry on with the rest."},
    {"value": "provide_guidance", "label": "Tell me what to do",
     "description": "Write instructions for the agent.", "requires_guidance": True},
]
ATTEMPTS = ["Re-ran the migration after clearing the cache",
            "Pinned the dependency to the previous minor version",
            "Searched the logs for the first failing request"]
PROBLEM = ("The {step} step of the build keeps failing with a {error} that I cannot explain: I tried three "
           "fixes and none of them held, so I need you to decide how to proceed with this part of the job.")
ACTION = "Retry once with a clean cache; if it fails again, skip the feature and open a ticket."

# Fixtures: fixed-size data that the measured requests read, the same at every scale.
LIST_FOUNDER, LIST_JOBS, LIST_ROWS_PER_JOB = "bench-list", 20, 20
INBOX_FOUNDER, INBOX_PENDING, INBOX_DECIDED = "bench-inbox", 50, 40
RESOLVER = "bench-resolver"
CREATOR = "bench-creator"
SSE_JOB = "bench-sse-job"
BULK_FOUNDERS, BULK_JOBS = 1000, 5
GET_TARGETS = 1000

STOP = threading.Event()


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- processes ----------------------------------------------------------------------------------

class Processes:
    """Every process this run starts, each in its own process group, stopped by stop_all()."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str], env: dict, cwd: Path = ROOT) -> subprocess.Popen:
        out = open(self.workdir / f"{name}.log", "ab")
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        out.close()
        self.procs.append((name, proc))
        return proc

    def stop(self, proc: subprocess.Popen, timeout: float = 15.0) -> None:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)  # our own group: the process started above
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=5)
        self.procs = [(n, p) for n, p in self.procs if p is not proc]

    def stop_all(self) -> None:
        for _, proc in list(reversed(self.procs)):
            self.stop(proc)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, name: str, port: int, proc: subprocess.Popen, argv: list[str] | None = None):
        self.name, self.port, self.proc, self.argv = name, port, proc, argv or []

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"


def _fill(argv: list[str], **values: str) -> list[str]:
    return [a.format(**values) for a in argv]


def console_argv(app: str, port: int) -> list[str]:
    argv = _fill(CONSOLE_COMMAND, bind=f"{HOST}:{port}", app=app)
    return [str(VENV_BIN / argv[0]), *argv[1:]]


def peer_argv(peer: str, venv: Path, peers: Path, port: int) -> list[str]:
    argv = _fill(PEER_COMMANDS[peer], bind=f"{HOST}:{port}", host=HOST, port=str(port), peers=str(peers))
    argv = [str(venv / "bin" / argv[0]), *argv[1:]]
    if argv[0].endswith("gunicorn") and _gunicorn_has_control_socket(argv[0]):
        argv.insert(1, "--no-control-socket")  # newer gunicorns open one in ~/.gunicorn: one per server
    return argv


def _gunicorn_has_control_socket(gunicorn: str) -> bool:
    out = subprocess.run([gunicorn, "--help"], capture_output=True, text=True, timeout=60).stdout
    return "--no-control-socket" in out


def start_server(procs: Processes, name: str, argv: list[str], port: int, env: dict, *, ready_path: str = "/healthz",
                 ready_statuses: tuple[int, ...] = (200,), workers: int = 2, timeout: float = 60) -> Server:
    """Start `argv` (serving on `port`) and wait until it answers `ready_path` with one of
    `ready_statuses` and its master has `workers` children."""
    proc = procs.start(name, argv, env)
    server = Server(name, port, proc, argv)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if STOP.is_set():
            raise KeyboardInterrupt
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited at start; see {procs.workdir / (name + '.log')}")
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=2)
            conn.request("GET", ready_path)
            status = conn.getresponse().status
            conn.close()
            if status in ready_statuses and len(worker_pids(server)) >= workers:
                return server
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{name} was not ready within {timeout:.0f} s; see {procs.workdir / (name + '.log')}")


def start_console(procs: Processes, name: str, app: str, env: dict) -> Server:
    if not app.startswith("console:"):  # a wrapper module of one's own, in bench/
        env = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(BENCH), env.get("PYTHONPATH")]))}
    port = free_port()
    return start_server(procs, name, console_argv(app, port), port, env)


def start_peer(procs: Processes, name: str, peer: str, venv: Path, peers: Path, env: dict) -> Server:
    env = {**env, "BENCH_PEER_EVENTS": "1", "BENCH_POOL_SIZE": str(PEER_POOL_SIZE),
           "PATH": f"{venv / 'bin'}:{env.get('PATH', '')}", "VIRTUAL_ENV": str(venv)}
    # The peers have no /healthz: any answer of the app itself (401 without a token) means it is up.
    port = free_port()
    return start_server(procs, name, peer_argv(peer, venv, peers, port), port, env,
                        ready_path="/api/escalations/00000000-0000-0000-0000-000000000000", ready_statuses=(401,))


# --- the peers' virtual environments ------------------------------------------------------------

def peer_venv(peer: str) -> Path:
    """bench/.peers/PEER-venv with PEER_REQUIREMENTS[peer]: reused when it was made with the same
    requirements (a marker file says so), otherwise made afresh with the console venv's Python."""
    venv = PEERS_VENVS / f"{peer}-venv"
    marker = venv / ".bench-requirements"
    wanted = "\n".join(PEER_REQUIREMENTS[peer]) + "\n"
    if (venv / "bin" / "python").exists() and marker.exists() and marker.read_text() == wanted:
        return venv
    log(f"creating {venv.relative_to(ROOT)}: pip install {' '.join(PEER_REQUIREMENTS[peer])}")
    shutil.rmtree(venv, ignore_errors=True)
    base = getattr(sys, "_base_executable", None) or sys.executable
    subprocess.run([base, "-m", "venv", str(venv)], check=True, timeout=300)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    *PEER_REQUIREMENTS[peer]], check=True, timeout=1200)
    marker.write_text(wanted)
    return venv


def venv_versions(venv: Path, packages: list[str]) -> dict[str, str]:
    names = [re.split(r"[\[<>=]", p)[0] for p in packages]
    code = ("import importlib.metadata as m, json, sys, platform\n"
            "out = {'python': platform.python_version()}\n"
            "for n in sys.argv[1:]:\n"
            "    try: out[n] = m.version(n)\n"
            "    except m.PackageNotFoundError: out[n] = None\n"
            "print(json.dumps(out))")
    done = subprocess.run([str(venv / "bin" / "python"), "-c", code, *names, *(["psycopg-pool"] if "psycopg" in names else [])],
                          capture_output=True, text=True, timeout=60)
    return json.loads(done.stdout) if done.returncode == 0 else {}


def check_peers(peers: Path) -> None:
    for peer in PEERS:
        if not (peers / peer / "app.py").is_file():
            raise SystemExit(f"bench/run: {peers / peer / 'app.py'} is missing (--peers names the peers' folder)")


# --- database -------------------------------------------------------------------------------------

def db_url(name: str) -> str:
    return f"postgresql://postgres@127.0.0.1:5432/{name}"


def create_database(name: str) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


# About the most connections a run holds at once: two consoles (2 workers x 10 pooled, plus up to
# 16 more on the one under load, plus a LISTEN connection each) and two ceilings (2 x 8 each).
CONNECTIONS_NEEDED = 90


def free_connection_slots() -> int:
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        return conn.execute("SELECT current_setting('max_connections')::int "
                            "- current_setting('superuser_reserved_connections')::int "
                            "- (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')"
                            ).fetchone()[0]


def drop_database(name: str) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def migrate(env: dict) -> None:
    """The console's migrations, then the table the peers write their events to."""
    subprocess.run([str(VENV_BIN / "flask"), "--app", "console", "db", "upgrade"], cwd=ROOT, env=env,
                   check=True, timeout=120, stdout=subprocess.DEVNULL)
    with psycopg.connect(env["DATABASE_URL"], autocommit=True) as conn:
        conn.execute(PEER_EVENTS_SQL)


ESCALATION_COLUMNS = ("id, session_id, job_id, project_id, founder_id, error_type, error_signature, "
                      "plain_english_problem, attempts_summary, recommended_action, options, status, "
                      "founder_decision, founder_guidance, resolved_at, created_at, occurrences, last_seen_at")


def insert_escalations(conn, count: int, *, founder: str, job: str, project: str, status: str, created: str,
                       signature: str, returning: bool = False) -> list[tuple]:
    """INSERT ... SELECT generate_series: `count` escalations; the keyword arguments are SQL
    expressions of the row number `i` (and, for the later ones, `s.status` / `s.created_at`)."""
    returning_clause = "RETURNING id, founder_id, job_id" if returning else ""
    sql = f"""
        INSERT INTO agent_escalations ({ESCALATION_COLUMNS})
        SELECT gen_random_uuid(), 'sess-' || ({job}), {job}, {project}, {founder}, s.error_type, {signature},
               format(%(problem)s, (ARRAY['install','migrate','test','deploy','lint'])[1 + i % 5], s.error_type),
               %(attempts)s::jsonb, %(action)s, %(options)s::jsonb, s.status,
               CASE WHEN s.status = 'resolved' THEN (CASE WHEN i % 4 = 0 THEN 'skip_feature' ELSE 'retry' END) END,
               CASE WHEN s.status = 'resolved' AND i % 3 = 0 THEN 'Try once more, then skip it.' END,
               CASE WHEN s.status <> 'pending' THEN s.created_at + interval '2 hours' END,
               s.created_at, 1 + (i % 7 = 0)::int * 2, s.created_at + interval '5 minutes'
        FROM (SELECT i, ({status}) AS status, ({created}) AS created_at,
                     (ARRAY['KeyError','TimeoutError','IntegrityError','ImportError','TypeError'])[1 + i % 5]
                       AS error_type
              FROM generate_series(0, %(n)s - 1) AS i) AS s
        {returning_clause}
    """
    # Literal % (modulo) in the expressions must not be taken for placeholders.
    sql = re.sub(r"%%\((\w+)\)s", r"%(\1)s", sql.replace("%", "%%"))
    params = {"problem": PROBLEM.replace("{step}", "%s").replace("{error}", "%s"),
              "attempts": json.dumps(ATTEMPTS), "action": ACTION, "options": json.dumps(OPTIONS), "n": count}
    cur = conn.execute(sql, params)
    return cur.fetchall() if returning else []


def claim_jobs(conn, founder: str, jobs: list[str]) -> None:
    conn.execute("INSERT INTO jobs (id, founder_id, project_id, created_at) "
                 "SELECT j, %s, 'bench-proj', now() - interval '100 days' FROM unnest(%s::text[]) AS j "
                 "ON CONFLICT (id) DO NOTHING", (founder, jobs))


MIX = "CASE WHEN i % 20 < 3 THEN 'pending' WHEN i % 20 < 18 THEN 'resolved' ELSE 'skipped' END"


def seed(url: str, rows: int) -> dict:
    """Bulk rows plus the fixtures; returns a description of what is there."""
    fixtures = LIST_JOBS * LIST_ROWS_PER_JOB + INBOX_PENDING + INBOX_DECIDED
    bulk = max(rows - fixtures, 0)
    started = time.monotonic()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = off")
        conn.execute(
            "INSERT INTO jobs (id, founder_id, project_id, created_at) "
            "SELECT format('job-%%s-%%s', f, j), format('founder-%%s', f), format('proj-%%s-%%s', f, j %% 2), "
            "now() - interval '120 days' FROM generate_series(0, %s) AS f, generate_series(0, %s) AS j",
            (BULK_FOUNDERS - 1, BULK_JOBS - 1))
        chunk = 200_000
        for start in range(0, bulk, chunk):
            n = min(chunk, bulk - start)
            # i is offset so every row of every chunk is distinct (signatures, founders, jobs).
            insert_escalations(
                conn, n,
                founder=f"'founder-' || ((i + {start}) % {BULK_FOUNDERS})",
                job=f"'job-' || ((i + {start}) % {BULK_FOUNDERS}) || '-' || (((i + {start}) / {BULK_FOUNDERS}) % {BULK_JOBS})",
                project=f"'proj-' || ((i + {start}) % {BULK_FOUNDERS}) || '-' || ((((i + {start}) / {BULK_FOUNDERS}) % {BULK_JOBS}) % 2)",
                status=MIX.replace("i %", f"(i + {start}) %"),
                created="now() - random() * interval '90 days'",
                signature=f"'bulk:' || s.error_type || ':' || lpad(to_hex(i + {start}), 8, '0')")
            if rows >= 100_000:
                log(f"  seeded {start + n:,} / {bulk:,} bulk rows")
        # Fixtures. The job list: 20 jobs x 20 rows of one founder (4 pending, 14 resolved, 2 skipped).
        list_jobs = [f"bench-list-job-{k}" for k in range(LIST_JOBS)]
        claim_jobs(conn, LIST_FOUNDER, list_jobs)
        insert_escalations(conn, LIST_JOBS * LIST_ROWS_PER_JOB, founder=f"'{LIST_FOUNDER}'",
                           job=f"'bench-list-job-' || (i % {LIST_JOBS})", project="'bench-proj'",
                           status=MIX, created="now() - (i * interval '17 minutes')",
                           signature="'bench-list:' || s.error_type || ':' || i")
        # The inbox: 50 pending over 5 jobs, 40 decided.
        inbox_jobs = [f"bench-inbox-job-{k}" for k in range(5)]
        claim_jobs(conn, INBOX_FOUNDER, inbox_jobs)
        insert_escalations(conn, INBOX_PENDING, founder=f"'{INBOX_FOUNDER}'", job="'bench-inbox-job-' || (i % 5)",
                           project="'bench-proj'", status="'pending'",
                           created="now() - (i * interval '41 minutes')",
                           signature="'bench-inbox:' || s.error_type || ':' || i")
        insert_escalations(conn, INBOX_DECIDED, founder=f"'{INBOX_FOUNDER}'", job="'bench-inbox-job-' || (i % 5)",
                           project="'bench-proj'",
                           status="CASE WHEN i % 8 = 0 THEN 'skipped' ELSE 'resolved' END",
                           created="now() - interval '1 day' - (i * interval '37 minutes')",
                           signature="'bench-inbox-decided:' || s.error_type || ':' || i")
        claim_jobs(conn, RESOLVER, [f"bench-resolve-job-{k}" for k in range(4)] + [SSE_JOB])
        claim_jobs(conn, CREATOR, [f"bench-create-job-{k}" for k in range(4)])
        conn.execute("VACUUM (ANALYZE) agent_escalations")
        conn.execute("VACUUM (ANALYZE) jobs")
        # Start the measurements from a clean checkpoint, not inside the one the seed's WAL set off.
        conn.execute("CHECKPOINT")
        total = conn.execute("SELECT count(*) FROM agent_escalations").fetchone()[0]
        size = conn.execute("SELECT pg_size_pretty(pg_total_relation_size('agent_escalations'))").fetchone()[0]
        mix = dict(conn.execute("SELECT status, count(*) FROM agent_escalations GROUP BY status").fetchall())
    return {"rows": total, "table_size": size, "status_mix": mix, "seconds": round(time.monotonic() - started, 1)}


def resolve_pool(url: str, count: int, tag: str, job_prefix: str = "bench-resolve-job-") -> list[str]:
    """`count` fresh pending escalations of the resolver founder (distinct signatures)."""
    with psycopg.connect(url, autocommit=True) as conn:
        if job_prefix == SSE_JOB:
            job = f"'{SSE_JOB}'"
        else:
            job = f"'{job_prefix}' || (i % 4)"
        rows = insert_escalations(conn, count, founder=f"'{RESOLVER}'", job=job, project="'bench-proj'",
                                  status="'pending'", created="now() - interval '1 minute'",
                                  signature=f"'pool-{tag}:' || s.error_type || ':' || i", returning=True)
        # Statistics that know these rows, as autovacuum keeps them in production: with the
        # last cleanup's (no pending rows of this founder) the planner may look a row up by
        # the founder's index and walk all of their pending rows, for any contender.
        conn.execute("ANALYZE agent_escalations")
    return [str(r[0]) for r in rows]


def cleanup_writes(url: str) -> None:
    """Remove what the write endpoints added, so the table stays at its nominal size."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM agent_escalations WHERE founder_id IN (%s, %s)", (RESOLVER, CREATOR))
        conn.execute("DELETE FROM job_events WHERE job_id LIKE 'bench-resolve-job-%%' "
                     "OR job_id LIKE 'bench-create-job-%%'")
        conn.execute("DELETE FROM bench_peer_events")
        conn.execute("VACUUM (ANALYZE) agent_escalations")
        conn.execute("VACUUM (ANALYZE) job_events")
        conn.execute("VACUUM (ANALYZE) bench_peer_events")


def sample_get_targets(url: str) -> list[tuple[str, str]]:
    with psycopg.connect(url, autocommit=True) as conn:
        # TABLESAMPLE: a random spread over the whole table without sorting it.
        rows = conn.execute("SELECT id, founder_id FROM agent_escalations TABLESAMPLE SYSTEM (5) "
                            "WHERE founder_id LIKE 'founder-%%' LIMIT %s", (GET_TARGETS * 5,)).fetchall()
        if len(rows) < GET_TARGETS:
            rows = conn.execute("SELECT id, founder_id FROM agent_escalations WHERE founder_id LIKE 'founder-%%'"
                                " ORDER BY random() LIMIT %s", (GET_TARGETS,)).fetchall()
    random.Random(7).shuffle(rows)
    return [(str(i), f) for i, f in rows[:GET_TARGETS]]


# --- tokens and requests ------------------------------------------------------------------------

class Tokens:
    def __init__(self, secret: str, agent: str):
        self.secret, self.agent = secret, agent
        self._cache: dict[str, str] = {}

    def founder(self, founder_id: str) -> str:
        if founder_id not in self._cache:
            now = int(time.time())
            self._cache[founder_id] = jwt.encode({"sub": founder_id, "iat": now, "exp": now + 6 * 3600},
                                                 self.secret, algorithm="HS256")
        return self._cache[founder_id]


def render(method: str, path: str, port: int, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}:{port}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def write_requests(path: Path, requests: list[bytes]) -> Path:
    with open(path, "wb") as fh:
        for raw in requests:
            fh.write(f"{len(raw)}\n".encode())
            fh.write(raw)
    return path


class ConsoleSession:
    """A logged-in console session (cookie + CSRF token), made with plain http.client."""

    def __init__(self, server: Server, token: str):
        self.cookie = ""
        conn = http.client.HTTPConnection(HOST, server.port, timeout=10)
        page = self._get(conn, "/login")
        csrf = self._csrf(page)
        body = urllib.parse.urlencode({"token": token, "csrf_token": csrf, "next": "/"})
        conn.request("POST", "/login", body=body, headers={
            "Content-Type": "application/x-www-form-urlencoded", "Cookie": self.cookie})
        response = conn.getresponse()
        response.read()
        if response.status != 303:
            raise RuntimeError(f"console login answered {response.status}")
        self._keep_cookie(response)
        inbox = self._get(conn, "/")
        self.csrf = self._csrf(inbox)
        conn.close()

    def _keep_cookie(self, response) -> None:
        for header, value in response.getheaders():
            if header.lower() == "set-cookie" and value.startswith("console_session="):
                self.cookie = value.split(";", 1)[0]

    def _get(self, conn, path: str) -> str:
        conn.request("GET", path, headers={"Cookie": self.cookie} if self.cookie else {})
        response = conn.getresponse()
        text = response.read().decode()
        if response.status != 200:
            raise RuntimeError(f"GET {path} answered {response.status}")
        self._keep_cookie(response)
        return text

    @staticmethod
    def _csrf(page: str) -> str:
        found = re.search(r'name="csrf_token" value="([^"]+)"', page)
        if not found:
            raise RuntimeError("no csrf_token on the page")
        return found.group(1)


# --- wrk ----------------------------------------------------------------------------------------

def run_wrk(server: Server, request_file: Path, mode: str, duration: float, connections: int, threads: int) -> dict:
    per_thread = math.ceil(connections / threads)
    argv = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(duration))}s", "--timeout", "10s",
            "-s", str(LUA), server.base, "--", str(request_file), mode, str(per_thread), str(threads)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    line = next((l for l in done.stdout.splitlines() if l.startswith("BENCH_RESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no result: {done.stdout}\n{done.stderr}")
    result = json.loads(line[len("BENCH_RESULT "):])
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    errors = result["errors"]
    result["failed"] = errors["connect"] + errors["read"] + errors["write"] + errors["timeout"] + errors["status"]
    return result


class Endpoint:
    """One measured endpoint: how to build its requests for a contender and a round."""

    def __init__(self, name: str, title: str, mode: str, build, *, writes: bool = False, expect: int = 200):
        self.name, self.title, self.mode, self.build, self.writes, self.expect = name, title, mode, build, writes, expect


def summarise(runs: list[dict]) -> dict:
    return {
        "rps": round(statistics.median(r["rps"] for r in runs), 1),
        "server_cpu_ms_per_request": round(statistics.median(r["server_cpu_ms_per_request"] for r in runs), 3),
        "busiest_worker_share": [r["busiest_worker_share"] for r in runs],
        "rps_rounds": [round(r["rps"], 1) for r in runs],
        "p50_ms": round(statistics.median(r["latency_us"]["p50"] for r in runs) / 1000, 2),
        "p90_ms": round(statistics.median(r["latency_us"]["p90"] for r in runs) / 1000, 2),
        "p99_ms": round(statistics.median(r["latency_us"]["p99"] for r in runs) / 1000, 2),
        "requests": sum(r["requests"] for r in runs),
        "failed": sum(r["failed"] for r in runs),
        "statuses": _merge_statuses(runs),
        "exhausted": any(r["exhausted"] for r in runs),
    }


def _merge_statuses(runs: list[dict]) -> dict:
    out: dict[str, int] = {}
    for r in runs:
        for k, v in r["statuses"].items():
            out[k] = out.get(k, 0) + v
    return out


def measure(endpoint: Endpoint, contenders: list[tuple[str, Server, str]], args, workdir: Path) -> dict:
    """Rounds A B C, B C A, C A B, ... (the order rotates every round, so that drift in the
    machine's load falls on every contender): each a short warm-up, then `duration` s of wrk."""
    runs: dict[str, list[dict]] = {label: [] for label, _, _ in contenders}
    for round_no in range(args.rounds):
        shift = round_no % len(contenders)
        order = contenders[shift:] + contenders[:shift]
        for label, server, db in order:
            if STOP.is_set():
                raise KeyboardInterrupt
            for attempt in range(2):  # a write round whose pool ran dry is retried once, bigger
                size_hint = _pool_size(endpoint, runs[label], args, attempt)
                tag = f"{endpoint.name}-{label}-{round_no}-{attempt}-{secrets.token_hex(3)}"
                warm = endpoint.build(server, db, tag + "w", max(200, size_hint // 8))
                run_wrk(server, write_requests(workdir / f"{tag}-warm.req", warm), endpoint.mode,
                        args.warmup, args.connections, args.threads)
                reqs = endpoint.build(server, db, tag, size_hint)
                spies = start_profilers(server, f"{endpoint.name}-{label}-r{round_no}", args) \
                    if args.profile and label == "console" else []
                cpu_before = worker_cpu(server)
                result = run_wrk(server, write_requests(workdir / f"{tag}.req", reqs), endpoint.mode,
                                 args.duration, args.connections, args.threads)
                cpu_after = worker_cpu(server)
                used = [cpu_after[p] - cpu_before.get(p, 0.0) for p in cpu_after]
                result["worker_cpu_s"] = [round(u, 2) for u in used]
                result["server_cpu_ms_per_request"] = round(sum(used) / max(result["requests"], 1) * 1000, 3)
                result["busiest_worker_share"] = round(max(used) / sum(used), 2) if used and sum(used) else None
                for spy in spies:
                    try:
                        spy.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        spy.kill()
                        spy.wait()
                for f in workdir.glob(f"{tag}*.req"):
                    f.unlink()
                if endpoint.writes:
                    cleanup_writes(db_url(db))
                if not result["exhausted"]:
                    break
                log(f"  {endpoint.name} {label}: the pool of {size_hint} ran dry; retrying with more")
            result["round"] = round_no
            runs[label].append(result)
            log(f"  {endpoint.name:15} {label:12} round {round_no + 1}: {result['rps']:8.1f} rps  "
                f"p50 {result['latency_us']['p50'] / 1000:6.2f} ms  p99 {result['latency_us']['p99'] / 1000:6.2f} ms"
                f"  cpu {result['server_cpu_ms_per_request']:.2f} ms/req  workers {result['worker_cpu_s']}"
                f"  statuses {result['statuses']}")
    return {label: {**summarise(r), "runs": r} for label, r in runs.items()}


PROFILE_DIR = RESULTS / "profile"


def worker_pids(server: Server) -> list[int]:
    """The gunicorn workers: the children of the master this run started."""
    try:
        text = Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def worker_cpu(server: Server) -> dict[int, float]:
    """CPU seconds (user + system) used so far by each gunicorn worker."""
    out = {}
    tick = os.sysconf("SC_CLK_TCK")
    for pid in worker_pids(server):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[pid] = (int(fields[11]) + int(fields[12])) / tick  # utime, stime (fields 14, 15)
    return out


def start_profilers(server: Server, name: str, args) -> list[subprocess.Popen]:
    """py-spy (sampling, non-blocking) on every worker for the round: collapsed stacks in
    bench/results/profile/NAME-PID.txt; `bench/profile_report.py` summarises them."""
    spy = VENV_BIN / "py-spy"
    if not spy.exists():
        log("  --profile: py-spy is not installed (.venv/bin/pip install py-spy); not profiling")
        return []
    PROFILE_DIR.mkdir(parents=True, exist_ok=True)
    out = []
    for pid in worker_pids(server):
        out.append(subprocess.Popen(
            [str(spy), "record", "--pid", str(pid), "--duration", str(max(1, round(args.duration))),
             "--rate", "250", "--nonblocking", *(["--gil"] if args.profile == "gil" else []), "--format", "raw",
             "--output",
             str(PROFILE_DIR / f"{name}-{pid}.txt")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
    return out


def _pool_size(endpoint: Endpoint, previous: list[dict], args, attempt: int) -> int:
    if endpoint.mode != "once":
        return 0
    guess = max((r["rps"] for r in previous), default=args.write_rps_guess)
    return int(max(2000, guess * 1.6 * (args.duration + 1)) * (3 if attempt else 1))


# --- event latency ----------------------------------------------------------------------------

def event_latency(subscriber: Server, resolver: Server, url: str, tokens: Tokens, samples: int,
                  time_budget: float) -> dict:
    """Resolve on `resolver`, receive agent.escalation_resolved on a stream from `subscriber`."""
    ids = resolve_pool(url, samples + 20, "sse-" + secrets.token_hex(3), job_prefix=SSE_JOB)
    with psycopg.connect(url, autocommit=True) as conn:
        after = conn.execute("SELECT coalesce(max(id), 0) FROM job_events").fetchone()[0]
    arrivals: dict[str, float] = {}
    arrived = threading.Condition()
    stream = http.client.HTTPConnection(HOST, subscriber.port, timeout=30)
    stream.request("GET", f"/api/jobs/{SSE_JOB}/events/stream?after={after}",
                   headers={"Authorization": f"Bearer {tokens.agent}", "Accept": "text/event-stream"})
    response = stream.getresponse()
    if response.status != 200:
        raise RuntimeError(f"stream answered {response.status}")
    reader_error: list[BaseException] = []
    finished = threading.Event()

    def read() -> None:
        event_type, data = None, None
        try:
            while not STOP.is_set():
                line = response.readline()
                if not line:
                    return
                line = line.decode().rstrip("\n")
                if line.startswith("event: "):
                    event_type = line[7:]
                elif line.startswith("data: "):
                    data = line[6:]
                elif line == "":
                    if event_type == "agent.escalation_resolved" and data:
                        now = time.perf_counter()
                        with arrived:
                            arrivals[json.loads(data)["escalation_id"]] = now
                            arrived.notify_all()
                    event_type, data = None, None
        except Exception as error:  # noqa: BLE001 - the socket is closed under us at the end
            if not finished.is_set():
                reader_error.append(error)

    reader = threading.Thread(target=read, name="sse-reader", daemon=True)
    reader.start()
    poster = http.client.HTTPConnection(HOST, resolver.port, timeout=10)
    body = json.dumps({"decision": "retry", "guidance": "Go ahead."})
    headers = {"Authorization": f"Bearer {tokens.founder(RESOLVER)}", "Content-Type": "application/json"}
    latencies, resolve_times, lost = [], [], 0
    deadline = time.monotonic() + time_budget
    warmup = 10
    rng = random.Random(5)
    for n, escalation_id in enumerate(ids[: samples + warmup]):
        if time.monotonic() > deadline or STOP.is_set():
            break
        sent = time.perf_counter()
        poster.request("POST", f"/api/escalations/{escalation_id}/resolve", body=body, headers=headers)
        answer = poster.getresponse()
        answer.read()
        answered = time.perf_counter()
        if answer.status != 200:
            raise RuntimeError(f"resolve answered {answer.status}")
        with arrived:
            arrived.wait_for(lambda: escalation_id in arrivals, timeout=2.0)
            got = arrivals.get(escalation_id)
        if n >= warmup:
            if got is None:
                lost += 1
            else:
                latencies.append((got - sent) * 1000)
                resolve_times.append((answered - sent) * 1000)
        time.sleep(rng.uniform(0.005, 0.02))
    poster.close()
    finished.set()
    for sock in (stream.sock, getattr(getattr(response.fp, "raw", None), "_sock", None)):
        try:
            if sock is not None:
                sock.shutdown(socket.SHUT_RDWR)  # wakes the reader blocked in readline()
        except OSError:
            pass
    stream.close()
    reader.join(timeout=5)
    latencies.sort()

    def pct(values: list[float], q: float) -> float | None:
        if not values:
            return None
        return round(values[min(len(values) - 1, max(0, math.ceil(q / 100 * len(values)) - 1))], 2)

    return {"samples": len(latencies), "lost": lost, "p50_ms": pct(latencies, 50), "p90_ms": pct(latencies, 90),
            "p99_ms": pct(latencies, 99), "max_ms": round(max(latencies), 2) if latencies else None,
            "resolve_response_p50_ms": pct(sorted(resolve_times), 50),
            "reader_error": repr(reader_error[0]) if reader_error else None}


# --- EXPLAIN, from the app's own statements ---------------------------------------------------

def explain_plans(url: str, secrets_env: dict) -> list[dict]:
    """Run the services the measured endpoints use, capture the SQL SQLAlchemy sends, and
    EXPLAIN (ANALYZE, BUFFERS) each statement with its parameters."""
    sys.path.insert(0, str(ROOT))
    from sqlalchemy import event  # noqa: PLC0415

    from console import create_app  # noqa: PLC0415
    from console.auth import Principal  # noqa: PLC0415
    from console.extensions import db  # noqa: PLC0415
    from console.services import escalations as service  # noqa: PLC0415

    app = create_app({
        "SQLALCHEMY_DATABASE_URI": url.replace("postgresql://", "postgresql+psycopg://", 1),
        "SECRET_KEY": secrets_env["CONSOLE_SECRET_KEY"], "JWT_SECRET": secrets_env["CONSOLE_JWT_SECRET"],
        "AGENT_TOKEN": secrets_env["CONSOLE_AGENT_TOKEN"],
    })
    with psycopg.connect(url, autocommit=True) as conn:
        get_id, get_founder = conn.execute(
            "SELECT id, founder_id FROM agent_escalations WHERE founder_id = 'founder-7' LIMIT 1").fetchone()
    plans = []
    with app.app_context():
        captured: list[tuple[str, object]] = []

        def capture(_conn, _cursor, statement, parameters, _context, _many):
            captured.append((statement, parameters))

        event.listen(db.engine, "before_cursor_execute", capture)
        try:
            # A short first page, so that there is a cursor at every scale.
            first_page, cursor = service.list_founder_escalations("founder-7", limit=5)
            cases = [
                ("get by id  (GET /api/escalations/{id})",
                 lambda: service.get_escalation(get_id, Principal("founder", get_founder))),
                ("job list  (GET /api/jobs/{job}/escalations)",
                 lambda: service.list_job_escalations("bench-list-job-3", Principal("founder", LIST_FOUNDER))),
                ("inbox pending page  (GET /: pending, newest first)",
                 lambda: service.list_founder_escalations(INBOX_FOUNDER, status="pending", limit=100)),
                ("inbox recently decided  (GET /: all statuses, newest first)",
                 lambda: service.list_founder_escalations(INBOX_FOUNDER, limit=70)),
                ("inbox pending count  (GET /)", lambda: service.count_pending(INBOX_FOUNDER)),
                ("founder inbox keyset page  (GET /api/escalations?cursor=..., a founder with many rows)",
                 lambda: service.list_founder_escalations("founder-7", limit=50, cursor=cursor)),
            ]
            for title, call in cases:
                call()
                db.session.rollback()
                captured.clear()
                call()
                statements = list(captured)
                db.session.rollback()
                for statement, parameters in statements:
                    rows = db.session.connection().exec_driver_sql(
                        "EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters).fetchall()
                    plans.append({"query": title, "sql": " ".join(statement.split()),
                                  "plan": "\n".join(r[0] for r in rows)})
                    db.session.rollback()
        finally:
            event.remove(db.engine, "before_cursor_execute", capture)
            db.session.remove()
            db.engine.dispose()
    return plans


# --- CPU cost per request, in-process (robust to a busy machine) ------------------------------

def _load_factory(spec: str):
    module, _, call = spec.partition(":")
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return getattr(importlib.import_module(module), call.removesuffix("()"))


def ceiling_factory(peers: Path, venv: Path, pools: list):
    """create_app of the ceiling (peers/ceiling/app.py), importable in this process: its only
    package the console's venv lacks, psycopg_pool (pure Python), comes from the ceiling's venv,
    put at the end of sys.path (everything else still resolves to the console's venv first).
    The pools it opens are appended to `pools`, to be closed by the caller."""
    try:
        import psycopg_pool  # noqa: F401, PLC0415
    except ImportError:
        tag = f"python{sys.version_info.major}.{sys.version_info.minor}"
        site = venv / "lib" / tag / "site-packages"
        if not (site / "psycopg_pool").is_dir():
            raise RuntimeError(f"no psycopg_pool for {tag} in {venv}") from None
        sys.path.append(str(site))
    spec = importlib.util.spec_from_file_location("bench_peer_ceiling", peers / "ceiling" / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    class RecordedPool(module.ConnectionPool):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            pools.append(self)

    module.ConnectionPool = RecordedPool
    return module.create_app


COST_BLOCKS = 20  # blocks per contender and endpoint; the cheapest block counts
COST_BLOCK_SIZES = {"get": 75, "list": 25, "resolve": 20}


def cpu_cost(url: str, secrets_env: dict, contenders: dict, tokens: Tokens,
             get_targets: list[tuple[str, str]]) -> dict:
    """Single-threaded, through each app's WSGI test client (no HTTP server): CPU and wall
    microseconds per request of get / list / resolve. The contenders alternate in short
    blocks (A B, B A, ...) and each reports its cheapest block: on a shared machine a
    block is only ever slowed down by others (steal, frequency), never sped up, so the
    minimum is the steadiest figure of what the code itself costs."""
    # BENCH_*: the ceiling's settings (events stored and NOTIFYed; one thread needs few connections).
    extra = {"DATABASE_URL": url, "BENCH_PEER_EVENTS": "1", "BENCH_POOL_SIZE": "2"}
    saved = {k: os.environ.get(k) for k in (*secrets_env, *extra)}
    os.environ.update(secrets_env, **extra)
    founder_auth = {"Authorization": f"Bearer {tokens.founder(LIST_FOUNDER)}"}
    resolver_auth = {"Authorization": f"Bearer {tokens.founder(RESOLVER)}"}
    body = {"decision": "retry", "guidance": "Go ahead."}
    calls: dict[str, dict] = {}
    try:
        for label, factory in contenders.items():  # label -> create_app
            client = factory().test_client()
            pool = resolve_pool(url, (COST_BLOCKS + 1) * COST_BLOCK_SIZES["resolve"] + 10,
                                f"cost-{label}-{secrets.token_hex(3)}")
            counter = itertools.count()

            def get(n, client=client):
                escalation_id, founder = get_targets[n % len(get_targets)]
                return client.get(f"/api/escalations/{escalation_id}",
                                  headers={"Authorization": f"Bearer {tokens.founder(founder)}"})

            def list_(n, client=client):
                return client.get(f"/api/jobs/bench-list-job-{n % LIST_JOBS}/escalations", headers=founder_auth)

            def resolve(_n, client=client, pool=pool, counter=counter):
                return client.post(f"/api/escalations/{pool[next(counter)]}/resolve", json=body, headers=resolver_auth)

            calls[label] = {"get": get, "list": list_, "resolve": resolve}

        def block(label: str, name: str, size: int) -> tuple[float, float]:
            call = calls[label][name]
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            for n in range(size):
                response = call(n)
                if response.status_code != 200:
                    raise RuntimeError(f"cost {label} {name}: {response.status_code} {response.data[:200]!r}")
            return (time.process_time() - start_cpu) / size * 1e6, (time.perf_counter() - start_wall) / size * 1e6

        labels = list(contenders)
        out: dict = {label: {} for label in labels}
        for name, size in COST_BLOCK_SIZES.items():
            for label in labels:
                block(label, name, size)  # warm-up: templates, caches, pooled connections
            best = {label: (float("inf"), float("inf")) for label in labels}
            for round_ in range(COST_BLOCKS):
                for label in (labels if round_ % 2 == 0 else labels[::-1]):
                    cpu, wall = block(label, name, size)
                    best[label] = (min(best[label][0], cpu), min(best[label][1], wall))
            for label in labels:
                out[label][name] = {"cpu_us": round(best[label][0]), "wall_us": round(best[label][1])}
        cleanup_writes(url)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return out


# --- the run --------------------------------------------------------------------------------------

def endpoints(tokens: Tokens, sessions: dict, get_targets: dict, args) -> list[Endpoint]:
    resolve_body = json.dumps({"decision": "retry", "guidance": "Go ahead."}).encode()

    def get(server, db, tag, size):
        return [render("GET", f"/api/escalations/{i}", server.port, {"Authorization": f"Bearer {tokens.founder(f)}"})
                for i, f in get_targets[db]]

    def list_(server, db, tag, size):
        return [render("GET", f"/api/jobs/bench-list-job-{k}/escalations", server.port,
                       {"Authorization": f"Bearer {tokens.founder(LIST_FOUNDER)}"}) for k in range(LIST_JOBS)]

    def inbox(server, db, tag, size):
        return [render("GET", "/", server.port, {"Cookie": sessions[(server.name, INBOX_FOUNDER)].cookie})]

    def resolve(server, db, tag, size):
        auth = {"Authorization": f"Bearer {tokens.founder(RESOLVER)}", "Content-Type": "application/json"}
        return [render("POST", f"/api/escalations/{i}/resolve", server.port, auth, resolve_body)
                for i in resolve_pool(db_url(db), size, tag)]

    def console_resolve(server, db, tag, size):
        session = sessions[(server.name, RESOLVER)]
        body = urllib.parse.urlencode({"decision": "retry", "guidance": "Go ahead.",
                                       "csrf_token": session.csrf}).encode()
        headers = {"Cookie": session.cookie, "HX-Request": "true", "HX-Target": "escalation",
                   "Content-Type": "application/x-www-form-urlencoded"}
        return [render("POST", f"/escalations/{i}/resolve", server.port, headers, body)
                for i in resolve_pool(db_url(db), size, tag)]

    def create(server, db, tag, size):
        headers = {"Authorization": f"Bearer {tokens.agent}", "Content-Type": "application/json"}
        out = []
        for n in range(size):
            body = json.dumps({
                "session_id": f"bench-session-{n % 10}", "project_id": "bench-proj", "founder_id": CREATOR,
                "error_type": "IntegrityError", "error_signature": f"bench-proj:IntegrityError:{tag}-{n}",
                "plain_english_problem": PROBLEM.format(step="migrate", error="IntegrityError"),
                "attempts_summary": ATTEMPTS, "recommended_action": ACTION, "options": OPTIONS,
            }).encode()
            out.append(render("POST", f"/api/jobs/bench-create-job-{n % 4}/escalations", server.port, headers, body))
        return out

    return [
        Endpoint("get", "GET /api/escalations/{id} (founder JWT)", "cycle", get),
        Endpoint("list", "GET /api/jobs/{job}/escalations (20 rows)", "cycle", list_),
        Endpoint("resolve", "POST /api/escalations/{id}/resolve", "once", resolve, writes=True),
        Endpoint("inbox", "GET / console inbox (50 pending cards)", "cycle", inbox),
        Endpoint("create", "POST /api/jobs/{job}/escalations (agent)", "once", create, writes=True, expect=201),
        Endpoint("console_resolve", "POST /escalations/{id}/resolve (HX-Request)", "once", console_resolve,
                 writes=True),
    ]


def compare(console: dict, peer: dict, target: float) -> dict:
    """console ÷ peer: of the medians, and per round (each console round ran in the same round as
    the peer's, so both saw about the same background load; their median is the figure the
    target is judged on)."""
    pairs = [c["rps"] / p["rps"] for c, p in zip(console["runs"], peer["runs"]) if p["rps"]]
    paired = statistics.median(pairs) if pairs else None
    return {"ratio": round(console["rps"] / peer["rps"], 3) if peer["rps"] else None,
            "ratio_pairs": [round(r, 3) for r in pairs],
            "ratio_median_of_pairs": round(paired, 3) if paired is not None else None,
            "target": target, "met": paired is not None and paired >= target}


def _shown(argv: list[str]) -> str:
    """A command line as the report shows it: paths inside the repository relative to it."""
    return " ".join(a.replace(str(ROOT) + "/", "") for a in argv) if argv else ""


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", action="store_true", help="also seed 1M rows and compare p50 at 1M vs 10k")
    parser.add_argument("--rows", type=int, default=10_000, help="rows of the main database (default 10000)")
    parser.add_argument("--scale-rows", type=int, default=1_000_000, help="rows of the --scale database")
    parser.add_argument("--duration", type=int, default=8, help="seconds of wrk per round (default 8)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up before each round (default 2)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per contender (default 3)")
    parser.add_argument("-c", "--connections", type=int, default=32,
                        help="wrk connections (default 32, as peers/README.md asks)")
    parser.add_argument("-t", "--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--sse-samples", type=int, default=250, help="event-latency samples (default 250)")
    parser.add_argument("--only", default="", help="comma-separated parts to run (get,list,resolve,inbox,"
                                                   "create,console_resolve,sse,cost); default all")
    parser.add_argument("--peers", type=Path, default=ROOT.parent / "shared" / "peers",
                        help="the peers' folder, with ceiling/app.py and seedstack/app.py (default ../shared/peers)")
    parser.add_argument("--contenders", default="console,ceiling,seedstack",
                        help="comma-separated contenders (default console,ceiling,seedstack; the console always runs)")
    parser.add_argument("--write-rps-guess", type=float, default=2500.0, help=argparse.SUPPRESS)
    parser.add_argument("--profile", nargs="?", const="wall", choices=("wall", "gil"),
                        help="py-spy the console workers during its rounds (bench/results/profile/): wall = "
                             "every busy thread (where requests wait), gil = only the thread holding the GIL "
                             "(where the CPU goes). Profiling slows the run: its numbers are not the benchmark's")
    parser.add_argument("--console-app", default="console:create_app()",
                        help="gunicorn app spec of the console contender (default 'console:create_app()'; "
                             "a wrapper module of your own in bench/ measures a change before making it)")
    parser.add_argument("--keep-db", action="store_true", help="keep the databases (names are printed)")
    parser.add_argument("--no-write", action="store_true", help="do not write bench/results/latest.*")
    args = parser.parse_args()
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    wanted = {s.strip() for s in args.contenders.split(",") if s.strip()}
    if wanted - {"console", *PEERS}:
        parser.error(f"unknown contenders: {', '.join(sorted(wanted - {'console', *PEERS}))}")
    peers_wanted = [p for p in PEERS if p in wanted]

    if not shutil.which("wrk"):
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    args.peers = args.peers.resolve()
    if peers_wanted:
        check_peers(args.peers)
    try:
        venvs = {peer: peer_venv(peer) for peer in peers_wanted}
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
        print(f"bench/run: could not make a peer's virtual environment in {PEERS_VENVS}: {error}", file=sys.stderr)
        return 2
    started_at = dt.datetime.now(dt.UTC)
    t0 = time.monotonic()
    workdir = RESULTS / f"run-{os.getpid()}.tmp"
    workdir.mkdir(parents=True, exist_ok=True)
    procs = Processes(workdir)
    secrets_env = {"CONSOLE_JWT_SECRET": secrets.token_urlsafe(32), "CONSOLE_AGENT_TOKEN": secrets.token_urlsafe(32),
                   "CONSOLE_SECRET_KEY": secrets.token_urlsafe(32)}
    tokens = Tokens(secrets_env["CONSOLE_JWT_SECRET"], secrets_env["CONSOLE_AGENT_TOKEN"])
    main_db = f"bench_console_{os.getpid()}"
    scale_db = f"bench_console_{os.getpid()}_scale"
    databases = [main_db]
    ceiling_pools: list = []

    def on_signal(signum, _frame):
        STOP.set()
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    def env_for(db: str) -> dict:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("CONSOLE_", "BENCH_")) and k not in ("VIRTUAL_ENV", "PYTHONPATH")}
        env.update(secrets_env, DATABASE_URL=db_url(db), PYTHONUNBUFFERED="1")
        env["PATH"] = f"{VENV_BIN}:{env.get('PATH', '')}"
        return env

    report: dict = {
        "command": "bench/run " + " ".join(sys.argv[1:]),
        "started_at": started_at.isoformat(timespec="seconds"),
        "machine": {"loadavg_start": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(),
                    "python": platform.python_version(), "platform": platform.platform()},
        "setup": {"console_app": args.console_app, "contenders": ["console", *peers_wanted],
                  "wrk": f"-t{args.threads} -c{args.connections} -d{args.duration}s (+{args.warmup}s warm-up) x "
                         f"{args.rounds} rounds per contender",
                  "peers": str(args.peers), "peer_pool_size": PEER_POOL_SIZE,
                  "versions": {"console": venv_versions(ROOT / ".venv", ["flask", "gunicorn", "gevent", "psycopg",
                                                                          "sqlalchemy", "PyJWT"]),
                               **{peer: venv_versions(venvs[peer], PEER_REQUIREMENTS[peer]) for peer in peers_wanted}}},
    }
    try:
        free = free_connection_slots()
        report["machine"]["postgres_free_connections_start"] = free
        if free < CONNECTIONS_NEEDED:
            log(f"warning: PostgreSQL has {free} free connection slots; a run can use up to ~{CONNECTIONS_NEEDED} "
                "(others' tests share the server): requests may answer 503 (see the responses columns)")
        log(f"database {main_db}: migrate and seed {args.rows:,} rows")
        create_database(main_db)
        migrate(env_for(main_db))
        report["dataset"] = {"main": seed(db_url(main_db), args.rows)}
        log(f"  {report['dataset']['main']}")
        get_targets = {main_db: sample_get_targets(db_url(main_db))}

        console = start_console(procs, "console", args.console_app, env_for(main_db))
        servers = {"console": console}
        for peer in peers_wanted:
            servers[peer] = start_peer(procs, peer, peer, venvs[peer], args.peers, env_for(main_db))
        report["setup"]["servers"] = {name: _shown(server.argv) for name, server in servers.items()}
        log(", ".join(f"{name} on :{server.port}" for name, server in servers.items()))
        sessions = {(console.name, INBOX_FOUNDER): ConsoleSession(console, tokens.founder(INBOX_FOUNDER)),
                    (console.name, RESOLVER): ConsoleSession(console, tokens.founder(RESOLVER))}

        results: dict = {}
        for endpoint in endpoints(tokens, sessions, get_targets, args):
            if only and endpoint.name not in only:
                continue
            contenders = [("console", console, main_db)]
            if endpoint.name in COMPARED:
                contenders += [(peer, servers[peer], main_db) for peer in peers_wanted]
            log(f"{endpoint.title}")
            measured = measure(endpoint, contenders, args, workdir)
            entry = {"title": endpoint.title, **measured}
            peers_here = [label for label in measured if label != "console"]
            if peers_here:
                entry["vs"] = {peer: compare(measured["console"], measured[peer], TARGETS[peer]) for peer in peers_here}
                log("  " + ", ".join(f"console ÷ {peer} {v['ratio_median_of_pairs']}× "
                                     f"({'met' if v['met'] else 'not met'}: ≥ {v['target']}×)"
                                     for peer, v in entry["vs"].items()))
            results[endpoint.name] = entry
        report["endpoints"] = results
        if "seedstack" in servers:  # not needed past this point: its idle pools would only hold connections
            procs.stop(servers.pop("seedstack").proc)

        if not only or "sse" in only:
            console_b = start_console(procs, "console-b", args.console_app, env_for(main_db))
            log(f"event latency: subscribe on :{console.port}, resolve on :{console_b.port} "
                f"({args.sse_samples} samples)")
            report["event_latency"] = event_latency(console, console_b, db_url(main_db), tokens, args.sse_samples,
                                                    time_budget=120)
            log(f"  {report['event_latency']}")
            procs.stop(console_b.proc)

        if not only or "cost" in only:
            cost_contenders = {"console": _load_factory(args.console_app)}
            if "ceiling" in venvs:
                try:
                    cost_contenders["ceiling"] = ceiling_factory(args.peers, venvs["ceiling"], ceiling_pools)
                except Exception as error:  # noqa: BLE001 - the console's own figures are still worth having
                    log(f"  the ceiling cannot run in-process ({error!r}): console alone")
            log(f"CPU cost per request, in-process ({' vs '.join(cost_contenders)})")
            report["cpu_cost"] = cpu_cost(db_url(main_db), secrets_env, cost_contenders, tokens,
                                          get_targets[main_db])
            log(f"  {report['cpu_cost']}")
            for pool in ceiling_pools:
                pool.close()
            ceiling_pools.clear()

        report["plans"] = {"main": explain_plans(db_url(main_db), secrets_env)}

        if args.scale:
            databases.append(scale_db)
            log(f"database {scale_db}: migrate and seed {args.scale_rows:,} rows (this takes a while)")
            create_database(scale_db)
            migrate(env_for(scale_db))
            report["dataset"]["scale"] = seed(db_url(scale_db), args.scale_rows)
            log(f"  {report['dataset']['scale']}")
            get_targets[scale_db] = sample_get_targets(db_url(scale_db))
            big = start_console(procs, "console-1m", args.console_app, env_for(scale_db))
            sessions[(big.name, INBOX_FOUNDER)] = ConsoleSession(big, tokens.founder(INBOX_FOUNDER))
            sessions[(big.name, RESOLVER)] = ConsoleSession(big, tokens.founder(RESOLVER))
            scale: dict = {}
            small_label, big_label = _rows_label(args.rows), _rows_label(args.scale_rows)
            for endpoint in endpoints(tokens, sessions, get_targets, args):
                if endpoint.name not in ("get", "list", "inbox", "resolve"):
                    continue
                log(f"scale: {endpoint.title}")
                contenders = [(small_label, console, main_db), (big_label, big, scale_db)]
                control = endpoint.name == "resolve" and "ceiling" in servers
                big_ceiling = None
                if control:  # does the ceiling slow down the same way? (served only now: its pool holds connections)
                    big_ceiling = start_peer(procs, "ceiling-1m", "ceiling", venvs["ceiling"], args.peers,
                                             env_for(scale_db))
                    contenders += [(f"ceiling {small_label}", servers["ceiling"], main_db),
                                   (f"ceiling {big_label}", big_ceiling, scale_db)]
                measured = measure(endpoint, contenders, args, workdir)
                if big_ceiling is not None:
                    procs.stop(big_ceiling.proc)
                scale[endpoint.name] = {
                    "title": endpoint.title, small_label: measured[small_label], big_label: measured[big_label],
                    "p50_ratio": round(measured[big_label]["p50_ms"] / measured[small_label]["p50_ms"], 3),
                }
                if control:
                    cs, cb = measured[f"ceiling {small_label}"], measured[f"ceiling {big_label}"]
                    scale[endpoint.name]["ceiling_control"] = {small_label: cs, big_label: cb,
                                                               "p50_ratio": round(cb["p50_ms"] / cs["p50_ms"], 3)}
            report["scale"] = {"small": small_label, "big": big_label, "endpoints": scale}
            report["plans"]["scale"] = explain_plans(db_url(scale_db), secrets_env)
        report["elapsed_seconds"] = round(time.monotonic() - t0, 1)
        report["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    except KeyboardInterrupt:
        log("interrupted: stopping everything")
        return 130
    except Exception:
        for path in sorted(workdir.glob("*.log")):  # the servers' logs go with the workdir: show their ends
            tail = path.read_text(errors="replace").splitlines()[-25:]
            if tail:
                print(f"--- last lines of {path.name} ---\n" + "\n".join(tail), file=sys.stderr)
        raise
    finally:
        STOP.set()
        for pool in ceiling_pools:
            try:
                pool.close()
            except Exception:  # noqa: BLE001, S110 - going on cleaning
                pass
        procs.stop_all()
        if not args.keep_db:
            for name in databases:
                try:
                    drop_database(name)
                except Exception as error:  # noqa: BLE001 - report, and go on cleaning
                    log(f"could not drop {name}: {error}")
        else:
            log(f"kept databases: {', '.join(databases)}")
        shutil.rmtree(workdir, ignore_errors=True)

    text = render_markdown(report)
    print()
    print(text)
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "latest.json").write_text(json.dumps(_strip_runs(report), indent=2) + "\n")
        (RESULTS / "latest.md").write_text(text)
        log(f"wrote {RESULTS / 'latest.json'} and {RESULTS / 'latest.md'}")
    return 0


def _rows_label(rows: int) -> str:
    return f"{rows // 1_000_000}M" if rows >= 1_000_000 else f"{rows // 1000}k"


def _strip_runs(report: dict) -> dict:
    """latest.json keeps the per-round numbers but not wrk's raw status histograms per round."""
    out = json.loads(json.dumps(report))

    def strip(node) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("runs"), list):
                node["runs"] = [{"round": r["round"], "rps": round(r["rps"], 1), "latency_us": r["latency_us"],
                                 "requests": r["requests"], "statuses": r["statuses"],
                                 "worker_cpu_s": r["worker_cpu_s"],
                                 "server_cpu_ms_per_request": r["server_cpu_ms_per_request"]}
                                for r in node["runs"]]
            for value in node.values():
                strip(value)

    strip(out.get("endpoints"))
    strip(out.get("scale"))
    return out


def _responses(m: dict) -> str:
    text = ", ".join(f"{k}: {v}" for k, v in sorted(m["statuses"].items()))
    if any(k[0] not in "23" for k in m["statuses"]) or m["failed"]:
        text = f"**{text}** (not all 2xx)"
    if m["exhausted"]:
        text += "; a pool ran dry (req/s understated)"
    return text


def _unclean(*measured: dict) -> str:
    bad = [m for m in measured if m["failed"] or m["exhausted"] or any(k[0] not in "23" for k in m["statuses"])]
    return " (responses not all 2xx: " + "; ".join(_responses(m) for m in bad) + ")" if bad else ""


def _ratio_cells(v: dict | None) -> list[str]:
    if v is None:
        return ["—", "—", "—"]
    ratio = f"{v['ratio']:.2f}×" if v["ratio"] is not None else "—"
    paired = (f"{v['ratio_median_of_pairs']:.2f}× ({', '.join(f'{r:.2f}' for r in v['ratio_pairs'])})"
              if v["ratio_median_of_pairs"] is not None else "—")
    return [ratio, paired, "met" if v["met"] else "**not met**"]


def render_markdown(report: dict) -> str:
    setup = report["setup"]
    out = [f"# Benchmark results ({report['started_at']})", "",
           f"Command: `{report['command']}`  ", f"Machine: {report['machine']['cpus']} CPUs, Python "
           f"{report['machine']['python']}, load average at start {report['machine']['loadavg_start']}, at end "
           f"{report['machine'].get('loadavg_end')}  ", f"Console app: `{setup['console_app']}`  "]
    for name, command in setup.get("servers", {}).items():
        versions = ", ".join(f"{k} {v}" for k, v in setup.get("versions", {}).get(name, {}).items() if v)
        out.append(f"Server `{name}`: `{command}` ({versions})  ")
    out.append(f"Load: wrk {setup['wrk']}; rounds rotate the contenders' order  ")
    dataset = report.get("dataset", {})
    for name, d in dataset.items():
        out.append(f"Dataset {name}: {d['rows']:,} escalations ({d['table_size']}), {d['status_mix']}  ")
    if "elapsed_seconds" in report:
        out.append(f"Elapsed: {report['elapsed_seconds']} s")
    endpoints_ = report.get("endpoints", {})
    peers = [p for p in PEERS if any("vs" in e and p in e["vs"] for e in endpoints_.values())]
    if peers:
        heads = {"ceiling": "console ÷ ceiling", "seedstack": "console ÷ seedstack"}
        out += ["", "## Console vs the peers (req/s, same run)", "",
                "| endpoint | " + " | ".join(f"{heads[p]} | paired rounds | target ≥ {TARGETS[p]}×" for p in peers) + " |",
                "|---|" + "---:|---:|---|" * len(peers)]
        for name, entry in endpoints_.items():
            if "vs" not in entry:
                continue
            cells = [c for p in peers for c in _ratio_cells(entry["vs"].get(p))]
            out.append(f"| {name} | " + " | ".join(cells) + " |")
        out += ["", "console ÷ peer: of the median req/s; paired rounds: the median of the per-round ratios (each "
                "round runs every contender once, back to back, so a round's ratio sees one background load), "
                "the figure the target is judged on; the per-round ratios in parentheses."]
    out += ["", "## Throughput and latency", "",
            "| endpoint | contender | req/s (median) | req/s per round | p50 ms | p99 ms | server CPU ms/req | responses |",
            "|---|---|---:|---|---:|---:|---:|---|"]
    for name, entry in endpoints_.items():
        for label in ("console", *PEERS):
            m = entry.get(label)
            if m is None:
                continue
            out.append(f"| {name} | {label} | {m['rps']:.0f} | {', '.join(f'{r:.0f}' for r in m['rps_rounds'])} | "
                       f"{m['p50_ms']} | {m['p99_ms']} | {m['server_cpu_ms_per_request']:.2f} | {_responses(m)} |")
    out += ["", "Endpoints: " + "; ".join(f"**{n}** = {e['title']}" for n, e in endpoints_.items())]
    out += ["", "req/s: median over rounds. p50/p99: median over rounds of wrk's per-round percentiles, under "
            "full load (-c connections). server CPU ms/req: CPU time of the server's worker processes (user + "
            "system, from /proc) per request, median over rounds; PostgreSQL's CPU is not in it."]
    cost = report.get("cpu_cost")
    if cost:
        has_ceiling = "ceiling" in cost
        out += ["", "## CPU cost per request (in-process, single thread, no HTTP server; cheapest of 20 alternating blocks)", ""]
        if has_ceiling:
            out += ["| endpoint | console CPU µs | ceiling CPU µs | ceiling/console | console wall µs | ceiling wall µs |",
                    "|---|---:|---:|---:|---:|---:|"]
        else:
            out += ["| endpoint | console CPU µs | console wall µs |", "|---|---:|---:|"]
        for name in cost["console"]:
            c = cost["console"][name]
            if has_ceiling:
                f = cost["ceiling"][name]
                out.append(f"| {name} | {c['cpu_us']} | {f['cpu_us']} | {f['cpu_us'] / c['cpu_us']:.2f}× | "
                           f"{c['wall_us']} | {f['wall_us']} |")
            else:
                out.append(f"| {name} | {c['cpu_us']} | {c['wall_us']} |")
    ev = report.get("event_latency")
    if ev:
        met = ev["p99_ms"] is not None and ev["p99_ms"] < 50 and not ev["lost"]
        out += ["", "## Event latency (resolve on console B → SSE frame on console A)", "",
                "| samples | lost | p50 ms | p90 ms | p99 ms | max ms | resolve response p50 ms | target p99 < 50 ms |",
                "|---:|---:|---:|---:|---:|---:|---:|---|",
                f"| {ev['samples']} | {ev['lost']} | {ev['p50_ms']} | {ev['p90_ms']} | {ev['p99_ms']} | {ev['max_ms']} "
                f"| {ev['resolve_response_p50_ms']} | {'met' if met else '**not met**'} |"]
    scale = report.get("scale")
    if scale:
        s, b = scale["small"], scale["big"]
        out += ["", f"## Scale: console at {b} rows vs {s} rows (alternating rounds)", "",
                f"| endpoint | {s} req/s | {b} req/s | {s} p50 ms | {b} p50 ms | p50 ratio | {s} p99 ms | {b} p99 ms "
                "| target p50 ≤ 1.2× |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for name, entry in scale["endpoints"].items():
            out.append(f"| {name} | {entry[s]['rps']:.0f} | {entry[b]['rps']:.0f} | {entry[s]['p50_ms']} | "
                       f"{entry[b]['p50_ms']} | {entry['p50_ratio']:.2f}× | {entry[s]['p99_ms']} | {entry[b]['p99_ms']} "
                       f"| {'met' if entry['p50_ratio'] <= 1.2 else '**not met**'}{_unclean(entry[s], entry[b])} |")
            control = entry.get("ceiling_control")
            if control:
                out.append(f"| {name}: ceiling (control) | {control[s]['rps']:.0f} | {control[b]['rps']:.0f} | "
                           f"{control[s]['p50_ms']} | {control[b]['p50_ms']} | {control['p50_ratio']:.2f}× | "
                           f"{control[s]['p99_ms']} | {control[b]['p99_ms']} | —{_unclean(control[s], control[b])} |")
    for name, plans in report.get("plans", {}).items():
        rows = dataset.get(name, {}).get("rows")
        out += ["", f"## Query plans on the {name} database ({rows:,} rows)" if rows else f"## Query plans ({name})",
                ""]
        for plan in plans:
            out += [f"### {plan['query']}", "", "```sql", plan["sql"], "```", "", "```", plan["plan"], "```", ""]
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    sys.exit(main())

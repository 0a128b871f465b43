"""Capacity benchmark of the escalation console (SPEC §14): thousands of waiting clients.

    .venv/bin/python bench/capacity.py [--clients 2000] [--duration 20] [--rate 50]
                                       [--sqlite] [--server-cmd '...'] [--port N] [--no-write]

What a run does, all on 127.0.0.1 (see bench/README.md, "Capacity"):

0. creates a throw-away database (PostgreSQL `capacity_<pid>`, or with --sqlite a file
   /tmp/capacity_<pid>.db, what `make run` serves), migrates it with
   `flask --app console db upgrade`, and serves it with the production command
   `gunicorn -c python:console.gunicorn_conf -b 127.0.0.1:PORT 'console:create_app()'`
   (--server-cmd replaces that argv; `{port}` or `:PORT` in it is the port). Fresh random
   secrets. Seeds through the API: --jobs founders with one job each, pending escalations.
1. baseline: a fixed-rate open-loop mix of GET one escalation, GET a job's escalations,
   create and resolve (--rate req/s for --duration s, 10 s timeout) with no waiting client;
2. opens --clients waiting clients from this one asyncio process (raw sockets, hand-written
   HTTP/1.1): 60 % SSE streams (100 of them on one hot job), 40 % `?wait=55` long-polls
   (re-issued when answered); counts the accepted ones; repeats the measurement of phase 1
   while they are all open; p99 ratio loaded / baseline;
3. fan-out: resolves --fanout escalations of the hot job, one at a time; for each, the time
   from sending the resolve to each hot stream receiving its `agent.escalation_resolved`
   frame (and to each long-poll on it answering);
4. abandoned clients: closes half of the streams and measures how long until the server
   lets their connections go (its sockets on the port in CLOSE_WAIT, its workers' socket
   fds); worker RSS and fds before and with the clients open.

Prints a Markdown report and writes bench/results/capacity.md and capacity.json (unless
--no-write). Every process it starts is stopped and the database dropped at the end
(finally + SIGINT/SIGTERM handlers). Exit status 1 when a SPEC §14 target is missed.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import os
import platform
import random
import re
import resource
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import jwt
import psycopg

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
VENV_BIN = ROOT / ".venv" / "bin"
RESULTS = BENCH / "results"
HOST = "127.0.0.1"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
PRODUCTION_CMD = [str(VENV_BIN / "gunicorn"), "-c", "python:console.gunicorn_conf", "-b", f"{HOST}:{{port}}",
                  "console:create_app()"]
OPTIONS = [{"value": "retry", "label": "Retry with a clean cache", "recommended": True,
            "description": "Clear the build cache and run the failing step again."},
           {"value": "skip_feature", "label": "Skip this feature", "description": "Leave it out of this build."},
           {"value": "provide_guidance", "label": "Tell me what to do", "requires_guidance": True}]
KINDS = ("get", "list", "create", "resolve")
REQUEST_TIMEOUT = 10.0
TARGET_RATIO, TARGET_FANOUT_P99_MS, TARGET_ABANDON_S = 2.0, 100.0, 30.0


def log(message: str) -> None:
    print(f"[capacity {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def fmt(value, digits: int = 1, unit: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}{unit}"
    return f"{value}{unit}"


# --- the server, its database, its processes -----------------------------------------------------

class Setup:
    """What this run created: stopped / dropped by cleanup(), which is idempotent."""

    def __init__(self, args):
        self.args = args
        self.pid = os.getpid()
        self.workdir = Path(f"/tmp/capacity_{self.pid}")
        self.workdir.mkdir(exist_ok=True)
        self.db_name = f"capacity_{self.pid}"
        self.sqlite_path = self.workdir / "console.db"
        self.db_created = False
        self.server: subprocess.Popen | None = None
        self.log_path = self.workdir / "server.log"
        self.port = args.port or free_port()
        self.agent_token = secrets.token_urlsafe(32)
        self.jwt_secret = secrets.token_urlsafe(32)
        self.env = {**os.environ, "CONSOLE_JWT_SECRET": self.jwt_secret, "CONSOLE_AGENT_TOKEN": self.agent_token,
                    "CONSOLE_SECRET_KEY": secrets.token_urlsafe(32), "PYTHONUNBUFFERED": "1"}
        if args.sqlite:
            self.env["DATABASE_URL"] = f"sqlite:///{self.sqlite_path}"
        else:
            self.env["DATABASE_URL"] = f"postgresql://postgres@127.0.0.1:5432/{self.db_name}"
        self.argv = server_argv(args.server_cmd, self.port)

    def create_database(self) -> None:
        if self.args.sqlite:
            self.db_created = True
        else:
            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
                conn.execute(f'CREATE DATABASE "{self.db_name}"')
            self.db_created = True
        subprocess.run([str(VENV_BIN / "flask"), "--app", "console", "db", "upgrade"], cwd=ROOT, env=self.env,
                       check=True, timeout=180, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)

    def start_server(self) -> None:
        out = open(self.log_path, "ab")
        self.server = subprocess.Popen(self.argv, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        out.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.server.poll() is not None:
                raise RuntimeError(f"the server exited at start (status {self.server.returncode}); "
                                   f"see {self.log_path}:\n{tail(self.log_path)}")
            try:
                with urllib.request.urlopen(f"http://{HOST}:{self.port}/healthz", timeout=2) as resp:
                    if resp.status == 200 and worker_pids(self.server.pid):
                        time.sleep(1.0)  # let every worker boot
                        return
            except OSError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"the server did not answer /healthz within 60 s; see {self.log_path}")

    def cleanup(self) -> None:
        if self.server is not None and self.server.poll() is None:
            try:
                os.killpg(self.server.pid, signal.SIGTERM)  # its own process group, started above
            except ProcessLookupError:
                pass
            try:
                self.server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.server.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.server.wait(timeout=5)
        if self.db_created:
            self.db_created = False
            if self.args.sqlite:
                for suffix in ("", "-wal", "-shm", "-journal"):
                    Path(f"{self.sqlite_path}{suffix}").unlink(missing_ok=True)
            else:
                try:
                    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                        conn.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
                except psycopg.Error as error:
                    log(f"could not drop {self.db_name}: {error}")


def server_argv(cmd: str | None, port: int) -> list[str]:
    if not cmd:
        return [a.replace("{port}", str(port)) for a in PRODUCTION_CMD]
    argv = shlex.split(cmd)
    if any("{port}" in a or ":PORT" in a for a in argv):
        return [a.replace("{port}", str(port)).replace(":PORT", f":{port}") for a in argv]
    return [*argv[:-1], "-b", f"{HOST}:{port}", argv[-1]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def worker_pids(master: int) -> list[int]:
    try:
        text = Path(f"/proc/{master}/task/{master}/children").read_text()
        return [int(p) for p in text.split()]
    except OSError:
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                    if int(stat.rsplit(")", 1)[1].split()[1]) == master:
                        pids.append(int(entry.name))
                except (OSError, IndexError, ValueError):
                    pass
        return pids


def process_sample(master: int) -> dict:
    """RSS (KiB), open fds and socket fds of each worker (the master's children)."""
    workers = []
    for pid in worker_pids(master):
        try:
            rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                       if line.startswith("VmRSS:"))
            fds = sockets = 0
            for fd in os.scandir(f"/proc/{pid}/fd"):
                fds += 1
                try:
                    sockets += os.readlink(fd.path).startswith("socket:")
                except OSError:
                    pass
            workers.append({"pid": pid, "rss_kib": rss, "fds": fds, "socket_fds": sockets})
        except (OSError, StopIteration):
            pass
    return {"workers": workers, "rss_kib": sum(w["rss_kib"] for w in workers),
            "fds": sum(w["fds"] for w in workers), "socket_fds": sum(w["socket_fds"] for w in workers)}


TCP_STATES = {"01": "established", "02": "syn_sent", "03": "syn_recv", "04": "fin_wait1", "05": "fin_wait2",
              "06": "time_wait", "07": "close", "08": "close_wait", "09": "last_ack", "0A": "listen", "0B": "closing"}


def server_sockets(port: int) -> Counter:
    """The server's side of TCP connections on `port`, by state (from /proc/net/tcp{,6})."""
    counts: Counter = Counter()
    want = f"{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    parts = line.split(None, 4)
                    if parts[1].rsplit(":", 1)[1] == want:
                        counts[TCP_STATES.get(parts[3], parts[3])] += 1
        except OSError:
            pass
    return counts


class PgSampler:
    """Connections to the PostgreSQL server, this run's database vs everything else, once a
    second (the server is shared: max_connections bounds everyone's pools together)."""

    def __init__(self, db_name: str | None):
        self.db_name = db_name
        self.samples: list[tuple[str, int, int]] = []  # (phase, ours, others)
        self.phase = "start"
        self.max_connections = None

    def sample(self, conn) -> None:
        ours, total = conn.execute("SELECT count(*) FILTER (WHERE datname = %s), count(*) FROM pg_stat_activity "
                                   "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
                                   (self.db_name,)).fetchone()
        self.samples.append((self.phase, ours, total - ours))

    async def run(self, stop: asyncio.Event) -> None:
        if not self.db_name:
            return
        try:
            conn = await asyncio.to_thread(psycopg.connect, PG_ADMIN, autocommit=True, connect_timeout=3)
        except psycopg.Error as error:
            log(f"PostgreSQL sampler off: {error}")
            return
        try:
            self.max_connections = int(conn.execute("SHOW max_connections").fetchone()[0])
            while not stop.is_set():
                try:
                    await asyncio.to_thread(self.sample, conn)
                except psycopg.Error:
                    pass
                try:
                    await asyncio.wait_for(stop.wait(), 1.0)
                except TimeoutError:
                    pass
        finally:
            conn.close()

    def summary(self) -> dict | None:
        if not self.db_name or not self.samples:
            return None
        phases = {}
        for phase, ours, others in self.samples:
            x = phases.setdefault(phase, {"ours_max": 0, "others_max": 0, "total_max": 0})
            x["ours_max"] = max(x["ours_max"], ours)
            x["others_max"] = max(x["others_max"], others)
            x["total_max"] = max(x["total_max"], ours + others)
        return {"max_connections": self.max_connections, "phases": phases}


def cpu_seconds(master: int | None) -> float:
    """User + system CPU seconds of the server's workers so far."""
    if master is None:
        return 0.0
    total = 0.0
    for pid in worker_pids(master):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            pass
    return total


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


# --- HTTP/1.1 by hand ----------------------------------------------------------------------------

class HttpError(Exception):
    pass


def render_request(method: str, path: str, token: str | None, body=None, headers: dict | None = None) -> bytes:
    data = b"" if body is None else json.dumps(body).encode()
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}", "Accept: */*"]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body is not None or method == "POST":
        lines += ["Content-Type: application/json", f"Content-Length: {len(data)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


async def read_head(reader: asyncio.StreamReader) -> tuple[int, dict]:
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        raise HttpError(f"bad status line {lines[0]!r}")
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


async def body_chunks(reader: asyncio.StreamReader, headers: dict):
    """The body as it arrives: chunked, Content-Length, or until the connection closes."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            line = await reader.readline()
            if not line:
                raise asyncio.IncompleteReadError(b"", None)
            size = int(line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
                return
            data = await reader.readexactly(size + 2)
            yield data[:-2]
    elif "content-length" in headers:
        left = int(headers["content-length"])
        while left > 0:
            data = await reader.read(min(left, 65536))
            if not data:
                raise asyncio.IncompleteReadError(b"", left)
            left -= len(data)
            yield data
    else:
        while data := await reader.read(65536):
            yield data


async def read_body(reader, headers) -> bytes:
    return b"".join([c async for c in body_chunks(reader, headers)])


def reusable(headers: dict) -> bool:
    return headers.get("connection", "").lower() != "close"


class Conn:
    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer
        self.last_used = time.perf_counter()

    @classmethod
    async def open(cls, port: int) -> Conn:
        reader, writer = await asyncio.open_connection(HOST, port, limit=1 << 20)
        return cls(reader, writer)

    def close(self) -> None:
        self.writer.transport.abort()


class Api:
    """A pool of keep-alive connections for the measured requests. A connection idle for
    more than IDLE s is not reused (the server's keep-alive may have closed it)."""
    IDLE = 3.0

    def __init__(self, port: int, size: int):
        self.port = port
        self.sem = asyncio.Semaphore(size)
        self.idle: list[Conn] = []

    def _take(self) -> Conn | None:
        now = time.perf_counter()
        while self.idle:
            conn = self.idle.pop()
            if now - conn.last_used < self.IDLE:
                return conn
            conn.close()
        return None

    async def call(self, method: str, path: str, token: str, body=None, timeout: float = REQUEST_TIMEOUT) -> dict:
        """One request; returns {status, payload, seconds, sent, outcome}; outcome is ok (a
        response), timeout or transport (refused, reset, bad response)."""
        t0 = time.perf_counter()
        result = {"status": None, "payload": None, "sent": None, "outcome": "ok", "detail": None}
        conn = None
        try:
            async with asyncio.timeout(timeout):
                async with self.sem:
                    request = render_request(method, path, token, body)
                    for attempt in (0, 1):
                        conn = self._take() if attempt == 0 else None
                        fresh = conn is None
                        if fresh:
                            conn = await Conn.open(self.port)
                        try:
                            result["sent"] = time.perf_counter()
                            conn.writer.write(request)
                            status, headers = await read_head(conn.reader)
                        except (ConnectionError, asyncio.IncompleteReadError):
                            conn.close()
                            conn = None
                            if fresh:
                                raise
                            continue  # a keep-alive connection the server had closed: once more, fresh
                        raw = await read_body(conn.reader, headers)
                        result["status"] = status
                        if raw and headers.get("content-type", "").startswith(("application/json",
                                                                              "application/problem+json")):
                            try:
                                result["payload"] = json.loads(raw)
                            except ValueError:
                                pass
                        elif raw:
                            result["payload"] = raw[:300].decode(errors="replace")
                        if reusable(headers):
                            conn.last_used = time.perf_counter()
                            self.idle.append(conn)
                        else:
                            conn.close()
                        conn = None
                        break
        except TimeoutError:
            result["outcome"] = "timeout"
        except (OSError, asyncio.IncompleteReadError, HttpError, ValueError, asyncio.LimitOverrunError) as error:
            result["outcome"] = "transport"
            result["detail"] = repr(error)[:200]
        finally:
            if conn is not None:
                conn.close()
        result["seconds"] = time.perf_counter() - t0
        return result

    def close(self) -> None:
        for conn in self.idle:
            conn.close()
        self.idle.clear()


# --- the run's data ------------------------------------------------------------------------------

class World:
    """Founders, jobs, escalations seeded for the run, and the tokens."""

    def __init__(self, setup: Setup, args):
        self.setup, self.args = setup, args
        self.jobs = [f"cap-job-{i:03d}" for i in range(args.jobs)]
        self.hot_job = self.jobs[0]
        self.cold_jobs = self.jobs[1:]
        self._tokens: dict[str, str] = {}
        self.seq = 0
        self.hot: list[str] = []           # hot job's escalations, resolved in phase 3
        self.lp_targets: list[tuple[str, str]] = []  # (id, job) awaited by long-polls (cold)
        self.spares: list[tuple[str, str]] = []      # re-targets for long-polls whose escalation got resolved
        self.pools: list[list[tuple[str, str]]] = [[], []]  # resolve pools of phase 1 and phase 2

    @staticmethod
    def founder(job: str) -> str:
        return job.replace("cap-job-", "cap-founder-")

    def founder_token(self, founder: str) -> str:
        token = self._tokens.get(founder)
        if token is None:
            token = jwt.encode({"sub": founder, "exp": int(time.time()) + 4 * 3600}, self.setup.jwt_secret,
                               algorithm="HS256")
            self._tokens[founder] = token
        return token

    def create_body(self, job: str) -> dict:
        self.seq += 1
        i = job.rsplit("-", 1)[1]
        return {"session_id": f"cap-sess-{i}", "project_id": f"cap-proj-{i}", "founder_id": self.founder(job),
                "error_type": "KeyError", "error_signature": f"cap-proj-{i}:KeyError:{self.seq:08x}",
                "plain_english_problem": f"Step {self.seq} of the build keeps failing with a KeyError I cannot explain.",
                "attempts_summary": ["Cleared the cache", "Pinned the dependency"],
                "recommended_action": "Retry once with a clean cache.", "options": OPTIONS}


def plan(args) -> dict:
    n = args.clients
    streams = round(n * 0.6)
    long_polls = n - streams
    hot_streams = min(100, streams) if streams >= 200 else max(1, streams // 2) if streams else 0
    hot_lp = min(5 * args.fanout, long_polls // 4)
    per_phase = math.ceil(args.rate * args.duration / len(KINDS)) + 20
    return {"streams": streams, "long_polls": long_polls, "hot_streams": hot_streams, "hot_long_polls": hot_lp,
            "cold_long_polls": long_polls - hot_lp, "resolve_pool": per_phase}


async def seed(world: World, api: Api, p: dict) -> dict:
    """Everything through the API (agent token): the hot job's escalations, one per cold
    long-poll, spares, and a resolve pool per measured phase."""
    wanted: list[tuple[str, str]] = [("hot", world.hot_job)] * world.args.fanout
    cold = world.cold_jobs
    k = 0
    for tag, count in (("lp", p["cold_long_polls"]), ("spare", p["hot_long_polls"]),
                       ("pool0", p["resolve_pool"]), ("pool1", p["resolve_pool"])):
        for _ in range(count):
            wanted.append((tag, cold[k % len(cold)]))
            k += 1
    for job in cold:  # every job exists (has a founder), even with few clients
        if not any(j == job for _, j in wanted):
            wanted.append(("extra", job))
    sem = asyncio.Semaphore(8)
    failures = Counter()
    t0 = time.perf_counter()

    async def one(tag, job):
        async with sem:
            r = await api.call("POST", f"/api/jobs/{job}/escalations", world.setup.agent_token, world.create_body(job))
        if r["status"] != 201:
            failures[f"{r['outcome']} {r['status']}"] += 1
            return
        eid = r["payload"]["id"]
        if tag == "hot":
            world.hot.append(eid)
        elif tag == "lp":
            world.lp_targets.append((eid, job))
        elif tag == "spare":
            world.spares.append((eid, job))
        elif tag.startswith("pool"):
            world.pools[int(tag[-1])].append((eid, job))

    await asyncio.gather(*(one(tag, job) for tag, job in wanted))
    return {"creates": len(wanted), "failures": dict(failures), "seconds": time.perf_counter() - t0}


# --- the measured API mix ------------------------------------------------------------------------

async def lag_monitor(samples: list[float], stop: asyncio.Event) -> None:
    """How late this client's event loop wakes up (the client must not be the bottleneck)."""
    while not stop.is_set():
        t = time.perf_counter()
        await asyncio.sleep(0.05)
        samples.append(time.perf_counter() - t - 0.05)


async def measure_api(world: World, api: Api, rate: float, duration: float, pool: list, seed_: int) -> dict:
    rnd = random.Random(seed_)
    master = world.setup.server.pid if world.setup.server else None
    load_before, cpu_before = loadavg(), cpu_seconds(master)
    lat = {k: [] for k in KINDS}
    outcome = {k: Counter() for k in KINDS}
    samples = []
    gets = world.lp_targets + world.spares or [(e, world.hot_job) for e in world.hot]
    agent = world.setup.agent_token

    async def one(kind: str):
        if kind == "resolve" and not pool:
            kind = "get"
            outcome["resolve"]["pool ran dry"] += 1
        if kind == "get":
            eid, job = rnd.choice(gets)
            r = await api.call("GET", f"/api/escalations/{eid}", world.founder_token(world.founder(job)))
            ok = (200,)
        elif kind == "list":
            job = rnd.choice(world.cold_jobs)
            r = await api.call("GET", f"/api/jobs/{job}/escalations", world.founder_token(world.founder(job)))
            ok = (200,)
        elif kind == "create":
            job = rnd.choice(world.cold_jobs)
            r = await api.call("POST", f"/api/jobs/{job}/escalations", agent, world.create_body(job))
            ok = (201, 200)
        else:
            eid, job = pool.pop()
            r = await api.call("POST", f"/api/escalations/{eid}/resolve", world.founder_token(world.founder(job)),
                               {"decision": "retry", "guidance": None})
            ok = (200,)
        if r["outcome"] == "ok":
            lat[kind].append(r["seconds"] * 1000)
            outcome[kind]["ok" if r["status"] in ok else f"http {r['status']}"] += 1
        else:
            outcome[kind][r["outcome"]] += 1
            if r["outcome"] == "timeout":
                lat[kind].append(r["seconds"] * 1000)

    stop = asyncio.Event()
    monitor = asyncio.create_task(lag_monitor(samples, stop))
    total = int(rate * duration)
    start = time.perf_counter()
    tasks = []
    for i in range(total):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(KINDS[i % len(KINDS)])))
    await asyncio.gather(*tasks)
    stop.set()
    await monitor
    elapsed = time.perf_counter() - start
    cpu = cpu_seconds(master) - cpu_before
    out = {"rate": rate, "duration": duration, "requests": total, "elapsed_s": elapsed, "kinds": {},
           "load_before": load_before, "load_after": loadavg(), "server_cpu_s": cpu,
           "server_cpu_pct": 100 * cpu / elapsed if elapsed else None,
           "client_lag_p99_ms": (pct(samples, 0.99) or 0) * 1000, "client_lag_max_ms": max(samples or [0]) * 1000}
    everything = []
    for kind in KINDS:
        everything += lat[kind]
        c = outcome[kind]
        out["kinds"][kind] = {"n": sum(v for k, v in c.items() if k != "pool ran dry"), "p50_ms": pct(lat[kind], 0.5),
                              "p99_ms": pct(lat[kind], 0.99), "max_ms": max(lat[kind] or [0]) or None,
                              "ok": c["ok"], "timeouts": c["timeout"], "transport": c["transport"],
                              "http_errors": {k: v for k, v in c.items() if k.startswith("http")},
                              "pool_dry": c["pool ran dry"]}
        out["kinds"][kind]["errors"] = c["transport"] + sum(out["kinds"][kind]["http_errors"].values())
    k = out["kinds"].values()
    out["all"] = {"n": sum(x["n"] for x in k), "p50_ms": pct(everything, 0.5), "p99_ms": pct(everything, 0.99),
                  "max_ms": max(everything or [0]) or None, "ok": sum(x["ok"] for x in k),
                  "timeouts": sum(x["timeouts"] for x in k), "transport": sum(x["transport"] for x in k),
                  "http_errors": sum(sum(x["http_errors"].values()) for x in k)}
    out["all"]["errors"] = out["all"]["transport"] + out["all"]["http_errors"]
    return out


# --- waiting clients -----------------------------------------------------------------------------

class Clients:
    def __init__(self):
        self.stopping = False
        self.resolve_sent: dict[str, float] = {}   # escalation id -> perf_counter when its resolve was sent


class Stream:
    def __init__(self, idx: int, job: str, token: str, hot: bool):
        self.idx, self.job, self.token, self.hot = idx, job, token, hot
        self.state = "opening"         # accepted | refused | timeout | http NNN | error
        self.connected = False
        self.conn: Conn | None = None
        self.task: asyncio.Task | None = None
        self.last_id: str | None = None
        self.events = Counter()
        self.resolved: dict[str, float] = {}
        self.last_data = 0.0
        self.ends = 0                  # streams the server ended (the client reconnects)
        self.reconnect_failures = 0
        self.errors = 0
        self.abandoned = False
        self.opened = asyncio.Event()


class LongPoll:
    def __init__(self, idx: int, eid: str, job: str, token: str, hot: bool):
        self.idx, self.eid, self.job, self.token, self.hot = idx, eid, job, token, hot
        self.state = "opening"         # waiting | accepted | refused | timeout | http NNN | error
        self.first_issue: float | None = None
        self.answers = 0
        self.answered_pending = 0
        self.timeouts = 0
        self.errors = 0
        self.http = Counter()
        self.settled: list[tuple[str, float]] = []  # (escalation id, perf_counter) answers with a decision
        self.opened = asyncio.Event()
        self.task: asyncio.Task | None = None
        self.conn: Conn | None = None


async def run_stream(s: Stream, clients: Clients, port: int, connect_sem: asyncio.Semaphore) -> None:
    first = True
    attempts = 0
    while not clients.stopping and not s.abandoned and attempts < 30:
        attempts += 1
        headers = {"Last-Event-ID": s.last_id} if s.last_id else {}
        try:
            async with connect_sem if first else _nullcontext():
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    s.conn = await Conn.open(port)
                    s.conn.writer.write(render_request("GET", f"/api/jobs/{s.job}/events/stream", s.token,
                                                       headers={**headers, "Accept": "text/event-stream"}))
                    status, resp_headers = await read_head(s.conn.reader)
        except TimeoutError:
            _close(s)
            if first:
                s.state = "timeout"
                s.opened.set()
                return
            s.reconnect_failures += 1
            continue
        except (OSError, asyncio.IncompleteReadError, HttpError) as error:
            _close(s)
            if first:
                s.state = "refused" if isinstance(error, ConnectionRefusedError) else f"error {type(error).__name__}"
                s.opened.set()
                return
            s.reconnect_failures += 1
            await asyncio.sleep(0.5)
            continue
        if status != 200:
            _close(s)
            if first:
                s.state = f"http {status}"
                s.opened.set()
                return
            s.reconnect_failures += 1
            await asyncio.sleep(0.5)
            continue
        if first:
            s.state = "accepted"
            first = False
            s.opened.set()
        s.connected = True
        s.last_data = time.perf_counter()
        buffer = b""
        try:
            async for chunk in body_chunks(s.conn.reader, resp_headers):
                now = time.perf_counter()
                s.last_data = now
                buffer += chunk
                while b"\n\n" in buffer:
                    frame, buffer = buffer.split(b"\n\n", 1)
                    _sse_frame(s, frame.decode("utf-8", errors="replace"), now)
            s.ends += 1  # the server ended the stream (SSE_MAX_STREAM_SECONDS): reconnect
        except (OSError, asyncio.IncompleteReadError, ValueError):
            if not s.abandoned and not clients.stopping:
                s.errors += 1
        s.connected = False
        _close(s)


def _sse_frame(s: Stream, frame: str, now: float) -> None:
    event, data, event_id = "message", [], None
    for line in frame.split("\n"):
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())
        elif line.startswith("id:"):
            event_id = line[3:].strip()
    if not data and event_id is None:
        s.events["retry/comment"] += 1
        return
    if event_id:
        s.last_id = event_id
    s.events[event] += 1
    if event == "agent.escalation_resolved":
        try:
            eid = json.loads("\n".join(data)).get("escalation_id")
        except ValueError:
            return
        if eid and eid not in s.resolved:
            s.resolved[eid] = now


def _close(client) -> None:
    if client.conn is not None:
        client.conn.close()
        client.conn = None


class _nullcontext:
    async def __aenter__(self):
        return None

    async def __aexit__(self, *exc):
        return False


async def run_long_poll(lp: LongPoll, clients: Clients, world: World, port: int, wait: int,
                        connect_sem: asyncio.Semaphore) -> None:
    failures = 0
    while not clients.stopping and failures < 20:
        try:
            if lp.conn is None:
                async with connect_sem if lp.first_issue is None else _nullcontext():
                    async with asyncio.timeout(REQUEST_TIMEOUT):
                        lp.conn = await Conn.open(port)
            issued = time.perf_counter()
            lp.conn.writer.write(render_request("GET", f"/api/escalations/{lp.eid}?wait={wait}", lp.token))
            if lp.first_issue is None:
                lp.first_issue = issued
                lp.state = "waiting"
                lp.opened.set()
            async with asyncio.timeout(wait + REQUEST_TIMEOUT):
                status, headers = await read_head(lp.conn.reader)
                raw = await read_body(lp.conn.reader, headers)
            now = time.perf_counter()
        except TimeoutError:
            _close(lp)
            failures += 1
            if lp.first_issue is None:
                lp.state = "timeout"
                lp.opened.set()
                return
            lp.timeouts += 1
            if lp.state == "waiting":
                lp.state = "timeout"
            continue
        except (OSError, asyncio.IncompleteReadError, HttpError) as error:
            _close(lp)
            failures += 1
            if lp.first_issue is None:
                lp.state = "refused" if isinstance(error, ConnectionRefusedError) else f"error {type(error).__name__}"
                lp.opened.set()
                return
            if not clients.stopping:
                lp.errors += 1
            await asyncio.sleep(0.5)
            continue
        if not reusable(headers):
            _close(lp)
        if status != 200:
            lp.http[status] += 1
            if lp.state == "waiting":
                lp.state = f"http {status}"
            failures += 1
            await asyncio.sleep(0.5)
            continue
        lp.answers += 1
        if lp.state == "waiting":
            lp.state = "accepted"
        try:
            settled = json.loads(raw).get("status") != "pending"
        except ValueError:
            settled = False
        if settled:
            lp.settled.append((lp.eid, now))
            if not world.spares:
                _close(lp)
                return
            lp.eid, lp.job = world.spares.pop()
            lp.token = world.setup.agent_token
        else:
            lp.answered_pending += 1


async def guard(client, coro) -> None:
    """A client task that fails in an unforeseen way still counts (and never blocks the run)."""
    try:
        await coro
    except asyncio.CancelledError:
        raise
    except Exception as error:  # noqa: BLE001 - recorded in the report
        client.state = client.state if client.opened.is_set() else f"client error {type(error).__name__}"
        log(f"client {type(client).__name__} {client.idx} failed: {error!r}")
    finally:
        client.opened.set()
        if isinstance(client, Stream):
            client.connected = False


async def open_clients(world: World, clients: Clients, p: dict, wait: int) -> tuple[list[Stream], list[LongPoll], float]:
    port = world.setup.port
    agent = world.setup.agent_token
    streams: list[Stream] = []
    for i in range(p["streams"]):
        hot = i < p["hot_streams"]
        job = world.hot_job if hot else world.cold_jobs[i % len(world.cold_jobs)]
        token = agent if i % 2 else world.founder_token(world.founder(job))
        streams.append(Stream(i, job, token, hot))
    polls: list[LongPoll] = []
    for i in range(p["long_polls"]):
        if i < p["hot_long_polls"]:
            eid, job, hot = world.hot[i % len(world.hot)], world.hot_job, True
        else:
            eid, job = world.lp_targets[i - p["hot_long_polls"]]
            hot = False
        token = agent if i % 2 else world.founder_token(world.founder(job))
        polls.append(LongPoll(i, eid, job, token, hot))
    connect_sem = asyncio.Semaphore(64)
    order: list = streams + polls
    random.Random(7).shuffle(order)
    t0 = time.perf_counter()
    for c in order:
        if isinstance(c, Stream):
            c.task = asyncio.create_task(guard(c, run_stream(c, clients, port, connect_sem)))
        else:
            c.task = asyncio.create_task(guard(c, run_long_poll(c, clients, world, port, wait, connect_sem)))
    await asyncio.gather(*(c.opened.wait() for c in order))
    return streams, polls, time.perf_counter() - t0


def client_counts(streams: list[Stream], polls: list[LongPoll]) -> dict:
    return {"streams": dict(Counter(s.state for s in streams)), "long_polls": dict(Counter(lp.state for lp in polls))}


# --- the phases -----------------------------------------------------------------------------------

async def fan_out(world: World, api: Api, clients: Clients, streams: list[Stream], polls: list[LongPoll],
                  timeout: float) -> dict:
    hot_streams = [s for s in streams if s.hot and s.state == "accepted"]
    hot_polls = [lp for lp in polls if lp.hot]
    founder = world.founder_token(world.founder(world.hot_job))
    stream_lat, poll_lat, resolve_ms, misses, per_resolve = [], [], [], 0, []
    resolve_failures = Counter()
    sent_count = consecutive_failures = 0
    lag: list[float] = []
    lag_stop = asyncio.Event()
    monitor = asyncio.create_task(lag_monitor(lag, lag_stop))
    for eid in world.hot:
        if consecutive_failures >= 3:  # the API is not answering: do not spend 10 s on each of the rest
            break
        sent_count += 1
        live = [s for s in hot_streams if s.connected]
        waiting = [lp for lp in hot_polls if lp.eid == eid and lp.state in ("waiting", "accepted")]
        r = await api.call("POST", f"/api/escalations/{eid}/resolve", founder, {"decision": "skip_feature",
                                                                               "guidance": None})
        if r["outcome"] != "ok" or r["status"] != 200:
            resolve_failures[f"{r['outcome']} {r['status']}"] += 1
            consecutive_failures += 1
            continue
        consecutive_failures = 0
        sent = r["sent"]
        clients.resolve_sent[eid] = sent
        resolve_ms.append(r["seconds"] * 1000)
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if all(eid in s.resolved for s in live) and all(any(e == eid for e, _ in lp.settled) for lp in waiting):
                break
            await asyncio.sleep(0.005)
        got = [(s.resolved[eid] - sent) * 1000 for s in live if eid in s.resolved]
        missed = len(live) - len(got)
        misses += missed
        stream_lat += got
        answered = [(t - sent) * 1000 for lp in waiting for e, t in lp.settled if e == eid]
        poll_lat += answered
        per_resolve.append({"escalation": eid, "streams": len(live), "received": len(got), "missed": missed,
                            "p50_ms": pct(got, 0.5), "max_ms": max(got or [0]) or None,
                            "long_polls": len(waiting), "long_polls_answered": len(answered),
                            "resolve_ms": r["seconds"] * 1000})
        await asyncio.sleep(0.1)
    lag_stop.set()
    await monitor
    late = sum(1 for s in hot_streams for eid in world.hot if eid in s.resolved and eid in clients.resolve_sent
               and s.resolved[eid] - clients.resolve_sent[eid] > timeout)
    return {"sent": sent_count, "planned": len(world.hot), "resolves": len(resolve_ms), "resolve_failures": dict(resolve_failures), "hot_streams": len(hot_streams),
            "pairs": len(stream_lat) + misses, "received": len(stream_lat), "missed": misses, "late_after_timeout": late,
            "p50_ms": pct(stream_lat, 0.5), "p90_ms": pct(stream_lat, 0.9), "p99_ms": pct(stream_lat, 0.99),
            "max_ms": max(stream_lat or [0]) or None, "resolve_p50_ms": pct(resolve_ms, 0.5),
            "long_polls": sum(x["long_polls"] for x in per_resolve), "long_polls_answered": len(poll_lat),
            "long_poll_p50_ms": pct(poll_lat, 0.5), "long_poll_p99_ms": pct(poll_lat, 0.99),
            "long_poll_max_ms": max(poll_lat or [0]) or None, "per_resolve": per_resolve,
            "client_lag_p99_ms": (pct(lag, 0.99) or 0) * 1000, "client_lag_max_ms": max(lag or [0]) * 1000}


async def abandon(world: World, streams: list[Stream], timeout: float) -> dict:
    port, master = world.setup.port, world.setup.server.pid
    live = [s for s in streams if s.connected]
    victims = random.Random(11).sample(live, len(live) // 2)
    before_sockets, before_proc = server_sockets(port), process_sample(master)
    t0 = time.perf_counter()
    for s in victims:
        s.abandoned = True
        _close(s)  # close the socket (the kernel sends FIN); the task sees the connection end
        if s.task:
            s.task.cancel()
    n = len(victims)
    series = []
    t_half = t_all = None
    threshold = max(1, n // 100)
    while True:
        await asyncio.sleep(0.5)
        elapsed = time.perf_counter() - t0
        socks, proc = server_sockets(port), process_sample(master)
        released_fds = before_proc["socket_fds"] - proc["socket_fds"]
        held = max(0, socks["close_wait"] - before_sockets["close_wait"])
        series.append({"t": round(elapsed, 2), "established": socks["established"], "close_wait": held,
                       "worker_socket_fds": proc["socket_fds"]})
        # Let go: the server closed its side (no new CLOSE_WAIT left) and its workers'
        # socket fds dropped by (nearly) the number abandoned.
        gone = held <= threshold and released_fds >= n - threshold
        if t_half is None and held <= n // 2 and released_fds >= n // 2:
            t_half = elapsed
        if gone:
            t_all = elapsed
            break
        if elapsed >= timeout:
            break
    return {"abandoned": n, "before": {"sockets": dict(before_sockets), "socket_fds": before_proc["socket_fds"]},
            "half_released_s": t_half, "all_released_s": t_all, "timeout_s": timeout,
            "after": series[-1] if series else None, "series": changes(series)}


def changes(series: list[dict]) -> list[dict]:
    """The rows where a count changed (and the last one)."""
    out = []
    for row in series:
        if not out or any(row[k] != out[-1][k] for k in row if k != "t"):
            out.append(row)
    if series and out[-1] is not series[-1]:
        out.append(series[-1])
    return out


async def bench(world: World, args) -> dict:
    setup = world.setup
    p = plan(args)
    out: dict = {"plan": p}
    pg = PgSampler(None if args.sqlite else setup.db_name)
    pg_stop = asyncio.Event()
    pg_task = asyncio.create_task(pg.run(pg_stop))
    try:
        await _phases(world, args, p, out, pg)
    finally:
        pg_stop.set()
        await pg_task
        out["postgres_connections"] = pg.summary()
    return out


async def _phases(world: World, args, p: dict, out: dict, pg: PgSampler) -> None:
    setup = world.setup
    pg.phase = "seed"
    api = Api(setup.port, args.pool)
    log(f"seeding {args.jobs} jobs through the API")
    out["seed"] = await seed(world, api, p)
    log(f"seeded {out['seed']['creates']} escalations in {out['seed']['seconds']:.1f} s "
        f"(failures: {out['seed']['failures'] or 'none'})")
    if out["seed"]["failures"]:
        raise RuntimeError(f"seeding failed: {out['seed']['failures']}")

    pg.phase = "1 baseline"
    log(f"warm-up, then phase 1: baseline, {args.rate} req/s for {args.duration} s")
    warm = [world.pools[0].pop() for _ in range(min(10, len(world.pools[0])))]
    await measure_api(world, api, args.rate, min(3.0, args.duration), warm, 1)
    out["baseline"] = await measure_api(world, api, args.rate, args.duration, world.pools[0], 2)
    log(f"baseline: p50 {fmt(out['baseline']['all']['p50_ms'])} ms, p99 {fmt(out['baseline']['all']['p99_ms'])} ms, "
        f"errors {out['baseline']['all']['errors']}, timeouts {out['baseline']['all']['timeouts']}")
    out["server_idle"] = process_sample(setup.server.pid)
    out["sockets_idle"] = dict(server_sockets(setup.port))

    clients = Clients()
    pg.phase = "2 opening clients"
    log(f"phase 2: opening {args.clients} waiting clients ({p['streams']} streams, {p['hot_streams']} on "
        f"{world.hot_job}; {p['long_polls']} long-polls)")
    streams, polls, open_s = await open_clients(world, clients, p, args.wait)
    await asyncio.sleep(2.0)
    out["open"] = {"seconds": open_s, **client_counts(streams, polls)}
    out["server_loaded"] = process_sample(setup.server.pid)
    out["sockets_loaded"] = dict(server_sockets(setup.port))
    accepted_streams = sum(s.state == "accepted" for s in streams)
    log(f"opened in {open_s:.1f} s: streams {out['open']['streams']}, long-polls {out['open']['long_polls']}; "
        f"server sockets {out['sockets_loaded']}")
    pg.phase = "2 loaded"
    out["loaded"] = await measure_api(world, api, args.rate, args.duration, world.pools[1], 3)
    log(f"loaded: p50 {fmt(out['loaded']['all']['p50_ms'])} ms, p99 {fmt(out['loaded']['all']['p99_ms'])} ms, "
        f"errors {out['loaded']['all']['errors']}, timeouts {out['loaded']['all']['timeouts']}")
    out["server_loaded_after"] = process_sample(setup.server.pid)

    pg.phase = "3 fan-out"
    log(f"phase 3: fan-out, {len(world.hot)} resolves on {world.hot_job}")
    out["fanout"] = await fan_out(world, api, clients, streams, polls, args.fanout_timeout)
    f = out["fanout"]
    log(f"fan-out: {f['received']}/{f['pairs']} frames, p50 {fmt(f['p50_ms'])} ms, p99 {fmt(f['p99_ms'])} ms, "
        f"missed {f['missed']}; long-polls answered {f['long_polls_answered']}/{f['long_polls']}")

    # Stalled streams: no byte (not even a heartbeat) for more than two heartbeats.
    now = time.perf_counter()
    out["stalled_streams"] = sum(1 for s in streams if s.connected and now - s.last_data > 2 * args.heartbeat + 5)

    pg.phase = "4 abandon"
    log("phase 4: abandoning half of the streams")
    out["abandon"] = await abandon(world, streams, args.abandon_timeout)
    a = out["abandon"]
    log(f"abandoned {a['abandoned']}: half released after {fmt(a['half_released_s'])} s, all after "
        f"{fmt(a['all_released_s'])} s (timeout {a['timeout_s']} s)")
    out["server_after_abandon"] = process_sample(setup.server.pid)

    # Every long-poll must have answered once: wait until each first wait (+ timeout) is over.
    last_issue = max((lp.first_issue or 0) for lp in polls) if polls else 0
    while polls and any(lp.state == "waiting" for lp in polls):
        if time.perf_counter() > last_issue + args.wait + REQUEST_TIMEOUT + 2:
            break
        await asyncio.sleep(0.5)
    clients.stopping = True
    out["clients"] = {
        "streams": {"total": len(streams), "accepted": accepted_streams, **client_counts(streams, [])["streams"],
                    "ended_by_server": sum(s.ends for s in streams),
                    "reconnect_failures": sum(s.reconnect_failures for s in streams),
                    "errors": sum(s.errors for s in streams),
                    "events": dict(sum((s.events for s in streams), Counter()))},
        "long_polls": {"total": len(polls), "states": client_counts([], polls)["long_polls"],
                       "accepted": sum(lp.state == "accepted" for lp in polls),
                       "answers": sum(lp.answers for lp in polls),
                       "answered_pending_after_wait": sum(lp.answered_pending for lp in polls),
                       "timeouts": sum(lp.timeouts for lp in polls), "errors": sum(lp.errors for lp in polls),
                       "http": dict(sum((lp.http for lp in polls), Counter()))},
    }
    for c in [*streams, *polls]:
        _close(c)
        if c.task:
            c.task.cancel()
    await asyncio.gather(*(c.task for c in [*streams, *polls] if c.task), return_exceptions=True)
    api.close()


# --- report --------------------------------------------------------------------------------------

def verdicts(r: dict) -> dict:
    c = r["clients"]
    accepted = c["streams"]["accepted"] + c["long_polls"]["accepted"]
    ratio = None
    if r["baseline"]["all"]["p99_ms"] and r["loaded"]["all"]["p99_ms"] is not None:
        ratio = r["loaded"]["all"]["p99_ms"] / r["baseline"]["all"]["p99_ms"]
    idle, loaded = r["server_idle"], r["server_loaded"]
    rss_per = ((loaded["rss_kib"] - idle["rss_kib"]) / accepted) if accepted else None
    l = r["loaded"]["all"]
    f = r["fanout"]
    a = r["abandon"]
    v = {
        "accepted_clients": accepted, "clients": r["args"]["clients"], "p99_ratio": ratio, "rss_per_client_kib": rss_per,
        "all_accepted": accepted == r["args"]["clients"],
        "api_no_refusals": l["errors"] == 0 and l["timeouts"] == 0,
        "ratio_ok": ratio is not None and ratio <= TARGET_RATIO,
        "fanout_ok": f["missed"] == 0 and f["received"] > 0 and (f["p99_ms"] or 1e9) < TARGET_FANOUT_P99_MS,
        "abandon_ok": a["all_released_s"] is not None and a["all_released_s"] <= TARGET_ABANDON_S,
    }
    v["met"] = all(v[k] for k in ("all_accepted", "api_no_refusals", "ratio_ok", "fanout_ok", "abandon_ok"))
    return v


def markdown(r: dict) -> str:
    v = r["verdicts"]
    yes = lambda ok: "met" if ok else "**not met**"  # noqa: E731
    b, l = r["baseline"], r["loaded"]
    lines = [f"# Capacity benchmark — {r['started']}", "",
             f"* server: `{r['server_cmd']}` on {'SQLite' if r['args']['sqlite'] else 'PostgreSQL'}",
             f"* code: {r['git']}",
             f"* clients: {r['args']['clients']} ({r['plan']['streams']} SSE streams, {r['plan']['hot_streams']} on the hot "
             f"job; {r['plan']['long_polls']} `?wait={r['args']['wait']}` long-polls, {r['plan']['hot_long_polls']} on "
             f"the hot job's escalations); API mix {r['args']['rate']} req/s for {r['args']['duration']} s "
             f"(get / list / create / resolve, 25 % each, timeout {REQUEST_TIMEOUT:.0f} s, pool of {r['args']['pool']} "
             "connections)",
             f"* machine: {os.cpu_count()} cores, load average {r['load_start']} at start, {r['load_end']} at end; "
             "client and server share the cores",
             f"* seeding: {r['seed']['creates']} creates through the API in {r['seed']['seconds']:.1f} s", "",
             "## Verdict (SPEC §14)", "",
             "| target | measured | |", "|---|---|---|",
             f"| every waiting client accepted | {v['accepted_clients']} of {v['clients']} | {yes(v['all_accepted'])} |",
             f"| no API request refused or timed out with clients open | {l['all']['errors']} errors, "
             f"{l['all']['timeouts']} timeouts | {yes(v['api_no_refusals'])} |",
             f"| p99 with clients ÷ p99 baseline ≤ {TARGET_RATIO:.0f}× | {fmt(v['p99_ratio'], 2, '×')} "
             f"({fmt(l['all']['p99_ms'])} / {fmt(b['all']['p99_ms'])} ms) | {yes(v['ratio_ok'])} |",
             f"| fan-out p99 < {TARGET_FANOUT_P99_MS:.0f} ms, 0 missed | p99 {fmt(r['fanout']['p99_ms'])} ms, "
             f"{r['fanout']['missed']} missed | {yes(v['fanout_ok'])} |",
             f"| abandoned streams let go ≤ {TARGET_ABANDON_S:.0f} s | {fmt(r['abandon']['all_released_s'])} s | "
             f"{yes(v['abandon_ok'])} |", "",
             "## API latency (ms)", "",
             "| request | phase | n | p50 | p99 | max | errors | timeouts |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for kind in (*KINDS, "all"):
        for name, m in (("baseline", b), (f"{r['args']['clients']} clients open", l)):
            x = m["all"] if kind == "all" else m["kinds"][kind]
            errors = x["errors"]
            detail = ""
            if kind != "all" and (x["http_errors"] or x["transport"]):
                detail = f" ({', '.join(f'{k}: {n}' for k, n in x['http_errors'].items())}" \
                         f"{', transport: ' + str(x['transport']) if x['transport'] else ''})"
            lines.append(f"| {kind} | {name} | {x['n']} | {fmt(x['p50_ms'])} | {fmt(x['p99_ms'])} | {fmt(x['max_ms'])} "
                         f"| {errors}{detail} | {x['timeouts']} |")
    lines += ["", f"Client event-loop lag p99 / max: baseline {b['client_lag_p99_ms']:.1f} / {b['client_lag_max_ms']:.1f} ms, "
                  f"loaded {l['client_lag_p99_ms']:.1f} / {l['client_lag_max_ms']:.1f} ms."]
    if "server_cpu_s" in b:
        lines += [f"Server workers' CPU during the measurement: baseline {b['server_cpu_pct']:.0f} % of one core, loaded "
                  f"{l['server_cpu_pct']:.0f} % (the waiting clients' own work included). Load average (1, 5, 15 min) before / "
                  f"after: baseline {b['load_before']} / {b['load_after']}, loaded {l['load_before']} / {l['load_after']} "
                  "(other work on the machine moves both p99s)."]
    lines.append("")
    c = r["clients"]
    lines += ["## Waiting clients", "",
              f"Opened in {r['open']['seconds']:.1f} s (64 connects at a time).", "",
              "| | total | accepted | states |", "|---|---:|---:|---|",
              f"| SSE streams (200 headers within {REQUEST_TIMEOUT:.0f} s) | {c['streams']['total']} | {c['streams']['accepted']} | "
              f"{', '.join(f'{k}: {n}' for k, n in r['open']['streams'].items())} |",
              f"| long-polls (a 200 within wait + {REQUEST_TIMEOUT:.0f} s) | {c['long_polls']['total']} | "
              f"{c['long_polls']['accepted']} | {', '.join(f'{k}: {n}' for k, n in c['long_polls']['states'].items())} |", "",
              f"* server-side sockets on the port: idle {r['sockets_idle']}, with the clients {r['sockets_loaded']}",
              f"* streams: events received {c['streams']['events']}; ended by the server {c['streams']['ended_by_server']}, "
              f"reconnect failures {c['streams']['reconnect_failures']}, read errors {c['streams']['errors']}; "
              f"stalled (no byte for > 2 heartbeats) before phase 4: {r['stalled_streams']}",
              f"* long-polls: {c['long_polls']['answers']} answers ({c['long_polls']['answered_pending_after_wait']} still "
              f"pending after the wait, re-issued), {c['long_polls']['timeouts']} timeouts, {c['long_polls']['errors']} "
              f"errors, other statuses {c['long_polls']['http'] or 'none'}", ""]
    f = r["fanout"]
    lines += ["## Fan-out to the hot job", "",
              f"{f['sent']} resolves sent one at a time, {f['resolves']} answered 200 (failures: "
              f"{f['resolve_failures'] or 'none'}; resolve p50 "
              f"{fmt(f['resolve_p50_ms'])} ms), each to {f['hot_streams']} accepted hot-job streams: time from sending the "
              f"resolve to the stream receiving its `agent.escalation_resolved` frame.", "",
              "| | pairs | received | missed | p50 ms | p90 ms | p99 ms | max ms |", "|---|---:|---:|---:|---:|---:|---:|---:|",
              f"| SSE streams | {f['pairs']} | {f['received']} | {f['missed']} | {fmt(f['p50_ms'])} | {fmt(f['p90_ms'])} | "
              f"{fmt(f['p99_ms'])} | {fmt(f['max_ms'])} |",
              f"| long-polls on those escalations | {f['long_polls']} | {f['long_polls_answered']} | "
              f"{f['long_polls'] - f['long_polls_answered']} | {fmt(f['long_poll_p50_ms'])} | — | {fmt(f['long_poll_p99_ms'])} "
              f"| {fmt(f['long_poll_max_ms'])} |", ""]
    if "client_lag_p99_ms" in f:
        lines += [f"Client event-loop lag during the fan-out: p99 {f['client_lag_p99_ms']:.1f} ms, max "
                  f"{f['client_lag_max_ms']:.1f} ms.", ""]
    if f["late_after_timeout"]:
        lines += [f"{f['late_after_timeout']} frames arrived after the {r['args']['fanout_timeout']} s deadline (counted missed).", ""]
    a = r["abandon"]
    lines += ["## Abandoned streams", "",
              f"Closed {a['abandoned']} streams (the client's socket closes; the server's side is in CLOSE_WAIT until "
              "the server notices and closes it). Released = no more CLOSE_WAIT on the port than before and the workers' socket fds "
              f"down by the number closed (within 1 %). Half released after {fmt(a['half_released_s'])} s, all after "
              f"{fmt(a['all_released_s'])} s (gave up after {a['timeout_s']:.0f} s).", "",
              f"Before: {a['before']}; at the end: {a['after']}.", "",
              "| t s | established | close_wait | worker socket fds |", "|---:|---:|---:|---:|"]
    for row in a["series"]:
        lines.append(f"| {row['t']} | {row['established']} | {row['close_wait']} | {row['worker_socket_fds']} |")
    lines += ["", "## Server memory and file descriptors", "",
              "| moment | workers | RSS MiB (sum) | RSS MiB per worker | fds per worker |", "|---|---:|---:|---|---|"]
    for name, key in (("before the clients", "server_idle"), ("clients open", "server_loaded"),
                      ("after the loaded API phase", "server_loaded_after"), ("after abandoning half", "server_after_abandon")):
        s = r[key]
        per_worker = ", ".join(f"{w['rss_kib'] / 1024:.1f}" for w in s["workers"])
        fds = ", ".join(str(w["fds"]) for w in s["workers"])
        lines.append(f"| {name} | {len(s['workers'])} | {s['rss_kib'] / 1024:.1f} | {per_worker} | {fds} |")
    lines += ["", f"RSS per accepted client: {fmt(v['rss_per_client_kib'])} KiB "
                  f"((RSS with clients − RSS before) ÷ {v['accepted_clients']}).", ""]
    pgc = r.get("postgres_connections")
    if pgc:
        lines += ["## PostgreSQL connections", "",
                  f"Client backends on the shared server (max_connections {pgc['max_connections']}), peak per phase:", "",
                  "| phase | this run's database | other databases | total |", "|---|---:|---:|---:|"]
        for phase, x in pgc["phases"].items():
            lines.append(f"| {phase} | {x['ours_max']} | {x['others_max']} | {x['total_max']} |")
        lines.append("")
    if r.get("server_log_flags"):
        lines += ["## Server log", "", "Lines of note in the server's log:", "", "```",
                  *r["server_log_flags"], "```", ""]
    return "\n".join(lines)


def server_log_flags(path: Path, limit: int = 20) -> list[str]:
    """Lines of note in the server's log, each once with its count (timestamps and pids cut)."""
    counts: Counter = Counter()
    words = ("Traceback", "ERROR", "CRITICAL", "TIMEOUT", "Error", "rror:", "xception", "WARNING", "unavailable",
             "not answering", "Too many", "too many")
    try:
        for line in path.read_text(errors="replace").splitlines():
            if any(w in line for w in words) and not line.startswith("(Background on this error"):
                line = re.sub(r"^\[[^]]*\] \[\d+\] ", "", line)
                line = re.sub(r"\b(pid:? ?)\d+", r"\1N", line)
                counts[line[:240]] += 1
    except OSError:
        pass
    flags = [f"{n:>5} × {line}" for line, n in counts.most_common(limit)]
    if len(counts) > limit:
        flags.append(f"... {len(counts) - limit} other lines")
    return flags


def git_state() -> str:
    try:
        head = subprocess.run(["git", "log", "-1", "--format=%h %s"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "console"], cwd=ROOT, capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return f"`{head[:80]}`" + (f" + uncommitted changes in console/ ({len(dirty.splitlines())} files)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "?"


# --- main ----------------------------------------------------------------------------------------

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=2000, help="waiting clients: 60%% SSE streams, 40%% long-polls")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of each API latency measurement")
    ap.add_argument("--rate", type=float, default=50.0, help="API requests per second in the latency measurements")
    ap.add_argument("--sqlite", action="store_true", help="serve a SQLite file (what `make run` serves)")
    ap.add_argument("--server-cmd", help="the server's argv (shell words); `{port}` or `:PORT` in it is the port; "
                                         "default: the production command with console/gunicorn_conf.py")
    ap.add_argument("--port", type=int, default=0, help="the server's port (default: a free one)")
    ap.add_argument("--jobs", type=int, default=200, help="founders (one job each)")
    ap.add_argument("--fanout", type=int, default=20, help="resolves on the hot job in phase 3")
    ap.add_argument("--fanout-timeout", type=float, default=5.0, help="a frame later than this (s) counts as missed")
    ap.add_argument("--wait", type=int, default=55, help="the long-polls' ?wait= seconds")
    ap.add_argument("--pool", type=int, default=32, help="connections of the measured API client")
    ap.add_argument("--abandon-timeout", type=float, default=60.0, help="how long phase 4 waits for the server (s)")
    ap.add_argument("--heartbeat", type=float, default=15.0, help="the server's SSE heartbeat (for the stall check)")
    ap.add_argument("--no-write", action="store_true", help="do not write bench/results/NAME.{md,json}")
    ap.add_argument("--name", default="capacity", help="results file name in bench/results/ (default: capacity)")
    args = ap.parse_args(argv)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", args.name):
        ap.error("--name: letters, digits, _ . - only")
    if args.clients < 0 or args.jobs < 2 or args.fanout < 1 or not 0 < args.wait <= 55:
        ap.error("need --clients >= 0, --jobs >= 2, --fanout >= 1, 0 < --wait <= 55")
    return args


def raise_fd_limit(needed: int) -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if soft < needed:
        log(f"warning: the fd limit {soft} is below the ~{needed} this run needs")
    return soft, hard


def main(argv=None) -> int:
    args = parse_args(argv)
    fd_limit = raise_fd_limit(args.clients + args.pool + 200)
    setup = Setup(args)
    interrupted = []

    def on_signal(signum, frame):
        interrupted.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    started = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    load_start = loadavg()
    try:
        log(f"database: {setup.env['DATABASE_URL']}")
        setup.create_database()
        log(f"server: {shlex.join(setup.argv)} (log {setup.log_path})")
        setup.start_server()
        world = World(setup, args)
        result = asyncio.run(bench(world, args))
        result.update({"started": started, "args": vars(args), "server_cmd": shlex.join(
            [a.replace(str(VENV_BIN) + "/", ".venv/bin/") for a in setup.argv]), "git": git_state(),
            "load_start": load_start, "load_end": loadavg(), "fd_limit": fd_limit,
            "python": platform.python_version(), "server_log_flags": server_log_flags(setup.log_path)})
        if setup.server.poll() is not None:
            result["server_log_flags"].append(f"the server exited during the run (status {setup.server.returncode})")
        result["verdicts"] = verdicts(result)
        report = markdown(result)
        print(report)
        if not args.no_write:
            RESULTS.mkdir(exist_ok=True)
            (RESULTS / f"{args.name}.md").write_text(report + "\n")
            (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
            log(f"wrote {RESULTS / args.name}.md and .json")
        return 0 if result["verdicts"]["met"] else 1
    except KeyboardInterrupt:
        log(f"interrupted ({'signal ' + str(interrupted[0]) if interrupted else 'Ctrl-C'}); cleaning up")
        return 130
    except (RuntimeError, subprocess.SubprocessError, psycopg.Error) as error:
        log(f"failed: {error}")
        return 2
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # let the clean-up finish
        setup.cleanup()
        log(f"stopped the server, dropped the database; server log: {setup.log_path}")


if __name__ == "__main__":
    sys.exit(main())

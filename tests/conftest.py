"""Fixtures: the app on real databases (SQLite always; PostgreSQL when TEST_DATABASE_URL is
set or a local server answers, and always in CI), clients, tokens, fresh ids, live servers.

Each backend gets one throw-away database per test session (per xdist worker), migrated
with the real Alembic revisions. Tests never share ids, so they need no clean-up and can
run in any order.
"""
from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator
from urllib.parse import urlsplit, urlunsplit

import jwt
import psycopg
import pytest
from psycopg import sql

from console import create_app

try:
    from hypothesis import settings as hypothesis_settings

    # No example database on disk: parallel workers would race on it, and CI starts clean.
    hypothesis_settings.register_profile("console", database=None, deadline=None, print_blob=True)
    hypothesis_settings.load_profile("console")
except ImportError:  # hypothesis is a dev extra
    pass

REPO = Path(__file__).resolve().parent.parent
LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"

DEFAULT_OPTIONS = [
    {"value": "skip_feature", "label": "Skip this feature", "description": "Skip this and continue building"},
    {"value": "simpler_version", "label": "Try a simpler version", "description": "Build it without this part",
     "recommended": True},
    {"value": "provide_guidance", "label": "Give me specific guidance", "description": "I will tell you what to do"},
]


# --- databases ----------------------------------------------------------------------------------

def postgres_server_url() -> str | None:
    """TEST_DATABASE_URL, else the local server if it answers; None when there is none."""
    url = os.environ.get("TEST_DATABASE_URL") or LOCAL_POSTGRES
    try:
        with psycopg.connect(plain_url(url), connect_timeout=2):
            return url
    except psycopg.OperationalError:
        if os.environ.get("CI") or os.environ.get("TEST_DATABASE_URL"):
            raise  # CI must test PostgreSQL: never skip it silently there
        return None


def plain_url(url: str) -> str:
    """The URL psycopg takes (no SQLAlchemy driver suffix)."""
    parts = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme == "postgres":
        scheme = "postgresql"
    return urlunsplit((scheme, parts.netloc, parts.path, parts.query, parts.fragment))


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


@dataclass
class ScratchPostgres:
    server_url: str

    def create(self, prefix: str = "console_test") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(plain_url(self.server_url), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return with_database(self.server_url, name)

    def drop(self, url: str) -> None:
        name = urlsplit(url).path.lstrip("/")
        with psycopg.connect(plain_url(self.server_url), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def postgres() -> ScratchPostgres:
    url = postgres_server_url()
    if url is None:
        pytest.skip("no PostgreSQL server (set TEST_DATABASE_URL)")
    return ScratchPostgres(url)


@contextmanager
def migrated_database(request, directory: Path, prefix: str) -> Iterator[str]:
    """A migrated, empty database of the kind `request.param` names ("sqlite": a file in
    `directory`; "postgresql": a scratch database on the test server, dropped after)."""
    if request.param == "sqlite":
        url = f"sqlite:///{directory / (prefix + '.db')}"
        migrate(url)
        yield url
        return
    scratch = request.getfixturevalue("postgres")
    url = scratch.create(prefix)
    try:
        migrate(url)
        yield url
    finally:
        scratch.drop(url)


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def database_url(request, tmp_path_factory):
    """A migrated, empty database of each kind, for the whole session."""
    with migrated_database(request, tmp_path_factory.mktemp("db"), "console_test") as url:
        yield url


def migrate(url: str, revision: str = "head", direction: str = "upgrade") -> None:
    import flask_migrate

    from console.extensions import db

    app = make_app(url)
    with app.app_context():
        getattr(flask_migrate, direction)(revision=revision)
        db.engine.dispose()


# --- the app --------------------------------------------------------------------------------------

JWT_SECRET = "test-jwt-" + secrets.token_urlsafe(24)
AGENT_TOKEN = "test-agent-" + secrets.token_urlsafe(24)
AGENT_JWT_SECRET = "test-agent-jwt-" + secrets.token_urlsafe(24)
SECRET_KEY = "test-key-" + secrets.token_urlsafe(24)


def make_app(database_url: str, **config):
    return create_app({
        "SQLALCHEMY_DATABASE_URI": database_url if not database_url.startswith("postgresql://")
        else "postgresql+psycopg://" + database_url[len("postgresql://"):],
        "SECRET_KEY": SECRET_KEY, "JWT_SECRET": JWT_SECRET, "AGENT_TOKEN": AGENT_TOKEN,
        "AGENT_JWT_SECRET": AGENT_JWT_SECRET, "TESTING": True, **config,
    })


@pytest.fixture(scope="session")
def app(database_url):
    app = make_app(database_url)
    yield app
    dispose(app)


def dispose(app) -> None:
    """Stop the app's event feed and close its pooled connections (an open connection left
    to the garbage collector warns; a feed left running reconnects to a dropped database)."""
    from console.extensions import db
    from console.hub import current_hub

    with app.app_context():
        current_hub().stop()
        db.session.remove()
        db.engine.dispose()


@pytest.fixture
def configured_app(database_url):
    """configured_app(**config) -> an app on this test's database with extra config, disposed after."""
    made = []

    def make(**config):
        made.append(make_app(database_url, **config))
        return made[-1]
    yield make
    for app in made:
        dispose(app)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def dialect(database_url) -> str:
    return "sqlite" if database_url.startswith("sqlite") else "postgresql"


def mint_jwt(founder_id: str | None, secret: str = JWT_SECRET, exp_in: int | None = 3600, **claims) -> str:
    now = int(time.time())
    payload = {"iat": now, **claims}
    if founder_id is not None:
        payload["sub"] = founder_id
    if exp_in is not None:
        payload["exp"] = now + exp_in
    return jwt.encode(payload, secret, algorithm="HS256")


@pytest.fixture
def ids():
    def new(prefix):
        return f"{prefix}-{uuid.uuid4().hex[:16]}"
    return SimpleNamespace(founder_id=new("founder"), job_id=new("job"), project_id=new("proj"),
                           session_id=new("sess"), new=new)


@pytest.fixture
def agent() -> dict:
    return {"Authorization": f"Bearer {AGENT_TOKEN}"}


@pytest.fixture
def founder(ids):
    def headers(founder_id: str | None = None, **claims) -> dict:
        return {"Authorization": f"Bearer {mint_jwt(founder_id or ids.founder_id, **claims)}"}
    return headers


@pytest.fixture
def escalation_body(ids):
    def body(**fields) -> dict:
        data = {
            "session_id": ids.session_id, "project_id": ids.project_id, "founder_id": ids.founder_id,
            "error_type": "KeyError",
            "plain_english_problem": "I could not find the user record the signup page needs.",
            "recommended_action": "Build a simpler version without the lookup.",
            "attempts_summary": ["Retried with a fresh cache", "Rebuilt the user index"],
            "options": [dict(o) for o in DEFAULT_OPTIONS],
            "error_message": f"KeyError: missing key {uuid.uuid4().hex.translate(str.maketrans('0123456789abcdef', 'ghijklmnopqrstuv'))}",
        }
        for key, value in fields.items():
            if value is ...:
                data.pop(key, None)
            else:
                data[key] = value
        return data
    return body


@pytest.fixture
def make_escalation(client, agent, ids, escalation_body):
    """Create through the API (as an agent); returns the JSON record."""
    def make(job_id: str | None = None, expect: int = 201, **fields) -> dict:
        resp = client.post(f"/api/jobs/{job_id or ids.job_id}/escalations", json=escalation_body(**fields),
                           headers=agent)
        assert resp.status_code == expect, resp.get_data(as_text=True)
        return resp.get_json()
    return make


# --- live servers -----------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_health(base_url: str, timeout: float = 30, process: subprocess.Popen | None = None) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(base_url + "/healthz", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{base_url} did not become healthy")


class ThreadedServer:
    """The app served by werkzeug in a thread of this process (threaded, like a worker)."""

    def __init__(self, app):
        from werkzeug.serving import make_server

        self.port = free_port()
        self.server = make_server("127.0.0.1", self.port, app, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        self.thread.start()
        wait_for_health(self.url)
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture(scope="session")
def live_server(app):
    with ThreadedServer(app) as server:
        yield server


class GunicornServer:
    """A real server process, as production runs it: gunicorn with console.gunicorn_conf
    (gevent workers)."""

    def __init__(self, database_url: str, workers: int = 1, **env):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "DATABASE_URL": database_url, "CONSOLE_JWT_SECRET": JWT_SECRET,
                    "CONSOLE_AGENT_TOKEN": AGENT_TOKEN, "CONSOLE_SECRET_KEY": SECRET_KEY,
                    "CONSOLE_AGENT_JWT_SECRET": AGENT_JWT_SECRET,
                    "PYTHONUNBUFFERED": "1", **{k: str(v) for k, v in env.items()}}
        self.args = [sys.executable, "-m", "gunicorn", "-c", "python:console.gunicorn_conf", "-w", str(workers),
                     "-b", f"127.0.0.1:{self.port}", "--graceful-timeout", "3", "console:create_app()"]
        self.process: subprocess.Popen | None = None

    def __enter__(self):
        import tempfile  # noqa: PLC0415

        self.log = tempfile.NamedTemporaryFile("w+", prefix="console-gunicorn-", suffix=".log")
        self.process = subprocess.Popen(self.args, cwd=REPO, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        wait_for_health(self.url, process=self.process)
        return self

    def __exit__(self, *exc):
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()

    def log_text(self) -> str:
        """What the server has logged so far (for a failing test's message)."""
        self.log.flush()
        with open(self.log.name) as fh:
            return fh.read()

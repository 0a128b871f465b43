"""Configuration: defaults, then `CONSOLE_*` environment variables, then `DATABASE_URL`.

Secrets that are not given are generated once and kept in the instance folder, so that
several worker processes (and later restarts) agree on them.
"""
from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from flask import Flask

from .pool import FairQueuePool

# Limits of SPEC §6, in one place so the schemas, the services and the docs agree.
MAX_BODY_BYTES = 256 * 1024
MAX_EVENT_PAYLOAD_BYTES = 16 * 1024

GENERATED_SECRETS = ("SECRET_KEY", "JWT_SECRET", "AGENT_TOKEN", "AGENT_JWT_SECRET")
RAW_STRINGS = ("SMTP_URL", "MAIL_FROM", "MAIL_DIR", "SLACK_SIGNING_SECRET")  # given, never generated


class DefaultConfig:
    MAX_CONTENT_LENGTH = MAX_BODY_BYTES
    # Forms are small; werkzeug's own form limits would answer 413 in HTML, ours answers JSON.
    MAX_FORM_MEMORY_SIZE = MAX_BODY_BYTES
    SQLALCHEMY_TRACK_MODIFICATIONS = False
    SESSION_COOKIE_HTTPONLY = True
    SESSION_COOKIE_SAMESITE = "Lax"
    SESSION_COOKIE_SECURE = False
    SESSION_COOKIE_NAME = "console_session"
    PERMANENT_SESSION_LIFETIME = 12 * 3600
    WTF_CSRF_TIME_LIMIT = None  # the token lives as long as the session
    WTF_CSRF_SSL_STRICT = False  # SameSite=Lax already stops cross-site posts; proxies strip Referer

    JWT_SECRET: str | None = None
    JWT_PUBLIC_KEY: str | None = None
    JWKS_URL: str | None = None
    JWT_ISSUER: str | None = None
    JWT_AUDIENCE: str | None = None
    JWT_LEEWAY_SECONDS = 10
    AGENT_TOKEN: str | None = None
    AGENT_JWT_SECRET: str | None = None  # HS256 key of job-scoped agent tokens (SPEC §15)
    CORS_ORIGINS: str | None = None  # comma-separated origins of the main web frontend
    BASE_URL = "http://127.0.0.1:5000"  # used in printed login links
    LOGIN_LINK_MAX_AGE = 15 * 60

    # Real time (SPEC §6): stream lifetime, heartbeats, SQLite cross-process re-check.
    SSE_HEARTBEAT_SECONDS = 15.0
    SSE_MAX_STREAM_SECONDS = 300.0
    SQLITE_POLL_SECONDS = 0.5

    # Bounds on one caller (SPEC §16): pending escalations per job (the next create is 429),
    # concurrent SSE streams and long-polls per credential and server process, and messages per
    # founder, channel and hour (the rest of the hour is folded into one digest).
    MAX_PENDING_PER_JOB = 200
    MAX_STREAMS_PER_TOKEN = 100
    MAX_MESSAGES_PER_HOUR = 30

    # Expiry (SPEC §10): the deadline of an escalation created without `expires_in`
    # (seconds; None: no deadline), and how often the worker looks for due work.
    DEFAULT_EXPIRES_IN: int | None = None
    WORKER_POLL_SECONDS = 1.0

    # Webhooks (SPEC §13; console/webhooks.py): seconds between attempts (comma-separated),
    # the receiver's time to answer, a worker's lease on a delivery in flight, and whether
    # http:// and private, loopback or link-local targets are allowed (development, tests).
    WEBHOOK_RETRY_SCHEDULE = "5,300,1800,7200,18000,36000,36000"
    WEBHOOK_TIMEOUT_SECONDS = 15.0
    WEBHOOK_LEASE_SECONDS = 60.0
    WEBHOOK_ALLOW_PRIVATE = False

    # Notifications (SPEC §11; console/notifications.py): the SMTP server (smtp://, smtp+starttls://,
    # smtps://; unset: messages are written as .eml files into MAIL_DIR, default instance/mail),
    # the sender, the Slack app's signing secret (set: Slack buttons answer in place), the retry
    # schedule of temporary failures (seconds, comma-separated) and the time one send may take.
    SMTP_URL: str | None = None
    MAIL_FROM = "Escalations <escalations@localhost>"
    MAIL_DIR: str | None = None
    SLACK_SIGNING_SECRET: str | None = None
    NOTIFY_RETRY_SCHEDULE = "15,60,300,900,1800,1800,1800,3600,3600,7200,14400,28800"
    NOTIFY_TIMEOUT_SECONDS = 15.0
    NOTIFY_LEASE_SECONDS = 120.0


def database_uri(url: str | None, instance_path: str) -> str:
    """The SQLAlchemy URI for DATABASE_URL: psycopg 3 for PostgreSQL, a file in the
    instance folder by default."""
    if not url:
        return "sqlite:///" + os.path.join(instance_path, "console.db")
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


# Every PostgreSQL connection of the app (the pool, the hub's LISTEN, the worker's wake-up):
# connecting gives up after 3 s, and a connection whose peer vanished without a word (a
# host or network gone, not a restart) is noticed by TCP keepalives and tcp_user_timeout
# within about 15 s instead of hanging a request or the worker on it for ever.
POSTGRES_LIVENESS = {"connect_timeout": 3, "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2,
                     "keepalives_count": 3, "tcp_user_timeout": 15000}


def engine_options(uri: str) -> dict:
    if uri.startswith("sqlite"):
        return {"connect_args": {"timeout": 30, "check_same_thread": False}}
    return {
        # No pool_pre_ping (a round trip per request): database.py pings only idle connections.
        # Reads run in autocommit (no BEGIN/ROLLBACK round trips; at READ COMMITTED every
        # statement had its own snapshot anyway); write_transaction() opens a real transaction.
        "isolation_level": "AUTOCOMMIT",
        "poolclass": FairQueuePool,  # checkouts served in arrival order (console/pool.py)
        # Per worker process. With gevent workers thousands of clients may wait at once, but
        # a waiting client holds no connection; past pool_size + max_overflow, requests queue
        # (as greenlets) for up to pool_timeout before answering 503. The pool is what keeps
        # PostgreSQL from thrashing: more statements at once than a few per database core
        # only add contention (on this 2-core machine, 2 × 8 connections resolve 40 % faster
        # than 2 × 20: bench/README.md). Two workers use 2 × 8 + 2 (LISTEN) connections.
        "pool_size": int(os.environ.get("CONSOLE_POOL_SIZE", "8")),
        "max_overflow": int(os.environ.get("CONSOLE_POOL_OVERFLOW", "0")),
        "pool_timeout": 10,
        "pool_recycle": 1800,
        # Fail fast when the server is gone: 503 within seconds, never a hung worker.
        "connect_args": {**POSTGRES_LIVENESS, "options": "-c statement_timeout=15000"},
    }


def load_generated_secrets(instance_path: str) -> dict[str, str]:
    """Secrets kept in instance/secrets.json, created atomically by whichever process comes first."""
    path = Path(instance_path) / "secrets.json"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fresh = {name: secrets.token_urlsafe(32) for name in GENERATED_SECRETS}
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(fresh, fh)
        try:
            os.link(tmp, path)  # fails if another process won the race: then read theirs
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    stored = json.loads(path.read_text())
    if any(not stored.get(name) for name in GENERATED_SECRETS):
        stored = _add_missing_secrets(path)
    return {name: stored[name] for name in GENERATED_SECRETS if stored.get(name)}


def _add_missing_secrets(path: Path) -> dict[str, str]:
    """A secret added by a later version (AGENT_JWT_SECRET) to an existing secrets.json:
    read, complete and replace the file under an exclusive lock, so processes starting
    together agree on the one value that is written."""
    import fcntl  # noqa: PLC0415  (POSIX, like gunicorn)

    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stored = json.loads(path.read_text())
        missing = [name for name in GENERATED_SECRETS if not stored.get(name)]
        if missing:
            stored.update({name: secrets.token_urlsafe(32) for name in missing})
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump(stored, fh)
            os.replace(tmp, path)
    return stored


def _settle_secrets(app: Flask, *, embedded: bool) -> None:
    """Secrets that were not given are generated into instance/secrets.json only for the
    embedded default (SQLite on one host, a development run). Against PostgreSQL the console
    may run on several hosts: each would make its own session key and agent token (random
    401s behind a load balancer), so it starts only with them given. Founder tokens are
    HS256 only with CONSOLE_JWT_SECRET: never implied beside an identity provider's key or
    JWKS, where a generated secret would let whoever reads the instance folder sign in as
    any founder. Job-scoped agent tokens need CONSOLE_AGENT_JWT_SECRET (off without it)."""
    config = app.config
    identity_provider = bool(config.get("JWT_PUBLIC_KEY") or config.get("JWKS_URL"))
    wanted = [name for name in GENERATED_SECRETS if not (name == "JWT_SECRET" and identity_provider)]
    if embedded:
        if any(not config.get(name) for name in wanted):
            try:
                generated = load_generated_secrets(app.instance_path)
            except OSError as error:  # a read-only or missing instance folder
                missing = [f"CONSOLE_{name}" for name in wanted if not config.get(name)]
                raise RuntimeError(
                    f"Cannot keep generated secrets in {app.instance_path}/secrets.json ({error.strerror or error}). "
                    f"Set {', '.join(missing)}, or CONSOLE_INSTANCE_PATH to a folder the console may write."
                ) from error
            for name in wanted:
                if not config.get(name):
                    config[name] = generated[name]
        return
    required = ["SECRET_KEY", "AGENT_TOKEN", *([] if identity_provider else ["JWT_SECRET"])]
    missing = [f"CONSOLE_{name}" for name in required if not config.get(name)]
    if missing:
        raise RuntimeError(
            f"Set {', '.join(missing)}: on PostgreSQL the console generates no secrets (every host and the "
            "worker must share the same ones). Founder tokens may instead be verified with "
            "CONSOLE_JWT_PUBLIC_KEY or CONSOLE_JWKS_URL (then CONSOLE_JWT_SECRET is not needed).")


def _check_default_expires_in(value) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 30 * 24 * 3600:
        raise RuntimeError(f"CONSOLE_DEFAULT_EXPIRES_IN must be a whole number of seconds from 1 to 2592000 "
                           f"(30 days), or unset for no deadline; it is {value!r}.")


def _check_bounds(config) -> None:
    for name in ("MAX_PENDING_PER_JOB", "MAX_STREAMS_PER_TOKEN", "MAX_MESSAGES_PER_HOUR"):
        value = config.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1_000_000:
            raise RuntimeError(f"CONSOLE_{name} must be a whole number from 1 to 1000000; it is {value!r}.")


def _check_identity_provider(config) -> None:
    """An identity provider issues tokens for many apps: without an audience, a token it made for
    any of them would sign in here (SPEC §16)."""
    if (config.get("JWT_PUBLIC_KEY") or config.get("JWKS_URL")) and not config.get("JWT_AUDIENCE"):
        raise RuntimeError("Set CONSOLE_JWT_AUDIENCE: with CONSOLE_JWT_PUBLIC_KEY or CONSOLE_JWKS_URL, founder tokens "
                           "are checked for this console's audience (the `aud` your identity provider puts in tokens "
                           "meant for it), or a token it issued for any other app would sign in here.")


def configure(app: Flask, test_config: dict | None) -> None:
    app.config.from_object(DefaultConfig)
    app.config.from_prefixed_env("CONSOLE")
    for name in GENERATED_SECRETS + RAW_STRINGS:  # opaque strings: never JSON-parsed ("1e3", "true" and "0" stay as given)
        raw = os.environ.get(f"CONSOLE_{name}")
        if raw:
            app.config[name] = raw
    if test_config:
        app.config.update(test_config)
    if not app.config.get("SQLALCHEMY_DATABASE_URI"):
        app.config["SQLALCHEMY_DATABASE_URI"] = database_uri(os.environ.get("DATABASE_URL"), app.instance_path)
    _check_default_expires_in(app.config.get("DEFAULT_EXPIRES_IN"))
    _check_bounds(app.config)
    _check_identity_provider(app.config)
    uri = app.config["SQLALCHEMY_DATABASE_URI"]
    app.config.setdefault("SQLALCHEMY_ENGINE_OPTIONS", engine_options(uri))
    _settle_secrets(app, embedded=uri.startswith("sqlite"))
    if app.config["AGENT_JWT_SECRET"] and app.config["AGENT_JWT_SECRET"] in (app.config["JWT_SECRET"],
                                                                             app.config["AGENT_TOKEN"]):
        # One key for both kinds of JWT would let a founder's token be signed as an agent's.
        raise RuntimeError("CONSOLE_AGENT_JWT_SECRET must differ from CONSOLE_JWT_SECRET and CONSOLE_AGENT_TOKEN.")

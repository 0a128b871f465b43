"""Server time of the console inbox with 50 pending cards (issue 3), in-process.

    .venv/bin/python bench/inbox_time.py [--database sqlite|postgresql] [--requests 100]

Renders GET / through Flask's test client (no HTTP server, no network), so the figure is
the app's own time per page: the queries, 50 card partials and the response.
"""
from __future__ import annotations

import argparse
import re
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import jwt
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from console import create_app  # noqa: E402
from console.extensions import db  # noqa: E402

SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="postgresql")
    parser.add_argument("--requests", type=int, default=100)
    args = parser.parse_args()
    name = f"inbox_time_{uuid.uuid4().hex[:8]}"
    if args.database == "sqlite":
        url = f"sqlite:///{tempfile.mkdtemp()}/inbox.db"
    else:
        with psycopg.connect(SERVER, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    secret, agent = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    app = create_app({"SQLALCHEMY_DATABASE_URI": url, "JWT_SECRET": secret, "AGENT_TOKEN": agent,
                      "SECRET_KEY": secrets.token_urlsafe(24)})
    try:
        import flask_migrate

        with app.app_context():
            flask_migrate.upgrade()
        client = app.test_client()
        options = [{"value": "skip_feature", "label": "Skip this feature", "description": "Leave it out for now"},
                   {"value": "simpler_version", "label": "Build a simpler version", "description": "Without the part "
                    "that fails", "recommended": True},
                   {"value": "provide_guidance", "label": "I'll tell you what to do", "description": "Write it"}]
        for i in range(50):
            resp = client.post(f"/api/jobs/job-{i % 5}/escalations", headers={"Authorization": f"Bearer {agent}"}, json={
                "session_id": "s", "project_id": f"proj-{i % 3}", "founder_id": "founder-inbox",
                "error_type": "StripeAuthenticationError", "error_signature": f"sig-{i}",
                "plain_english_problem": "I can't take card payments yet: the checkout page needs a Stripe key. " * 2,
                "attempts_summary": ["Looked for the key in settings", "Tried test mode", "Checked other providers"],
                "recommended_action": "Add your Stripe key so I can finish checkout.", "options": options})
            assert resp.status_code == 201, resp.get_data(as_text=True)
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").get_data(as_text=True)).group(1)
        token = jwt.encode({"sub": "founder-inbox", "exp": int(time.time()) + 3600}, secret, algorithm="HS256")
        assert client.post("/login", data={"csrf_token": csrf, "token": token}).status_code == 303
        page = client.get("/").get_data(as_text=True)
        assert page.count('data-status="pending"') == 50, "expected 50 pending cards"
        for _ in range(10):  # warm-up: templates compiled, connections pooled
            client.get("/")
        wall, cpu = [], []
        for _ in range(args.requests):
            t, c = time.perf_counter(), time.process_time()
            client.get("/")
            wall.append((time.perf_counter() - t) * 1000)
            cpu.append((time.process_time() - c) * 1000)
        wall.sort()
        print(f"inbox with 50 pending cards on {args.database}, {args.requests} requests, {len(page) // 1024} KiB: "
              f"p50 {statistics.median(wall):.1f} ms, p90 {wall[int(len(wall) * 0.9)]:.1f} ms, "
              f"mean CPU {statistics.mean(cpu):.1f} ms")
    finally:
        with app.app_context():
            db.session.remove()
            db.engine.dispose()
        if args.database == "postgresql":
            with psycopg.connect(SERVER, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return 0


if __name__ == "__main__":
    sys.exit(main())

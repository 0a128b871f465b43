"""Server time and size of the console inbox with many pending questions (issue 15), in-process.

    .venv/bin/python bench/inbox_time.py [--database sqlite|postgresql] [--cards 50 200] [--requests 100]

Renders GET / (the full cards) and GET /?view=compact (one line per question) through Flask's
test client: no HTTP server, no network, so each figure is the app's own time per page (its
queries, the card partials, the response). The questions are spread over 3 projects and 5 jobs,
each with three options, three attempts and a two-sentence problem, like a real agent's.
The last row of each size empties the card cache (console/cards.py) before every request:
the first view of every card, as after a restart.
"""
from __future__ import annotations

import argparse
import contextlib
import re
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterator

import jwt
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from console import create_app  # noqa: E402
from console.extensions import db  # noqa: E402

SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
FOUNDER = "founder-inbox"
OPTIONS = [{"value": "skip_feature", "label": "Skip this feature", "description": "Leave it out for now"},
           {"value": "simpler_version", "label": "Build a simpler version",
            "description": "Without the part that fails", "recommended": True},
           {"value": "provide_guidance", "label": "I'll tell you what to do", "description": "Write it"}]
PROBLEMS = ["I can't take card payments yet: the checkout page needs a Stripe key.",
            "The sign-up e-mail bounces: the mail provider refuses our sender address.",
            "The image upload fails for files over 5 MB: the storage bucket rejects them.",
            "The nightly import stops halfway: the supplier's CSV has a column I don't know.",
            "Search returns nothing for accented names: the index strips the accents."]


@contextlib.contextmanager
def inbox_app(database: str, cards: int) -> Iterator[tuple]:
    """A migrated app on a fresh database with `cards` pending questions of FOUNDER, and a
    signed-in test client. Yields (app, client, founder_jwt)."""
    name = f"inbox_time_{uuid.uuid4().hex[:8]}"
    if database == "sqlite":
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
        for i in range(cards):
            resp = client.post(f"/api/jobs/job-{i % 5}/escalations", headers={"Authorization": f"Bearer {agent}"}, json={
                "session_id": "s", "project_id": f"proj-{i % 3}", "founder_id": FOUNDER,
                "error_type": "StripeAuthenticationError", "error_signature": f"sig-{i}",
                "plain_english_problem": f"{PROBLEMS[i % 5]} I tried the usual fixes; none of them worked here.",
                "attempts_summary": ["Looked for the key in settings", "Tried test mode", "Checked other providers"],
                "recommended_action": "Add your Stripe key so I can finish checkout.", "options": OPTIONS})
            assert resp.status_code == 201, resp.get_data(as_text=True)
        token = jwt.encode({"sub": FOUNDER, "exp": int(time.time()) + 3600}, secret, algorithm="HS256")
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").get_data(as_text=True)).group(1)
        assert client.post("/login", data={"csrf_token": csrf, "token": token}).status_code == 303
        yield app, client, token
    finally:
        with app.app_context():
            db.session.remove()
            db.engine.dispose()
        if database == "postgresql":
            with psycopg.connect(SERVER, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def measure(client, path: str, requests: int, rounds: int = 5, before=None) -> dict:
    """Per request: wall-clock p50/p90 over all requests, and CPU time as the median of
    `rounds` rounds' means and as the best round's mean (two cores shared with PostgreSQL
    make single figures noisy; the best round is the app's cost with the least interference)."""
    page = client.get(path).get_data()
    for _ in range(10):  # warm-up: templates compiled, connections pooled
        client.get(path)
    wall, round_cpu = [], []
    per_round = max(1, requests // rounds)
    for _ in range(rounds):
        c = time.process_time()
        for _ in range(per_round):
            if before is not None:
                before()
            t = time.perf_counter()
            client.get(path)
            wall.append((time.perf_counter() - t) * 1000)
        round_cpu.append((time.process_time() - c) * 1000 / per_round)
    wall.sort()
    return {"bytes": len(page), "p50": statistics.median(wall), "p90": wall[int(len(wall) * 0.9)],
            "cpu": statistics.median(round_cpu), "best_cpu": min(round_cpu),
            "pending": page.count(b'data-status="pending"')}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="postgresql")
    parser.add_argument("--cards", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--requests", type=int, default=100)
    args = parser.parse_args()
    print(f"| pending | view | page size | p50 | p90 | CPU per request (median round / best round) |"
          f"  ({args.database}, {args.requests} requests each)")
    print("|---|---|---|---|---|---|")
    for cards in args.cards:
        with inbox_app(args.database, cards) as (app, client, _token):
            def forget_cards():  # every card rendered afresh: a first view after a restart
                app.extensions["console_cards"].cache.clear()

            for view, path, before in (("full", "/?view=full", None), ("compact", "/?view=compact", None),
                                       ("full, cold card cache", "/?view=full", forget_cards)):
                m = measure(client, path, args.requests, before=before)
                print(f"| {cards} ({m['pending']} on the page) | {view} | {m['bytes'] / 1024:.0f} KiB | "
                      f"{m['p50']:.1f} ms | {m['p90']:.1f} ms | {m['cpu']:.1f} / {m['best_cpu']:.1f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

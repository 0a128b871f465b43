"""`flask --app console login-link FOUNDER_ID` and `flask --app console demo`."""
from __future__ import annotations

import click
from flask import Flask

from .auth import DEFAULT_AGENT_TOKEN_TTL, mint_agent_jwt
from .schemas import is_identifier

DEMO_FOUNDER = "founder-demo"


def _interactive() -> bool:
    """Is an operator at a terminal (who can be asked before demo data goes into PostgreSQL)?"""
    return click.get_text_stream("stdin").isatty()


def register(app: Flask) -> None:
    from . import webhook_cli  # noqa: PLC0415  (flask webhook add | list | remove | rotate | …)

    webhook_cli.register(app)

    @app.cli.command("login-link")
    @click.argument("founder_id")
    def login_link(founder_id: str) -> None:
        """Print a short-lived, single-use sign-in link for FOUNDER_ID."""
        from .routes.pages import make_login_link  # noqa: PLC0415

        with app.test_request_context():
            link = make_login_link(founder_id)
        minutes = app.config["LOGIN_LINK_MAX_AGE"] // 60
        click.echo(f"Sign-in link for {founder_id} (valid once, for {minutes} minutes):\n{link}")

    @app.cli.command("agent-token")
    @click.option("--job", "job_id", default=None, help="Mint a token scoped to this job (with --founder).")
    @click.option("--founder", "founder_id", default=None, help="The founder the scoped token acts for (with --job).")
    @click.option("--project", "project_id", default=None,
                  help="Bind the scoped token to this project too: a create naming another is 403.")
    @click.option("--ttl", type=click.IntRange(1, 366 * 24 * 3600), default=None,
                  help=f"Lifetime of the scoped token in seconds [default: {DEFAULT_AGENT_TOKEN_TTL}].")
    def agent_token(job_id: str | None, founder_id: str | None, project_id: str | None, ttl: int | None) -> None:
        """Print an agent bearer token. Without options: the orchestrator's token
        (CONSOLE_AGENT_TOKEN, or the generated one), valid for every job. With --job and
        --founder: a job-scoped token (a JWT signed with CONSOLE_AGENT_JWT_SECRET) that may
        act only in that job, for that founder, until it expires."""
        if job_id is None and founder_id is None:
            if ttl is not None or project_id is not None:
                raise click.UsageError("--ttl and --project are for a scoped token: give --job and --founder too.")
            click.echo(app.config["AGENT_TOKEN"])
            return
        if not job_id or not founder_id:
            raise click.UsageError("A scoped token needs both --job and --founder.")
        for name, value, limit in (("--job", job_id, 255), ("--founder", founder_id, 255),
                                   ("--project", project_id, 100)):
            if value is not None and not is_identifier(value, limit):
                raise click.UsageError(f"{name} must be 1-{limit} characters, without control characters.")
        if not app.config.get("AGENT_JWT_SECRET"):
            raise click.ClickException("Job-scoped tokens need CONSOLE_AGENT_JWT_SECRET (the same on every host).")
        click.echo(mint_agent_jwt(app.config["AGENT_JWT_SECRET"], job_id, founder_id,
                                  ttl if ttl is not None else DEFAULT_AGENT_TOKEN_TTL, project_id=project_id))

    @app.cli.command("worker")
    @click.option("--once", is_flag=True, help="Do what is due now, then exit.")
    def worker(once: bool) -> None:
        """Run the worker: expiries, reminders, notifications (e-mail, Slack) and webhook deliveries.
        Any number may run against one PostgreSQL; run one on SQLite. SIGTERM / SIGINT stop
        it after the batch in hand."""
        import logging  # noqa: PLC0415

        from .worker import Worker  # noqa: PLC0415

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        runner = Worker(app)
        if once:
            done = runner.run_once()
            click.echo("Done: " + (", ".join(f"{count} {name}" for name, count in done.items()) or "nothing was due") + ".")
            return
        runner.install_signal_handlers()
        runner.run_forever()

    @app.cli.command("demo")
    @click.option("--founder", "founder_id", default=DEMO_FOUNDER, show_default=True,
                  help="The founder who owns the demo jobs.")
    @click.option("--yes", is_flag=True, help="Write demo data into a PostgreSQL database (a production one, perhaps).")
    def demo(founder_id: str, yes: bool) -> None:
        """Fill the database with realistic demo data and print a sign-in link. On PostgreSQL,
        only with --yes: demo questions in a production database would reach real founders'
        inboxes and channels."""
        from .demo import load_demo_data  # noqa: PLC0415
        from .extensions import db  # noqa: PLC0415
        from .routes.pages import make_login_link  # noqa: PLC0415

        if db.engine.dialect.name != "sqlite" and not yes:
            shown = db.engine.url.render_as_string(hide_password=True)
            warning = f"This writes demo data into {shown}; the demo is for the embedded SQLite database."
            if not _interactive():  # a script (CI, the contract suite) asked for it: say so, and go on
                click.echo(f"Warning: {warning} (--yes skips this warning)", err=True)
            elif not click.confirm(f"{warning} Go on?", default=False):
                raise click.ClickException("Nothing was written. Run it with --yes to load the demo data here.")

        summary = load_demo_data(founder_id)
        click.echo(f"Demo data for {founder_id}: {summary}.")
        with app.test_request_context():
            link = make_login_link(founder_id)
        click.echo(f"Open the console (link valid {app.config['LOGIN_LINK_MAX_AGE'] // 60} minutes):\n{link}")

"""`flask --app console login-link FOUNDER_ID` and `flask --app console demo`."""
from __future__ import annotations

import click
from flask import Flask

DEMO_FOUNDER = "founder-demo"


def register(app: Flask) -> None:
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
    def agent_token() -> None:
        """Print the agent bearer token this deployment accepts (CONSOLE_AGENT_TOKEN, or the generated one)."""
        click.echo(app.config["AGENT_TOKEN"])

    @app.cli.command("demo")
    @click.option("--founder", "founder_id", default=DEMO_FOUNDER, show_default=True,
                  help="The founder who owns the demo jobs.")
    def demo(founder_id: str) -> None:
        """Fill the database with realistic demo data and print a sign-in link."""
        from .demo import load_demo_data  # noqa: PLC0415
        from .routes.pages import make_login_link  # noqa: PLC0415

        summary = load_demo_data(founder_id)
        click.echo(f"Demo data for {founder_id}: {summary}.")
        with app.test_request_context():
            link = make_login_link(founder_id)
        click.echo(f"Open the console (link valid {app.config['LOGIN_LINK_MAX_AGE'] // 60} minutes):\n{link}")

"""`flask --app console webhook …`: the operator's webhook endpoints (SPEC §13)."""
from __future__ import annotations

import click
from flask import Flask
from flask.cli import AppGroup

from .services import webhooks as service
from .webhooks import Settings


def register(app: Flask) -> None:
    group = AppGroup("webhook", help="Webhook endpoints: where the main product hears every event.")

    def fail(error: service.WebhookError):
        raise click.ClickException(str(error))

    @group.command("add")
    @click.argument("url")
    @click.option("--events", default=None, metavar="TYPE,…",
                  help="Only these event types (comma-separated) [default: every type].")
    def add(url: str, events: str | None) -> None:
        """Add an endpoint; prints its id and its secret (shown this once)."""
        try:
            endpoint = service.add_endpoint(url, service.parse_event_types(events),
                                            allow_private=Settings.of(app.config).allow_private)
        except service.WebhookError as error:
            fail(error)
        click.echo(f"Endpoint {endpoint.id}: {endpoint.url} ({_events(endpoint)})")
        click.echo(f"Secret (shown once; verify webhook-signature with it): {endpoint.secret}")

    @group.command("list")
    def list_() -> None:
        """Every endpoint: enabled or disabled (and why), its events, what it is still owed."""
        summaries = service.list_endpoints()
        if not summaries:
            click.echo("No webhook endpoints (`flask --app console webhook add URL`).")
        for summary in summaries:
            endpoint = summary.endpoint
            state = "enabled" if endpoint.enabled else f"DISABLED since {endpoint.disabled_at:%Y-%m-%d %H:%M} UTC: " \
                                                       f"{endpoint.disabled_reason}"
            notes = [f"{summary.pending} pending"]
            if endpoint.last_success_at:
                notes.append(f"last success {endpoint.last_success_at:%Y-%m-%d %H:%M:%S} UTC")
            if endpoint.failing_since and endpoint.enabled:
                notes.append(f"failing since {endpoint.failing_since:%Y-%m-%d %H:%M:%S} UTC")
            if endpoint.previous_secret_expires_at:
                notes.append(f"previous secret signs until {endpoint.previous_secret_expires_at:%Y-%m-%d %H:%M} UTC")
            click.echo(f"{endpoint.id}  {state}  {endpoint.url}  ({_events(endpoint)}; {', '.join(notes)})")

    @group.command("remove")
    @click.argument("endpoint_id", type=int)
    def remove(endpoint_id: int) -> None:
        """Remove an endpoint, its deliveries and their attempts."""
        try:
            endpoint = service.remove_endpoint(endpoint_id)
        except service.WebhookError as error:
            fail(error)
        click.echo(f"Removed endpoint {endpoint.id} ({endpoint.url}).")

    @group.command("rotate")
    @click.argument("endpoint_id", type=int)
    def rotate(endpoint_id: int) -> None:
        """A new secret; for 24 hours every message carries a signature with each."""
        try:
            endpoint = service.rotate_secret(endpoint_id)
        except service.WebhookError as error:
            fail(error)
        click.echo(f"New secret of endpoint {endpoint.id} (shown once): {endpoint.secret}")
        click.echo(f"The previous secret signs too until {endpoint.previous_secret_expires_at:%Y-%m-%d %H:%M} UTC.")

    @group.command("enable")
    @click.argument("endpoint_id", type=int)
    def enable(endpoint_id: int) -> None:
        """Turn a disabled endpoint back on (new events only; `redeliver` resends one)."""
        try:
            endpoint = service.enable_endpoint(endpoint_id)
        except service.WebhookError as error:
            fail(error)
        click.echo(f"Endpoint {endpoint.id} is enabled again.")

    @group.command("deliveries")
    @click.argument("endpoint_id", type=int, required=False)
    @click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
    def deliveries(endpoint_id: int | None, limit: int) -> None:
        """The latest deliveries (of one endpoint, or of all) with every attempt."""
        try:
            records = service.list_deliveries(endpoint_id, limit)
        except service.WebhookError as error:
            fail(error)
        if not records:
            click.echo("No deliveries.")
        for record in records:
            delivery = record.delivery
            when = (f"delivered {delivery.delivered_at:%Y-%m-%d %H:%M:%S}" if delivery.delivered_at
                    else f"next attempt {delivery.next_attempt_at:%Y-%m-%d %H:%M:%S}" if delivery.status == "pending"
                    else "")
            click.echo(f"delivery {delivery.id}  endpoint {delivery.endpoint_id}  evt_{delivery.event_id} "
                       f"({record.event_type})  {delivery.status}  {when}".rstrip())
            for attempt in record.attempts:
                click.echo(f"    {service.describe_attempt(attempt)}")

    @group.command("redeliver")
    @click.argument("delivery_id", type=int)
    def redeliver(delivery_id: int) -> None:
        """Send a delivery again (due now, a fresh retry schedule, the same webhook-id)."""
        try:
            delivery = service.redeliver(delivery_id)
        except service.WebhookError as error:
            fail(error)
        click.echo(f"Delivery {delivery.id} (evt_{delivery.event_id}) is due again; the worker sends it.")

    app.cli.add_command(group)


def _events(endpoint) -> str:
    return "events: " + (", ".join(endpoint.event_types) if endpoint.event_types else "all")

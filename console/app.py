"""The Flask application factory behind `console.create_app` (see console/__init__.py)."""
from __future__ import annotations

import os

from flask import Flask, Response, jsonify
from sqlalchemy import text


def create_app(test_config: dict | None = None) -> Flask:
    # CONSOLE_INSTANCE_PATH: the instance folder elsewhere than beside the package (a
    # container whose code is read-only mounts a writable volume there).
    instance_path = os.environ.get("CONSOLE_INSTANCE_PATH") or None
    if instance_path is not None and not os.path.isabs(instance_path):
        raise RuntimeError(f"CONSOLE_INSTANCE_PATH must be an absolute path, not {instance_path!r}.")
    app = Flask(__name__, instance_relative_config=True, instance_path=instance_path)
    try:  # the embedded database and generated secrets live here; PostgreSQL with its secrets given needs none
        os.makedirs(app.instance_path, exist_ok=True)
    except OSError:
        pass  # a read-only file system: whatever needs the folder says so when it does

    from . import cli, hub
    from .config import configure
    from .database import configure_engine
    from .errors import register_error_handlers
    from .extensions import csrf, db, migrate
    from .routes import api, notify, pages, stream
    from .security import enforce_body_limit, init_security

    configure(app, test_config)
    app.json.sort_keys = False  # records read in the order the spec lists their fields
    db.init_app(app)
    # Inside the package, so that an installed wheel migrates too.
    migrate.init_app(app, db, directory=os.path.join(os.path.dirname(__file__), "migrations"))
    enforce_body_limit(app)  # before CSRF's hook reads a form
    csrf.init_app(app)
    configure_engine(app)
    hub.init_app(app)

    app.register_blueprint(api.bp)
    app.register_blueprint(stream.bp)
    app.register_blueprint(pages.bp)
    notify.init_app(app)  # e-mail links, one-click unsubscribe, Slack's buttons (SPEC §11)
    csrf.exempt(api.bp)  # bearer tokens, never cookies: nothing for a forged form to ride on
    csrf.exempt(stream.bp)
    init_security(app)
    register_error_handlers(app)
    cli.register(app)

    with app.open_resource("static/favicon.svg") as icon:
        favicon_svg = icon.read()

    @app.get("/favicon.ico")
    def favicon() -> Response:  # browsers ask for it before they read the page's <link rel="icon">
        return Response(favicon_svg, mimetype="image/svg+xml", headers={"Cache-Control": "public, max-age=86400"})

    @app.get("/healthz")
    def healthz():
        try:
            db.session.execute(text("SELECT 1"))
        except Exception:
            db.session.rollback()
            from .errors import problem  # noqa: PLC0415

            return problem(503, "Service unavailable", "The database is not answering.")
        finally:
            db.session.remove()
        return jsonify({"status": "ok"})

    @app.get("/api/openapi.json")
    def openapi() -> Response:
        from .openapi import openapi_document  # noqa: PLC0415

        return jsonify(openapi_document())

    return app

"""Response headers (the Content-Security-Policy: no inline script, ever; caching; CORS)
and the request body limit for chunked bodies."""
from __future__ import annotations

import io

from flask import Flask, request
from flask.sessions import SecureCookieSessionInterface
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge


class ConsoleSessionInterface(SecureCookieSessionInterface):
    """The signed cookie session, for the console only: /api authenticates by bearer token
    and never reads or sets a cookie (no work per API request, and nothing for CSRF to ride on)."""

    def open_session(self, app, request):
        if request.path.startswith("/api/") or request.path == "/healthz":
            return None  # Flask substitutes a read-only null session
        return super().open_session(app, request)

CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "connect-src 'self'",
    "font-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])


def init_security(app: Flask) -> None:
    app.session_interface = ConsoleSessionInterface()
    origins = [o.strip() for o in str(app.config.get("CORS_ORIGINS") or "").split(",") if o.strip()]
    if origins:
        from flask_cors import CORS  # noqa: PLC0415

        # The main web frontend calls /api with bearer tokens (no cookies).
        CORS(app, resources={r"/api/*": {"origins": origins}}, supports_credentials=False,
             expose_headers=["WWW-Authenticate", "Retry-After"], max_age=600)

    @app.after_request
    def security_headers(response):
        headers = response.headers
        headers.setdefault("X-Content-Type-Options", "nosniff")
        headers.setdefault("Referrer-Policy", "same-origin")
        if request.path.startswith("/api/") or request.path == "/healthz":
            headers.setdefault("Cache-Control", "no-store")
            return response
        headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        headers.setdefault("X-Frame-Options", "DENY")
        if not request.path.startswith("/static/"):
            headers.setdefault("Cache-Control", "no-store")
            headers.add("Vary", "HX-Request")  # full page or card fragment, by that header
            headers.add("Vary", "Cookie")
        return response


def enforce_body_limit(app: Flask) -> None:
    """MAX_CONTENT_LENGTH for chunked bodies too. Werkzeug checks the limit against the
    Content-Length header; a chunked body has none, and is cut at the limit and parsed as
    if complete (a 400 for JSON, silently shortened form fields). Here a chunked body is
    read up to one byte past the limit before anyone parses it: over it, 413; within it,
    the request goes on with the body it really had. Broken chunked framing is a 400, not
    the server error it surfaced as from deep inside the parser."""

    @app.before_request
    def read_chunked_body():
        environ = request.environ
        if request.content_length is not None or "chunked" not in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
            return None
        limit = app.config["MAX_CONTENT_LENGTH"]
        try:
            body = environ["wsgi.input"].read(limit + 1)
        except Exception as error:  # the server's chunk parser (gunicorn.http.errors.*) refused the framing
            raise BadRequest(f"The request body could not be read ({type(error).__name__}: {error}); "
                             "send it with a Content-Length, or as valid chunked encoding.") from None
        if len(body) > limit:
            raise RequestEntityTooLarge(f"The request body is larger than {limit // 1024} KiB.")
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        request.__dict__.pop("stream", None)  # not read yet; never a cached view of the old input
        return None

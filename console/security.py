"""Response headers: the Content-Security-Policy (no inline script, ever), caching, CORS."""
from __future__ import annotations

from flask import Flask, request
from flask.sessions import SecureCookieSessionInterface


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

"""Errors: the services' domain exceptions, and how they are answered.

Under /api every error is RFC 9457 problem details (`application/problem+json`, with
`title`, `status` and a human `detail`); elsewhere it is an HTML page.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, json, render_template, request
from sqlalchemy.exc import DBAPIError, OperationalError, TimeoutError as PoolTimeoutError
from werkzeug.exceptions import HTTPException

from .extensions import db
from .text import one_line

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FieldError:
    field: str
    message: str


class ServiceError(Exception):
    status = 400
    title = "Bad request"

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


class NotFound(ServiceError):
    status, title = 404, "Not found"


class Conflict(ServiceError):
    status, title = 409, "Conflict"

    def __init__(self, detail: str, escalation=None):
        super().__init__(detail)
        self.escalation = escalation


class ValidationFailed(ServiceError):
    status, title = 422, "Invalid input"

    def __init__(self, errors: list[FieldError], detail: str | None = None):
        super().__init__(detail or "; ".join(f"{e.field}: {e.message}" for e in errors))
        self.errors = errors


class Unauthorized(ServiceError):
    status, title = 401, "Unauthorized"


class Forbidden(ServiceError):
    status, title = 403, "Forbidden"


class TooManyRequests(ServiceError):
    """A bound on one caller was reached (SPEC §16): 429 with Retry-After."""

    status, title = 429, "Too many requests"

    def __init__(self, detail: str, retry_after: int):
        super().__init__(detail)
        self.retry_after = retry_after


def problem(status: int, title: str, detail: str, headers: dict | None = None, **extra: Any) -> Response:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    resp = Response(json.dumps(body), status=status, mimetype="application/problem+json")
    if status == 401:
        resp.headers["WWW-Authenticate"] = 'Bearer realm="console"'
    if status == 503:
        resp.headers["Retry-After"] = "5"
    for key, value in (headers or {}).items():
        resp.headers[key] = value
    return resp


def service_error_response(error: ServiceError) -> Response:
    extra: dict[str, Any] = {}
    if isinstance(error, ValidationFailed):
        extra["errors"] = [{"field": e.field, "message": e.message} for e in error.errors]
    if isinstance(error, Conflict) and error.escalation is not None:
        from .schemas import escalation_json  # noqa: PLC0415 (schemas imports models only)

        extra["escalation"] = escalation_json(error.escalation)
    headers = {"Retry-After": str(error.retry_after)} if isinstance(error, TooManyRequests) else None
    return problem(error.status, error.title, error.detail, headers=headers, **extra)


def _wants_problem_json() -> bool:
    return request.path == "/api" or request.path.startswith("/api/") or request.path == "/healthz"


# What a database says when the schema is behind the code: not an outage, a missing
# `db upgrade` (SQLite raises these as OperationalError too).
_SCHEMA_MISSING = ("no such table", "no such column", "does not exist")


def _is_missing_schema(error: Exception) -> bool:
    if not isinstance(error, DBAPIError) or error.connection_invalidated:
        return False
    message = str(error.orig).lower()
    return any(marker in message for marker in _SCHEMA_MISSING) and (
        "relation" in message or "column" in message or "table" in message)


def _is_database_outage(error: Exception) -> bool:
    if _is_missing_schema(error):
        return False
    if isinstance(error, (OperationalError, PoolTimeoutError)):
        return True
    return isinstance(error, DBAPIError) and error.connection_invalidated


def _first_line(error: Exception) -> str:
    text = str(getattr(error, "orig", None) or error).strip()
    return text.splitlines()[0][:300] if text else error.__class__.__name__


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ServiceError)
    def handle_service_error(error: ServiceError):
        if _wants_problem_json():
            return service_error_response(error)
        headers = {"Retry-After": str(error.retry_after)} if isinstance(error, TooManyRequests) else {}
        return render_template("error.html", status=error.status, title=error.title,
                               detail=error.detail), error.status, headers

    @app.errorhandler(HTTPException)
    def handle_http_exception(error: HTTPException):
        status = error.code or 500
        title = error.name
        detail = error.description or title
        if status == 413:
            detail = "The request body is larger than 256 KiB."
        if _wants_problem_json():
            resp = problem(status, title, detail)
            valid_methods = getattr(error, "valid_methods", None)
            if status == 405 and valid_methods:
                resp.headers["Allow"] = ", ".join(valid_methods)
            return resp
        return render_template("error.html", status=status, title=title, detail=detail), status

    @app.errorhandler(Exception)
    def handle_unexpected(error: Exception):
        db.session.rollback()
        if _is_missing_schema(error):
            log.error("the database schema is behind the code (%s): run `flask --app console db upgrade`",
                      _first_line(error))
            status, title = 500, "Internal server error"
            detail = "The server's database is not set up for this version yet; the operator has been told."
        elif _is_database_outage(error):
            log.warning("database unavailable (%s: %s)", error.__class__.__name__, _first_line(error))
            status, title = 503, "Service unavailable"
            detail = "The database is not answering right now. Try again in a few seconds."
        else:
            log.exception("unhandled error on %s %s", request.method, one_line(request.path, 300))
            status, title = 500, "Internal server error"
            detail = "Something went wrong on our side; it has been logged."
        if _wants_problem_json():
            return problem(status, title, detail)
        resp = app.make_response((render_template("error.html", status=status, title=title, detail=detail), status))
        if status == 503:
            resp.headers["Retry-After"] = "5"
        return resp

"""The escalation console: where an autonomous coding agent asks its founder for help.

`create_app()` is the Flask application factory (`flask --app console ...`,
`gunicorn 'console:create_app()'`). Importing the package imports nothing else, so that
`console.client`, the agents' client, needs the standard library alone.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask


def create_app(test_config: dict[str, Any] | None = None) -> "Flask":
    from .app import create_app as factory  # noqa: PLC0415

    return factory(test_config)

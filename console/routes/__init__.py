"""Blueprints: api (JSON), stream (SSE), pages (the HTML console)."""

"""URLs for templates that print many of them: the inbox prints four per card, and
`url_for` (about 15 µs each) was a fifth of the card's time (bench/inbox_time.py).

`path_to(endpoint, **values)` asks `url_for` once per endpoint, with placeholders, and then
only puts the values in, quoted as werkzeug quotes a path segment. Outside a request (a
mail, a worker) it is `url_for` itself.
"""
from __future__ import annotations

from typing import Any
from urllib.parse import quote

from flask import current_app, has_request_context, request, url_for

PATH_SEGMENT_SAFE = "!$&'()*+,/:;=@"  # werkzeug.routing.BaseConverter.to_url's set


def path_to(endpoint: str, **values: Any) -> str:
    if not has_request_context():
        return url_for(endpoint, **values)
    templates = current_app.extensions.setdefault("console_path_templates", {})
    key = (endpoint, tuple(values), request.script_root)
    template = templates.get(key)
    if template is None:
        template = templates[key] = url_for(endpoint, **{name: f"__{name}__" for name in values})
    for name, value in values.items():
        template = template.replace(f"__{name}__", quote(str(value), safe=PATH_SEGMENT_SAFE), 1)
    return template

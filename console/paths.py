"""URLs for templates that print many of them: the inbox prints three per card, and
`url_for` (5–15 µs each) was a tenth of the card's time (bench/inbox_time.py).

`path_to(endpoint, **values)` asks `url_for` once per endpoint and script root, with
placeholders, and after that only puts the values in, quoted as werkzeug quotes a path
segment. Every app of this package has the same routes (console.app.create_app), so the
templates are kept per process. Outside a request (a mail, a worker) it is `url_for` itself.
"""
from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

from flask import has_request_context, request, url_for

PATH_SEGMENT_SAFE = "!$&'()*+,/:;=@"  # werkzeug.routing.BaseConverter.to_url's set
_NEEDS_NO_QUOTING = re.compile(r"[A-Za-z0-9._~-]+").fullmatch  # ids, uuids: most values
_templates: dict[tuple, str] = {}


def path_to(endpoint: str, **values: Any) -> str:
    if not has_request_context():
        return url_for(endpoint, **values)
    key = (endpoint, request.script_root, *values)
    template = _templates.get(key)
    if template is None:
        template = _templates[key] = url_for(endpoint, **{name: f"__{name}__" for name in values})
    for name, value in values.items():
        value = str(value)
        if not _NEEDS_NO_QUOTING(value):
            value = quote(value, safe=PATH_SEGMENT_SAFE)
        template = template.replace(f"__{name}__", value, 1)
    return template

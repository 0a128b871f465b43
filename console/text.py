"""Agent-written text on its way into a header, a log line or a one-line field (SPEC §16):
one line, no control character, bounded. A leaf: it imports nothing of the console."""
from __future__ import annotations

import re
from urllib.parse import urlsplit

# C0 and C1 controls, DEL, and the line and paragraph separators: what can end or forge a line.
CONTROL_OR_SEPARATOR = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def one_line(text: object, limit: int | None = None) -> str:
    """The text on one line: every control character, separator and run of white space is
    one space; cut to `limit` characters with an ellipsis."""
    line = " ".join(CONTROL_OR_SEPARATOR.sub(" ", str(text)).split())
    if limit is not None and len(line) > limit:
        line = line[:limit - 1] + "…"
    return line


def origin(url: object) -> str:
    """Only the scheme, host and port of a URL: what a log line may say of an operator's or a
    founder's URL (its path and query may be a secret)."""
    try:
        parts = urlsplit(str(url))
        port = parts.port
    except ValueError:
        return "(a URL that does not parse)"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return one_line(f"{parts.scheme}://{host}" + (f":{port}" if port else ""), 300)

"""One strict rule for numbers that arrive as text in headers and query strings."""
from __future__ import annotations

import re

_ASCII_DIGITS = re.compile(r"[0-9]{1,19}")
MAX_BIGINT = 2**63 - 1


def ascii_int(text: str, maximum: int = MAX_BIGINT) -> int | None:
    """The non-negative integer that `text` spells in ASCII digits, if it is at most
    `maximum`; None otherwise. (`str.isdigit` also takes "²" and "٣", which int() then
    refuses or reads as a number nobody typed.)"""
    if not _ASCII_DIGITS.fullmatch(text):
        return None
    value = int(text)
    return value if value <= maximum else None

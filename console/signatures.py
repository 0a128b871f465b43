"""Error grouping signatures.

``normalise_error_message`` strips the volatile parts of an error message
(ids, addresses, paths, numbers, quoted values, ...) so that occurrences of
the "same" error group together, Sentry-style.  ``error_signature`` turns a
(project, error type, message) triple into a stable grouping key.

Standard library only.  Every pattern is written so that its running time is
linear in the input length (no nested ambiguous quantifiers, token starts
gated by look-behinds, bounded repetition where a token has a natural maximum
length), because messages may be up to ~10,000 characters of hostile text.

Placeholders are ``<...>`` tokens.  Because a placeholder replaces what was
usually a run of word characters, the look-arounds below treat ``>`` (end of
a placeholder) and ``<`` (start of a placeholder) like word characters; this
keeps normalisation idempotent: ``normalise(normalise(x)) == normalise(x)``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re

__all__ = ["normalise_error_message", "error_signature", "PLACEHOLDERS"]

PLACEHOLDERS = (
    "<uuid>",
    "<email>",
    "<url>",
    "<ip>",
    "<datetime>",
    "<hex>",
    "<path>",
    "<line>",
    "<str>",
    "<int>",
    "<float>",
)

_HEX = "[0-9a-fA-F]"

# --- UUIDs --------------------------------------------------------------
_UUID_RE = re.compile(
    rf"(?<![\w>-]){_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}(?![\w<-])"
)

# --- e-mail addresses ---------------------------------------------------
# The local part may only start where the previous character could not have
# been part of it, so each run is scanned once.
_EMAIL_RE = re.compile(r"(?<![\w.+>-])[\w.+-]+@[\w-]+(?:\.[\w-]+)+")

# --- URLs -------------------------------------------------------------------
# Bounded scheme; the body runs to the next whitespace/quote but must not end
# with sentence punctuation or a closing bracket.
# Placeholders produced by earlier steps may appear inside a URL, but no
# other "<...>" text (that keeps the step idempotent).
_URL_RE = re.compile(
    r"(?<![\w>])[A-Za-z][A-Za-z0-9+.-]{0,31}://"
    r"(?:[^\s\"'`<>]|<(?:uuid|email)>)*"
    r"(?:[^\s\"'`<>.,;:!?)\]}]|<(?:uuid|email)>)"
)

# --- IP addresses -----------------------------------------------------------
_IPV4_RE = re.compile(
    r"(?<![\w.>])[0-9]{1,3}(?:\.[0-9]{1,3}){3}(?::[0-9]{1,5})?(?![\w<]|\.[0-9<])"
)
# Candidate IPv6 tokens (bounded, so linear); validated with ``ipaddress`` so
# that times like 12:30:45 or MAC-like strings are left alone.
_IPV6_CANDIDATE_RE = re.compile(
    rf"(?<![\w:.>])(?:{_HEX}{{0,4}}:){{2,7}}"
    rf"(?:[0-9]{{1,3}}(?:\.[0-9]{{1,3}}){{3}}|{_HEX}{{1,4}})?"
    rf"(?![\w:<]|\.[0-9<])"
)

# --- dates and times --------------------------------------------------------
_TZ = r"(?:Z|[+-][0-9]{2}(?::?[0-9]{2})?)?"
_DATETIME_RE = re.compile(
    r"(?<![\w>])(?:"
    # ISO date, optionally followed by a time
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
    rf"(?:[T ][0-9]{{2}}:[0-9]{{2}}(?::[0-9]{{2}}(?:[.,][0-9]{{1,9}})?)?{_TZ})?"
    r"|"
    # bare time of day, HH:MM:SS[.fff][tz]
    rf"[0-9]{{1,2}}:[0-9]{{2}}:[0-9]{{2}}(?:[.,][0-9]{{1,9}})?{_TZ}"
    r")(?![\w<])"
)

# --- hex strings ------------------------------------------------------------
_HEX_PREFIXED_RE = re.compile(rf"(?<![\w>])0[xX]{_HEX}+")
# >= 8 hex digits with at least one digit (so English words such as
# "deadbeef" or "facade" survive) and at least one letter (so a long
# decimal number is an <int> like any other number).
_HEX_RUN_RE = re.compile(
    rf"(?<![\w>])(?={_HEX}*[0-9])(?={_HEX}*[a-fA-F]){_HEX}{{8,}}(?![\w<])"
)

# --- file paths -------------------------------------------------------------
# A path segment may contain placeholders of the earlier steps
# ("/jobs/<uuid>/log") but no other "<...>" text.
_EARLY_PLACEHOLDER = r"<(?:uuid|email|url|ip|datetime|hex)>"
_LINE_SUFFIX = r"(?::[0-9]+){0,2}"
_UNIX_PATH_RE = re.compile(
    rf"(?<![\w.~>/-])(?:~|\.\.?)?(?:/(?:[\w.@%+~-]|{_EARLY_PLACEHOLDER})+)+/?{_LINE_SUFFIX}"
)
_WINDOWS_PATH_RE = re.compile(
    rf"(?<![\w>])[A-Za-z]:(?:[\\/](?:[\w.@%+~$-]|{_EARLY_PLACEHOLDER})*)+{_LINE_SUFFIX}"
)

# --- line / column numbers --------------------------------------------------
_LINE_KEYWORD_RE = re.compile(
    r"(?i)\b(line|lineno|ln|column|col|row|pos|position|offset)( ?[:=#]? ?)[0-9]+(?![\w<])"
)
# "name.ext:LINE[:COL]" for file names that are not absolute paths.
_FILE_LINE_RE = re.compile(r"(\.[A-Za-z][A-Za-z0-9]{0,9}):[0-9]+(?::[0-9]+)?(?![\w<:])")

# --- quoted strings ---------------------------------------------------------
# A single quote only opens after a non-word character, so apostrophes
# ("can't", "user's") are not mistaken for quotes; quotes glued to another
# quote ("''x''") are left alone too.  The content may not contain a <str>
# placeholder (which could only come from re-normalising).  Both rules keep
# the step idempotent.  An escaped quote (after a backslash) never opens a
# string, so an unterminated string is scanned once, not once per quote.
_SINGLE_QUOTED_RE = re.compile(r"(?<![\w>'\\])'(?:[^'\\\n<]|\\.|<(?!str>))*'(?![\w<'])")
_DOUBLE_QUOTED_RE = re.compile(r'(?<!\\)"(?:[^"\\\n<]|\\.|<(?!str>))*"')

# --- numbers ----------------------------------------------------------------
# Integers and floats (incl. dotted versions and exponents), optionally
# followed by a unit made of letters ("12ms", "3rd", "100%").
_NUMBER_RE = re.compile(
    r"(?<![\w>])[0-9]+(?P<frac>(?:\.[0-9]+)+)?(?P<exp>[eE][-+]?[0-9]+)?"
    r"(?=[A-Za-z]*(?![\w<]))"
)


def _ipv6_sub(match: re.Match[str]) -> str:
    text = match.group()
    if not any(c.isdigit() for c in text):
        # A bare "::" or C++/Rust-style "abc::def": real addresses (almost)
        # always contain a digit.
        return text
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return text
    return "<ip>"


def _number_sub(match: re.Match[str]) -> str:
    if match.group("frac") or match.group("exp"):
        return "<float>"
    return "<int>"


def _collapse_whitespace(text: str) -> str:
    return " ".join(text.split())


def normalise_error_message(message: str) -> str:
    """Replace the volatile parts of *message* with placeholders.

    Order: UUIDs, e-mail addresses, URLs, IP addresses, dates/times, hex
    strings, file paths, line/column numbers, quoted strings, numbers; then
    white space is collapsed.  A message with nothing volatile in it is
    returned unchanged (apart from white-space collapsing).
    """
    # Collapsing first as well keeps every pattern working on single spaces
    # (e.g. a quoted string broken by a newline) and makes the result
    # idempotent.
    text = _collapse_whitespace(message)
    text = _UUID_RE.sub("<uuid>", text)
    text = _EMAIL_RE.sub("<email>", text)
    text = _URL_RE.sub("<url>", text)
    text = _IPV4_RE.sub("<ip>", text)
    text = _IPV6_CANDIDATE_RE.sub(_ipv6_sub, text)
    text = _DATETIME_RE.sub("<datetime>", text)
    text = _HEX_PREFIXED_RE.sub("<hex>", text)
    text = _HEX_RUN_RE.sub("<hex>", text)
    text = _UNIX_PATH_RE.sub("<path>", text)
    text = _WINDOWS_PATH_RE.sub("<path>", text)
    text = _LINE_KEYWORD_RE.sub(r"\1\2<int>", text)
    text = _FILE_LINE_RE.sub(r"\1:<line>", text)
    text = _SINGLE_QUOTED_RE.sub("<str>", text)
    text = _DOUBLE_QUOTED_RE.sub("<str>", text)
    text = _NUMBER_RE.sub(_number_sub, text)
    return _collapse_whitespace(text)


def error_signature(project_id: str, error_type: str, error_message: str) -> str:
    """Return ``f"{project_id}:{error_type}:{hash8}"``.

    ``hash8`` is the first 8 hex digits of the SHA-256 of the normalised
    message, so it depends on the message only.
    """
    normalised = normalise_error_message(error_message)
    # "surrogatepass" is identical to plain UTF-8 for every valid string and
    # keeps a lone surrogate (possible via JSON "\ud800") from raising.
    hash8 = hashlib.sha256(normalised.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{project_id}:{error_type}:{hash8}"

import hashlib
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from console.signatures import error_signature, normalise_error_message

SAME_GROUP = [
    ("KeyError: 'user_42' at /srv/app/x.py:17", "KeyError: 'user_97' at /srv/app/x.py:31"),
    ("retry budget exhausted after 3 attempts", "retry budget exhausted after 12 attempts"),
    ("request took 1.5 seconds", "request took 27.25 seconds"),
    ('unknown column "email_address" in table', 'unknown column "first_name" in table'),
    ("no such template 'welcome' here", "no such template 'reset_password' here"),
    (
        "job 3f2b8c1e-9d4a-4b6e-8f1a-2c3d4e5f6a7b failed",
        "job 0c9e7d52-11aa-4f0b-b7e3-9a8b7c6d5e4f failed",
    ),
    (
        "cannot open /srv/app/models/user.py for reading",
        "cannot open /home/dev/project/main.py for reading",
    ),
    (
        "cannot open C:\\Users\\dev\\app\\main.py for reading",
        "cannot open C:\\build\\src\\util.py for reading",
    ),
    ("no account for alice@example.com", "no account for bob.smith@mail.example.org"),
    ("GET https://api.example.com/v1/users?id=7 failed", "GET http://example.org/health failed"),
    ("connect to 203.0.113.7 refused", "connect to 198.51.100.23 refused"),
    (
        "connect to 2001:0db8:85a3:0000:0000:8a2e:0370:7334 refused",
        "connect to fe80:0000:0000:0000:0202:b3ff:fe1e:8329 refused",
    ),
    ("connect to ::1 refused", "connect to fe80::1 refused"),
    ("lock held since 2024-01-02T03:04:05Z", "lock held since 2025-11-26T14:30:00.123456+00:00"),
    ("segfault at address 0x7f3a2b1c", "segfault at address 0xdeadbeef00"),
    ("commit a1b2c3d4e5f60718 not found", "commit 0f9e8d7c6b5a4321 not found"),
    ("SyntaxError at line 12, column 4", "SyntaxError at line 7, column 19"),
    ("the  build\tstep   failed", "the build step failed"),
]

DIFFERENT_GROUPS = [
    ("connection refused by the database", "permission denied by the database"),
    ("KeyError: 'user_42' at /srv/app/x.py:17", "missing attribute 'user_42' at /srv/app/x.py:17"),
    ("the build step failed", "the build step failed again"),
    ("token ghijklmnopqrstuv rejected", "token ghijklmnopqrstuw rejected"),
    ("value deadbeef rejected", "value cafebabe rejected"),
]

ADVERSARIAL = ["/a" * 5000, "0x" * 5000, "'" * 5000, "a@" * 5000, "1." * 5000, ":" * 5000]

# Fragments that exercise every rule (and their boundaries) when glued together.
FRAGMENTS = st.sampled_from(
    [
        " ", "\t", "\n", "'", '"', "\\", "/", ":", ".", "-", "@", "<", ">", "_",
        "a", "Z", "x", "e", "0", "7", "42", "1.5", "0x1f", "deadbeef", "a1b2c3d4e5",
        "/srv/x.py", "C:\\a", "line ", "col", "::1", "fe80::", "12:30:45",
        "2024-01-02", "T03:04:05Z", "http://h.io/p", "a@b.co", "10.0.0.1",
        "3f2b8c1e-9d4a-4b6e-8f1a-2c3d4e5f6a7b", "<int>", "<str>", "can't",
    ]
)
MESSAGES = st.one_of(st.text(max_size=80), st.lists(FRAGMENTS, max_size=25).map("".join))


def sha8(text):
    return hashlib.sha256(text.encode()).hexdigest()[:8]


@pytest.mark.parametrize(("first", "second"), SAME_GROUP)
def test_volatile_parts_do_not_change_the_normalised_message(first, second):
    assert normalise_error_message(first) == normalise_error_message(second)
    assert error_signature("p", "E", first) == error_signature("p", "E", second)


@pytest.mark.parametrize(("first", "second"), DIFFERENT_GROUPS)
def test_messages_differing_in_words_get_different_signatures(first, second):
    assert normalise_error_message(first) != normalise_error_message(second)
    assert error_signature("p", "E", first) != error_signature("p", "E", second)


def test_message_with_nothing_to_normalise_is_unchanged_and_hashes_as_itself():
    message = "the build step failed"
    assert normalise_error_message(message) == message
    assert error_signature("proj", "BuildError", message) == f"proj:BuildError:{sha8(message)}"


def test_letter_only_words_survive_including_hex_looking_ones():
    message = "Deadbeef ghijklmnopqrstuv facade Cafebabe"
    assert normalise_error_message(message) == message


def test_placeholders_replace_each_kind_of_volatile_value():
    normalised = normalise_error_message(
        "job 3f2b8c1e-9d4a-4b6e-8f1a-2c3d4e5f6a7b for a@b.io via https://x.io/a at 10.0.0.1 "
        "on 2024-01-02 ptr 0xff in /srv/x.py:3 line 9 got 'v' after 2 tries and 1.5 s"
    )
    assert normalised == (
        "job <uuid> for <email> via <url> at <ip> on <datetime> ptr <hex> in <path> "
        "line <int> got <str> after <int> tries and <float> s"
    )


def test_times_and_apostrophes_are_handled_without_mangling_words():
    assert normalise_error_message("at 12:30:45 it can't start") == "at <datetime> it can't start"
    assert normalise_error_message("see x.py:17:3") == "see x.py:<line>"


def test_signature_has_project_type_and_eight_hex_digits():
    signature = error_signature("proj-1", "ValueError", "bad value 3")
    assert re.fullmatch(r"proj-1:ValueError:[0-9a-f]{8}", signature)


def test_signature_hash_depends_only_on_the_message():
    first = error_signature("a", "KeyError", "missing key 'x'")
    second = error_signature("b", "TypeError", "missing key 'y'")
    assert first.rsplit(":", 1)[1] == second.rsplit(":", 1)[1]
    assert first.rsplit(":", 1)[1] == sha8(normalise_error_message("missing key 'x'"))


def test_lone_surrogate_in_message_does_not_crash():
    assert re.fullmatch(r"p:E:[0-9a-f]{8}", error_signature("p", "E", "bad \ud800 char"))


@pytest.mark.parametrize("message", ADVERSARIAL, ids=lambda m: repr(m[:4]))
def test_adversarial_inputs_complete(message):
    assert isinstance(normalise_error_message(message), str)
    assert error_signature("p", "E", message)


@settings(max_examples=200, deadline=None)
@given(MESSAGES)
def test_normalisation_is_idempotent(message):
    once = normalise_error_message(message)
    assert normalise_error_message(once) == once


@settings(max_examples=200, deadline=None)
@given(MESSAGES)
def test_result_has_collapsed_and_stripped_whitespace(message):
    result = normalise_error_message(message)
    assert result == result.strip()
    assert not any(a.isspace() and b.isspace() for a, b in zip(result, result[1:]))

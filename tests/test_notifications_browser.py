"""Notifications in a real browser (tests/test_browser.py's style: Playwright driving the system
Chromium against the app served in a thread, on SQLite): the settings form, and following an
e-mail's option link to the card with that option chosen.

Without CONSOLE_SMTP_URL the worker writes each message as an .eml file; the test reads the
link out of the file the worker wrote, as a founder would out of their mailbox.
"""
from __future__ import annotations

import email
import email.policy
import re

import pytest

from test_browser import Console, browser, card, new_context, page, submit  # noqa: F401  (fixtures)
from playwright.sync_api import expect  # noqa: E402  (test_browser skips the module without Chromium)

from conftest import ThreadedServer, dispose, make_app, migrate

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def mail_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("mail")


@pytest.fixture(scope="module")
def sqlite_server(tmp_path_factory, mail_dir):
    """The app on a fresh SQLite file (its mail written into mail_dir), served in a thread."""
    url = f"sqlite:///{tmp_path_factory.mktemp('notify-browser') / 'browser.db'}"
    migrate(url)
    app = make_app(url, MAIL_DIR=str(mail_dir), SMTP_URL=None)
    server = ThreadedServer(app)
    app.config["BASE_URL"] = server.url  # the links in messages lead to this server
    with server:
        yield server
    dispose(app)


@pytest.fixture
def console(sqlite_server) -> Console:
    return Console(sqlite_server.url)


def test_the_settings_form_saves_in_place_and_keeps_what_was_saved(page, console):
    console.sign_in(page)
    page.get_by_role("link", name="Settings").click()
    expect(page.get_by_role("heading", name="Notifications")).to_be_visible()
    expect(page.locator("#deliveries-empty")).to_be_visible()
    page.wait_for_load_state("load")
    page.evaluate("window.__marker = 1")

    page.get_by_label("Address").fill("maya@example.com")
    page.get_by_label("Digest").check()
    page.get_by_label("Time zone").fill("Europe/Berlin")
    page.locator("#settings-quiet").check()
    page.get_by_label("Quiet from").fill("22:30")
    page.get_by_label("Quiet until").fill("07:15")
    page.get_by_role("button", name="Save notification settings").click()

    expect(page.locator("#settings-notice")).to_have_text("Saved.")
    assert page.evaluate("window.__marker") == 1, "the page was reloaded"
    status, stored = console.request("GET", "/api/me/settings", token=console.founder_token())
    assert status == 200 and stored == {"email": "maya@example.com", "email_mode": "digest",
                                        "slack_webhook_url": None, "slack_user_id": None,
                                        "timezone": "Europe/Berlin", "quiet_hours": {"start": "22:30", "end": "07:15"}}

    page.get_by_label("Time zone").fill("Atlantis/Capital")
    page.get_by_role("button", name="Save notification settings").click()
    expect(page.locator("#settings-timezone-error")).to_contain_text("not an IANA time zone name")
    expect(page.get_by_label("Time zone")).to_have_attribute("aria-invalid", "true")

    page.reload()
    expect(page.get_by_label("Address")).to_have_value("maya@example.com")
    expect(page.get_by_label("Digest")).to_be_checked()
    expect(page.get_by_label("Time zone")).to_have_value("Europe/Berlin")
    expect(page.get_by_label("Quiet from")).to_have_value("22:30")


def test_an_emailed_option_link_decides_its_question_without_signing_in(new_context, console, sqlite_server, mail_dir):
    from console.worker import Worker

    status, _ = console.request("PUT", "/api/me/settings", {"email": f"{console.founder_id}@example.com"},
                                token=console.founder_token())
    assert status == 200
    escalation = console.escalate(plain_english_problem="The newsletter signup cannot reach the mail provider.")
    Worker(sqlite_server.server.app).run_once()
    [written] = [path for path in mail_dir.glob("*.eml") if console.founder_id in path.read_text()]
    message = email.message_from_bytes(written.read_bytes(), policy=email.policy.default)
    text = message.get_body(preferencelist=("plain",)).get_content()
    link = re.search(r"\* Skip this feature - .*\n\s+(\S+)", text).group(1)

    context = new_context()  # a browser that is not signed in, as a mail app opens links
    page = context.new_page()
    page.goto(link)
    expect(page.get_by_role("heading", level=1)).to_have_text("Answer this question")
    expect(page.locator("main")).to_contain_text("The newsletter signup cannot reach the mail provider.")
    assert console.read(escalation["id"])["status"] == "pending"  # a link never decides by itself
    page.get_by_label("Guidance for the agent").fill("Try again tomorrow.")
    page.get_by_role("button", name="Send “Skip this feature”").click()

    expect(page.locator("#email-decision-done")).to_have_text("You chose “Skip this feature”. The agent has your answer.")
    record = console.read(escalation["id"])
    assert (record["founder_decision"], record["founder_guidance"], record["decided_via"]) == (
        "skip_feature", "Try again tomorrow.", "email")
    assert context.cookies() == []  # no session was made
    page.goto(sqlite_server.url + "/settings")
    expect(page).to_have_url(re.compile(r"/login\?next="))  # and nobody was signed in

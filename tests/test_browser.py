"""The console in a real browser (SPEC §7, §8): Playwright driving the system Chromium
against the app served in a thread, on SQLite only (the database layer has its own tests
on both backends; here the subject is the page).

Data is created through the real agent API and the founder signs in through the real
/login form. Every test uses its own founder and job, so the tests share one server.
"""
from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest

CHROMIUM = "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        raise RuntimeError(f"{CHROMIUM} is missing: CI must run the browser tests (apt-get install chromium)")
    pytest.skip(f"no system Chromium at {CHROMIUM}", allow_module_level=True)

from playwright.sync_api import Browser, BrowserContext, Page, Route, expect, sync_playwright  # noqa: E402

from conftest import AGENT_TOKEN, DEFAULT_OPTIONS, ThreadedServer, dispose, make_app, migrate, mint_jwt  # noqa: E402

pytestmark = pytest.mark.browser

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
WAIT_MS = 10_000  # generous: CI runs two test workers and Chromium on two cores
SCREENSHOTS = Path(__file__).resolve().parent / "screenshots"

expect.set_options(timeout=WAIT_MS)


# --- fixtures -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sqlite_server(tmp_path_factory):
    """The app on a fresh SQLite file, served by werkzeug in a thread."""
    url = f"sqlite:///{tmp_path_factory.mktemp('browser') / 'browser.db'}"
    migrate(url)
    app = make_app(url)
    with ThreadedServer(app) as server:
        yield server
    server.server.server_close()
    dispose(app)


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def new_context(browser: Browser, sqlite_server):
    """Opens browser contexts on the test server (closed after the test); `page` uses one."""
    opened: list[BrowserContext] = []

    def open_context(**options) -> BrowserContext:
        context = browser.new_context(base_url=sqlite_server.url, **options)
        context.set_default_timeout(WAIT_MS)
        opened.append(context)
        return context

    yield open_context
    for context in opened:
        context.close()


@pytest.fixture
def page(new_context) -> Page:
    return new_context().new_page()


def _letters() -> str:
    return uuid.uuid4().hex.translate(str.maketrans("0123456789", "ghijklmnop"))


@dataclass
class Console:
    """One founder's world: talks to the API as the agent and as the founder, and signs in."""
    base_url: str
    founder_id: str = field(default_factory=lambda: f"founder-{uuid.uuid4().hex[:12]}")
    job_id: str = field(default_factory=lambda: f"job-{uuid.uuid4().hex[:12]}")
    project_id: str = "bakery-shop"

    def request(self, method: str, path: str, body: dict | None = None, token: str = AGENT_TOKEN) -> tuple[int, dict]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base_url + path, data=data, method=method,
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as error:
            with error:
                return error.code, json.loads(error.read() or b"null")

    def escalate(self, job_id: str | None = None, **fields) -> dict:
        body = {
            "session_id": f"sess-{uuid.uuid4().hex[:8]}", "project_id": self.project_id, "founder_id": self.founder_id,
            "error_type": "KeyError",
            "plain_english_problem": "I could not find the user record the signup page needs.",
            "recommended_action": "Build a simpler version without the lookup.",
            "attempts_summary": ["Retried with a fresh cache", "Rebuilt the user index"],
            "options": [dict(option) for option in DEFAULT_OPTIONS],
            # Letters only: the signature normalises digits and ids away, and each call is a new question.
            "error_message": None if "error_signature" in fields else f"KeyError: no {_letters()} in the user index",
            **fields,
        }
        body = {key: value for key, value in body.items() if value is not None}
        status, record = self.request("POST", f"/api/jobs/{job_id or self.job_id}/escalations", body)
        assert status in (200, 201), record
        return record

    def founder_token(self) -> str:
        return mint_jwt(self.founder_id)

    def resolve(self, escalation_id: str, decision: str, guidance: str | None = None) -> dict:
        status, record = self.request("POST", f"/api/escalations/{escalation_id}/resolve",
                                      {"decision": decision, "guidance": guidance}, token=self.founder_token())
        assert status == 200, record
        return record

    def read(self, escalation_id: str) -> dict:
        status, record = self.request("GET", f"/api/escalations/{escalation_id}")
        assert status == 200, record
        return record

    def post_event(self, job_id: str | None = None, **payload) -> dict:
        status, record = self.request("POST", f"/api/jobs/{job_id or self.job_id}/events",
                                      {"founder_id": self.founder_id, **payload})
        assert status == 201, record
        return record

    def sign_in(self, page: Page) -> None:
        page.goto("/login")
        page.get_by_label("Access token").fill(self.founder_token())
        page.get_by_role("button", name="Sign in").click()
        expect(page).to_have_url(self.base_url + "/")
        # The URL changes when the inbox starts to arrive; htmx (a deferred script) takes over
        # the forms only by the load event. A click before that posts the plain form instead.
        page.wait_for_load_state("load")


@pytest.fixture
def console(sqlite_server) -> Console:
    return Console(sqlite_server.url)


def card(page: Page, escalation: dict):
    return page.locator(f"#escalation-{escalation['id']}")


def option_label(card_locator, label: str):
    return card_locator.locator("label", has_text=label)


def submit(card_locator):
    return card_locator.get_by_role("button", name="Send decision")


def focus_is_inside(page: Page, element_id: str) -> bool:
    return page.evaluate("id => { const el = document.getElementById(id);"
                         " return !!el && el.contains(document.activeElement); }", element_id)


# --- signing in and the inbox ---------------------------------------------------------------------

def test_sign_in_shows_the_pending_card_with_a_count(page, console):
    first = console.escalate()
    second = console.escalate(plain_english_problem="The newsletter signup form cannot reach the mail provider.")

    console.sign_in(page)

    expect(page.get_by_role("heading", level=1)).to_contain_text("Waiting for you")
    expect(page.locator("#pending-count")).to_have_text(re.compile(r"^\s*2\b"))
    for escalation in (first, second):
        expect(card(page, escalation)).to_have_attribute("data-status", "pending")
        expect(card(page, escalation)).to_be_visible()
    expect(card(page, second)).to_contain_text("The newsletter signup form cannot reach the mail provider.")
    expect(page.locator("#pending-empty")).to_be_hidden()
    # The newest question comes first.
    first_card_id = page.locator("#pending-cards > article").first.get_attribute("id")
    assert first_card_id == f"escalation-{second['id']}"


def test_resolving_from_the_inbox_swaps_the_card_in_place(page, console):
    escalation = console.escalate()
    console.sign_in(page)
    the_card = card(page, escalation)
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url) if frame == page.main_frame else None)
    page.evaluate("window.__marker = 1")
    url_before = page.url

    option_label(the_card, "Skip this feature").click()
    expect(the_card.locator('input[value="skip_feature"]')).to_be_checked()
    submit(the_card).click()

    expect(the_card).to_have_attribute("data-status", "resolved")
    expect(the_card.locator(".decision__choice")).to_have_text("Skip this feature")
    expect(the_card.locator(".status")).to_have_text("Decided")
    expect(the_card.locator("form")).to_have_count(0)
    assert page.evaluate("window.__marker") == 1, "the page was reloaded"
    assert page.url == url_before
    assert navigations == []
    record = console.read(escalation["id"])
    assert record["status"] == "resolved"
    assert record["founder_decision"] == "skip_feature"
    assert record["founder_guidance"] is None


def test_guidance_required_shows_the_error_in_the_card_then_resolves(page, console):
    escalation = console.escalate()
    console.sign_in(page)
    the_card = card(page, escalation)
    card_id = f"escalation-{escalation['id']}"
    expect(the_card.locator(".guidance__required")).to_be_hidden()
    expect(the_card.locator(".guidance__optional")).to_be_visible()

    option_label(the_card, "Give me specific guidance").click()
    expect(the_card.locator(".guidance__required")).to_be_visible()  # the label says so before submitting
    expect(the_card.locator(".guidance__optional")).to_be_hidden()
    submit(the_card).click()

    error = the_card.locator(".guidance .field-error")
    expect(error).to_be_visible()
    expect(error).not_to_be_empty()
    expect(the_card).to_have_attribute("data-status", "pending")
    textarea = the_card.get_by_label(re.compile("Guidance for the agent"))
    expect(textarea).to_have_attribute("aria-invalid", "true")
    expect(textarea).to_have_attribute("aria-describedby", f"{card_id}-guidance-error")
    expect(the_card.locator('input[value="provide_guidance"]')).to_be_checked()
    expect(the_card.locator(".guidance__required")).to_be_visible()
    page.wait_for_function("id => document.getElementById(id).contains(document.activeElement)", arg=card_id,
                           timeout=WAIT_MS)
    assert console.read(escalation["id"])["status"] == "pending"

    textarea.fill("Use the Postgres users table, not the cache.")
    submit(the_card).click()

    expect(the_card).to_have_attribute("data-status", "resolved")
    expect(the_card.locator(".decision__choice")).to_have_text("Give me specific guidance")
    expect(the_card.locator(".decision__guidance")).to_have_text("Use the Postgres users table, not the cache.")
    record = console.read(escalation["id"])
    assert (record["founder_decision"], record["founder_guidance"]) == (
        "provide_guidance", "Use the Postgres users table, not the cache.")


def test_a_decision_made_elsewhere_shows_the_already_decided_notice(page, console):
    escalation = console.escalate()
    console.sign_in(page)
    page.goto(f"/escalations/{escalation['id']}")
    the_card = card(page, escalation)
    option_label(the_card, "Skip this feature").click()

    console.resolve(escalation["id"], "simpler_version")  # in another tab, say
    submit(the_card).click()

    expect(the_card).to_have_attribute("data-status", "resolved")
    notice = the_card.locator(".notice")
    expect(notice).to_be_visible()
    expect(notice).to_contain_text("already decided")
    expect(notice).to_have_attribute("role", "status")
    expect(the_card.locator(".decision__choice")).to_have_text("Try a simpler version")
    page.wait_for_function("id => document.getElementById(id).contains(document.activeElement)",
                           arg=f"escalation-{escalation['id']}", timeout=WAIT_MS)
    assert console.read(escalation["id"])["founder_decision"] == "simpler_version"


def test_keyboard_only_resolve_with_visible_focus(page, console):
    escalation = console.escalate()
    console.sign_in(page)
    page.goto(f"/escalations/{escalation['id']}")
    the_card = card(page, escalation)
    first_radio = the_card.locator('input[name="decision"]').first

    for _ in range(25):
        page.keyboard.press("Tab")
        if first_radio.evaluate("el => el === document.activeElement"):
            break
    else:
        pytest.fail("Tab never reached the first option")
    outline = page.evaluate("""() => {
        const radio = document.activeElement;
        const label = document.querySelector(`label[for="${radio.id}"]`);
        return [radio, label].map(el => { const s = getComputedStyle(el);
            return {style: s.outlineStyle, width: parseFloat(s.outlineWidth)}; });
    }""")
    assert any(o["style"] != "none" and o["width"] >= 2 for o in outline), outline

    page.keyboard.press("ArrowDown")  # moves to, and selects, the next option
    expect(the_card.locator('input[value="simpler_version"]')).to_be_checked()
    expect(the_card.locator('input[value="simpler_version"]')).to_be_focused()

    button = submit(the_card)
    for _ in range(5):
        page.keyboard.press("Tab")
        if button.evaluate("el => el === document.activeElement"):
            break
    else:
        pytest.fail("Tab never reached the submit button")
    assert button.evaluate("el => getComputedStyle(el).outlineStyle") != "none"
    page.keyboard.press("Enter")

    expect(the_card).to_have_attribute("data-status", "resolved")
    expect(the_card.locator(".decision__choice")).to_have_text("Try a simpler version")
    assert console.read(escalation["id"])["founder_decision"] == "simpler_version"


def test_without_javascript_the_form_posts_and_redirects(new_context, console):
    page = new_context(java_script_enabled=False).new_page()
    escalation = console.escalate()
    console.sign_in(page)
    the_card = card(page, escalation)

    option_label(the_card, "Try a simpler version").click()
    submit(the_card).click()

    expect(page).to_have_url(re.compile(rf"/escalations/{escalation['id']}$"))
    expect(the_card).to_have_attribute("data-status", "resolved")
    expect(the_card.locator(".decision__choice")).to_have_text("Try a simpler version")
    assert console.read(escalation["id"])["founder_decision"] == "simpler_version"


def test_without_javascript_a_missing_guidance_shows_the_page_with_the_error(new_context, console):
    page = new_context(java_script_enabled=False).new_page()
    escalation = console.escalate()
    console.sign_in(page)
    the_card = card(page, escalation)

    option_label(the_card, "Give me specific guidance").click()
    submit(the_card).click()

    expect(the_card.locator(".guidance .field-error")).to_be_visible()
    expect(the_card.locator('input[value="provide_guidance"]')).to_be_checked()
    # The pure-CSS fallback marks the guidance as required without any script.
    expect(the_card.locator(".guidance__required")).to_be_visible()
    expect(the_card).to_have_attribute("data-status", "pending")


# --- safety -----------------------------------------------------------------------------------------

XSS = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'


def test_agent_markup_is_rendered_as_inert_text(page, console):
    escalation = console.escalate(
        plain_english_problem=f"Problem {XSS}", recommended_action=f"Recommend {XSS}", attempts_summary=[XSS],
        error_type="<b>Boom</b>",
        options=[{"value": "x", "label": f"Label {XSS}", "description": XSS}])
    console.sign_in(page)
    for path in ("/", "/?view=compact", "/?view=full", f"/escalations/{escalation['id']}", f"/jobs/{console.job_id}"):
        page.goto(path)
        the_card = card(page, escalation)
        expect(the_card).to_contain_text("<script>window.__xss=2</script>")
        expect(the_card.locator(".card__title")).to_have_text(f"Problem {XSS}")
        assert the_card.locator("img, script, b").count() == 0
        assert page.evaluate("typeof window.__xss") == "undefined"
    # The timeline line quotes the problem, too.
    expect(page.locator("#timeline")).to_contain_text(XSS)
    assert page.locator("#timeline img, #timeline script").count() == 0

    # A card pushed live goes through the same partial.
    page.goto("/")
    live = console.escalate(plain_english_problem=f"Live {XSS}")
    expect(card(page, live)).to_contain_text(f"Live {XSS}")
    assert card(page, live).locator("img, script").count() == 0
    assert page.evaluate("typeof window.__xss") == "undefined"


def test_no_request_leaves_the_local_server(page, console):
    escalation = console.escalate()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))

    console.sign_in(page)
    the_card = card(page, escalation)
    option_label(the_card, "Skip this feature").click()
    submit(the_card).click()
    expect(the_card).to_have_attribute("data-status", "resolved")
    page.goto(f"/jobs/{console.job_id}")
    expect(page.locator("#timeline li")).not_to_have_count(0)

    assert requested, "no request was recorded"
    strangers = [url for url in requested
                 if not url.startswith("data:") and urlsplit(url).hostname != "127.0.0.1"]
    assert strangers == []
    assert any(urlsplit(url).path.endswith(".css") for url in requested)


def test_the_submit_button_is_disabled_while_the_decision_is_in_flight(page, console):
    escalation = console.escalate()
    console.sign_in(page)
    the_card = card(page, escalation)
    posts: list[str] = []
    page.on("request", lambda request: posts.append(request.url)
            if request.method == "POST" and request.url.endswith("/resolve") else None)
    held: list[Route] = []
    page.route("**/escalations/*/resolve", lambda route: held.append(route))  # hold the request: the server is "slow"

    option_label(the_card, "Skip this feature").click()
    button = submit(the_card)
    button.click()
    expect(button).to_be_disabled()
    button.click(force=True)  # an impatient second click on the disabled button
    page.wait_for_timeout(300)
    expect(button).to_be_disabled()
    assert len(held) == 1
    assert the_card.get_attribute("data-status") == "pending"

    held[0].continue_()
    expect(the_card).to_have_attribute("data-status", "resolved")
    assert len(posts) == 1


# --- live updates (SPEC §7) ----------------------------------------------------------------------------

def test_the_job_page_updates_live(page, console):
    first = console.escalate()
    console.sign_in(page)
    page.goto(f"/jobs/{console.job_id}")
    timeline = page.locator("#timeline li")
    expect(timeline).to_have_count(1)
    expect(page.locator("#pending-count")).to_have_text(re.compile(r"^\s*1\b"))

    second = console.escalate(plain_english_problem="The image uploader times out on files over 5 MB.")
    expect(card(page, second)).to_be_visible()
    expect(card(page, second)).to_have_attribute("data-status", "pending")
    expect(page.locator("#pending-count")).to_have_text(re.compile(r"^\s*2\b"))
    expect(timeline).to_have_count(2)

    console.resolve(first["id"], "skip_feature")
    expect(card(page, first)).to_have_attribute("data-status", "resolved")
    expect(card(page, first).locator(".decision__choice")).to_have_text("Skip this feature")
    expect(timeline).to_have_count(3)
    expect(timeline.last).to_contain_text("You decided: Skip this feature")
    expect(page.locator("#pending-count")).to_have_text(re.compile(r"^\s*1\b"))

    console.post_event(type="agent.retrying", attempt=2, error_type="KeyError")
    expect(timeline).to_have_count(4)
    expect(timeline.last).to_contain_text("Retrying (attempt 2) after KeyError")
    expect(timeline.last).to_have_class(re.compile(r"\bevent--agent-retrying\b"))
    # Each card exactly once, however the stream delivered it.
    expect(page.locator("article.card")).to_have_count(2)


def test_the_inbox_updates_live(page, console):
    console.sign_in(page)
    expect(page.locator("#pending-count")).to_have_text(re.compile(r"^\s*0\b"))
    expect(page.locator("#pending-empty")).to_be_visible()

    escalation = console.escalate(job_id=f"job-{uuid.uuid4().hex[:12]}")
    expect(card(page, escalation)).to_be_visible()
    expect(page.locator("#pending-count")).to_have_text(re.compile(r"^\s*1\b"))
    expect(page.locator("#pending-empty")).to_be_hidden()

    # The live card is a working card: it resolves in place.
    the_card = card(page, escalation)
    option_label(the_card, "Try a simpler version").click()
    submit(the_card).click()
    expect(the_card).to_have_attribute("data-status", "resolved")
    expect(page.locator("#pending-count")).to_have_text(re.compile(r"^\s*0\b"))
    expect(page.locator("article.card")).to_have_count(1)


# --- layout -------------------------------------------------------------------------------------------------

def test_a_narrow_screen_has_no_horizontal_scroll(new_context, console):
    page = new_context(viewport={"width": 375, "height": 812}).new_page()
    console.job_id = "job-" + uuid.uuid4().hex * 2  # long ids and code must wrap
    escalation = console.escalate(
        error_type="StripeAuthenticationErrorBecauseTheSecretKeyIsMissingFromTheEnvironment",
        plain_english_problem="Checkout fails: " + "sk_test_" + "x" * 80,
        attempts_summary=["Looked up /srv/app/config/settings/production/payments/stripe_settings.py" * 2])
    console.sign_in(page)

    for path in ("/", "/?view=compact", "/?view=full", f"/escalations/{escalation['id']}", f"/jobs/{console.job_id}"):
        page.goto(path)
        expect(card(page, escalation)).to_be_visible()
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 375, f"{path} scrolls sideways ({width}px)"

    the_card = card(page, escalation)
    label = option_label(the_card, "Try a simpler version")
    box = label.bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= 375 and box["height"] >= 44  # a comfortable tap target
    label.click()
    submit(the_card).click()
    expect(the_card).to_have_attribute("data-status", "resolved")
    assert page.evaluate("document.documentElement.scrollWidth") <= 375


# --- screenshots (for people; overwritten on every run) -----------------------------------------------------

STRIPE_OPTIONS = [
    {"value": "test_mode", "label": "Keep going in test mode",
     "description": "I finish checkout with Stripe's test cards; you switch to live payments later.",
     "recommended": True},
    {"value": "wait_for_key", "label": "Pause checkout until I add the key",
     "description": "I work on other pages and come back to checkout when the key is in Settings."},
    {"value": "skip_feature", "label": "Skip payments for now",
     "description": "Launch without checkout; customers can order by email."},
    {"value": "provide_guidance", "label": "Give me specific guidance",
     "description": "Tell me exactly what to do."},
]


def _screenshot_data(console: Console) -> dict[str, dict]:
    shop, blog = console.job_id, f"job-{uuid.uuid4().hex[:12]}"
    data = {}
    data["images"] = console.escalate(
        job_id=blog, project_id="recipe-blog", error_type="PayloadTooLarge",
        plain_english_problem="Your recipe photos are too large for the free image hosting plan, so new posts "
                              "show broken images.",
        attempts_summary=["Compressed the photos to 80% quality — still over the 5 MB limit",
                          "Tried resizing on upload; the hosting plan rejects the originals first"],
        recommended_action="Resize photos in the browser before upload (max 2000 px wide).",
        options=[{"value": "resize", "label": "Resize before upload", "description": "Smaller files, same look.",
                  "recommended": True},
                 {"value": "upgrade", "label": "I'll upgrade the hosting plan", "description": "Keeps originals."}])
    console.resolve(data["images"]["id"], "resize", "Keep them sharp enough for Pinterest, please.")
    for _ in range(3):  # the agent hit this one three times
        data["migration"] = console.escalate(
            job_id=shop, error_type="DuplicateTable", error_signature="bakery-shop:DuplicateTable:4be1c0de",
            plain_english_problem="Adding the favourites list failed: the live database already has a "
                                  "“favourites” table from an older version of the shop.",
            attempts_summary=["Checked the old table: 14 rows, last written in March",
                              "Tried renaming the new table; other code still expects “favourites”"],
            recommended_action="Move the 14 old rows into the new table, then replace the old table.",
            options=[{"value": "migrate_rows", "label": "Move the old favourites over",
                      "description": "Nobody loses a saved item.", "recommended": True},
                     {"value": "drop_old", "label": "Start fresh", "description": "Delete the old table."},
                     {"value": "provide_guidance", "label": "Give me specific guidance",
                      "description": "Tell me what to do."}])
    data["email"] = console.escalate(
        job_id=shop, error_type="SMTPSenderRefused",
        plain_english_problem="Password-reset emails are not being sent: the email provider refuses our sender "
                              "address because the domain bakery-shop.com is not verified yet.",
        attempts_summary=["Sent from the provider's sandbox address — it only delivers to you",
                          "Looked for DNS records for bakery-shop.com — none are set up"],
        recommended_action="Add the two DNS records the email provider shows (takes 5 minutes), "
                           "or let me use the sandbox until launch.",
        options=[{"value": "sandbox", "label": "Use the sandbox for now",
                  "description": "Emails only reach you until the domain is verified.", "recommended": True},
                 {"value": "dns_done", "label": "I've added the DNS records", "description": "Try again now."}])
    data["stripe"] = console.escalate(
        job_id=shop, error_type="StripeAuthenticationError",
        plain_english_problem="The checkout page can't take payments: there is no Stripe secret key in the "
                              "app's settings, so Stripe rejects every charge.",
        attempts_summary=["Looked for STRIPE_SECRET_KEY in the environment and in .env — it isn't set",
                          "Tried a test key from Stripe's docs; Stripe refuses it for your account",
                          "Checked for a connected Stripe integration in the project — there is none"],
        recommended_action="Add your Stripe secret key (Stripe Dashboard → Developers → API keys) under "
                           "Settings → Secrets as STRIPE_SECRET_KEY. Until then I can finish checkout in test mode.",
        options=[dict(option) for option in STRIPE_OPTIONS])
    return data


def test_screenshots(new_context, console):
    SCREENSHOTS.mkdir(exist_ok=True)
    console.founder_id = f"maya-{uuid.uuid4().hex[:6]}"
    data = _screenshot_data(console)
    page = new_context(viewport={"width": 1100, "height": 900}).new_page()
    console.sign_in(page)

    expect(page.locator("#pending-count")).to_have_text(re.compile(r"^\s*3\b"))
    expect(card(page, data["images"])).to_have_attribute("data-status", "resolved")
    expect(card(page, data["migration"]).locator(".meta")).to_contain_text("3 times")
    page.screenshot(path=str(SCREENSHOTS / "inbox.png"), full_page=True)

    page.goto(f"/escalations/{data['stripe']['id']}")
    stripe = card(page, data["stripe"])
    expect(stripe.locator(".option--recommended .badge")).to_have_text("Recommended")
    option_label(stripe, "Give me specific guidance").click()
    stripe.get_by_label(re.compile("Guidance for the agent")).fill(
        "Use test mode for now — I'll add the live key before launch on Friday.")
    page.screenshot(path=str(SCREENSHOTS / "pending-card.png"), full_page=True)

    submit(stripe).click()
    expect(stripe).to_have_attribute("data-status", "resolved")
    page.screenshot(path=str(SCREENSHOTS / "resolved-card.png"), full_page=True)

    console.post_event(type="agent.retrying", attempt=2, error_type="StripeAuthenticationError")
    console.post_event(type="agent.build_paused", reason="Waiting for the Stripe key")
    page.goto(f"/jobs/{console.job_id}")
    expect(page.locator("#timeline li")).to_have_count(6)
    page.screenshot(path=str(SCREENSHOTS / "job.png"), full_page=True)

    page.set_viewport_size({"width": 375, "height": 812})
    page.goto(f"/escalations/{data['email']['id']}")
    email = card(page, data["email"])
    option_label(email, "Use the sandbox for now").click()
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    page.screenshot(path=str(SCREENSHOTS / "narrow.png"), full_page=True)


# --- the clock (SPEC §10) ---------------------------------------------------------------------------

def test_a_card_settled_by_the_clock_flips_live(page, console, sqlite_server):
    import datetime as dt

    from console.worker import Worker

    escalation = console.escalate(expires_in=3 * 3600, on_expiry="skip_feature")
    console.sign_in(page)
    page.goto(f"/jobs/{console.job_id}")
    the_card = card(page, escalation)
    expect(the_card.locator(".deadline__rule")).to_contain_text("within 3 hours")
    expect(the_card.locator(".deadline__rule")).to_contain_text("the agent will go ahead with “Skip this feature”")
    expect(the_card.locator(".deadline__reminder")).to_contain_text("Reminder due")

    three_hours_later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=3, seconds=1)
    Worker(sqlite_server.server.app, clock=lambda: three_hours_later).run_once()
    expect(the_card).to_have_attribute("data-status", "resolved")  # live, without a reload
    expect(the_card.locator(".decision__choice")).to_have_text(
        "No answer in 3 hours: the agent went ahead with “Skip this feature”, its safe default.")
    expect(page.locator("#timeline li").last).to_contain_text("No answer in time")
    expect(the_card.locator("form")).to_have_count(0)


def test_an_expired_card_says_no_decision_was_made(page, console, sqlite_server):
    import datetime as dt

    from console.worker import Worker

    escalation = console.escalate(expires_in=600, options=[{"value": "a", "label": "Option A", "description": ""}])
    console.sign_in(page)
    expect(card(page, escalation).locator(".deadline__rule")).to_contain_text(
        "the question expires and the agent carries on without a decision")
    Worker(sqlite_server.server.app, clock=lambda: dt.datetime.now(dt.UTC) + dt.timedelta(minutes=11)).run_once()
    the_card = card(page, escalation)
    expect(the_card).to_have_attribute("data-status", "expired")
    expect(the_card.locator(".decision__choice")).to_contain_text("no decision was made")
    expect(page.locator("#pending-count")).to_have_text(re.compile(r"^\s*0\b"))


# --- decision memory (SPEC §12) ------------------------------------------------------------------------

def test_remembering_a_decision_answers_the_next_occurrence_and_revoking_stops_it(page, console):
    same_error = {"error_message": "KeyError: 'user_42' at /srv/app/signup.py:17"}
    first = console.escalate(**same_error)
    console.sign_in(page)
    the_card = card(page, first)
    option_label(the_card, "Try a simpler version").click()
    the_card.get_by_label("Answer this error the same way from now on, in this project").check()
    submit(the_card).click()
    expect(the_card.locator(".notice")).to_contain_text("answered the same way from now on")

    answered = console.escalate(job_id=f"job-{uuid.uuid4().hex[:12]}", **same_error)
    assert answered["status"] == "resolved" and answered["decided_by"] == "rule"
    page.goto(f"/jobs/{answered['job_id']}")
    expect(card(page, answered).locator(".decision__choice")).to_contain_text(
        "Answered by your rule from")
    card(page, answered).get_by_role("link", name="Revoke this rule").click()
    expect(page).to_have_url(re.compile(r"/settings#rule-"))
    rule = page.locator("li.rule").first
    expect(rule).to_contain_text("Answer: “Try a simpler version”")
    expect(rule).to_contain_text("answered 1 time since")
    rule.get_by_role("button", name=re.compile("^Revoke")).click()
    expect(page.locator("li.rule--revoked")).to_contain_text("Revoked")
    again = console.escalate(job_id=f"job-{uuid.uuid4().hex[:12]}", **same_error)
    assert again["status"] == "pending"
    page.goto(f"/escalations/{again['id']}")
    the_card = card(page, again)
    expect(the_card.locator(".memory__choice")).to_contain_text("Last time you chose “Try a simpler version”")
    the_card.get_by_role("link", name="Same as last time").click()  # fills the form; nothing is sent
    expect(the_card.locator('input[value="simpler_version"]')).to_be_checked()
    assert console.read(again["id"])["status"] == "pending"


@pytest.mark.parametrize("where", ["inbox", "job"])
def test_the_live_update_of_the_founders_own_decision_keeps_the_notice_and_focus(page, console, where):
    escalation = console.escalate()
    console.sign_in(page)
    if where == "job":
        page.goto(f"/jobs/{console.job_id}")
        page.wait_for_load_state("load")
    the_card = card(page, escalation)
    option_label(the_card, "Skip this feature").click()
    submit(the_card).click()
    expect(the_card.locator(".notice")).to_contain_text("Sent. The agent has your answer.")
    if where == "job":  # the live frame of this very decision has arrived (its timeline line)
        expect(page.locator("#timeline li").last).to_contain_text("You decided: Skip this feature")
    page.wait_for_timeout(1500)  # and any late frame too
    expect(the_card.locator(".notice")).to_be_visible()
    assert focus_is_inside(page, f"escalation-{escalation['id']}")


# --- many questions: filters, one line each, the keys (issue 15) ---------------------------------------

def focused_card_id(page: Page) -> str | None:
    return page.evaluate("() => { const card = document.activeElement && document.activeElement.closest('article');"
                         " return card ? card.id : null; }")


def test_the_filters_narrow_the_inbox_to_a_project_and_a_job(page, console):
    shop = [console.escalate(project_id="bakery-shop", job_id=f"{console.job_id}-a") for _ in range(2)]
    blog = console.escalate(project_id="bakery-blog", job_id=f"{console.job_id}-b")
    other_job = console.escalate(project_id="bakery-shop", job_id=f"{console.job_id}-c")
    console.sign_in(page)
    expect(page.locator("#pending-cards > article")).to_have_count(4)

    page.get_by_role("link", name=re.compile(r"^bakery-blog 1$")).click()
    expect(page).to_have_url(re.compile(r"\?project=bakery-blog$"))
    expect(page.locator("#pending-cards > article")).to_have_count(1)
    expect(card(page, blog)).to_be_visible()
    expect(page).to_have_title(re.compile(r"^\(1\) Inbox: bakery-blog"))

    page.get_by_role("link", name=re.compile(r"^bakery-shop 3$")).click()
    page.get_by_role("link", name=re.compile(rf"^{console.job_id}-a 2$")).click()
    expect(page.locator("#pending-cards > article")).to_have_count(2)
    for escalation in shop:
        expect(card(page, escalation)).to_be_visible()
    expect(card(page, other_job)).to_have_count(0)
    expect(page.locator("#pending-count")).to_have_text(re.compile(r"^\s*2\b"))

    # A question of another job arrives while the filter is on: it is not shown, nor counted.
    console.escalate(project_id="bakery-shop", job_id=f"{console.job_id}-c")
    newcomer = console.escalate(project_id="bakery-shop", job_id=f"{console.job_id}-a")
    expect(card(page, newcomer)).to_be_visible()
    expect(page.locator("#pending-cards > article")).to_have_count(3)
    expect(page.locator("#pending-count")).to_have_text(re.compile(r"^\s*3\b"))


def test_one_line_each_opens_a_card_in_place_and_sends_from_it(page, console):
    older = console.escalate()
    newer = console.escalate(plain_english_problem="The newsletter signup form cannot reach the mail provider.")
    console.sign_in(page)
    page.get_by_role("link", name="One line each").click()
    expect(page.locator("#pending-cards > article[data-view=compact]")).to_have_count(2)
    expect(page.locator("#pending-cards form")).to_have_count(0)
    page.evaluate("window.__marker = 1")

    card(page, older).get_by_role("link").click()  # its title
    the_card = card(page, older)
    expect(the_card.locator("form.decide")).to_be_visible()
    expect(card(page, newer)).to_have_attribute("data-view", "compact")  # the other stays one line
    assert focus_is_inside(page, f"escalation-{older['id']}")

    option_label(the_card, "Skip this feature").click()
    submit(the_card).click()
    expect(the_card.locator(".notice")).to_contain_text("Sent. The agent has your answer.")
    page.wait_for_timeout(1500)  # the live frame of this decision (a one-line card) comes and goes
    expect(the_card.locator(".notice")).to_be_visible()
    expect(the_card.locator(".decision__choice")).to_have_text("Skip this feature")
    assert page.evaluate("window.__marker") == 1, "the page was reloaded"

    page.reload()  # the view is remembered
    expect(card(page, newer)).to_have_attribute("data-view", "compact")
    expect(card(page, older)).to_have_attribute("data-view", "compact")  # decided, one line in the list too


def test_a_card_opened_in_place_stays_open_when_it_is_decided_elsewhere(page, console):
    escalation = console.escalate()
    console.sign_in(page)
    page.goto("/?view=compact")
    page.wait_for_load_state("load")
    card(page, escalation).get_by_role("link").click()
    expect(card(page, escalation).locator("form.decide")).to_be_visible()

    console.resolve(escalation["id"], "skip_feature")  # another tab, the API
    expect(card(page, escalation)).to_have_attribute("data-status", "resolved")
    expect(card(page, escalation).locator(".decision__choice")).to_have_text("Skip this feature")


def test_the_keys_move_between_questions_and_open_them(page, console):
    escalations = [console.escalate() for _ in range(3)]
    newest_first = [f"escalation-{e['id']}" for e in reversed(escalations)]
    console.sign_in(page)
    page.goto("/?view=compact")
    page.wait_for_load_state("load")
    expect(page.get_by_text("Keys:")).to_be_visible()

    page.keyboard.press("j")
    assert focused_card_id(page) == newest_first[0]
    page.keyboard.press("j")
    page.keyboard.press("j")
    page.keyboard.press("j")  # stays on the last
    assert focused_card_id(page) == newest_first[2]
    page.keyboard.press("k")
    assert focused_card_id(page) == newest_first[1]
    assert page.evaluate("() => document.activeElement.matches(':focus-visible')")

    page.keyboard.press("o")  # opens it in place, focus on the card
    opened = page.locator(f"#{newest_first[1]}")
    expect(opened.locator("form.decide")).to_be_visible()
    assert focused_card_id(page) == newest_first[1]
    page.keyboard.press("o")  # in an open card: the first choice
    assert page.evaluate("() => document.activeElement.name") == "decision"
    page.keyboard.press("j")  # on a form field the keys are the field's
    assert page.evaluate("() => document.activeElement.name") == "decision"
    page.locator(f"#{newest_first[1]} textarea").focus()
    page.keyboard.type("jk")
    expect(page.locator(f"#{newest_first[1]} textarea")).to_have_value("jk")
    assert focused_card_id(page) == newest_first[1]


def test_the_keys_work_on_the_job_page_too(page, console):
    first, second = console.escalate(), console.escalate()
    console.sign_in(page)
    page.goto(f"/jobs/{console.job_id}")
    page.wait_for_load_state("load")
    page.keyboard.press("j")
    assert focused_card_id(page) == f"escalation-{second['id']}"
    page.keyboard.press("j")
    assert focused_card_id(page) == f"escalation-{first['id']}"
    page.keyboard.press("o")
    assert page.evaluate("() => document.activeElement.name") == "decision"


def test_a_new_question_arrives_as_one_line_in_the_one_line_view(page, console):
    console.sign_in(page)
    page.goto("/?view=compact")
    page.wait_for_load_state("load")
    escalation = console.escalate()
    expect(card(page, escalation)).to_have_attribute("data-view", "compact")
    expect(page.locator("#pending-count")).to_have_text(re.compile(r"^\s*1\b"))
    expect(page).to_have_title(re.compile(r"^\(1\) Inbox"))

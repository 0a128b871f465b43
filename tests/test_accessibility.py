"""axe-core (4.12, from axe-playwright-python) on every page and state of the console, in the
real browser (issue 15): nothing may be reported. The context bypasses the page's CSP only
so that axe's script can be injected; the pages themselves are unchanged."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from test_browser import (  # noqa: F401  (fixtures)
    Console, browser, card, console, new_context, option_label, sqlite_server, submit,
)

pytestmark = pytest.mark.browser

from axe_playwright_python import sync_playwright as axe_module  # noqa: E402

AXE_JS = (Path(axe_module.__file__).parent / "axe.min.js").read_text()


def violations(page) -> list[dict]:
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.add_script_tag(content=AXE_JS)
    result = page.evaluate("""async () => {
        const r = await axe.run(document, {resultTypes: ['violations']});
        return r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
                                       nodes: v.nodes.map(n => n.target.join(' ')).slice(0, 5)}));
    }""")
    return result


def assert_clean(page, state: str) -> None:
    found = violations(page)
    assert found == [], f"{state}: {json.dumps(found, indent=1)}"


@pytest.fixture
def axe_page(new_context):  # noqa: F811
    return new_context(bypass_csp=True).new_page()


def test_axe_finds_nothing_on_any_page_or_state(axe_page, console: Console):  # noqa: F811
    page = axe_page
    page.goto("/login")
    assert_clean(page, "sign-in page")
    # The probe itself finds what is there: an image without alt text and a skipped heading.
    page.evaluate("document.querySelector('main').insertAdjacentHTML('beforeend', '<img src=\"/favicon.ico\"><h4>x</h4>')")
    assert {"image-alt", "heading-order"} <= {v["id"] for v in violations(page)}
    page.goto("/login")
    page.goto("/login/link?t=not-a-real-link")
    assert_clean(page, "used or invalid sign-in link")

    console.sign_in(page)
    assert_clean(page, "inbox, empty")

    first, second, third = console.escalate(), console.escalate(), console.escalate()
    page.goto("/")
    assert_clean(page, "inbox with pending cards")

    the_card = card(page, first)
    option_label(the_card, "Give me specific guidance").click()
    submit(the_card).click()
    the_card.locator(".guidance .field-error").wait_for()
    assert_clean(page, "a card showing the 422 (guidance required)")

    option_label(the_card, "Try a simpler version").click()
    submit(the_card).click()
    the_card.locator(".decision__choice").wait_for()
    assert_clean(page, "a resolved card with its notice")

    page.goto(f"/escalations/{second['id']}")
    other = card(page, second)
    option_label(other, "Skip this feature").click()
    console.resolve(second["id"], "simpler_version")  # decided elsewhere meanwhile
    submit(other).click()
    other.locator(".notice").wait_for()
    assert_clean(page, "the 409 notice (already decided)")

    page.goto(f"/?project={console.project_id}&view=compact")
    assert_clean(page, "inbox, one line each, filtered by project")
    card(page, third).get_by_role("link").click()
    card(page, third).locator("form.decide").wait_for()
    assert_clean(page, "a card opened in place in the one-line view")
    page.goto("/?view=full")

    page.goto(f"/jobs/{console.job_id}")
    assert_clean(page, "job page with cards and timeline")
    page.goto(f"/escalations/{third['id']}")
    assert_clean(page, "single escalation page")
    page.goto("/settings")
    assert_clean(page, "settings page")
    page.goto("/no-such-page")
    assert_clean(page, "404 page")

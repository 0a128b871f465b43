"""The console (SPEC §4 console auth, §7) through Flask's test client: every page and every
status path of the resolve post, with and without htmx."""
import re
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlencode

import pytest

from conftest import mint_jwt

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture
def console(app, ids):
    """A test client signed in as this test's founder; .csrf is a valid token of its session."""
    def sign_in(founder_id=None):
        browser = app.test_client()
        page = browser.get("/login")
        token = CSRF.search(page.get_data(as_text=True)).group(1)
        resp = browser.post("/login", data={"csrf_token": token, "token": mint_jwt(founder_id or ids.founder_id)})
        assert resp.status_code == 303 and resp.headers["Location"] == "/"
        browser.csrf = CSRF.search(browser.get("/").get_data(as_text=True)).group(1)
        return browser
    return sign_in


def card(html: str, escalation_id: str) -> str:
    match = re.search(rf'<article id="escalation-{escalation_id}".*?</article>', html, re.S)
    assert match, f"no card for {escalation_id}"
    return match.group(0)


def status_of(card_html: str) -> str:
    return re.search(r'data-status="(\w+)"', card_html).group(1)


# --- signing in ------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/", "/jobs/j", "/escalations/3f2b8c1e-9d4a-4b6e-8f1a-2c3d4e5f6a7b"])
def test_pages_redirect_to_login_without_a_session(client, path):
    resp = client.get(path)
    assert resp.status_code == 303 and resp.headers["Location"].startswith("/login")


def test_login_page_has_a_csp_without_inline_script_and_a_csrf_field(client):
    resp = client.get("/login")
    policy = resp.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert CSRF.search(resp.get_data(as_text=True))


def test_login_sets_an_httponly_lax_cookie_and_logout_ends_it(console):
    browser = console()
    assert browser.get("/").status_code == 200
    assert browser.post("/logout", data={"csrf_token": browser.csrf}).status_code == 303
    assert browser.get("/").status_code == 303


def test_session_cookie_flags(app, ids):
    browser = app.test_client()
    token = CSRF.search(browser.get("/login").get_data(as_text=True)).group(1)
    resp = browser.post("/login", data={"csrf_token": token, "token": mint_jwt(ids.founder_id)})
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie


@pytest.mark.parametrize("token", ["nonsense", mint_jwt("f", exp_in=-100), mint_jwt("f", secret="x" * 40)],
                         ids=["garbage", "expired", "bad-signature"])
def test_a_bad_token_gives_no_session(app, token):
    browser = app.test_client()
    csrf = CSRF.search(browser.get("/login").get_data(as_text=True)).group(1)
    resp = browser.post("/login", data={"csrf_token": csrf, "token": token})
    assert resp.status_code == 401 and "role=\"alert\"" in resp.get_data(as_text=True)
    assert browser.get("/").status_code == 303


def test_login_without_csrf_token_is_refused(app, ids):
    resp = app.test_client().post("/login", data={"token": mint_jwt(ids.founder_id)})
    assert resp.status_code == 400


def test_a_console_session_ends_when_the_token_it_was_started_with_expires(app, ids, monkeypatch):
    import time

    from console import auth

    browser = app.test_client()
    csrf = CSRF.search(browser.get("/login").get_data(as_text=True)).group(1)
    token = mint_jwt(ids.founder_id, exp_in=600)
    assert browser.post("/login", data={"csrf_token": csrf, "token": token}).status_code == 303
    assert browser.get("/").status_code == 200
    later = time.time() + 601  # past the token's exp, well within the 12 h session lifetime
    monkeypatch.setattr(auth.time, "time", lambda: later)
    resp = browser.get("/")
    assert resp.status_code in (302, 303) and resp.headers["Location"].startswith("/login")


def test_login_never_redirects_off_site(app, ids):
    browser = app.test_client()
    csrf = CSRF.search(browser.get("/login").get_data(as_text=True)).group(1)
    resp = browser.post("/login", data={"csrf_token": csrf, "token": mint_jwt(ids.founder_id),
                                        "next": "//evil.example/"})
    assert resp.headers["Location"] == "/"


def test_login_link_needs_one_click_and_signs_in(app, ids, make_escalation):
    from console.routes.pages import make_login_link

    esc = make_escalation()
    with app.test_request_context():
        link = make_login_link(ids.founder_id)
    path = link.split("://", 1)[1].split("/", 1)[1]
    browser = app.test_client()
    page = browser.get("/" + path)
    assert page.status_code == 200 and browser.get("/").status_code == 303  # a GET alone signs nobody in
    html = page.get_data(as_text=True)
    form = {"csrf_token": CSRF.search(html).group(1), "t": re.search(r'name="t" value="([^"]+)"', html).group(1)}
    assert browser.post("/login/link", data=form).status_code == 303
    assert esc["id"] in browser.get("/").get_data(as_text=True)
    tampered = app.test_client()
    assert tampered.get("/" + path[:-3] + "abc").status_code == 400


def _link_form(app, founder_id):
    """A fresh login link's confirming form, as a new browser sees it: (client, form)."""
    from console.routes.pages import make_login_link

    with app.test_request_context():
        link = make_login_link(founder_id)
    browser = app.test_client()
    html = browser.get("/" + link.split("://", 1)[1].split("/", 1)[1]).get_data(as_text=True)
    return browser, {"csrf_token": CSRF.search(html).group(1),
                     "t": re.search(r'name="t" value="([^"]+)"', html).group(1)}


def test_a_login_link_signs_in_once(app, ids):
    browser, form = _link_form(app, ids.founder_id)
    assert browser.post("/login/link", data=form).status_code == 303

    thief = app.test_client()  # whoever finds the link later (a forwarded mail, a log line)
    page = thief.get("/login/link?" + urlencode({"t": form["t"]}))
    assert page.status_code == 400 and "used already" in page.get_data(as_text=True)
    csrf = CSRF.search(thief.get("/login").get_data(as_text=True)).group(1)
    assert thief.post("/login/link", data={"csrf_token": csrf, "t": form["t"]}).status_code == 400
    assert thief.get("/").status_code == 303  # no session
    assert browser.get("/").status_code == 200  # the first click's session stands


def test_a_used_link_opened_while_signed_in_shows_the_way_back_not_a_token_form(app, ids):
    browser, form = _link_form(app, ids.founder_id)
    assert browser.post("/login/link", data=form).status_code == 303
    page = browser.get("/login/link?" + urlencode({"t": form["t"]}))  # the same mail, clicked again
    html = page.get_data(as_text=True)
    assert page.status_code == 400 and "used already" in html
    assert f"signed in as <strong>{ids.founder_id}</strong>" in html and 'href="/"' in html
    assert 'name="token"' not in html and "paste a token" not in html


def test_concurrent_clicks_on_one_login_link_sign_in_once(app, ids):
    _, form = _link_form(app, ids.founder_id)
    browsers = [_link_form(app, ids.founder_id) for _ in range(8)]  # each with a session and its CSRF token
    barrier = threading.Barrier(len(browsers))

    def click(browser_and_form):
        browser, own = browser_and_form
        barrier.wait()
        return browser.post("/login/link", data={"csrf_token": own["csrf_token"], "t": form["t"]}).status_code

    with ThreadPoolExecutor(len(browsers)) as pool:
        statuses = sorted(pool.map(click, browsers))
    assert statuses == [303] + [400] * (len(browsers) - 1)


# --- pages -------------------------------------------------------------------------------------------

def test_inbox_shows_pending_newest_first_with_a_count_and_decided_below(console, client, founder, make_escalation, ids):
    older = make_escalation(job_id=ids.new("job"))
    time.sleep(0.01)
    newer = make_escalation(job_id=ids.new("job"))
    decided = make_escalation(job_id=ids.new("job"))
    client.post(f"/api/escalations/{decided['id']}/resolve", json={"decision": "skip_feature"}, headers=founder())
    html = console().get("/").get_data(as_text=True)
    assert html.index(f'escalation-{newer["id"]}') < html.index(f'escalation-{older["id"]}') \
        < html.index(f'escalation-{decided["id"]}')
    assert re.search(r'id="pending-count"[^>]*>2<', html)
    assert status_of(card(html, decided["id"])) == "resolved"


def test_empty_inbox_says_what_is_going_on(console):
    html = console().get("/").get_data(as_text=True)
    assert "Nothing needs you right now" in html


def test_job_page_lists_pending_first_and_the_timeline(console, client, founder, agent, make_escalation, ids):
    first = make_escalation()
    second = make_escalation()
    client.post(f"/api/escalations/{first['id']}/resolve", json={"decision": "skip_feature"}, headers=founder())
    client.post(f"/api/jobs/{ids.job_id}/events", json={"type": "agent.build_paused", "founder_id": ids.founder_id,
                                                        "reason": "waiting on you"}, headers=agent)
    html = console().get(f"/jobs/{ids.job_id}").get_data(as_text=True)
    assert html.index(f'escalation-{second["id"]}') < html.index(f'escalation-{first["id"]}')
    assert "Build paused: waiting on you" in html and "You decided: Skip this feature" in html


def test_job_page_of_another_founder_shows_nothing(console, make_escalation, ids):
    esc = make_escalation()
    html = console(ids.new("founder")).get(f"/jobs/{ids.job_id}").get_data(as_text=True)
    assert esc["id"] not in html and "not one of yours" in html


@pytest.mark.parametrize("which", ["missing", "malformed", "foreign"])
def test_escalation_page_not_yours_is_404(console, make_escalation, ids, which):
    target = {"missing": str(uuid.uuid4()), "malformed": "nope",
              "foreign": make_escalation(job_id=ids.new("job"), founder_id=ids.new("founder"))["id"]}[which]
    assert console().get(f"/escalations/{target}").status_code == 404


def test_card_shows_everything_a_founder_needs(console, make_escalation, client, agent, escalation_body, ids):
    body = escalation_body(attempts_summary=["first <b>try</b>", "second try"])
    esc = client.post(f"/api/jobs/{ids.job_id}/escalations", json=body, headers=agent).get_json()
    client.post(f"/api/jobs/{ids.job_id}/escalations", json=body, headers=agent)  # seen twice
    html = card(console().get(f"/escalations/{esc['id']}").get_data(as_text=True), esc["id"])
    assert "first &lt;b&gt;try&lt;/b&gt;" in html and "<b>try" not in html
    assert html.index("first &lt;b&gt;") < html.index("second try")
    assert "2 times" in html and "just now" in html
    assert 'name="decision"' in html and html.count('type="radio"') == 3
    assert "Recommended" in html and 'data-requires-guidance="true"' in html
    assert 'hx-post="/escalations/' in html and 'hx-swap="outerHTML"' in html


def test_pages_vary_on_hx_request_and_are_not_cached(console):
    resp = console().get("/")
    assert "HX-Request" in resp.headers["Vary"]
    assert resp.headers["Cache-Control"] == "no-store"


# --- the resolve post ---------------------------------------------------------------------------------

HX = {"HX-Request": "true"}


def test_htmx_resolve_returns_the_resolved_card_alone(console, client, agent, make_escalation):
    esc = make_escalation()
    browser = console()
    resp = browser.post(f"/escalations/{esc['id']}/resolve", headers=HX,
                        data={"csrf_token": browser.csrf, "decision": "simpler_version", "guidance": " tiny "})
    html = resp.get_data(as_text=True)
    assert resp.status_code == 200 and "<html" not in html
    assert status_of(html) == "resolved" and "Try a simpler version" in html and "tiny" in html
    stored = client.get(f"/api/escalations/{esc['id']}", headers=agent).get_json()
    assert (stored["founder_decision"], stored["founder_guidance"]) == ("simpler_version", "tiny")


def test_plain_form_resolve_redirects_303_to_the_escalation(console, make_escalation):
    esc = make_escalation()
    browser = console()
    resp = browser.post(f"/escalations/{esc['id']}/resolve",
                        data={"csrf_token": browser.csrf, "decision": "skip_feature", "guidance": ""})
    assert resp.status_code == 303 and resp.headers["Location"] == f"/escalations/{esc['id']}"


@pytest.mark.parametrize("htmx", [True, False])
def test_missing_guidance_is_422_with_the_input_kept_and_the_error_by_the_field(console, make_escalation, htmx):
    esc = make_escalation()
    browser = console()
    resp = browser.post(f"/escalations/{esc['id']}/resolve", headers=HX if htmx else {},
                        data={"csrf_token": browser.csrf, "decision": "provide_guidance", "guidance": "  "})
    assert resp.status_code == 422
    html = resp.get_data(as_text=True)
    assert ("<html" in html) is not htmx
    found = card(html, esc["id"])
    assert status_of(found) == "pending"
    assert re.search(r'value="provide_guidance"\s+checked', found)
    assert f'id="escalation-{esc["id"]}-guidance-error"' in found and "needs guidance" in found


@pytest.mark.parametrize("htmx", [True, False])
def test_no_choice_is_422_and_guidance_is_kept(console, make_escalation, htmx):
    esc = make_escalation()
    browser = console()
    resp = browser.post(f"/escalations/{esc['id']}/resolve", headers=HX if htmx else {},
                        data={"csrf_token": browser.csrf, "guidance": "my careful words"})
    assert resp.status_code == 422
    found = card(resp.get_data(as_text=True), esc["id"])
    assert "Choose one of the options" in found and "my careful words</textarea>" in found


@pytest.mark.parametrize("htmx", [True, False])
def test_decided_elsewhere_is_409_with_the_current_card_and_a_notice(console, client, founder, make_escalation, htmx):
    esc = make_escalation()
    browser = console()
    client.post(f"/api/escalations/{esc['id']}/resolve", json={"decision": "skip_feature"}, headers=founder())
    resp = browser.post(f"/escalations/{esc['id']}/resolve", headers=HX if htmx else {},
                        data={"csrf_token": browser.csrf, "decision": "simpler_version", "guidance": ""})
    assert resp.status_code == 409
    found = card(resp.get_data(as_text=True), esc["id"])
    assert status_of(found) == "resolved" and "Skip this feature" in found and "already decided" in found


def test_resolving_someone_elses_escalation_is_404(console, client, agent, make_escalation, ids):
    victim = make_escalation()
    intruder = console(ids.new("founder"))
    resp = intruder.post(f"/escalations/{victim['id']}/resolve", headers=HX,
                         data={"csrf_token": intruder.csrf, "decision": "skip_feature"})
    assert resp.status_code == 404
    assert client.get(f"/api/escalations/{victim['id']}", headers=agent).get_json()["status"] == "pending"


@pytest.mark.parametrize("csrf", [None, "forged"])
def test_resolve_without_a_valid_csrf_token_is_refused(console, client, agent, make_escalation, csrf):
    esc = make_escalation()
    browser = console()
    data = {"decision": "skip_feature", **({"csrf_token": csrf} if csrf else {})}
    assert browser.post(f"/escalations/{esc['id']}/resolve", data=data, headers=HX).status_code == 400
    assert client.get(f"/api/escalations/{esc['id']}", headers=agent).get_json()["status"] == "pending"


def test_escalation_without_options_takes_a_free_decision(console, make_escalation):
    esc = make_escalation(options=[])
    browser = console()
    page = card(browser.get(f"/escalations/{esc['id']}").get_data(as_text=True), esc["id"])
    assert 'type="text" name="decision"' in page
    resp = browser.post(f"/escalations/{esc['id']}/resolve", headers=HX,
                        data={"csrf_token": browser.csrf, "decision": "use_sqlite", "guidance": ""})
    assert resp.status_code == 200 and "use_sqlite" in resp.get_data(as_text=True)


# --- live frames -------------------------------------------------------------------------------------

def test_live_frames_render_cards_and_timeline_lines(app, make_escalation, client, founder, ids):
    from console.extensions import db
    from console.live import console_frame
    from console.models import JobEvent

    esc = make_escalation()
    client.post(f"/api/escalations/{esc['id']}/resolve", json={"decision": "skip_feature"}, headers=founder())
    with app.test_request_context():
        events = db.session.query(JobEvent).filter_by(job_id=ids.job_id).order_by(JobEvent.id).all()
        new_card, resolved_card = (console_frame(ids.founder_id, e, page="job") for e in events)
        foreign = console_frame("someone-else", events[0], page="inbox")
    assert new_card.startswith(f"id: {events[0].id}\nevent: update\n")
    assert 'hx-swap-oob="afterbegin:#pending-cards"' in new_card and f"escalation-{esc['id']}" in new_card
    assert 'hx-swap-oob="true"' in resolved_card and 'data-status="resolved"' in resolved_card
    assert 'hx-swap-oob="beforeend:#timeline"' in resolved_card
    assert esc["id"] not in foreign  # another founder's stream never renders this card
    assert all(line.startswith(("id: ", "event: ", "data: ")) for line in new_card.strip().split("\n"))


def test_the_inbox_title_counts_the_waiting_questions_and_headings_never_skip_a_level(console, make_escalation):
    browser = console()
    empty = browser.get("/").get_data(as_text=True)
    assert "<title>Inbox · Console</title>" in empty
    escalation = make_escalation()
    html = browser.get("/").get_data(as_text=True)
    assert "<title>(1) Inbox · Console</title>" in html and "data-count-in-title" in html
    for page in (html, browser.get(f"/escalations/{escalation['id']}").get_data(as_text=True),
                 browser.get(f"/jobs/{escalation['job_id']}").get_data(as_text=True)):
        levels = [int(level) for level in re.findall(r"<h([1-6])[\s>]", page)]
        assert levels and levels[0] == 1, levels
        assert all(b - a <= 1 for a, b in zip(levels, levels[1:])), levels  # axe's heading-order


def test_the_favicon_is_served_where_browsers_ask_for_it(client):
    resp = client.get("/favicon.ico")
    assert resp.status_code == 200 and resp.mimetype == "image/svg+xml" and b"<svg" in resp.data


# --- an inbox for many questions (issue 15) -------------------------------------------------------------

def pending_ids(html: str) -> list[str]:
    pending = html[html.index('id="pending-cards"'):html.index("Recently decided")]
    return re.findall(r'<article id="escalation-([0-9a-f-]+)"', pending)


def test_the_inbox_filters_by_project_and_by_job(console, client, founder, make_escalation, ids):
    shop_a = make_escalation(job_id="job-a", project_id="shop")
    shop_b = make_escalation(job_id="job-b", project_id="shop")
    blog_a = make_escalation(job_id="job-a2", project_id="blog")
    decided = make_escalation(job_id="job-b", project_id="shop")
    client.post(f"/api/escalations/{decided['id']}/resolve", json={"decision": "skip_feature"}, headers=founder())
    browser = console()

    everything = browser.get("/").get_data(as_text=True)
    assert set(pending_ids(everything)) == {shop_a["id"], shop_b["id"], blog_a["id"]}
    assert re.search(r'href="/\?project=shop">shop <span class="chip__count">2</span>', everything)
    assert re.search(r'href="/\?project=blog">blog <span class="chip__count">1</span>', everything)

    shop = browser.get("/?project=shop").get_data(as_text=True)
    assert set(pending_ids(shop)) == {shop_a["id"], shop_b["id"]}
    assert "<title>(2) Inbox: shop · Console</title>" in shop
    assert re.search(r'id="pending-count"[^>]*>2<', shop)
    assert f'escalation-{decided["id"]}' in shop  # the recently decided ones are filtered alike
    assert "job-a2" not in shop  # the job filters are the chosen project's jobs
    assert 'href="/?project=shop&amp;job=job-b"' in shop
    assert 'sse-connect="/live?after=' in shop and "project=shop" in shop  # the live stream keeps to it

    job_b = browser.get("/?project=shop&job=job-b").get_data(as_text=True)
    assert pending_ids(job_b) == [shop_b["id"]]
    assert re.search(r'aria-current="true">job-b <span class="chip__count">1</span>', job_b)

    client.post(f"/api/escalations/{shop_b['id']}/resolve", json={"decision": "skip_feature"}, headers=founder())
    emptied = browser.get("/?job=job-b").get_data(as_text=True)
    assert pending_ids(emptied) == [] and "Nothing waits for you in job-b" in emptied
    assert re.search(r'aria-current="true">job-b <span class="chip__count">0</span>', emptied)  # still shown

    other = console(ids.new("founder"))
    assert pending_ids(other.get("/?project=shop").get_data(as_text=True)) == []  # only one's own


def test_one_line_each_shows_no_forms_and_is_remembered(console, make_escalation):
    first, second = make_escalation(), make_escalation()
    browser = console()
    compact = browser.get("/?view=compact").get_data(as_text=True)
    assert set(pending_ids(compact)) == {first["id"], second["id"]}
    assert 'data-view="compact"' in compact and "<form method=\"post\" action=\"/escalations/" not in compact
    assert f'hx-get="/escalations/{first["id"]}/card"' in compact  # opens in place
    assert f'href="/escalations/{first["id"]}"' in compact  # and without JavaScript, its page
    assert "view=compact" in compact.split('sse-connect="', 1)[1].split('"', 1)[0]

    assert 'data-view="compact"' in browser.get("/").get_data(as_text=True)  # remembered
    full = browser.get("/?view=full").get_data(as_text=True)
    assert 'data-view="compact"' not in full and full.count('class="decide"') == 2
    assert 'data-view="compact"' not in browser.get("/").get_data(as_text=True)


@pytest.mark.parametrize("query, field", [("view=cards", "view"), ("project=" + "p" * 256, "project"),
                                          ("job=a%00b", "job"), ("cursor=" + "c" * 501, "cursor")])
def test_a_bad_inbox_query_says_what_to_fix(console, query, field):
    resp = console().get(f"/?{query}")
    assert resp.status_code == 422
    assert f"{field}:" in resp.get_data(as_text=True)


def test_older_questions_keep_the_filter(app, console, make_escalation, monkeypatch):
    import console.routes.pages as pages

    monkeypatch.setattr(pages, "INBOX_PAGE_SIZE", 2)
    made = [make_escalation(job_id="job-many", project_id="many") for _ in range(3)]
    make_escalation(job_id="job-other", project_id="other")
    browser = console()
    first = browser.get("/?project=many").get_data(as_text=True)
    assert pending_ids(first) == [made[2]["id"], made[1]["id"]]
    older = re.search(r'href="(/\?cursor=[^"]+)"', first).group(1).replace("&amp;", "&")
    assert "project=many" in older
    assert pending_ids(browser.get(older).get_data(as_text=True)) == [made[0]["id"]]


def test_live_frames_keep_to_the_inbox_filter_and_view(app, make_escalation, ids):
    from console.extensions import db
    from console.live import console_frame
    from console.models import JobEvent

    esc = make_escalation(project_id="shop")
    with app.test_request_context():
        event = db.session.query(JobEvent).filter_by(job_id=ids.job_id).order_by(JobEvent.id).first()
        in_scope = console_frame(ids.founder_id, event, page="inbox", in_project="shop", view="compact")
        out_of_scope = console_frame(ids.founder_id, event, page="inbox", in_project="blog")
        other_job = console_frame(ids.founder_id, event, page="inbox", in_job="another-job")
        whole = console_frame(ids.founder_id, event, page="inbox", in_job=ids.job_id)
    assert f"escalation-{esc['id']}" in in_scope and 'data-view="compact"' in in_scope
    assert 'class="decide"' not in in_scope
    assert esc["id"] not in out_of_scope and "pending-count" not in out_of_scope
    assert esc["id"] not in other_job
    assert 'class="decide"' in whole and re.search(r'id="pending-count"[^>]*>1<', whole.replace("data: ", ""))

"""A screenshot of the console inbox with many pending questions (issue 15), in the system
Chromium at 1280 px wide.

    .venv/bin/python bench/inbox_screenshot.py [--cards 50] [--view full|compact] [--out FILE.png]

The same 50 questions as bench/inbox_time.py, on a fresh SQLite file, served by werkzeug in
a thread; the founder signs in through the /login form like anyone else.
"""
from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

from playwright.sync_api import sync_playwright
from werkzeug.serving import make_server

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inbox_time import inbox_app  # noqa: E402

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cards", type=int, default=50)
    parser.add_argument("--view", choices=["full", "compact"], default="full")
    parser.add_argument("--height", type=int, default=2400, help="of the screenshot, in CSS pixels")
    parser.add_argument("--out", default="inbox.png")
    args = parser.parse_args()
    with inbox_app("sqlite", args.cards) as (app, _client, token):
        server = make_server("127.0.0.1", 0, app, threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{server.server_port}"
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1280, "height": args.height})
                page.goto(f"{base}/login")
                page.fill("textarea[name=token], input[name=token]", token)
                page.click("form button[type=submit]")
                page.wait_for_url(f"{base}/")
                page.goto(f"{base}/?view={args.view}")
                page.wait_for_selector("article.card")
                page.screenshot(path=args.out)
                browser.close()
        finally:
            server.shutdown()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

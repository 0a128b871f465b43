"""Production's shape as processes (issue 14): two hosts' worth of servers, each with an
instance folder of its own, sharing one PostgreSQL and the operator's secrets; and an instance
folder on a read-only file system (a real read-only bind mount)."""
from __future__ import annotations

import contextlib
import http.cookiejar
import os
import re
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest

from conftest import AGENT_TOKEN, JWT_SECRET, REPO, SECRET_KEY, GunicornServer, migrated_database, mint_jwt
from test_realtime import call, escalate

pytestmark = pytest.mark.slow

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture
def postgres_url(request, tmp_path):
    request.param = "postgresql"
    with migrated_database(request, tmp_path, "console_hosts") as url:
        yield url


class Browser:
    """A founder's browser: one cookie jar, whichever host the load balancer picks."""

    def __init__(self):
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()),
                                                  NoRedirect())

    def get(self, url: str) -> tuple[int, str]:
        return self.send(urllib.request.Request(url))

    def post(self, url: str, form: dict, **headers) -> tuple[int, str]:
        return self.send(urllib.request.Request(url, data=urllib.parse.urlencode(form).encode(), method="POST",
                                                headers=headers))

    def send(self, request) -> tuple[int, str]:
        try:
            with self.opener.open(request, timeout=20) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as error:
            with error:
                return error.code, error.read().decode()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # a 303 is an answer to look at


def test_two_hosts_share_postgresql_and_the_secrets(postgres_url, tmp_path):
    founder, job = f"founder-{uuid.uuid4().hex[:8]}", f"job-{uuid.uuid4().hex[:8]}"
    host_a, host_b = tmp_path / "host-a", tmp_path / "host-b"
    with GunicornServer(postgres_url, CONSOLE_INSTANCE_PATH=str(host_a)) as a, \
            GunicornServer(postgres_url, CONSOLE_INSTANCE_PATH=str(host_b)) as b:
        escalation = escalate(a.url, job, founder)  # the agent's token works on every host
        assert call(b.url, "GET", f"/api/escalations/{escalation['id']}")[0] == 200

        waited: dict = {}
        poll = threading.Thread(target=lambda: waited.update(
            answer=call(a.url, "GET", f"/api/escalations/{escalation['id']}?wait=20", timeout=30)))
        poll.start()

        browser = Browser()  # signs in on host A ...
        status, login = browser.get(f"{a.url}/login")
        assert status == 200
        status, _ = browser.post(f"{a.url}/login", {"csrf_token": CSRF.search(login).group(1),
                                                    "token": mint_jwt(founder)})
        assert status == 303
        status, inbox_a = browser.get(f"{a.url}/")
        assert status == 200
        status, inbox_b = browser.get(f"{b.url}/")  # ... and host B knows the session
        assert status == 200 and f"escalation-{escalation['id']}" in inbox_b, inbox_b[:500]
        # The form came from host A; host B takes its CSRF token and decides.
        status, card = browser.post(f"{b.url}/escalations/{escalation['id']}/resolve",
                                    {"csrf_token": CSRF.search(inbox_a).group(1), "decision": "simpler_version"},
                                    **{"HX-Request": "true"})
        assert status == 200 and 'data-status="resolved"' in card, card[:500]

        poll.join(timeout=30)
        status, answer = waited["answer"]  # the agent waiting on host A has the answer from host B
        assert status == 200 and answer["status"] == "resolved" and answer["founder_decision"] == "simpler_version"
        assert answer["decided_via"] == "console"
    for host in (host_a, host_b):  # given secrets: nothing generated on either host
        assert not (host / "secrets.json").exists()


def test_a_session_signed_with_other_secrets_is_not_taken(postgres_url, tmp_path):
    """Hosts misconfigured with different session keys: the cookie of one is refused by the
    other (a sign-in page), never half-accepted."""
    founder = f"founder-{uuid.uuid4().hex[:8]}"
    with GunicornServer(postgres_url, CONSOLE_INSTANCE_PATH=str(tmp_path / "a")) as a, \
            GunicornServer(postgres_url, CONSOLE_INSTANCE_PATH=str(tmp_path / "b"),
                           CONSOLE_SECRET_KEY="another-session-key-" * 2) as b:
        browser = Browser()
        _, login = browser.get(f"{a.url}/login")
        assert browser.post(f"{a.url}/login", {"csrf_token": CSRF.search(login).group(1),
                                               "token": mint_jwt(founder)})[0] == 303
        assert browser.get(f"{a.url}/")[0] == 200
        status, _ = browser.get(f"{b.url}/")
        assert status == 303  # to /login


@contextlib.contextmanager
def read_only(folder: Path):
    """`folder` as a read-only file system: a read-only bind mount of it onto itself."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("a read-only bind mount needs root (CI runs as root)")
    subprocess.run(["mount", "--bind", str(folder), str(folder)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], check=True)
        with pytest.raises(OSError, match="Read-only file system"):
            (folder / "probe").write_text("x")
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_read_only_instance_folder_serves_with_postgresql_and_given_secrets(postgres_url, tmp_path):
    with read_only(tmp_path / "instance") as instance:
        with GunicornServer(postgres_url, CONSOLE_INSTANCE_PATH=str(instance)) as server:
            escalation = escalate(server.url, f"job-{uuid.uuid4().hex[:8]}", f"founder-{uuid.uuid4().hex[:8]}")
            assert escalation["status"] == "pending"
            assert call(server.url, "GET", "/healthz")[0] == 200
        worker = subprocess.run(
            [sys.executable, "-m", "flask", "--app", "console", "worker", "--once"], cwd=REPO, capture_output=True,
            text=True, timeout=60, env={**os.environ, "DATABASE_URL": postgres_url, "CONSOLE_SECRET_KEY": SECRET_KEY,
                                        "CONSOLE_JWT_SECRET": JWT_SECRET, "CONSOLE_AGENT_TOKEN": AGENT_TOKEN,
                                        "CONSOLE_INSTANCE_PATH": str(instance)})
        assert worker.returncode == 0, worker.stderr
        assert os.listdir(instance) == []


def test_a_read_only_instance_folder_without_secrets_says_what_to_set(tmp_path):
    with read_only(tmp_path / "instance") as instance:
        env = {"PATH": os.environ["PATH"], "CONSOLE_INSTANCE_PATH": str(instance),
               "DATABASE_URL": f"sqlite:///{tmp_path / 'console.db'}"}
        done = subprocess.run([sys.executable, "-m", "flask", "--app", "console", "routes"], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert f"Cannot keep generated secrets in {instance}/secrets.json (Read-only file system)" in done.stderr
    assert "Set CONSOLE_SECRET_KEY, CONSOLE_JWT_SECRET, CONSOLE_AGENT_TOKEN, CONSOLE_AGENT_JWT_SECRET, or " \
           "CONSOLE_INSTANCE_PATH to a folder the console may write." in done.stderr


def test_a_relative_instance_path_is_refused_with_a_message():
    env = {"PATH": os.environ["PATH"], "CONSOLE_INSTANCE_PATH": "instance-elsewhere"}
    done = subprocess.run([sys.executable, "-m", "flask", "--app", "console", "routes"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "CONSOLE_INSTANCE_PATH must be an absolute path, not 'instance-elsewhere'." in done.stderr

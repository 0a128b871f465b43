"""The package as an operator installs it (issue 14): a wheel built from this checkout,
installed into a fresh virtual environment outside it, migrates a fresh SQLite and a fresh
PostgreSQL database from the migrations it carries, and serves /healthz."""
from __future__ import annotations

import secrets
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from conftest import REPO, free_port, wait_for_health

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The bin/ folder of a fresh venv with the built wheel (and its dependencies) installed."""
    work = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--disable-pip-version-check",
                    str(REPO), "-w", str(work / "dist")], check=True, capture_output=True, timeout=300)
    [wheel] = (work / "dist").glob("escalation_console-*.whl")
    venv.create(work / "venv", with_pip=True)
    bin_dir = work / "venv" / "bin"
    subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    str(wheel)], check=True, capture_output=True, timeout=600)
    return bin_dir


def run_installed(bin_dir: Path, database_url: str, cwd: Path):
    """migrate with the installed package's flask, then serve it with its gunicorn: from a folder
    without this checkout, so nothing can come from the source tree."""
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "DATABASE_URL": database_url, "HOME": str(cwd),
           "CONSOLE_SECRET_KEY": secrets.token_urlsafe(32), "CONSOLE_AGENT_TOKEN": secrets.token_urlsafe(32),
           "CONSOLE_JWT_SECRET": secrets.token_urlsafe(32)}
    where = subprocess.run([str(bin_dir / "python"), "-c", "import console, sys; print(console.__file__)"],
                           cwd=cwd, env=env, capture_output=True, text=True, check=True)
    assert str(REPO) not in where.stdout, where.stdout  # the installed copy, not the checkout
    upgraded = subprocess.run([str(bin_dir / "flask"), "--app", "console", "db", "upgrade"], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=120)
    assert upgraded.returncode == 0, upgraded.stderr
    assert "0008_event_ids_in_commit_order" in upgraded.stderr  # every revision ran, from the wheel
    port = free_port()
    server = subprocess.Popen([str(bin_dir / "gunicorn"), "-c", "python:console.gunicorn_conf", "-w", "1",
                               "-b", f"127.0.0.1:{port}", "console:create_app()"], cwd=cwd, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_health(f"http://127.0.0.1:{port}", process=server)
        healthy = True
    except RuntimeError:
        healthy = False
    server.terminate()
    output = server.communicate(timeout=15)[0]
    assert healthy, output[-3000:]


def test_the_installed_wheel_migrates_sqlite_and_serves(installed, tmp_path):
    run_installed(installed, f"sqlite:///{tmp_path / 'fresh.db'}", tmp_path)


def test_the_installed_wheel_migrates_postgresql_and_serves(installed, tmp_path, postgres):
    url = postgres.create("console_wheel")
    try:
        run_installed(installed, url, tmp_path)
    finally:
        postgres.drop(url)

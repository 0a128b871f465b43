"""Secrets (issue 14): generated only for the embedded default; against PostgreSQL the
console starts only with its secrets given, and says which one is missing; HS256 founder
tokens only with CONSOLE_JWT_SECRET, never implied beside an identity provider."""
from __future__ import annotations

import subprocess
import sys
import time

import jwt
import pytest

from conftest import REPO, dispose
from console import create_app

NOWHERE = "postgresql+psycopg://nobody@127.0.0.1:9/never"  # creating the app does not connect


@pytest.fixture(autouse=True)
def no_console_environment(monkeypatch):
    import os

    for name in [name for name in os.environ if name.startswith("CONSOLE_") or name == "DATABASE_URL"]:
        monkeypatch.delenv(name)


def test_on_postgresql_a_missing_secret_stops_the_app_with_its_name():
    with pytest.raises(RuntimeError) as refused:
        create_app({"SQLALCHEMY_DATABASE_URI": NOWHERE})
    message = str(refused.value)
    assert "CONSOLE_SECRET_KEY" in message and "CONSOLE_AGENT_TOKEN" in message and "CONSOLE_JWT_SECRET" in message
    with pytest.raises(RuntimeError, match="Set CONSOLE_AGENT_TOKEN:"):
        create_app({"SQLALCHEMY_DATABASE_URI": NOWHERE, "SECRET_KEY": "k" * 32, "JWT_SECRET": "j" * 32})


def test_the_server_process_refuses_to_start_and_says_what_to_set():
    env = {"PATH": "/usr/bin:/bin", "DATABASE_URL": "postgresql://nobody@127.0.0.1:9/never",
           "CONSOLE_SECRET_KEY": "k" * 32, "CONSOLE_JWT_SECRET": "j" * 32}
    done = subprocess.run([sys.executable, "-m", "flask", "--app", "console", "routes"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "Set CONSOLE_AGENT_TOKEN: on PostgreSQL the console generates no secrets" in done.stderr


def test_beside_an_identity_provider_hs256_founder_tokens_are_not_implied(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    for database in (NOWHERE, f"sqlite:///{tmp_path / 'idp.db'}"):
        app = create_app({"SQLALCHEMY_DATABASE_URI": database, "SECRET_KEY": "k" * 32, "AGENT_TOKEN": "a" * 32,
                          "JWT_PUBLIC_KEY": public_pem, "JWT_AUDIENCE": "console"})
        try:
            assert not app.config["JWT_SECRET"], database  # none given, none generated
            from console.auth import verify_founder_token
            from console.errors import Unauthorized

            with app.test_request_context():
                now = int(time.time())
                assert verify_founder_token(jwt.encode({"sub": "f", "exp": now + 60, "aud": "console"}, key,
                                                      algorithm="RS256")) == "f"
                for secret in ("k" * 32, "a" * 32, "anything-at-all-" * 2):
                    with pytest.raises(Unauthorized):
                        verify_founder_token(jwt.encode({"sub": "f", "exp": now + 60}, secret, algorithm="HS256"))
        finally:
            dispose(app)


def test_without_an_agent_jwt_secret_scoped_tokens_are_off_and_say_so():
    app = create_app({"SQLALCHEMY_DATABASE_URI": NOWHERE, "SECRET_KEY": "k" * 32, "AGENT_TOKEN": "a" * 32,
                      "JWT_SECRET": "j" * 32})
    try:
        from console.auth import mint_agent_jwt, verify_agent_jwt
        from console.errors import Unauthorized

        with app.test_request_context():
            with pytest.raises(Unauthorized, match="CONSOLE_AGENT_JWT_SECRET"):
                verify_agent_jwt(mint_agent_jwt("x" * 32, "job-1", "founder-1", 60))
        result = app.test_cli_runner().invoke(args=["agent-token", "--job", "j", "--founder", "f"])
        assert result.exit_code != 0 and "CONSOLE_AGENT_JWT_SECRET" in result.output
    finally:
        dispose(app)

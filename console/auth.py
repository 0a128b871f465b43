"""Who is calling: founders (JWTs) and agents (an opaque token), for the API and the console.

Founder JWTs are verified with HS256 and CONSOLE_JWT_SECRET, or with an identity
provider's public key (CONSOLE_JWT_PUBLIC_KEY, PEM) or key set (CONSOLE_JWKS_URL). The
algorithm family is chosen by the key, never by the token alone, so a public key can
never be used as an HMAC secret and `alg: none` is never accepted.
"""
from __future__ import annotations

import functools
import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Callable, Literal

import jwt
from flask import current_app, g, request, session

from .errors import Forbidden, Unauthorized

ASYMMETRIC_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]
SESSION_FOUNDER_KEY = "founder_id"


@dataclass(frozen=True)
class Principal:
    kind: Literal["founder", "agent"]
    founder_id: str | None = None

    @property
    def is_agent(self) -> bool:
        return self.kind == "agent"


AGENT = Principal("agent")


def _jwks_client(url: str) -> jwt.PyJWKClient:
    clients = current_app.extensions.setdefault("console_jwks_clients", {})
    if url not in clients:
        clients[url] = jwt.PyJWKClient(url, cache_keys=True, lifespan=300, timeout=5)
    return clients[url]


_VERIFIED_CACHE_SIZE = 4096


def verify_founder_token(token: str) -> str:
    """The founder id (`sub`) of a valid founder JWT; Unauthorized otherwise.

    A frontend sends the same token with every request until it expires, so tokens whose
    signature checked out are remembered (per app, bounded); their time claims are checked
    again on every use."""
    cache: dict[str, tuple[str, float, float]] = current_app.extensions.setdefault("console_verified_tokens", {})
    hit = cache.get(token)
    if hit is not None:
        founder_id, not_before, expires = hit
        now = time.time()
        leeway = current_app.config.get("JWT_LEEWAY_SECONDS", 10)
        if not_before - leeway <= now < expires + leeway:
            return founder_id
        cache.pop(token, None)
    founder_id, claims = _verify_founder_token(token)
    if len(cache) >= _VERIFIED_CACHE_SIZE:
        cache.clear()
    not_before = max(float(claims.get("nbf", 0) or 0), float(claims.get("iat", 0) or 0))
    cache[token] = (founder_id, not_before, float(claims["exp"]))
    return founder_id


def _verify_founder_token(token: str) -> tuple[str, dict]:
    config = current_app.config
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise Unauthorized("The bearer token is not a JWT.") from None
    algorithm = header.get("alg")
    if algorithm == "HS256" and config.get("JWT_SECRET"):
        key, algorithms = config["JWT_SECRET"], ["HS256"]
    elif algorithm in ASYMMETRIC_ALGORITHMS and config.get("JWT_PUBLIC_KEY"):
        key, algorithms = config["JWT_PUBLIC_KEY"], [algorithm]
    elif algorithm in ASYMMETRIC_ALGORITHMS and config.get("JWKS_URL"):
        try:
            key, algorithms = _jwks_client(config["JWKS_URL"]).get_signing_key_from_jwt(token).key, [algorithm]
        except jwt.PyJWKClientError:
            raise Unauthorized("The token's signing key is not known to the identity provider.") from None
    else:
        raise Unauthorized(f"Tokens signed with {algorithm!r} are not accepted.")
    try:
        claims = jwt.decode(
            token, key, algorithms=algorithms,
            issuer=config.get("JWT_ISSUER") or None,
            audience=config.get("JWT_AUDIENCE") or None,
            leeway=config.get("JWT_LEEWAY_SECONDS", 10),
            options={"require": ["exp", "sub"], "verify_aud": bool(config.get("JWT_AUDIENCE"))},
        )
    except jwt.ExpiredSignatureError:
        raise Unauthorized("The token has expired.") from None
    except jwt.ImmatureSignatureError:
        raise Unauthorized("The token is not valid yet (nbf/iat in the future).") from None
    except jwt.PyJWTError as error:
        raise Unauthorized(f"The token is not valid: {error}.") from None
    founder_id = claims.get("sub")
    if not isinstance(founder_id, str) or not founder_id or len(founder_id) > 255:
        raise Unauthorized("The token's subject is not a founder id.")
    return founder_id, claims


def principal_from_bearer() -> Principal:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("Send 'Authorization: Bearer <token>' (a founder JWT or the agent token).")
    agent_token = current_app.config["AGENT_TOKEN"]
    # Compare digests: constant time whatever the lengths.
    if hmac.compare_digest(hashlib.sha256(token.encode()).digest(), hashlib.sha256(agent_token.encode()).digest()):
        return AGENT
    return Principal("founder", verify_founder_token(token))


def api_auth(*, founder: bool = True, agent: bool = True) -> Callable:
    """Guard an API view: 401 without valid credentials, 403 for the wrong kind of caller.
    The view receives the caller as `g.principal`."""

    def decorate(view: Callable) -> Callable:
        @functools.wraps(view)
        def wrapped(*args, **kwargs):
            principal = principal_from_bearer()
            if principal.is_agent and not agent:
                raise Forbidden("This action needs a founder: the agent token may not do it.")
            if not principal.is_agent and not founder:
                raise Forbidden("This endpoint is for agents: a founder token may not call it.")
            g.principal = principal
            return view(*args, **kwargs)

        return wrapped

    return decorate


# --- the console session -------------------------------------------------------------------

def current_founder_id() -> str | None:
    return session.get(SESSION_FOUNDER_KEY)


def start_console_session(founder_id: str) -> None:
    session.clear()  # a fresh session (and CSRF secret) for every login
    session.permanent = True
    session[SESSION_FOUNDER_KEY] = founder_id


def end_console_session() -> None:
    session.clear()

"""Who is calling: founders (JWTs) and agents (an opaque token), for the API and the console.

Founder JWTs are verified with HS256 and CONSOLE_JWT_SECRET, or with an identity
provider's public key (CONSOLE_JWT_PUBLIC_KEY, PEM) or key set (CONSOLE_JWKS_URL). The
algorithm family is chosen by the key, never by the token alone, so a public key can
never be used as an HMAC secret and `alg: none` is never accepted.

Agents present either the orchestrator's CONSOLE_AGENT_TOKEN (every job) or a job-scoped
agent JWT (HS256 with CONSOLE_AGENT_JWT_SECRET, `role: "agent"`, `job_id`, `founder_id`,
`exp`; SPEC §15). The two JWT kinds never stand in for each other: different secrets, and
the `role` claim decides which one secret a JWT is checked with. What a caller may see and
write is decided by `Principal.sees` and `Principal.check_may_write`, nowhere else.
"""
from __future__ import annotations

import datetime as dt
import functools
import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Any, Callable, Literal

import jwt
from cachetools import TTLCache
from flask import current_app, g, request, session

from .caches import LockedCache, app_cache
from .errors import Forbidden, Unauthorized
from .services import console_sessions

ASYMMETRIC_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]
SESSION_FOUNDER_KEY = "founder_id"
SESSION_UNTIL_KEY = "until"  # the exp of the token the session was started with


@dataclass(frozen=True)
class Principal:
    """Who is calling. A founder (`founder_id`); the orchestrator (an agent with no scope:
    every job); or a job-scoped agent (an agent with `job_id` and `founder_id`)."""

    kind: Literal["founder", "agent"]
    founder_id: str | None = None
    job_id: str | None = None  # set only for a job-scoped agent
    project_id: str | None = None  # a job-scoped agent's project, when its token names one (SPEC §16)

    @property
    def is_agent(self) -> bool:
        return self.kind == "agent"

    @property
    def is_orchestrator(self) -> bool:
        """The unscoped agent token: every job, every founder."""
        return self.kind == "agent" and self.job_id is None

    @property
    def is_scoped_agent(self) -> bool:
        return self.kind == "agent" and self.job_id is not None

    def sees_job(self, job_id: str) -> bool:
        """Could anything of this job be visible? (A founder's jobs are told by their owner.)"""
        return not self.is_scoped_agent or job_id == self.job_id

    def sees(self, founder_id: str | None, job_id: str | None) -> bool:
        """May the caller see a record of this founder and job? The orchestrator: everything;
        a scoped agent: its job and founder only; a founder: their own records."""
        if self.kind == "founder":
            return self.founder_id is not None and founder_id == self.founder_id
        if self.job_id is None:
            return True
        return job_id == self.job_id and founder_id == self.founder_id

    def check_may_write(self, job_id: str, founder_id: str) -> None:
        """Forbidden (403) unless the caller may write as an agent in this job for this
        founder: the orchestrator anywhere, a scoped agent in its own job and founder only."""
        if self.kind != "agent":
            raise Forbidden("This action is for agents: a founder token may not do it.")
        if self.job_id is not None and job_id != self.job_id:
            raise Forbidden(f"This agent token is scoped to job {self.job_id!r}; it may not write to job {job_id!r}.")
        if self.job_id is not None and founder_id != self.founder_id:
            raise Forbidden("This agent token is scoped to another founder: founder_id must be the token's.")

    def check_may_use_project(self, project_id: str | None) -> None:
        """Forbidden (403) when the caller's token is bound to another project (SPEC §16)."""
        if self.project_id is not None and project_id is not None and project_id != self.project_id:
            raise Forbidden(f"This agent token is scoped to project {self.project_id!r}; "
                            f"it may not act in project {project_id!r}.")


AGENT = Principal("agent")  # the orchestrator
AGENT_ROLE = "agent"
DEFAULT_AGENT_TOKEN_TTL = 24 * 3600


def _jwks_client(url: str) -> jwt.PyJWKClient:
    clients = current_app.extensions.setdefault("console_jwks_clients", {})
    if url not in clients:
        clients[url] = jwt.PyJWKClient(url, cache_keys=True, lifespan=_VERIFIED_FOR_SECONDS, timeout=5)
    return clients[url]


_VERIFIED_CACHE_SIZE = 4096
# A token is verified again after this long: a key rotated out of the identity provider's
# JWKS stops signing in within this time (the JWKS client refetches keys as often).
_VERIFIED_FOR_SECONDS = 300


def verify_founder_token(token: str) -> str:
    """The founder id (`sub`) of a valid founder JWT; Unauthorized otherwise.

    A frontend sends the same token with every request until it expires, so tokens whose
    signature checked out are remembered (per app, bounded); their time claims are checked
    again on every use."""
    return _remembered("console_verified_tokens", token, _verify_founder_token)[0]


def verify_founder_token_until(token: str) -> tuple[str, float]:
    """verify_founder_token, with the token's `exp` (a console session signed in with the
    token ends no later)."""
    return _remembered("console_verified_tokens", token, _verify_founder_token)


def verify_agent_jwt(token: str) -> Principal:
    """The scoped agent of a valid job-scoped agent JWT; Unauthorized otherwise (remembered
    like founder tokens)."""
    return _remembered("console_verified_agent_tokens", token, _verify_agent_jwt)[0]


def _token_cache(cache_name: str) -> LockedCache:
    """This app's cache of verified tokens of one kind."""
    return app_cache(cache_name, lambda: TTLCache(maxsize=_VERIFIED_CACHE_SIZE, ttl=_VERIFIED_FOR_SECONDS))


def _remembered(cache_name: str, token: str, verify: Callable[[str], tuple]) -> tuple[Any, float]:
    """(what verify() made of the token, the token's exp)."""
    cache = _token_cache(cache_name)
    hit = cache.get(token)
    if hit is not None:
        value, not_before, expires = hit
        now = time.time()
        leeway = current_app.config.get("JWT_LEEWAY_SECONDS", 10)
        if not_before - leeway <= now < expires + leeway:
            return value, expires
        cache.pop(token, None)
    value, claims = verify(token)
    not_before = max(float(claims.get("nbf", 0) or 0), float(claims.get("iat", 0) or 0))
    cache[token] = (value, not_before, float(claims["exp"]))
    return value, float(claims["exp"])


def _decode_errors(error: jwt.PyJWTError) -> Unauthorized:
    if isinstance(error, jwt.ExpiredSignatureError):
        return Unauthorized("The token has expired.")
    if isinstance(error, jwt.ImmatureSignatureError):
        return Unauthorized("The token is not valid yet (nbf/iat in the future).")
    return Unauthorized(f"The token is not valid: {error}.")


def _verify_agent_jwt(token: str) -> tuple[Principal, dict]:
    config = current_app.config
    if not config.get("AGENT_JWT_SECRET"):
        raise Unauthorized("Job-scoped agent tokens are not enabled on this server (CONSOLE_AGENT_JWT_SECRET).")
    try:
        claims = jwt.decode(token, config["AGENT_JWT_SECRET"], algorithms=["HS256"],
                            leeway=config.get("JWT_LEEWAY_SECONDS", 10),
                            options={"require": ["exp", "role", "job_id", "founder_id"], "verify_aud": False})
    except jwt.PyJWTError as error:
        raise _decode_errors(error) from None
    job_id, founder_id = claims.get("job_id"), claims.get("founder_id")
    if claims.get("role") != AGENT_ROLE:
        raise Unauthorized("The token is not an agent token.")
    for name, value in (("job_id", job_id), ("founder_id", founder_id)):
        if not isinstance(value, str) or not value or len(value) > 255:
            raise Unauthorized(f"The agent token's {name} is not an id.")
    project_id = claims.get("project_id")
    if project_id is not None and (not isinstance(project_id, str) or not project_id or len(project_id) > 100):
        raise Unauthorized("The agent token's project_id is not a project id.")
    return Principal("agent", founder_id=founder_id, job_id=job_id, project_id=project_id), claims


def mint_agent_jwt(secret: str, job_id: str, founder_id: str, ttl_seconds: int = DEFAULT_AGENT_TOKEN_TTL,
                   project_id: str | None = None) -> str:
    """A job-scoped agent token (what `flask --app console agent-token --job --founder [--project]` prints)."""
    now = int(time.time())
    claims = {"role": AGENT_ROLE, "job_id": job_id, "founder_id": founder_id, "iat": now,
              "exp": now + int(ttl_seconds)}
    if project_id is not None:
        claims["project_id"] = project_id
    return jwt.encode(claims, secret, algorithm="HS256")


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
    except jwt.PyJWTError as error:
        raise _decode_errors(error) from None
    if claims.get("role") == AGENT_ROLE:  # even if both secrets were set to one value
        raise Unauthorized("An agent token is not a founder token.")
    founder_id = claims.get("sub")
    if not isinstance(founder_id, str) or not founder_id or len(founder_id) > 255:
        raise Unauthorized("The token's subject is not a founder id.")
    return founder_id, claims


def principal_from_bearer() -> Principal:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("Send 'Authorization: Bearer <token>' (a founder JWT or an agent token).")
    agent_token = current_app.config["AGENT_TOKEN"]
    # Compare digests: constant time whatever the lengths.
    if hmac.compare_digest(hashlib.sha256(token.encode()).digest(), hashlib.sha256(agent_token.encode()).digest()):
        return AGENT
    known = _remembered_bearer(token)  # the hot path: a token seen before, still in its time window
    if known is not None:
        return known
    # A JWT that says it is an agent's is checked with the agent secret only (never as a
    # founder's); every other JWT only as a founder's, which refuses role "agent" too.
    try:
        unverified = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        unverified = None
    if isinstance(unverified, dict) and unverified.get("role") == AGENT_ROLE:
        return verify_agent_jwt(token)
    return Principal("founder", verify_founder_token(token))


def _remembered_bearer(token: str) -> Principal | None:
    """The caller of a JWT whose signature checked out before (either kind), without
    decoding it again; its time claims are checked on every use."""
    now = time.time()
    leeway = current_app.config.get("JWT_LEEWAY_SECONDS", 10)
    for cache_name, as_principal in (("console_verified_tokens", lambda sub: Principal("founder", sub)),
                                     ("console_verified_agent_tokens", lambda principal: principal)):
        hit = _token_cache(cache_name).get(token)
        if hit is not None:
            value, not_before, expires = hit
            if not_before - leeway <= now < expires + leeway:
                return as_principal(value)
    return None


def api_auth(*, founder: bool = True, agent: bool = True) -> Callable:
    """Guard an API view: 401 without valid credentials, 403 for the wrong kind of caller.
    The view receives the caller as `g.principal`."""

    def decorate(view: Callable) -> Callable:
        @functools.wraps(view)
        def wrapped(*args, **kwargs):
            principal = principal_from_bearer()
            if principal.is_agent and not agent:
                raise Forbidden("This action needs a founder: an agent token may not do it.")
            if not principal.is_agent and not founder:
                raise Forbidden("This endpoint is for agents: a founder token may not call it.")
            g.principal = principal
            return view(*args, **kwargs)

        return wrapped

    return decorate


# --- the console session -------------------------------------------------------------------

SESSION_KEY = "sid"  # the random value whose row in console_sessions makes the cookie count


def current_founder_id() -> str | None:
    """The founder of this request's console session, if it is live on the server too (signed
    out, ended everywhere or expired: None, and the cookie is cleared). Checked once a request."""
    if "console_founder_id" in g:
        return g.console_founder_id
    g.console_founder_id = None
    founder_id, session_key = session.get(SESSION_FOUNDER_KEY), session.get(SESSION_KEY)
    if founder_id is None:
        return None
    until = session.get(SESSION_UNTIL_KEY)
    if (until is not None and time.time() >= until) or not isinstance(session_key, str) \
            or not console_sessions.session_is_live(session_key, founder_id):
        session.clear()  # expired, signed out (here or elsewhere), or from before sessions were kept
        return None
    g.console_founder_id = founder_id
    return founder_id


def start_console_session(founder_id: str, until: float | None = None) -> None:
    """Sign the founder in for PERMANENT_SESSION_LIFETIME, and no longer than `until` (the
    exp of the token they signed in with)."""
    lifetime = current_app.permanent_session_lifetime.total_seconds()
    ends = min(time.time() + lifetime, until) if until is not None else time.time() + lifetime
    session_key = console_sessions.open_session(founder_id, dt.datetime.fromtimestamp(ends, dt.UTC))
    session.clear()  # a fresh session (and CSRF secret) for every login
    session.permanent = True
    session[SESSION_FOUNDER_KEY] = founder_id
    session[SESSION_KEY] = session_key
    if until is not None:
        session[SESSION_UNTIL_KEY] = until
    g.console_founder_id = founder_id


def end_console_session() -> None:
    """Sign out: this session ends on the server too (a copy of the cookie no longer counts)."""
    session_key = session.get(SESSION_KEY)
    if isinstance(session_key, str):
        console_sessions.end_session(session_key)
    session.clear()
    g.console_founder_id = None


def end_every_console_session(founder_id: str) -> int:
    """"Sign out everywhere": every session of the founder ends, this one included."""
    ended = console_sessions.end_every_session(founder_id)
    session.clear()
    g.console_founder_id = None
    return ended

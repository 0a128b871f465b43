"""The agent's side of the loop: escalate, keep working, learn the founder's decision.

Standard library only, so any agent process can vendor or import it::

    from console.client import ConsoleClient

    console = ConsoleClient("http://127.0.0.1:5000", agent_token)
    esc = console.escalate("job-1", session_id=..., project_id=..., founder_id=..., error_type="KeyError",
                           error_message=str(error), plain_english_problem=..., recommended_action=...,
                           options=[...])
    decision = console.wait_for_decision(esc["id"], timeout=3600)   # long-polls; survives restarts
    if decision["status"] == "resolved":       # by the founder, their rule, or the deadline's safe default
        act_on(decision["founder_decision"], decision["founder_guidance"])
    elif decision["status"] == "expired":      # nobody answered and there was no safe default
        pause_this_task()

`wait_for_decision` uses the server's bounded long-poll (`GET /api/escalations/{id}?wait=S`),
so the answer arrives within milliseconds of the founder's click, through whichever server
process serves the request; a restarting server or a database outage costs a retry, not the
decision.

`agent_token` is either the orchestrator's CONSOLE_AGENT_TOKEN (every job) or, better for
an agent process, a job-scoped token (`flask --app console agent-token --job JOB --founder
FOUNDER`, SPEC §15): the client sends either as the bearer. With a scoped token the server
lets the agent act only in that job and for that founder; `token_scope(token)` (and
`ConsoleClient.scope`) tells which ones, so an agent can take its job and founder from it.
"""
from __future__ import annotations

import base64
import binascii
import json
import random
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Iterable

LONG_POLL_SECONDS = 50  # the server allows at most 55


class ConsoleError(Exception):
    """The server refused the request (a 4xx): `status` and the problem details."""

    def __init__(self, status: int, problem: dict[str, Any]):
        self.status = status
        self.problem = problem
        super().__init__(f"{status} {problem.get('title', '')}: {problem.get('detail', '')}")


class ConsoleUnavailable(Exception):
    """The server could not be reached, or answered 5xx, after the retries allowed."""


class DecisionTimeout(TimeoutError):
    """The founder has not decided within the time the agent was willing to wait."""

    def __init__(self, escalation: dict[str, Any]):
        self.escalation = escalation
        super().__init__(f"escalation {escalation.get('id')} is still pending")


class ConsoleClient:
    def __init__(self, base_url: str, agent_token: str, *, request_timeout: float = 10.0,
                 retry_for: float = 30.0):
        self.base_url = base_url.rstrip("/")
        self.agent_token = agent_token  # the orchestrator's token, or a job-scoped one
        self.scope = token_scope(agent_token)  # {"job_id", "founder_id"} of a scoped token, else None
        self.request_timeout = request_timeout
        self.retry_for = retry_for  # how long a call keeps retrying an unreachable server

    # -- the agent's verbs
    def escalate(self, job_id: str, *, session_id: str, project_id: str, founder_id: str, error_type: str,
                 plain_english_problem: str, recommended_action: str, attempts_summary: Iterable[str] = (),
                 options: Iterable[dict[str, Any]] = (), error_message: str | None = None,
                 error_signature: str | None = None, expires_in: int | None = None,
                 on_expiry: str | None = None) -> dict[str, Any]:
        """Ask the founder. Asking again about the same error (same job, same signature)
        while it is open returns the same escalation with `occurrences` + 1.

        `expires_in` bounds the wait (seconds): at the deadline the server applies
        `on_expiry` (an option that needs no guidance; default the recommended one), or,
        without one, the escalation becomes `expired` with no decision. The answer may be
        in the response already: a founder's remembered decision (a rule) settles a
        matching question at once (`status` resolved, `decided_by` "rule")."""
        body: dict[str, Any] = {
            "session_id": session_id, "project_id": project_id, "founder_id": founder_id,
            "error_type": error_type, "plain_english_problem": plain_english_problem,
            "recommended_action": recommended_action, "attempts_summary": list(attempts_summary),
            "options": list(options),
        }
        if expires_in is not None:
            body["expires_in"] = expires_in
        if on_expiry is not None:
            body["on_expiry"] = on_expiry
        if error_signature is not None:
            body["error_signature"] = error_signature
        else:
            body["error_message"] = error_message or error_type
        return self._request("POST", f"/api/jobs/{_quote(job_id)}/escalations", body, retry_unsent_only=True)

    def get(self, escalation_id: str, wait: float | None = None) -> dict[str, Any]:
        path = f"/api/escalations/{_quote(escalation_id)}"
        if wait:
            path += f"?wait={wait:g}"
        return self._request("GET", path, timeout=(wait or 0) + self.request_timeout)

    def wait_for_decision(self, escalation_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Block until the escalation is settled (resolved, skipped or expired); returns it. Raises
        DecisionTimeout after `timeout` seconds (None: wait forever). Server restarts and
        outages are retried with backoff for as long as the wait lasts."""
        deadline = None if timeout is None else time.monotonic() + timeout
        backoff = 0.5
        while True:
            remaining = LONG_POLL_SECONDS if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                raise DecisionTimeout(self.get(escalation_id))
            try:
                escalation = self.get(escalation_id, wait=max(0.5, min(LONG_POLL_SECONDS, remaining)))
                backoff = 0.5
            except ConsoleUnavailable:
                time.sleep(min(backoff, max(0.0, remaining)))
                backoff = min(backoff * 2, 10.0)
                continue
            if escalation["status"] != "pending":
                return escalation

    def post_event(self, job_id: str, event_type: str, founder_id: str, project_id: str | None = None,
                   **payload: Any) -> dict[str, Any]:
        body = {"type": event_type, "founder_id": founder_id, **payload}
        if project_id is not None:
            body["project_id"] = project_id
        return self._request("POST", f"/api/jobs/{_quote(job_id)}/events", body, retry_unsent_only=True)

    def skip(self, escalation_id: str, reason: str | None = None) -> dict[str, Any]:
        """Withdraw the question (the problem went away). Safe to repeat."""
        return self._request("POST", f"/api/escalations/{_quote(escalation_id)}/skip", {"reason": reason})

    def events(self, job_id: str, after: int = 0, limit: int = 500) -> dict[str, Any]:
        return self._request("GET", f"/api/jobs/{_quote(job_id)}/events?after={after}&limit={limit}")

    # -- transport
    def _request(self, method: str, path: str, body: dict | None = None, *, timeout: float | None = None,
                 retry_unsent_only: bool = False) -> dict[str, Any]:
        """One call, retried while the server is unreachable (for at most retry_for seconds).
        Non-idempotent calls (retry_unsent_only) are retried only when the request surely
        never reached the server (connection refused)."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {self.agent_token}", "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        give_up = time.monotonic() + self.retry_for
        attempt = 0
        while True:
            attempt += 1
            request = urllib.request.Request(self.base_url + path, data=data, method=method, headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=timeout or self.request_timeout) as resp:
                    return json.loads(resp.read() or b"null")
            except urllib.error.HTTPError as error:
                payload = _json_or_text(error.read())
                if error.code < 500:
                    raise ConsoleError(error.code, payload) from None
                failure: Exception = ConsoleUnavailable(f"{method} {path}: {error.code} {payload}")
                retryable = not retry_unsent_only or error.code == 503
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as error:
                failure = ConsoleUnavailable(f"{method} {path}: {error}")
                reason = getattr(error, "reason", error)
                retryable = not retry_unsent_only or isinstance(reason, ConnectionRefusedError)
            if not retryable or time.monotonic() >= give_up:
                raise failure
            time.sleep(min(5.0, 0.2 * 2 ** min(attempt, 5)) * (0.5 + random.random() / 2))


def token_scope(token: str) -> dict[str, str] | None:
    """The `job_id` and `founder_id` a job-scoped agent token is for, read from its payload
    without verifying it (the server does that), or None for the orchestrator's token."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error):
        return None
    if not isinstance(claims, dict) or claims.get("role") != "agent":
        return None
    job_id, founder_id = claims.get("job_id"), claims.get("founder_id")
    if not isinstance(job_id, str) or not isinstance(founder_id, str):
        return None
    return {"job_id": job_id, "founder_id": founder_id}


def _quote(value: str) -> str:
    return urllib.parse.quote(str(value), safe="")


def _json_or_text(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
        return value if isinstance(value, dict) else {"detail": str(value)}
    except ValueError:
        return {"detail": raw.decode(errors="replace")[:500]}

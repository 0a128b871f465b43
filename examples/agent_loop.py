#!/usr/bin/env python3
"""A simulated TAOR loop (think, act, observe, repeat) that asks its founder for help.

One task ("payments") fails three times — each failure posts `agent.retrying` — and is
escalated; the agent keeps working on its other tasks while a background thread
long-polls for the founder's decision, then acts on it:

* skip_feature         drop the task and carry on
* simpler_version      rebuild the task without the failing part
* provide_guidance     retry the task with the founder's words as instructions
* provide_credentials  retry once the founder says the secret is in place

Run it against a console (the README shows the whole loop):

    CONSOLE_AGENT_TOKEN=... python examples/agent_loop.py --url http://127.0.0.1:5000 --founder founder-demo

Least privilege: give the agent a token scoped to its one job instead of the
orchestrator's key (the job and the founder are then read from the token):

    CONSOLE_AGENT_TOKEN=$(flask --app console agent-token --job job-42 --founder founder-demo --ttl 3600) \
        python examples/agent_loop.py --url http://127.0.0.1:5000

or let the example mint one itself from the signing key, as an orchestrator does for each
agent it starts: --mint-with "$CONSOLE_AGENT_JWT_SECRET" (needs PyJWT).

then answer the question in the browser. It exits 0 once every task is settled.

The question has a deadline (--expires-in, 30 minutes by default): if nobody answers, the
server applies the safe default ("Build a simpler version") and the agent goes ahead with
it; it says so. Tick "Answer this error the same way from now on" when you answer, run the
example again, and the second time the create's own response carries the answer (the
founder's rule): no waiting at all.
"""
from __future__ import annotations

import argparse
import os
import queue
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from console.client import ConsoleClient, DecisionTimeout, token_scope  # noqa: E402

OPTIONS = [
    {"value": "skip_feature", "label": "Skip payments for now",
     "description": "Launch without card payments; I'll keep building everything else."},
    {"value": "simpler_version", "label": "Build a simpler version",
     "description": "Use a hosted payment link instead of an embedded checkout.", "recommended": True},
    {"value": "provide_guidance", "label": "I'll tell you what to do",
     "description": "Write exact instructions and I will try again with them."},
    {"value": "provide_credentials", "label": "I've added the Stripe key",
     "description": "I put STRIPE_SECRET_KEY in the project's secrets; try again.", "requires_guidance": False},
]


def log(message: str) -> None:
    print(f"[agent {time.strftime('%H:%M:%S')}] {message}", flush=True)


class Agent:
    def __init__(self, console: ConsoleClient, founder_id: str, project_id: str, job_id: str, decision_timeout: float,
                 expires_in: int | None = None):
        self.console = console
        self.founder_id = founder_id
        self.project_id = project_id
        self.job_id = job_id
        self.session_id = f"sess-{uuid.uuid4().hex[:8]}"
        self.decision_timeout = decision_timeout
        self.expires_in = expires_in
        self.decisions: queue.Queue = queue.Queue()
        self.outcomes: dict[str, str] = {}

    def event(self, event_type: str, **payload) -> None:
        self.console.post_event(self.job_id, event_type, self.founder_id, self.project_id, **payload)

    # -- act: the simulated work
    def attempt_payments(self, attempt: int) -> None:
        # The request id differs every time; the error signature normalises it (and the
        # attempt number) away, so the same failure next time is the same question.
        raise RuntimeError(f"stripe.error.AuthenticationError: No API key provided (attempt {attempt}, "
                           f"request {uuid.uuid4()})")

    def run_task(self, name: str) -> None:
        self.event("build.stage.started", stage=name)
        time.sleep(0.05)
        self.event("build.stage.completed", stage=name)
        self.outcomes[name] = "built"
        log(f"built {name}")

    # -- the loop
    def run(self) -> int:
        attempts: list[str] = []
        error: Exception | None = None
        for attempt in range(1, 4):
            try:
                self.attempt_payments(attempt)
            except RuntimeError as failure:
                error = failure
                attempts.append(f"Attempt {attempt}: called Stripe's API — it answered that no API key is set")
                self.event("agent.retrying", attempt=attempt, error_type="StripeAuthenticationError")
                log(f"payments failed (attempt {attempt})")
        escalation = self.console.escalate(
            self.job_id, session_id=self.session_id, project_id=self.project_id, founder_id=self.founder_id,
            error_type="StripeAuthenticationError", error_message=str(error),
            plain_english_problem="I can't finish the checkout page: taking card payments needs a Stripe "
                                  "secret key, and the project doesn't have one.",
            attempts_summary=attempts,
            recommended_action="Use a hosted Stripe payment link for now; it needs no secret key in the app.",
            options=OPTIONS, expires_in=self.expires_in, on_expiry="simpler_version")
        if escalation["status"] != "pending":  # the founder's remembered decision answered at once
            log(f"escalated {escalation['id']}: answered at once ({escalation['decided_by']}), no waiting")
            return self.act_on(escalation)
        log(f"escalated {escalation['id']} — waiting for the founder (deadline {escalation['expires_at']}, "
            f"safe default {escalation['on_expiry']!r}) while I keep working")
        waiter = threading.Thread(target=self.wait_for_founder, args=(escalation["id"],), daemon=True)
        waiter.start()

        for task in ("landing page", "signup form", "order history"):  # other work goes on meanwhile
            self.run_task(task)

        decision = self.decisions.get()
        if isinstance(decision, Exception):
            log(f"no decision: {decision}; pausing the payments task")
            self.event("agent.build_paused", reason="Still waiting for a decision on payments")
            return 2
        return self.act_on(decision)

    def wait_for_founder(self, escalation_id: str) -> None:
        try:
            self.decisions.put(self.console.wait_for_decision(escalation_id, timeout=self.decision_timeout))
        except (DecisionTimeout, Exception) as error:  # surfaced to the loop, never lost in a thread
            self.decisions.put(error)

    def act_on(self, escalation: dict) -> int:
        status, decision, guidance = escalation["status"], escalation["founder_decision"], escalation["founder_guidance"]
        who = {"rule": "the founder's rule", "expiry": "the deadline (safe default)"}.get(
            escalation.get("decided_by"), "the founder")
        self.event("agent.waking", note=f"answered by {who}: {decision or status}")
        if status == "skipped":
            log("the question was withdrawn; nothing to do")
        elif status == "expired":
            log("nobody answered in time and there is no safe default; pausing payments")
            self.event("agent.build_paused", reason="No answer on payments in time")
            return 2
        elif decision == "skip_feature":
            self.outcomes["payments"] = "skipped"
            log("skipping payments, as the founder decided")
        elif decision == "simpler_version":
            self.run_task("payments (hosted payment link)")
            self.outcomes["payments"] = "simpler"
        elif decision == "provide_guidance":
            log(f"retrying payments with the founder's guidance: {guidance!r}")
            self.run_task(f"payments ({guidance})")
            self.outcomes["payments"] = "guided"
        elif decision == "provide_credentials":
            log("the founder added the key; retrying payments")
            self.run_task("payments (with Stripe key)")
            self.outcomes["payments"] = "credentials"
        else:
            log(f"unexpected decision {decision!r}; pausing")
            self.event("agent.build_paused", reason=f"Did not understand the decision {decision!r}")
            return 3
        log(f"done: {self.outcomes}")
        return 0


def mint_scoped_token(agent_jwt_secret: str, job_id: str, founder_id: str, ttl: int) -> str:
    """What an orchestrator does before starting an agent: a token for this one job and
    founder (the same claims as `flask --app console agent-token --job --founder --ttl`)."""
    import jwt  # noqa: PLC0415  (PyJWT: only to mint; the client itself is standard library)

    now = int(time.time())
    return jwt.encode({"role": "agent", "job_id": job_id, "founder_id": founder_id, "iat": now, "exp": now + ttl},
                      agent_jwt_secret, algorithm="HS256")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=os.environ.get("CONSOLE_URL", "http://127.0.0.1:5000"))
    parser.add_argument("--token", default=os.environ.get("CONSOLE_AGENT_TOKEN"),
                        help="the orchestrator's agent token or a job-scoped one (default: $CONSOLE_AGENT_TOKEN)")
    parser.add_argument("--mint-with", metavar="AGENT_JWT_SECRET", default=None,
                        help="instead of --token: mint a job-scoped token with this CONSOLE_AGENT_JWT_SECRET")
    parser.add_argument("--founder", default=None, help="default: the scoped token's, else founder-demo")
    parser.add_argument("--project", default="proj-bakery-shop")
    parser.add_argument("--job", default=None, help="default: the scoped token's, else a new job id")
    parser.add_argument("--decision-timeout", type=float, default=3600)
    parser.add_argument("--expires-in", type=int, default=1800,
                        help="the question's deadline in seconds; then the safe default applies (default 1800)")
    args = parser.parse_args(argv)
    token = args.token
    if args.mint_with:
        token = mint_scoped_token(args.mint_with, args.job or f"job-{uuid.uuid4().hex[:10]}",
                                  args.founder or "founder-demo", ttl=int(args.decision_timeout) + 600)
    if not token:
        parser.error("an agent token is required (--token, CONSOLE_AGENT_TOKEN or --mint-with)")
    scope = token_scope(token)
    if scope is not None:  # a job-scoped token: it may act only in its job, for its founder
        for name, given in (("job", args.job), ("founder", args.founder)):
            if given is not None and given != scope[f"{name}_id"]:
                parser.error(f"--{name} {given!r} is not the scoped token's ({scope[f'{name}_id']!r})")
        args.job, args.founder = scope["job_id"], scope["founder_id"]
    founder_id = args.founder or "founder-demo"
    job_id = args.job or f"job-{uuid.uuid4().hex[:10]}"
    log(f"job {job_id} for {founder_id} on {args.url}" + (" with a job-scoped token" if scope else ""))
    agent = Agent(ConsoleClient(args.url, token), founder_id, args.project, job_id, args.decision_timeout,
                  expires_in=args.expires_in)
    return agent.run()


if __name__ == "__main__":
    sys.exit(main())

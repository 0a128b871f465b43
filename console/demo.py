"""Realistic demo data, written through the services (so events and rules are the real ones)."""
from __future__ import annotations

from .schemas import EscalationCreate
from .services import escalations as escalation_service
from .services import jobs as job_service
from .services import notifications as notification_service

STANDARD_OPTIONS = [
    {"value": "skip_feature", "label": "Skip this feature",
     "description": "Leave it out for now and keep building the rest of the app."},
    {"value": "simpler_version", "label": "Build a simpler version",
     "description": "Ship a smaller version without the part that keeps failing.", "recommended": True},
    {"value": "provide_guidance", "label": "I'll tell you what to do",
     "description": "Write exact instructions and I will try again with them."},
]

# (project, job, session, events before, escalation, outcome)
SCENARIOS = [
    ("proj-bakery-shop", "job-bakery-checkout", {
        "error_type": "StripeAuthenticationError",
        "error_message": "stripe.error.AuthenticationError: No API key provided. (request req_8f2a1c9d0e7b)",
        "plain_english_problem": "I can't take card payments yet: the checkout page needs a Stripe secret key, "
                                 "and the project doesn't have one.",
        "attempts_summary": ["Looked for STRIPE_SECRET_KEY in the project settings",
                             "Tried Stripe's test mode without a key",
                             "Checked whether another payment provider was already configured"],
        "recommended_action": "Add your Stripe secret key (test mode is fine) so I can finish checkout.",
        "options": [
            {"value": "provide_credentials", "label": "I'll add the Stripe key",
             "description": "Paste the key in Settings → Secrets, then tell me here.", "requires_guidance": True,
             "recommended": True},
            {"value": "skip_feature", "label": "Skip payments for now",
             "description": "Launch with 'pay on pickup' and add cards later."},
        ],
    }, None),
    ("proj-bakery-shop", "job-bakery-checkout", {
        "error_type": "IntegrityError",
        "error_message": "sqlalchemy.exc.IntegrityError: duplicate key value violates unique constraint "
                         "\"orders_pickup_slot_key\" DETAIL: Key (pickup_slot)=(2026-11-27 09:00) already exists.",
        "plain_english_problem": "Two customers can't pick the same pickup time, but the shop wants up to "
                                 "four orders per time slot. The database only allows one.",
        "attempts_summary": ["Kept the one-order-per-slot rule and showed a friendly error",
                             "Tried a per-slot counter, which raced under two simultaneous orders",
                             "Tried locking the slot row; tests still failed on SQLite"],
        "recommended_action": "Allow up to four orders per slot with a counted check in one transaction.",
        "options": STANDARD_OPTIONS,
    }, ("simpler_version", "Four per slot is right. Saturdays can take six.")),
    ("proj-tutor-match", "job-tutor-calendar", {
        "error_type": "OAuthScopeError",
        "error_message": "google.auth.exceptions.RefreshError: ('invalid_scope: Bad Request', "
                         "{'error': 'invalid_scope'}) at /srv/app/calendar/sync.py:88",
        "plain_english_problem": "Syncing tutors' Google Calendars keeps failing: Google refuses the "
                                 "permission I ask for, because the app isn't verified by Google yet.",
        "attempts_summary": ["Asked for read-only calendar access instead of full access",
                             "Retried with a fresh sign-in",
                             "Tried the free/busy endpoint, which needs the same verification"],
        "recommended_action": "Let tutors paste their calendar's public iCal link until Google verifies the app.",
        "options": STANDARD_OPTIONS,
    }, None),
    ("proj-tutor-match", "job-tutor-calendar", {
        "error_type": "TimeoutError",
        "error_message": "TimeoutError: geocoding 'Rue de la Loi 16, 1000 Bruxelles' took 30.0 s",
        "plain_english_problem": "Looking up tutors' addresses on the map times out for some Belgian "
                                 "addresses, so those tutors don't show up in search.",
        "attempts_summary": ["Retried with a longer timeout", "Tried a second geocoding service"],
        "recommended_action": "Search by postcode only; it is fast and accurate enough for matching.",
        "options": STANDARD_OPTIONS,
    }, "skip"),
    ("proj-tutor-match", "job-tutor-reviews", {
        "error_type": "ModerationPolicyError",
        "error_message": "ValueError: review text contains a phone number (policy PII-3)",
        "plain_english_problem": "Some reviews include tutors' phone numbers. I'm not sure whether to hide "
                                 "the number, hide the whole review, or allow it.",
        "attempts_summary": ["Masked numbers automatically, which also masked prices like '25 50'",
                             "Flagged reviews for manual approval"],
        "recommended_action": "Hide phone numbers and e-mail addresses, keep the rest of the review.",
        # Expires during a first look: the worker (`make run` starts it) applies the safe default.
        "expires_in": 300,
        "options": [
            {"value": "mask_contact_details", "label": "Hide contact details",
             "description": "Replace phone numbers and e-mails with '[hidden]'.", "recommended": True},
            {"value": "hold_for_review", "label": "Hold those reviews for me",
             "description": "They wait in an approval queue until you publish them."},
            {"value": "provide_guidance", "label": "Something else",
             "description": "Tell me exactly what you want."},
        ],
    }, None),
    ("proj-gym-crm", "job-gym-import", {
        "error_type": "UnicodeDecodeError",
        "error_message": "UnicodeDecodeError: 'utf-8' codec can't decode byte 0xe9 in position 1432",
        "plain_english_problem": "The member list you uploaded (members.csv) isn't in the format I expected, "
                                 "so names with accents come out garbled.",
        "attempts_summary": ["Read the file as UTF-8", "Guessed the encoding as Latin-1, which fixed "
                             "accents but broke the euro sign", "Asked the CSV sniffer for the dialect"],
        "recommended_action": "Re-export the file from Excel as 'CSV UTF-8' and upload it again.",
        "options": STANDARD_OPTIONS,
    }, ("provide_guidance", "It came from our old booking tool. Use Windows-1252.")),
]

TIMELINE = {
    "job-bakery-checkout": [("build.stage.started", {"stage": "checkout"}),
                            ("agent.retrying", {"attempt": 1, "error_type": "StripeAuthenticationError"}),
                            ("agent.retrying", {"attempt": 2, "error_type": "StripeAuthenticationError"}),
                            ("agent.retrying", {"attempt": 3, "error_type": "StripeAuthenticationError"})],
    "job-tutor-calendar": [("build.stage.started", {"stage": "calendar sync"}),
                           ("agent.retrying", {"attempt": 1, "error_type": "OAuthScopeError"}),
                           ("agent.retrying", {"attempt": 2, "error_type": "OAuthScopeError"})],
    "job-tutor-reviews": [("agent.thinking", {"note": "Reading the moderation policy"})],
    "job-gym-import": [("build.stage.started", {"stage": "member import"}),
                       ("agent.retrying", {"attempt": 1, "error_type": "UnicodeDecodeError"})],
}


def load_demo_data(founder_id: str) -> str:
    if escalation_service.list_founder_escalations(founder_id, limit=1)[0]:
        return "already loaded (nothing added)"
    # An address before the questions, so their e-mails are written (instance/mail/ without an SMTP server).
    notification_service.ensure_demo_settings(founder_id, f"{founder_id}@example.com")
    seen_jobs: set[str] = set()
    counts = {"pending": 0, "resolved": 0, "skipped": 0}
    for project_id, job_id, fields, outcome in SCENARIOS:
        if job_id not in seen_jobs:
            seen_jobs.add(job_id)
            for event_type, payload in TIMELINE.get(job_id, []):
                job_service.post_job_event(job_id, event_type, founder_id, project_id, payload)
        data = EscalationCreate.model_validate({
            **fields, "session_id": f"sess-{job_id}", "project_id": project_id, "founder_id": founder_id})
        escalation, _ = escalation_service.create_escalation(job_id, data)
        if outcome == "skip":
            escalation_service.skip_escalation(escalation.id, "Switched to postcode search on my own.")
            counts["skipped"] += 1
        elif outcome:
            escalation_service.resolve_escalation(escalation.id, founder_id, *outcome)
            job_service.post_job_event(job_id, "agent.waking", founder_id, project_id,
                                       {"note": "Resuming with the founder's answer"})
            counts["resolved"] += 1
        else:
            counts["pending"] += 1
    projects = len({s[0] for s in SCENARIOS})
    return (f"{projects} projects, {len(seen_jobs)} jobs, {counts['pending']} pending, "
            f"{counts['resolved']} resolved, {counts['skipped']} skipped escalations")

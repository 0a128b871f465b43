"""Request and response models of the JSON API (pydantic 2); also the OpenAPI source.

They check shape, types and lengths. Rules that need the stored record (a decision must
be one of the escalation's options, guidance that an option requires, who may do what)
live in the services.
"""
from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import json
import re
import uuid
import zoneinfo
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator, BaseModel, ConfigDict, Field, PlainSerializer, StrictBool, StringConstraints, TypeAdapter,
    ValidationError, field_validator, model_validator,
)

from . import outbound
from .config import MAX_EVENT_PAYLOAD_BYTES
from .errors import FieldError, ValidationFailed
from .events import AGENT_EVENT_TYPES, ENVELOPE_KEYS, SERVER_OWNED_EVENT_TYPES
from .text import CONTROL_OR_SEPARATOR

MAX_OPTIONS = 10
MAX_ATTEMPTS = 50
MAX_TEXT = 10_000

def _no_nul(value: str) -> str:
    # PostgreSQL stores no NUL in text (nor \u0000 in jsonb): refuse it on every backend alike.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


NoNul = AfterValidator(_no_nul)

# SPEC §16: an identifier holds no C0/C1 control character and no line or paragraph separator,
# so none can end a header line, forge a log line or break a Slack field.
UNSAFE_IN_IDENTIFIERS = CONTROL_OR_SEPARATOR
UNSAFE_IN_IDENTIFIERS_WORDS = "control characters (U+0000-U+001F, U+007F-U+009F) or line separators (U+2028, U+2029)"


def _identifier(value: str) -> str:
    if UNSAFE_IN_IDENTIFIERS.search(value):
        raise ValueError(f"must not contain {UNSAFE_IN_IDENTIFIERS_WORDS}")
    return value


def is_identifier(value: str, max_length: int = 255) -> bool:
    """Could this be an identifier of the API (1-max_length characters, no control character)?"""
    return 1 <= len(value) <= max_length and not UNSAFE_IN_IDENTIFIERS.search(value)


SafeId = AfterValidator(_identifier)
Id = Annotated[str, StringConstraints(min_length=1, max_length=255), SafeId]
ShortId = Annotated[str, StringConstraints(min_length=1, max_length=100), SafeId]  # keeps the signature within 255
Text = Annotated[str, StringConstraints(min_length=1, max_length=MAX_TEXT), NoNul]
RawText = Annotated[str, StringConstraints(min_length=1, max_length=MAX_TEXT)]  # only hashed, never stored
OptionalText = Annotated[str, StringConstraints(max_length=MAX_TEXT), NoNul]
OptionValue = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,100}$")]
Timestamp = Annotated[dt.datetime, PlainSerializer(lambda v: v.isoformat(), return_type=str, when_used="json")]
Status = Literal["pending", "resolved", "skipped", "expired"]
DecidedBy = Literal["founder", "rule", "expiry", "agent"]
DecidedVia = Literal["api", "console", "email", "slack"]
MAX_EXPIRES_IN = 30 * 24 * 3600


def _not_blank(value: str | None) -> str | None:
    if value is not None and not value.strip():
        raise ValueError("must not be blank")
    return value


class EscalationOption(BaseModel):
    """One answer the founder can pick. `value` is what the agent receives back."""

    model_config = ConfigDict(extra="forbid")

    value: OptionValue = Field(description="Machine value: 1-100 of A-Z a-z 0-9 _ . : -")
    label: Annotated[str, StringConstraints(min_length=1, max_length=500), NoNul]
    description: OptionalText = ""
    requires_guidance: StrictBool | None = Field(None, description="The founder must write guidance with it")
    recommended: StrictBool | None = Field(None, description="The agent's recommended answer")


class EscalationCreate(BaseModel):
    """Body of POST /api/jobs/{job_id}/escalations (the agent escalates)."""

    # Exactly one of error_message and error_signature, said in the schema too (inside allOf:
    # a generated client then still types the body, where a bare oneOf makes it Any).
    model_config = ConfigDict(json_schema_extra={"allOf": [{"oneOf": [{"required": ["error_message"]},
                                                                      {"required": ["error_signature"]}]}]})

    session_id: Id
    project_id: ShortId
    founder_id: Id
    error_type: ShortId
    plain_english_problem: Text
    recommended_action: Text
    attempts_summary: list[Text] = Field(default_factory=list, max_length=MAX_ATTEMPTS)
    options: list[EscalationOption] = Field(default_factory=list, max_length=MAX_OPTIONS)
    error_message: RawText | None = Field(None, description="Raw error text, used only for the signature; never stored")
    error_signature: Id | None = Field(None, description="The agent's own signature, stored as given")
    expires_in: Annotated[int, Field(strict=True, ge=1, le=MAX_EXPIRES_IN)] | None = Field(
        None, description="Seconds until nobody answering settles it (default CONSOLE_DEFAULT_EXPIRES_IN: none)")
    on_expiry: OptionValue | None = Field(
        None, description="The option applied at the deadline; one needing no guidance. "
                          "Default: the recommended option when it needs no guidance, else none (status expired)")

    _blank = field_validator("session_id", "project_id", "founder_id", "error_type",
                             "plain_english_problem", "recommended_action")(_not_blank)

    @field_validator("options")
    @classmethod
    def _unique_values(cls, options: list[EscalationOption]) -> list[EscalationOption]:
        values = [o.value for o in options]
        if len(values) != len(set(values)):
            raise ValueError("option values must be unique")
        return options

    @model_validator(mode="after")
    def _one_signature_source(self) -> EscalationCreate:
        if (self.error_message is None) == (self.error_signature is None):
            raise ValueError("error_message: send exactly one of error_message and error_signature")
        return self


class ResolveRequest(BaseModel):
    """Body of POST /api/escalations/{id}/resolve (the founder decides)."""

    decision: Annotated[str, StringConstraints(max_length=255), NoNul] = Field(
        description="One of the escalation's option values (any value when it has none)")
    guidance: OptionalText | None = Field(None, description="Free text for the agent; stripped, blank becomes null")
    remember: StrictBool = Field(False, description="Answer this error the same way from now on, in this project")


class SkipRequest(BaseModel):
    """Body of POST /api/escalations/{id}/skip (the agent withdraws the question)."""

    reason: OptionalText | None = None


class EventCreate(BaseModel):
    """Body of POST /api/jobs/{job_id}/events: `type`, `founder_id`, optional `project_id`,
    and any other keys as the flat payload (at most 16 KiB as JSON)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="An agent-posted SSEEventType value",
                      json_schema_extra={"enum": sorted(AGENT_EVENT_TYPES)})
    founder_id: Id
    project_id: ShortId | None = None

    _blank = field_validator("founder_id", "project_id")(_not_blank)

    @field_validator("type")
    @classmethod
    def _agent_type(cls, value: str) -> str:
        if value in SERVER_OWNED_EVENT_TYPES:
            raise ValueError(f"{value!r} is emitted by the server and cannot be posted")
        if value not in AGENT_EVENT_TYPES:
            raise ValueError(f"unknown event type {value!r}; expected one of {', '.join(sorted(AGENT_EVENT_TYPES))}")
        return value

    @model_validator(mode="after")
    def _payload_limits(self) -> EventCreate:
        check_json_shape(self.payload, "payload")
        reserved = ENVELOPE_KEYS & set(self.payload)
        if _unstorable(self.payload):
            raise ValueError("payload: NUL characters and unpaired surrogates cannot be stored")
        if reserved:
            raise ValueError(f"payload: the keys {sorted(reserved)} are set by the server")
        if len(json.dumps(self.payload).encode()) > MAX_EVENT_PAYLOAD_BYTES:
            raise ValueError("payload: larger than 16 KiB as JSON")
        return self

    @property
    def payload(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


MAX_JSON_DEPTH = 32
MAX_JSON_VALUES = 10_000


def json_shape_problem(value: Any) -> str | None:
    """Why a JSON value is too deep (> 32 levels) or too large (> 10,000 values) for the API,
    or None. Walked without recursion, so no input can exhaust the stack."""
    count, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        count += 1
        if count > MAX_JSON_VALUES:
            return f"holds more than {MAX_JSON_VALUES:,} values"
        if isinstance(item, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                return f"nests deeper than {MAX_JSON_DEPTH} levels"
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return None


def check_json_shape(value: Any, field: str) -> None:
    problem = json_shape_problem(value)
    if problem is not None:
        raise ValueError(f"{field}: {problem}")


def _unstorable(value: Any) -> bool:
    """NUL or an unpaired surrogate anywhere in a JSON value, keys included (jsonb refuses both)."""
    if isinstance(value, str):
        return "\x00" in value or any("\ud800" <= c <= "\udfff" for c in value)
    if isinstance(value, list):
        return any(_unstorable(v) for v in value)
    if isinstance(value, dict):
        return any(_unstorable(k) or _unstorable(v) for k, v in value.items())
    return False


class PreviousDecision(BaseModel):
    """The founder's most recent decision on the same project's same error, in any job."""

    escalation_id: uuid.UUID
    decision: str
    label: str | None = Field(description="The chosen option's label, when it had one")
    guidance: str | None
    decided_at: Timestamp


def parse_previous_decision(raw: Any) -> dict[str, Any] | None:
    """The previous-decision column as read from the database (JSON text on SQLite, a
    document on PostgreSQL: escalation_id, decision, guidance, decided_at, options) →
    PreviousDecision's fields."""
    if raw is None or isinstance(raw, PreviousDecision):
        return raw
    document = json.loads(raw) if isinstance(raw, str) else raw
    if "options" not in document:
        return document
    decided_at = document["decided_at"]
    when = decided_at if isinstance(decided_at, dt.datetime) else dt.datetime.fromisoformat(decided_at)
    option = next((o for o in document.get("options") or [] if o.get("value") == document["decision"]), None)
    return {
        "escalation_id": uuid.UUID(str(document["escalation_id"])),
        "decision": document["decision"],
        "label": option.get("label") if option else None,
        "guidance": document["guidance"],
        "decided_at": when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC),
    }


class EscalationResponse(BaseModel):
    """An escalation as the API serves it (SPEC §6)."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    session_id: str
    job_id: str
    project_id: str
    founder_id: str
    error_type: str
    error_signature: str
    plain_english_problem: str
    attempts_summary: list[str]
    recommended_action: str
    options: list[dict[str, Any]] = Field(json_schema_extra={"items": {"$ref": "#/components/schemas/EscalationOption"}})
    status: Status
    founder_decision: str | None
    founder_guidance: str | None
    created_at: Timestamp
    resolved_at: Timestamp | None
    occurrences: int
    last_seen_at: Timestamp
    expires_at: Timestamp | None = Field(description="When nobody answering settles it; null: never")
    on_expiry: str | None = Field(description="The option applied then; null: it expires without a decision")
    decided_by: DecidedBy | None = Field(description="Who settled it; null while pending")
    decided_via: DecidedVia | None = Field(description="Where a person decided; null when no person did")
    rule_id: uuid.UUID | None = Field(description="The founder's rule that answered it (decided_by rule)")
    previous_decision: PreviousDecision | None = Field(
        description="The founder's most recent decision on this project's same error, in any job")

    _previous = field_validator("previous_decision", mode="before")(parse_previous_decision)


class RuleResponse(BaseModel):
    """A remembered decision (SPEC §12)."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    project_id: str
    error_type: str
    error_signature: str
    decision: str
    label: str | None
    guidance: str | None
    created_at: Timestamp
    created_from: uuid.UUID = Field(description="The escalation whose decision it remembers")
    times_applied: int
    last_applied_at: Timestamp | None


class RuleList(BaseModel):
    items: list[RuleResponse]


class EscalationPage(BaseModel):
    items: list[EscalationResponse]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last")


class EventEnvelope(BaseModel):
    """A stored event: these keys plus the event's flat payload."""

    model_config = ConfigDict(extra="allow")

    id: int
    type: str
    job_id: str
    timestamp: str = Field(json_schema_extra={"format": "date-time"})


class EventPage(BaseModel):
    items: list[EventEnvelope]
    next_after: int


class ProblemFieldError(BaseModel):
    """One invalid input of a 422: which field (a dotted path for nested ones), and what to fix."""

    field: str
    message: str


class ProblemDetails(BaseModel):
    """RFC 9457 problem details."""

    model_config = ConfigDict(extra="allow")

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    errors: list[ProblemFieldError] | None = Field(None, description="422: every invalid input")
    escalation: EscalationResponse | None = Field(None, description="409: the current record")


class HealthResponse(BaseModel):
    status: Literal["ok"]


# --- query strings ---------------------------------------------------------------------------

class JobEscalationsQuery(BaseModel):
    status: Status | None = None
    limit: int = Field(100, ge=1, le=500, description="At most this many, newest first; a further page is "
                                                       "announced by a Link header with rel=\"next\"")
    cursor: Annotated[str, StringConstraints(max_length=500)] | None = Field(
        None, description="The cursor of the Link header's next page")


class InboxQuery(BaseModel):
    status: Status | None = None
    project_id: Id | None = None
    job_id: Id | None = None
    limit: int = Field(50, ge=1, le=200)
    cursor: Annotated[str, StringConstraints(max_length=500)] | None = None


class InboxPageQuery(BaseModel):
    """The console inbox's query string: `/?project=&job=&view=compact&cursor=`."""

    project: Id | None = None
    job: Id | None = None
    view: Literal["full", "compact"] | None = None
    cursor: Annotated[str, StringConstraints(max_length=500)] | None = None

    @field_validator("project", "job", "cursor", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:  # a form's "All" leaves them empty
        return None if value == "" else value


class EventsQuery(BaseModel):
    after: int = Field(0, ge=0, le=2**63 - 1)
    limit: int = Field(100, ge=1, le=500)


class EscalationQuery(BaseModel):
    wait: float | None = Field(None, gt=0, le=55, description="Long-poll: hold up to S seconds while pending")


class StreamQuery(BaseModel):
    after: int | None = Field(None, ge=0, le=2**63 - 1)


# --- helpers ---------------------------------------------------------------------------------

def field_errors(error: ValidationError) -> list[FieldError]:
    out = []
    for item in error.errors(include_url=False):
        loc = [str(p) for p in item["loc"]]
        field = ".".join(loc) if loc else "body"
        message = item["msg"].removeprefix("Value error, ")
        if not loc and item["type"] == "value_error":
            # model-level rules say "field: message"
            named, sep, rest = message.partition(": ")
            if sep and named.isidentifier():
                field, message = named, rest
        out.append(FieldError(field, message))
    return out


def parse(model: type[BaseModel], data: Any):
    """Validate `data` against `model`, raising ValidationFailed (422) with field errors."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise ValidationFailed(field_errors(error)) from None


def escalation_json(escalation) -> dict[str, Any]:
    return EscalationResponse.model_validate(escalation).model_dump(mode="json")


_ESCALATION_LIST = TypeAdapter(list[EscalationResponse])


def escalation_json_bytes(escalation) -> bytes:
    """The API's JSON of one escalation, serialised by pydantic-core in one step."""
    return EscalationResponse.model_validate(escalation).model_dump_json().encode()


def _escalation_list(escalations) -> list[EscalationResponse]:
    return _ESCALATION_LIST.validate_python(list(escalations), from_attributes=True)


def escalation_list_json_bytes(escalations) -> bytes:
    return _ESCALATION_LIST.dump_json(_escalation_list(escalations))


def escalation_page_json_bytes(escalations, next_cursor: str | None) -> bytes:
    return EscalationPage(items=_escalation_list(escalations), next_cursor=next_cursor).model_dump_json().encode()


def rule_list_json_bytes(rules) -> bytes:
    return RuleList(items=[RuleResponse.model_validate(rule) for rule in rules]).model_dump_json().encode()


# --- notification settings (SPEC §11) -----------------------------------------------------------

_HH_MM = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"
# Pragmatic, ASCII: one @, no spaces or brackets, a dotted domain of letters, digits and hyphens.
_EMAIL = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$")


class QuietHours(BaseModel):
    """Local times (the founder's `timezone`) between which nothing is sent; may wrap midnight."""

    model_config = ConfigDict(extra="forbid")

    start: str = Field(pattern=_HH_MM, description="HH:MM, local", examples=["22:00"])
    end: str = Field(pattern=_HH_MM, description="HH:MM, local; before start: the quiet hours wrap midnight",
                     examples=["08:00"])

    @model_validator(mode="after")
    def _not_empty(self) -> QuietHours:
        if self.start == self.end:
            raise ValueError("start and end must differ (for no quiet hours send null)")
        return self


class NotificationSettingsDocument(BaseModel):
    """The signed-in founder's notification settings: GET answers them (defaults until set),
    PUT replaces the whole document (a field left out takes its default)."""

    model_config = ConfigDict(extra="forbid", from_attributes=True)

    email: Annotated[str, StringConstraints(max_length=254)] | None = Field(
        None, description="Where e-mail goes; null: no e-mail", examples=["maya@example.com"])
    email_mode: Literal["each", "digest", "off"] = Field(
        "each", description="each: a message per question; digest: at most one an hour, listing what arrived "
                            "since the last; off")
    slack_webhook_url: Annotated[str, StringConstraints(max_length=2000)] | None = Field(
        None, description="A Slack incoming-webhook URL (https://); null: no Slack",
        examples=["https://hooks.slack.com/services/T000/B000/XXXX"])
    slack_user_id: Annotated[str, StringConstraints(pattern=r"^[UW][A-Z0-9]{1,63}$")] | None = Field(
        None, description="The founder's Slack member id: the only Slack user whose button clicks decide",
        examples=["U024BE7LH"])
    timezone: str = Field("UTC", max_length=64, description="An IANA time zone name", examples=["Europe/Berlin"])
    quiet_hours: QuietHours | None = Field(None, description="null: send at any hour")

    @field_validator("email")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if not _EMAIL.match(value):
            raise ValueError("not an e-mail address (name@example.com)")
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        if not known_timezone(value):
            raise ValueError("not an IANA time zone name (for example Europe/Berlin, America/New_York or UTC)")
        return value

    @field_validator("slack_webhook_url")
    @classmethod
    def _slack_url(cls, value: str | None, info) -> str | None:
        if value is None:
            return None
        value = value.strip()
        problem = slack_url_problem(value, bool((info.context or {}).get("allow_private")))
        if problem:
            raise ValueError(problem)
        return value


@functools.cache
def _timezones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones()) | {"UTC"}


@functools.cache
def timezone_names() -> tuple[str, ...]:
    return tuple(sorted(_timezones()))


def known_timezone(name: str) -> bool:
    """An IANA name that zoneinfo knows (the tzdata package provides them everywhere)."""
    return name in _timezones()


def slack_url_problem(url: str, allow_private: bool) -> str | None:
    """Why a Slack webhook URL is refused, or None: https:// only, and no loopback or private
    host (both allowed with CONSOLE_WEBHOOK_ALLOW_PRIVATE=true, as for webhooks). Names are
    resolved and checked again at every send (console/outbound.py)."""
    try:
        parts = outbound.check_url(url, allow_private)
    except outbound.RefusedTarget as refused:
        return str(refused)
    host = parts.hostname or ""
    if allow_private:
        return None
    if host == "localhost" or host.endswith(".localhost"):
        return f"{host} is a loopback name (allowed only with CONSOLE_WEBHOOK_ALLOW_PRIVATE=true)"
    try:
        reason = outbound.forbidden_reason(str(ipaddress.ip_address(host)))
    except ValueError:
        return None  # a name: checked when it is resolved, at send time
    return f"{host} is a {reason} address (allowed only with CONSOLE_WEBHOOK_ALLOW_PRIVATE=true)" if reason else None

"""Decision memory (SPEC §12): never answer the same question twice.

* `previous_decision` of an escalation: the founder's most recent decision on another
  escalation with the same project and error signature, in any job. It is read in the same
  statement as the escalation itself (a correlated subquery, `PREVIOUS_DECISION`), so it
  costs no round trip.
* Rules: a resolve with `remember` stores founder + project + signature → decision and
  guidance; a later create that matches (and whose options allow the decision) is settled
  at once, in the create's own transaction (`apply_rule`).
"""
from __future__ import annotations

import datetime as dt
import functools
import uuid
from typing import Any

from sqlalchemy import ColumnElement, Row, delete, literal_column, select, text, update

from ..database import read_rows, read_text_rows
from ..errors import NotFound
from ..extensions import db
from ..models import AgentEscalation, DecisionRule, escalation_option, utcnow
from ..schemas import parse_previous_decision
from .jobs import dialect_insert

ESCALATIONS = AgentEscalation.__table__
RULES = DecisionRule.__table__
PROVIDE_GUIDANCE = "provide_guidance"


# --- previous_decision -----------------------------------------------------------------------

def previous_decision_sql(outer: str, dialect: str) -> str:
    """The scalar subquery of a row's previous decision (a JSON document), correlated to the
    escalation row `outer` (the table itself, or a CTE of its rows). The status filter is
    literal, so that the planner can use the partial index made for exactly this."""
    json_object = "json_build_object" if dialect == "postgresql" else "json_object"
    options = "previous.options" if dialect == "postgresql" else "json(previous.options)"  # SQLite keeps JSON as text
    return (f"SELECT {json_object}('escalation_id', previous.id, 'decision', previous.founder_decision, "
            f"'guidance', previous.founder_guidance, 'decided_at', previous.resolved_at, 'options', {options}) "
            f"FROM agent_escalations AS previous "
            f"WHERE previous.founder_id = {outer}.founder_id AND previous.project_id = {outer}.project_id "
            f"AND previous.error_signature = {outer}.error_signature AND previous.id <> {outer}.id "
            f"AND previous.status = 'resolved' AND previous.decided_by = 'founder' "
            f"ORDER BY previous.resolved_at DESC LIMIT 1")


@functools.cache
def _previous_decision_column(dialect: str) -> ColumnElement:
    return literal_column(f"({previous_decision_sql('agent_escalations', dialect)})").label("previous_decision")


def previous_decision_column() -> ColumnElement:
    """The column that reads an escalation's previous decision (JSON) beside its row, in a
    SELECT from agent_escalations or the RETURNING of a write to it."""
    return _previous_decision_column(db.engine.dialect.name)


_RULE_EXISTS_RETURNING = literal_column(
    "(SELECT 1 FROM decision_rules AS rule WHERE rule.founder_id = agent_escalations.founder_id "
    "AND rule.project_id = agent_escalations.project_id "
    "AND rule.error_signature = agent_escalations.error_signature)").label("rule_exists")


def rule_exists_returning() -> ColumnElement:
    """For a create's RETURNING: 1 when the founder has a rule for this project's error,
    so that the rule itself is read (and locked) only then, not on every create."""
    return _RULE_EXISTS_RETURNING


def previous_decision(escalation: Any) -> dict[str, Any] | None:
    """`{"escalation_id", "decision", "label", "guidance", "decided_at"}` of a row read with
    the previous-decision column (None when there is none)."""
    return parse_previous_decision(getattr(escalation, "previous_decision", None))


# --- rules -----------------------------------------------------------------------------------

def remember_decision(escalation: Row) -> None:
    """Inside the resolve's write transaction: store (or replace) the founder's rule for
    this escalation's project and error signature."""
    option = escalation_option(escalation, escalation.founder_decision)
    values = {
        "id": uuid.uuid4(), "founder_id": escalation.founder_id, "project_id": escalation.project_id,
        "error_type": escalation.error_type, "error_signature": escalation.error_signature,
        "decision": escalation.founder_decision, "label": option.get("label") if option else None,
        "guidance": escalation.founder_guidance, "created_at": utcnow(), "created_from": escalation.id,
        "times_applied": 0, "last_applied_at": None,
    }
    db.session.execute(
        dialect_insert(RULES).values(**values).on_conflict_do_update(
            index_elements=["founder_id", "project_id", "error_signature"],
            set_={name: values[name] for name in values if name not in ("founder_id", "project_id", "error_signature")},
        )
    )


def matching_rule(founder_id: str, project_id: str, signature: str) -> Row | None:
    """The founder's rule for this project's error (inside a write transaction, its row
    locked on PostgreSQL so that the count of uses stays exact)."""
    query = select(RULES).where(RULES.c.founder_id == founder_id, RULES.c.project_id == project_id,
                                RULES.c.error_signature == signature)
    if db.engine.dialect.name == "postgresql":
        query = query.with_for_update()
    return db.session.execute(query).one_or_none()


def rule_applies(rule: Row, escalation: Any) -> bool:
    """A rule answers an escalation whose options contain its decision (or that has none),
    when the guidance that decision needs is part of the rule."""
    return why_rule_did_not_apply(rule, escalation) is None


def why_rule_did_not_apply(rule: Row, escalation: Any) -> str | None:
    options = escalation.options or []
    option = escalation_option(escalation, rule.decision)
    if options and option is None:
        return (f"Your rule for this error answers “{rule.label or rule.decision}”, which is not one of this "
                "question's options, so the agent is asking you.")
    needs_guidance = rule.decision == PROVIDE_GUIDANCE or bool(option and option.get("requires_guidance"))
    if needs_guidance and not rule.guidance:
        return "Your rule for this error has no guidance, and this answer needs some, so the agent is asking you."
    return None


def count_use(rule: Row, now: dt.datetime) -> None:
    db.session.execute(update(RULES).where(RULES.c.id == rule.id)
                       .values(times_applied=RULES.c.times_applied + 1, last_applied_at=now))


_FOUNDER_RULES = text(f"SELECT {', '.join(column.name for column in RULES.c)} FROM decision_rules "
                      "WHERE founder_id = :founder_id ORDER BY created_at DESC, id DESC").columns(*RULES.c)


def list_rules(founder_id: str) -> list[Row]:
    """The founder's rules, newest first (read on every page with cards: off the driver)."""
    return read_text_rows(_FOUNDER_RULES, {"founder_id": founder_id})


def rules_by_key(founder_id: str) -> dict[tuple[str, str], Row]:
    return {(rule.project_id, rule.error_signature): rule for rule in list_rules(founder_id)}


def revoke_rule(rule_id: str, founder_id: str) -> None:
    """Delete the founder's rule; someone else's, or a missing one, is NotFound."""
    from ..database import write_transaction  # noqa: PLC0415

    try:
        parsed = uuid.UUID(rule_id)
    except (ValueError, TypeError, AttributeError):
        raise NotFound(f"There is no rule {rule_id!r}.") from None
    with write_transaction() as session:
        deleted = session.execute(delete(RULES).where(RULES.c.id == parsed, RULES.c.founder_id == founder_id)
                                  .returning(RULES.c.id)).first()
    if deleted is None:
        raise NotFound(f"There is no rule {rule_id!r}.")


def find_rule(rule_id: Any, founder_id: str) -> Row | None:
    if rule_id is None:
        return None
    rows = read_rows(select(RULES).where(RULES.c.id == rule_id, RULES.c.founder_id == founder_id))
    return rows[0] if rows else None


def readable_signature(signature: str) -> str:
    """`proj:KeyError:1a2b3c4d` → `KeyError (1a2b3c4d)`: the project and type are shown apart."""
    parts = signature.split(":")
    return f"{parts[1]} ({parts[2]})" if len(parts) == 3 else signature

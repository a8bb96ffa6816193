"""Compare-and-set: the base of a step as WHERE clauses of the statement that writes it.

An UPDATE or DELETE carries, beside its key, one clause per base value
(``version = 3``, ``status = 'observing'``, ``meta::jsonb = '{...}'::jsonb``):
where the row moved since the base, the statement matches no row, and the
caller learns it from the row count it reads anyway (RETURNING, or the
pipelined path's ``1 / count(*)``). So the check costs no round trip.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, ColumnElement, cast, func, literal
from sqlalchemy.dialects.postgresql import JSONB

from ccat_buffering.write.columns import columns_of
from ccat_buffering.write.models import Step

__all__ = ["base_clauses", "equals", "is_json"]


def is_json(model: type[Any], name: str) -> bool:
    """Whether ``name`` of ``model`` is a JSON (or JSONB) column."""
    rule = columns_of(model).rules.get(name)
    return rule is not None and isinstance(rule.column.type, JSON)


def equals(model: type[Any], name: str, value: Any, dialect: str) -> ColumnElement[bool]:
    """``column = value`` as the database compares it (NULL-safe; JSON by content)."""
    attribute = getattr(model, name)
    if value is None:
        return attribute.is_(None)  # type: ignore[no-any-return]
    if is_json(model, name):
        if dialect == "postgresql":
            # json has no equality operator; jsonb compares documents, not text.
            return cast(attribute, JSONB) == cast(literal(value, JSON()), JSONB)
        return func.json(attribute) == func.json(literal(value, JSON()))
    return attribute == value  # type: ignore[no-any-return]


def base_clauses(model: type[Any], step: Step, dialect: str) -> list[ColumnElement[bool]]:
    """The clauses that hold only while the row still holds ``step``'s base.

    Args:
        model: The mapped class.
        step: An update or delete.
        dialect: The database's dialect name.

    Returns:
        No clause for a step without a base.
    """
    clauses = []
    version = columns_of(model).version
    if step.expected_version is not None and version is not None:
        clauses.append(getattr(model, version) == step.expected_version)
    for name, value in (step.expected or {}).items():
        clauses.append(equals(model, name, value, dialect))
    return clauses

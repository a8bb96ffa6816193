"""UPDATE and DELETE statements for the pipeline, compiled once per shape.

SQLAlchemy's compiler costs about a millisecond per statement, and a batch of
a thousand updates would spend a second compiling the same few statements
with other values. A statement's *shape* is its model, operation, key fields,
changed fields, base fields (and which base values are NULL, which compare
with ``IS NULL``) and whether it checks a version: the SQL of one shape is
compiled once, with named parameters, and each step only binds its values.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import JSON, bindparam, cast, delete
from sqlalchemy import update as sa_update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect

from ccat_buffering.drain._pipeline import Statement
from ccat_buffering.write.columns import columns_of
from ccat_buffering.write.models import Operation, Step
from ccat_buffering.write.registry import ModelRegistry

__all__ = ["CompiledWrites"]

Shape = tuple[Any, ...]


def _shape(step: Step) -> Shape:
    expected = tuple((name, value is None) for name, value in (step.expected or {}).items())
    data = tuple(step.data or {}) if step.operation is Operation.UPDATE else ()
    return (
        step.model,
        step.operation,
        tuple(step.key or {}),
        data,
        expected,
        step.expected_version is not None,
    )


class CompiledWrites:
    """Compiles each shape of UPDATE/DELETE once; binds each step's values.

    Args:
        registry: The mapped classes.
        dialect: The ``postgresql+psycopg`` dialect.
        must_match: Wraps a statement so that matching no row divides by zero.
    """

    def __init__(self, registry: ModelRegistry, dialect: Dialect, must_match: Any) -> None:
        self.registry = registry
        self.dialect = dialect
        self.must_match = must_match
        self._compiled: dict[Shape, tuple[str, Mapping[str, Any]]] = {}

    def statement(self, step: Step, owner: int | None, missing: BaseException) -> Statement:
        """The step's checked UPDATE or DELETE (its base in the WHERE), ready to send."""
        shape = _shape(step)
        found = self._compiled.get(shape)
        if found is None:
            found = self._compiled[shape] = self._compile(step)
        sql, processors = found
        values: dict[str, Any] = {}
        for i, value in enumerate((step.key or {}).values()):
            values[f"k{i}"] = value
        if step.operation is Operation.UPDATE:
            for i, value in enumerate((step.data or {}).values()):
                values[f"d{i}"] = value
        for i, value in enumerate((step.expected or {}).values()):
            if value is not None:
                values[f"e{i}"] = value
        if step.expected_version is not None:
            values["ver"] = step.expected_version
        params = {
            name: processors[name](value) if processors.get(name) else value
            for name, value in values.items()
        }
        return Statement(sql, params, owner, missing)

    def _compile(self, step: Step) -> tuple[str, Mapping[str, Any]]:
        model = self.registry.model(step.model)
        rules = columns_of(model).rules

        def param(name: str, field: str) -> Any:
            rule = rules.get(field)
            return bindparam(name, type_=None if rule is None else rule.column.type)

        where = [getattr(model, f) == param(f"k{i}", f) for i, f in enumerate(step.key or {})]
        for i, (field, value) in enumerate((step.expected or {}).items()):
            attribute = getattr(model, field)
            rule = rules.get(field)
            if value is None:
                where.append(attribute.is_(None))
            elif rule is not None and isinstance(rule.column.type, JSON):
                # json has no equality operator; jsonb compares documents.
                where.append(
                    cast(attribute, JSONB) == cast(bindparam(f"e{i}", type_=JSON()), JSONB)
                )
            else:
                where.append(attribute == param(f"e{i}", field))
        version = columns_of(model).version
        if step.expected_version is not None and version is not None:
            where.append(getattr(model, version) == param("ver", version))
        statement: Any
        if step.operation is Operation.UPDATE:
            changes = {f: param(f"d{i}", f) for i, f in enumerate(step.data or {})}
            statement = sa_update(model).where(*where).values(**changes)
        else:
            statement = delete(model).where(*where)
        compiled = self.must_match(statement).compile(
            dialect=self.dialect, compile_kwargs={"render_postcompile": True}
        )
        return compiled.string, dict(compiled._bind_processors)

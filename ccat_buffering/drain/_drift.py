"""Schema drift: the main database refuses a write because its schema moved away from the mapping.

A migration on the main database can add a ``NOT NULL`` column without a
default while transactions are buffered, or make a column the mapping calls
nullable required. Every buffered create of that table then fails the same
way, through no fault of its data: the writer could not have filled a column
its mapping does not have (or does not require). That is drift, and it pauses
the queue like a missing column (schema lag) instead of dead-lettering.

The rule, decided from the error and the mapping alone, so that the first
failure already pauses (no statistics over many transactions, which would
dead-letter the first ones while counting):

* the error is a not-null violation (SQLSTATE ``23502``; SQLite's ``NOT NULL
  constraint failed``) naming a table that a registered class maps, and
* the column it names is **not mapped** there, or is mapped as nullable, or
  has a default (Python-side or server-side) in the mapping.

A null in a column the mapping itself declares required, with no default, is
the transaction's data (bad input) and follows the retry policy. So does
every other constraint (a ``CHECK``, a foreign key, a unique key): one
transaction's values break it, and another's may not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import Table

from ccat_buffering.errors import ConfigurationError
from ccat_buffering.write.registry import ModelRegistry

__all__ = ["SchemaDrift", "schema_drift"]

_NOT_NULL = "23502"
_POSTGRES_MESSAGE = re.compile(r'null value in column "([^"]+)" of relation "([^"]+)"')
_SQLITE_MESSAGE = re.compile(r"NOT NULL constraint failed: ([^\s.]+)\.(\S+)")


@dataclass(frozen=True)
class SchemaDrift:
    """Which column of which table the main database requires and the mapping does not fill.

    Attributes:
        table: The table's name.
        column: The column's name.
        mapped: Whether the mapping has the column (as nullable or with a default).
    """

    table: str
    column: str
    mapped: bool

    def error(self, detail: str) -> ConfigurationError:
        """The error that pauses the queue, naming the table and column.

        Args:
            detail: The database's own message.
        """
        how = (
            "is nullable or has a default in the mapping"
            if self.mapped
            else "is not in the mapping"
        )
        return ConfigurationError(
            f"schema drift on the main database: column {self.table}.{self.column} is NOT NULL "
            f"without a default there, and {how}, so no buffered write can fill it ({detail}); "
            f"give {self.table}.{self.column} a default (or make it nullable) or deploy the "
            "mapping that fills it: the queue waits and resumes by itself"
        )


def _named(error: BaseException) -> tuple[str, str] | None:
    """The (table, column) a not-null violation names, from the driver or its message."""
    candidates = [error, getattr(error, "orig", None)]
    orig = candidates[1]
    if orig is not None:
        candidates.append(orig.__cause__)  # asyncpg's own error, under SQLAlchemy's adapter
    code = None
    for candidate in candidates:
        if candidate is None:
            continue
        diag = getattr(candidate, "diag", None)  # psycopg
        table = getattr(diag, "table_name", None) or getattr(candidate, "table_name", None)
        column = getattr(diag, "column_name", None) or getattr(candidate, "column_name", None)
        code = code or getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if isinstance(table, str) and isinstance(column, str) and table and column:
            return table, column
    text = str(orig if orig is not None else error)
    if code == _NOT_NULL and (found := _POSTGRES_MESSAGE.search(text)):
        return found.group(2), found.group(1)
    if found := _SQLITE_MESSAGE.search(text):
        return found.group(1), found.group(2)
    return None


def _not_null_violation(error: BaseException) -> bool:
    for candidate in (error, getattr(error, "orig", None)):
        if getattr(candidate, "sqlstate", None) == _NOT_NULL:
            return True
        if getattr(candidate, "pgcode", None) == _NOT_NULL:
            return True
    return "NOT NULL constraint failed" in str(error)


def schema_drift(error: BaseException, registry: ModelRegistry) -> SchemaDrift | None:
    """The drift ``error`` shows, or ``None`` when it is the transaction's data.

    Args:
        error: What applying one transaction raised.
        registry: The mapping the buffered writes were made against.

    Returns:
        The table and column, when the rule in this module's docstring holds.
    """
    if not _not_null_violation(error):
        return None
    named = _named(error)
    if named is None:
        return None
    table_name, column_name = named
    tables = {
        table
        for name in registry
        if isinstance(table := registry.mapper(name).local_table, Table)
        and table.name == table_name
    }
    if not tables:
        return None  # a table the mapping does not write (a trigger's): not ours to judge
    for table in tables:
        column = next((c for c in table.columns if c.name == column_name), None)
        if column is None:
            continue
        required = not column.nullable and column.default is None and column.server_default is None
        if required:
            return None
        return SchemaDrift(table_name, column_name, mapped=True)
    return SchemaDrift(table_name, column_name, mapped=False)

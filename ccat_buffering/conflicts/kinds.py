"""What a conflict is, which kinds there are, and the policies that decide them."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ccat_buffering.errors import ConfigurationError

__all__ = ["Conflict", "ConflictKind", "ConflictOutcome", "ConflictPolicies", "ConflictPolicy"]


class ConflictKind(enum.StrEnum):
    """How a write met the main database's row, named as PostgreSQL names them."""

    UPDATE_ORIGIN_DIFFERS = "update_origin_differs"
    """The changed fields (or the version) moved since the base."""
    UPDATE_MISSING = "update_missing"
    """The row to update does not exist."""
    DELETE_ORIGIN_DIFFERS = "delete_origin_differs"
    """The row to delete changed since the base."""
    DELETE_MISSING = "delete_missing"
    """The row to delete does not exist."""
    INSERT_EXISTS = "insert_exists"
    """A create whose key or unique columns already exist."""


class ConflictPolicy(enum.StrEnum):
    """How a conflict is decided."""

    REJECT = "reject"
    """The transaction is not applied; it is ``conflicted`` until an operator resolves it."""
    OVERWRITE = "overwrite"
    """This write wins (what a plain UPDATE does), recorded and counted."""
    NEWER_WINS = "newer_wins"
    """The write with the later write time wins; the model names the write-time column."""
    MERGE = "merge"
    """A JSON column gets the step's changed keys merged in (RFC 7386); other columns reject."""


class ConflictOutcome(enum.StrEnum):
    """What became of the write that met a conflict."""

    REJECTED = "rejected"
    """Not applied: the transaction waits for an operator (unresolved)."""
    APPLIED = "applied"
    """This write was applied over the other value."""
    MERGED = "merged"
    """JSON documents were merged; other changed fields were applied."""
    KEPT_THEIRS = "kept_theirs"
    """The row kept the other value; the rest of the transaction applied."""
    SKIPPED_EQUAL = "skipped_equal"
    """A create met an equal row: nothing to write (``skip_if_equal``)."""
    WAITING = "waiting"
    """Not applied: it depends on a rejected transaction of its site and waits with it."""
    RELEASED = "released"
    """A waiting transaction, released in buffer order when the one it waited for was resolved."""
    RESOLVED_MINE = "resolved_mine"
    """An operator applied the rejected write without its base check."""
    RESOLVED_THEIRS = "resolved_theirs"
    """An operator dropped the rejected write."""


@dataclass(frozen=True)
class Conflict:
    """One write that did not find the row it was made against.

    Attributes:
        step_id: The step.
        model: The model's name.
        key: The row's key.
        kind: How it met the row.
        base: The changed fields (or the row) as the writer saw them.
        mine: What the write sets.
        theirs: The same fields as the main database holds them (empty when
            the row is missing).
        policy: The policy that decided it.
        outcome: What it decided.
    """

    step_id: str
    model: str
    key: Mapping[str, Any]
    kind: ConflictKind
    base: Mapping[str, Any]
    mine: Mapping[str, Any]
    theirs: Mapping[str, Any]
    policy: ConflictPolicy
    outcome: ConflictOutcome

    def describe(self) -> str:
        """One line for a status's ``last_error`` and for logs."""
        fields = sorted(set(self.mine) | set(self.theirs))
        parts = [
            f"{name}: base {self.base.get(name)!r}, mine {self.mine.get(name)!r}, "
            f"theirs {self.theirs.get(name)!r}"
            for name in fields
        ]
        detail = "; ".join(parts) if parts else "no row"
        return (
            f"{self.kind} on {self.model} {dict(self.key)} ({self.policy}: {self.outcome}): "
            f"{detail}"
        )


def _policy(value: str | ConflictPolicy, where: str) -> ConflictPolicy:
    try:
        return ConflictPolicy(value)
    except ValueError:
        known = ", ".join(p.value for p in ConflictPolicy)
        raise ConfigurationError(
            f"conflict policy {value!r} for {where} is not one of {known}"
        ) from None


@dataclass
class ConflictPolicies:
    """The policy of each model and column, and the write-time columns of ``newer_wins``.

    Args:
        default: The policy of a model named nowhere (``reject``).
        models: Policies by model name.
        columns: Policies by ``"Model.column"``, over the model's.
        write_time: The write-time column of each model (the library fills
            it when the write is made); ``newer_wins`` compares it.
    """

    default: ConflictPolicy = ConflictPolicy.REJECT
    models: dict[str, ConflictPolicy] = field(default_factory=dict)
    columns: dict[str, ConflictPolicy] = field(default_factory=dict)
    write_time: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(
        cls, policies: Mapping[str, str], write_time: Mapping[str, str] | None = None
    ) -> ConflictPolicies:
        """Policies from settings: ``{"Model": "overwrite", "Model.meta": "merge"}``.

        Raises:
            ConfigurationError: An unknown policy, or ``newer_wins`` for a model
                without a write-time column.
        """
        found = cls(write_time=dict(write_time or {}))
        for name, value in policies.items():
            found.set(name, _policy(value, name))
        return found

    def set(
        self, target: str, policy: ConflictPolicy | str, *, write_time: str | None = None
    ) -> None:
        """Set the policy of ``"Model"`` or ``"Model.column"`` (``"*"``: the default).

        Args:
            target: What the policy covers.
            policy: The policy.
            write_time: For ``newer_wins``, the model's write-time column.

        Raises:
            ConfigurationError: An unknown policy, or ``newer_wins`` with no
                write-time column for the model.
        """
        chosen = _policy(policy, target)
        model = target.split(".", 1)[0]
        if write_time is not None:
            self.write_time[model] = write_time
        if chosen is ConflictPolicy.NEWER_WINS and model != "*" and model not in self.write_time:
            raise ConfigurationError(
                f"newer_wins for {target} needs a write-time column: name it "
                f"(write_time=..., or conflict_write_time {{{model!r}: 'column'}})"
            )
        if target == "*":
            self.default = chosen
        elif "." in target:
            self.columns[target] = chosen
        else:
            self.models[target] = chosen

    def of_model(self, model: str) -> ConflictPolicy:
        """The policy of ``model`` as a whole (a row, a delete, a create)."""
        return self.models.get(model, self.default)

    def of_field(self, model: str, name: str) -> ConflictPolicy:
        """The policy of one column of ``model``."""
        return self.columns.get(f"{model}.{name}", self.of_model(model))

    def write_time_of(self, model: str) -> str | None:
        """The write-time column of ``model``, if it has one."""
        return self.write_time.get(model)

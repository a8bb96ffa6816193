"""Decide a conflict by its policies: which values a conflicting write may still set."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ccat_buffering.conflicts.kinds import ConflictOutcome, ConflictPolicies, ConflictPolicy
from ccat_buffering.conflicts.merge import merge_patch, patch_between
from ccat_buffering.conflicts.statements import is_json

__all__ = ["Decision", "decide_row", "newer"]


@dataclass
class Decision:
    """What a conflicting write may still set, and how the conflict ended.

    Attributes:
        write: The values to write (empty: the row keeps its values).
        outcome: How the conflict ended.
        policy: The policy that decided it (the first that refused, if one did).
    """

    write: dict[str, Any] = field(default_factory=dict)
    outcome: ConflictOutcome = ConflictOutcome.APPLIED
    policy: ConflictPolicy = ConflictPolicy.REJECT


def newer(mine: Any, theirs: Any) -> bool:
    """Whether a write made at ``mine`` is newer than the row's ``theirs``.

    A row without a write time is older than any write; a write without one
    is never newer.
    """
    if mine is None:
        return False
    if theirs is None:
        return True
    try:
        return bool(mine > theirs)
    except TypeError:  # aware against naive: compare as the database stored them
        return bool(mine.replace(tzinfo=None) > theirs.replace(tzinfo=None))


def decide_row(
    model: type[Any],
    name: str,
    policies: ConflictPolicies,
    conflicting: Sequence[str],
    base: Mapping[str, Any],
    mine: Mapping[str, Any],
    theirs: Mapping[str, Any],
) -> Decision:
    """Decide, field by field, a write whose ``conflicting`` fields moved since ``base``.

    Fields that did not move are written as the step gives them. Of those that
    moved: ``overwrite`` writes mine, ``newer_wins`` writes mine only when the
    model's write-time column says this write is newer, ``merge`` merges a JSON
    column's changed keys into the stored document (and refuses any other
    column), ``reject`` refuses; one refusal rejects the whole write.

    Args:
        model: The mapped class.
        name: Its name in the registry.
        policies: The policies.
        conflicting: The fields whose values moved (or all, when a version moved).
        base: The base the write carried (may be empty).
        mine: What the write sets.
        theirs: The row as the main database holds it.

    Returns:
        The decision.
    """
    clock = policies.write_time_of(name)
    mine_is_newer = clock is not None and newer(mine.get(clock), theirs.get(clock))
    decision = Decision(write={k: v for k, v in mine.items() if k not in conflicting})
    applied = kept = merged = 0
    for field_name in conflicting:
        policy = policies.of_field(name, field_name)
        if policy is ConflictPolicy.OVERWRITE or (
            policy is ConflictPolicy.NEWER_WINS and mine_is_newer
        ):
            decision.write[field_name] = mine[field_name]
            applied += 1
        elif policy is ConflictPolicy.NEWER_WINS and clock is not None:
            kept += 1
        elif policy is ConflictPolicy.MERGE and is_json(model, field_name):
            patch = (
                patch_between(base[field_name], mine[field_name])
                if field_name in base
                else mine[field_name]
            )
            decision.write[field_name] = merge_patch(theirs.get(field_name), patch)
            merged += 1
        else:
            decision.policy = policy
            decision.outcome = ConflictOutcome.REJECTED
            decision.write = {}
            return decision
        decision.policy = policy
    if clock is not None and clock in decision.write and not mine_is_newer:
        decision.write[clock] = theirs.get(clock)  # the row's time stays the newest it saw
    if merged or (applied and kept):
        decision.outcome = ConflictOutcome.MERGED
    elif kept:
        decision.outcome = ConflictOutcome.KEPT_THEIRS
    return decision

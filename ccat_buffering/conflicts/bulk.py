"""A bulk update's rows as the single updates they are, each with its own base.

A ``bulk_update`` step stores its rows in ``records`` and their bases beside
them (``expected_records``, ``expected_versions``). Every executor path writes
and checks such a row exactly as it writes a single ``update``: the same
compare-and-set statement, the same conflict kinds and policies. So the rows
are handed to them as update steps (under the bulk step's id), and the bases
the coordinator finds for those updates are gathered back into the bulk step.
"""

from __future__ import annotations

from collections.abc import Sequence

from ccat_buffering.models import Operation, Step

__all__ = ["gather_bases", "row_updates"]


def row_updates(step: Step) -> list[Step]:
    """The rows of a ``bulk_update`` as ``update`` steps, in order, each with its base.

    Args:
        step: A bulk update (its records already checked to hold their keys).

    Returns:
        One update per record, under ``step``'s id; an empty per-record base
        gives an update without a base (checked for the row's existence only).
    """
    records = step.records or []
    bases = step.expected_records or [{}] * len(records)
    versions = step.expected_versions or [None] * len(records)
    updates = []
    for record, base, version in zip(records, bases, versions, strict=True):
        key = {name: record[name] for name in step.key_fields}
        # Built from a validated step: the checks would only cost time on a
        # bulk update of thousands of rows.
        updates.append(
            Step.model_construct(
                step_id=step.step_id,
                operation=Operation.UPDATE,
                model=step.model,
                key=key,
                key_fields=step.key_fields,
                data={name: value for name, value in record.items() if name not in key},
                expected=base or None,
                expected_version=version,
            )
        )
    return updates


def gather_bases(step: Step, updates: Sequence[Step]) -> Step:
    """``step`` with the bases (and next versions) of its rows' ``updates``.

    Args:
        step: A bulk update.
        updates: Its :func:`row_updates`, each given its base.

    Returns:
        The bulk update carrying them; ``step`` itself when none has a base.
    """
    if not any(update.has_base for update in updates):
        return step
    versions = [update.expected_version for update in updates]
    return step.model_copy(
        update={
            "records": [{**(u.key or {}), **(u.data or {})} for u in updates],
            "expected_records": [dict(u.expected or {}) for u in updates],
            "expected_versions": None if all(v is None for v in versions) else versions,
        }
    )

"""Several writers, one truth: bases, compare-and-set, conflicts and their policies.

Every buffered ``update`` and ``delete`` carries the *base* it was made
against (:mod:`~ccat_buffering.conflicts.bases`); the main database applies it
only where the row still holds that base, in the statement that writes it
(:mod:`~ccat_buffering.conflicts.statements`). A mismatch is a conflict of a
:class:`ConflictKind`, decided by the :class:`ConflictPolicy` of its model or
column (:mod:`~ccat_buffering.conflicts.decide`) and written to the conflict
log in the main database (:mod:`~ccat_buffering.conflicts.log`) in the same
database transaction.

This package imports the core's models and SQLAlchemy; it never imports a
backend, the processor or the executor (they import it).
"""

from ccat_buffering.conflicts.kinds import (
    Conflict,
    ConflictKind,
    ConflictOutcome,
    ConflictPolicies,
    ConflictPolicy,
)
from ccat_buffering.conflicts.merge import merge_patch, patch_between

__all__ = [
    "Conflict",
    "ConflictKind",
    "ConflictOutcome",
    "ConflictPolicies",
    "ConflictPolicy",
    "merge_patch",
    "patch_between",
]

"""Claimed entries read back: a transaction, or refused with the reason and the id it names.

An entry is refused when it breaks a limit of
:mod:`ccat_buffering.payload_limits` (the check submit runs, run again at the
drain) or is not a readable transaction; the manager dead-letters those at
once so that they never block the queue.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from ccat_buffering._entry_decoding import decode_entry
from ccat_buffering.errors import PayloadTooLargeError, TransactionValidationError
from ccat_buffering.models import Transaction
from ccat_buffering.payload_limits import payload_problem
from ccat_buffering.protocols import Claim

_LEADING_ID = re.compile(r'^\{"format_version":\d+,"transaction_id":"([^"]{1,100})"')


@dataclass(frozen=True)
class Refused:
    """A claimed entry that will not be applied: why, and the transaction id it starts with."""

    claim: Claim
    reason: str
    transaction_id: str | None


def _leading_id(payload: str) -> str | None:
    """The transaction id an entry starts with, without parsing all of it."""
    found = _LEADING_ID.match(payload[:200])
    return found.group(1) if found else None


def _over_limit(payload: str, limit: int | None) -> str | None:
    """Why an entry is refused at drain by the limits submit applies too, or ``None``."""
    problem = payload_problem(payload, limit)
    if problem is None:
        return None
    kind, what = problem
    if kind is PayloadTooLargeError:
        return (
            f"entry {what} (max_payload_bytes): it was not applied; raise the limit and "
            "replay it, or purge it"
        )
    return f"entry {what}; it was not applied: purge it and submit it again as the limit allows"


def read_claims(
    claims: Sequence[Claim], max_payload_bytes: int | None
) -> tuple[list[tuple[Claim, Transaction]], list[Refused]]:
    """Split claims into readable transactions and refused entries, each in buffer order."""
    parsed: list[tuple[Claim, Transaction]] = []
    refused: list[Refused] = []
    for claim in claims:
        too_large = _over_limit(claim.payload, max_payload_bytes)
        if too_large is not None:
            refused.append(Refused(claim, too_large, _leading_id(claim.payload)))
            continue
        try:
            parsed.append((claim, decode_entry(claim.payload)))
        except TransactionValidationError as exc:
            refused.append(Refused(claim, f"unreadable entry: {exc}", None))
    return parsed, refused

"""The names of a site's keys by role: the one source of the Redis key schema.

:mod:`ccat_buffering_redis.keys` builds every key from these (its docstring
draws the table; a test and ``docs/conf.py`` check it and ``docs/redis.rst``
against them), the Lua scripts get them from a generated fragment, and the
memory backend names its entries with them when it is inspected, as Redis
would. It is in the core so that the memory backend needs no Redis client.
"""

from __future__ import annotations

__all__ = ["SUFFIXES"]

SUFFIXES = {
    "buffer": "transaction_buffer",
    "status": "transaction:",
    "ids": "cache:ids:",
    "buffered": "buffered:",
    "inflight": "inflight",
    "leases": "inflight:leases",
    "hold": "hold",
    "seq": "seq",
    "letters": "dead_letters",
    "letter_order": "dead_letters:order",
    "letter_meta": "dead_letters:meta",
    "state": "state:",
    "index": "index:",
    "fields": "fields:",
    "lease": "lease",
    "processor": "processor",
    "reconcile": "state:cursors",
    "epoch": "buffer_epoch",
    "audit": "audit",
    "idempotency": "idempotency:",
    "pause": "operator_pause",
    "charts": "charts",
}
"""Key suffixes by role, shared with the Lua scripts."""

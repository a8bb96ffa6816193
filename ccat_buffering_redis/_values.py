"""The text of what the scripts store: buffered records and statuses.

The one Python module that writes and reads these formats; their Lua side is
``lua/records.lua`` (records) and ``lua/status_values.lua`` (statuses).

A buffered record (``buffered:<Model>:<id>``) is a head line
``@<created 0|1|2><deleted 0|1><sequence number>:<tx>,<tx>...``, then a line
``<field>=<JSON value>`` per field; a field whose value is the record's id as
text is stored as ``<field>=``. Created ``2``: by the first transaction named,
which then has no ID-cache key (``1``: by the one its ID-cache key names, if
that one is still buffered). A status (``transaction:<id>``) is its JSON
without the id, default values and times (after its sequence number in a
bucketed state), then its times ``@<created>,<updated>,<committed>,<replicated>``
(microseconds: since 1970 for ``created_at``, since ``created_at`` for the
others; a missing one empty, trailing commas dropped), then, after a newline,
the ``<Model>:<id>`` records it wrote. A status written before the times had
their tail holds them in its JSON; both read the same.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Mapping
from typing import Any

from ccat_buffering.models import TransactionStatus
from ccat_buffering.protocols import CachedRecord

__all__ = [
    "as_text",
    "cached_record",
    "field_prefix",
    "first_transaction",
    "record_creator",
    "record_head",
    "record_text",
    "record_transactions",
    "status_json",
    "status_of",
    "value_json",
]


def as_text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


_JSON = json.JSONEncoder(separators=(",", ":"))
_quoted = json.encoder.encode_basestring_ascii
_TIMES = ("created_at", "updated_at", "committed_at", "replicated_at")
_STATUS_DROP = {"transaction_id", *_TIMES}
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICRO = dt.timedelta(microseconds=1)
# pydantic reads Unix seconds as a float: exact to the microsecond (rounded)
# below 2**32 s (the year 2106), where a float's step is under half a microsecond.
_LAST_MICRO = 2**32 * 1_000_000


def value_json(value: Any) -> str:
    """``json.dumps(value, separators=(",", ":"))``, without its per-call setup for scalars."""
    kind = type(value)
    if kind is str:
        return _quoted(value)
    if kind is int:
        return int.__repr__(value)
    if value is None:
        return "null"
    if kind is bool:
        return "true" if value else "false"
    if kind is float and math.isfinite(value):
        return float.__repr__(value)
    if kind is dict and len(value) == 1:
        # A tagged value ({"$datetime": "..."}): the commonest dict by far.
        ((key, inner),) = value.items()
        if type(key) is str and type(inner) is str:
            return "{" + _quoted(key) + ":" + _quoted(inner) + "}"
    return _JSON.encode(value)


def status_json(status: TransactionStatus) -> str:
    # The key names the transaction and defaults are restored on reading: store
    # neither. The times go in a tail of integers (~25 bytes where their JSON
    # takes ~60), so that a buffered status fits jemalloc's 192-byte class,
    # not 256: see the module's docstring and docs/decisions.rst.
    created = (status.created_at - _EPOCH) // _MICRO
    tail = [str(created)]
    for name in _TIMES[1:]:
        value = getattr(status, name)
        tail.append("" if value is None else str((value - _EPOCH) // _MICRO - created))
    while tail[-1] == "":
        tail.pop()
    text = status.model_dump_json(exclude=_STATUS_DROP, exclude_defaults=True)
    return text + "@" + ",".join(tail)


def status_of(transaction_id: str, raw: bytes | str) -> TransactionStatus | None:
    # The key holds the JSON, then (after a newline) the records the transaction
    # wrote; records without a status (a cache write alone) are no status.
    # A status in a bucketed state index starts with its sequence number (see _state_index).
    text = as_text(raw).partition("\n")[0].lstrip("0123456789")
    if not text:
        return None
    head = '{"transaction_id":' + _quoted(transaction_id)
    end = text.rfind("}") + 1
    body = ("," if text[1:2] != "}" else "") + text[1:end]
    if end == len(text):  # written before the times had their tail
        return TransactionStatus.model_validate_json(head + body)
    micros = text[end + 1 :].split(",")
    created = int(micros[0])
    times = {_TIMES[0]: created}
    for name, value in zip(_TIMES[1:], micros[1:], strict=False):
        if value:
            times[name] = created + int(value)
    if min(times.values()) >= 0 and max(times.values()) < _LAST_MICRO:
        # As Unix seconds, which pydantic reads exactly: one validation, no copy.
        for name, t in times.items():
            head += f',"{name}":{t // 1_000_000}.{t % 1_000_000:06d}'
        return TransactionStatus.model_validate_json(head + body)
    status = TransactionStatus.model_validate_json(head + body)
    return status.model_copy(update={n: _EPOCH + t * _MICRO for n, t in times.items()})


def record_text(fields: Mapping[str, Any], record_id: str) -> str:
    """A buffered record's field lines: ``<field>=<JSON value>``, one per field.

    A field whose value is the record's id as text (its key, most often) is
    stored as ``<field>=``: the key already holds that text.
    """
    folded = '"' + record_id + '"'
    lines = []
    for name, value in fields.items():
        text = value_json(value)
        lines.append(name + "=" + ("" if text == folded else text))
    return "\n".join(lines)


def record_head(head: str) -> tuple[bool, bool, tuple[str, ...]]:
    """Created, deleted and the transactions, from a record's ``@<c><d><seq>:<tx>,<tx>`` line."""
    txs = head.partition(":")[2]
    return head[1:2] in ("1", "2"), head[2:3] == "1", tuple(t for t in txs.split(",") if t)


def field_prefix(name: str, value: Any) -> bytes:
    """How the field index (``fields:<Model>``) starts the entries of ``name == value``."""
    text = value_json(value).encode()
    if len(text) > 64:
        text = text[:56] + b"#" + str(len(text)).encode()
    return name.encode() + b"=" + text + b"\0"


def cached_record(model: str, record_id: str, raw: bytes, ttl_ms: int, now: float) -> CachedRecord:
    """A buffered record's text (``raw``) as the record it stands for."""
    head, _, lines = as_text(raw).partition("\n")
    fields = {}
    for line in lines.split("\n") if lines else ():
        name, _, value = line.partition("=")
        fields[name] = json.loads(value) if value else record_id
    return CachedRecord(
        model,
        record_id,
        fields,
        *record_head(head),
        now + max(ttl_ms, 0) / 1000,
    )


def record_transactions(raw: bytes | str | None) -> tuple[str, ...]:
    """The transactions a buffered record's text names, first writer first (none if no record)."""
    if raw is None:
        return ()
    return record_head(as_text(raw).partition("\n")[0])[2]


def record_creator(entry: bytes | str | None, raw: bytes | str | None) -> str | None:
    """The transaction that created a record, from its ID-cache entry and its text.

    No entry: the record's first transaction if its created flag is ``2``. An
    entry ``1`` (written by earlier versions) stands for the first transaction.
    """
    if entry is not None and as_text(entry) != "1":
        return as_text(entry)
    if raw is None or (entry is None and as_text(raw)[1:2] != "2"):
        return None
    return first_transaction(raw)


def first_transaction(raw: bytes | str | None) -> str | None:
    """The first transaction a buffered record's text names (its creator, if created)."""
    txs = record_transactions(raw)
    return txs[0] if txs else None

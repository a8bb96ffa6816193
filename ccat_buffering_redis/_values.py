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

from ccat_buffering.buffer.protocols import CachedRecord
from ccat_buffering.write.lsn import LSN
from ccat_buffering.write.models import TransactionState, TransactionStatus
from ccat_buffering.write.status import StatusEvent, made_event, made_status

__all__ = [
    "as_text",
    "cached_record",
    "field_prefix",
    "first_transaction",
    "micros_since_epoch",
    "processing_of",
    "record_creator",
    "record_head",
    "record_text",
    "record_transactions",
    "routine_body",
    "status_json",
    "status_of",
    "status_tail",
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
_UTC = dt.UTC
_STATES = {s.value: s for s in TransactionState}
_STATE_JSON = {s: '"state":"' + s.value + '"' for s in TransactionState}
_plain = json.encoder.encode_basestring  # as pydantic writes strings: non-ASCII as it is
# Status bodies read (see _lean_body), at most _BODIES_KEPT: the first ones seen.
_BODIES: dict[str, tuple[dict[str, Any], frozenset[str]]] = {}
_BODIES_KEPT = 256
# Status bodies written (see _lean_status_json) and times made microseconds
# (see status_json); each emptied when full.
_BODY_TEXTS: dict[tuple[str, TransactionState, int, LSN | None], str] = {}
_MICROS: dict[dt.datetime, int] = {}
_MICROS_KEPT = 64
_LEAN_FIELDS = frozenset(("endpoint", "state", "attempts", "last_error", "commit_lsn", "history"))
_EVENT_FIELDS = frozenset(("at", "event", "note", "times"))
# Every field of a status in its declared order, at its default (times filled in on reading).
_DEFAULTS: dict[str, Any] = {
    "transaction_id": "",
    "endpoint": "",
    "state": None,
    "attempts": 0,
    "last_error": None,
    "commit_lsn": None,
    "created_at": None,
    "updated_at": None,
    "committed_at": None,
    "replicated_at": None,
    "history": (),
    "generated": None,
}


class _Unusual(Exception):
    """Not a shape the lean reading knows: the full validation decides."""


def _no_constant(name: str) -> Any:
    raise _Unusual  # NaN or Infinity: never written here


_parse = json.JSONDecoder(parse_constant=_no_constant).decode


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
    values = status.__dict__
    text = _lean_status_json(values)
    if text is None:
        text = status.model_dump_json(exclude=_STATUS_DROP, exclude_defaults=True)
    return text + "@" + status_tail(values)


def micros_since_epoch(at: dt.datetime) -> int:
    """An aware time as the microseconds since 1970 that a status's times count from."""
    return (at - _EPOCH) // _MICRO


def status_tail(values: dict[str, Any]) -> str:
    """A status's times (from its ``__dict__``) as :func:`status_json` ends its text."""
    created = (values["created_at"] - _EPOCH) // _MICRO
    tail = str(created)
    empty = ""
    for name in _TIMES[1:]:
        value = values[name]
        if value is None:
            empty += ","
        else:
            # A batch's statuses share their times (one clock read per batch):
            # each is made microseconds once.
            micros = _MICROS.get(value)
            if micros is None:
                if len(_MICROS) >= _MICROS_KEPT:
                    _MICROS.clear()
                micros = _MICROS[value] = (value - _EPOCH) // _MICRO
            tail += empty + "," + str(micros - created)
            empty = ""
    return tail


def routine_body(values: dict[str, Any]) -> str | None:
    """The JSON :func:`status_json` writes of a routine status (its ``__dict__``), or ``None``.

    Routine: no history, no error, nothing generated, plain values; the body
    of such a status depends on its endpoint, state, attempts and commit LSN
    only, so that the statuses of a batch share it (see ``statuses`` in
    ``lua/apply.lua``). ``None`` for any other status.
    """
    endpoint, state, attempts, lsn = (
        values["endpoint"],
        values["state"],
        values["attempts"],
        values["commit_lsn"],
    )
    history = values["history"]
    if (
        values["generated"]
        or values["last_error"] is not None
        or type(history) is not tuple
        or history
        or type(endpoint) is not str
        or type(attempts) is not int
        or (lsn is not None and type(lsn) is not LSN)
    ):
        return None
    # Most statuses a drain writes share one of a few bodies (a batch's
    # endpoint, state and commit LSN): each is written once.
    key = (endpoint, state, attempts, lsn)
    text = _BODY_TEXTS.get(key)
    if text is None:
        if len(_BODY_TEXTS) >= _BODIES_KEPT:
            _BODY_TEXTS.clear()
        text = _BODY_TEXTS[key] = (
            "{" + ",".join(_plain_parts(endpoint, state, attempts, None, lsn)) + "}"
        )
    return text


def _lean_status_json(values: dict[str, Any]) -> str | None:
    """The status's JSON as pydantic writes it (less what status_json drops), or ``None``.

    Written by hand for the shapes the drain writes thousands a second (plain
    values, a history of plain events, nothing generated); ``None`` for any
    other, which pydantic writes.
    """
    text = routine_body(values)
    if text is not None:
        return text
    endpoint, state, attempts = values["endpoint"], values["state"], values["attempts"]
    error, lsn, history = values["last_error"], values["commit_lsn"], values["history"]
    if (
        values["generated"]
        or type(endpoint) is not str
        or type(attempts) is not int
        or (error is not None and type(error) is not str)
        or (lsn is not None and type(lsn) is not LSN)
        or type(history) is not tuple
    ):
        return None
    parts = _plain_parts(endpoint, state, attempts, error, lsn)
    if history:
        events = []
        for event in history:
            e = event.__dict__
            at, what, note, times = e["at"], e["event"], e["note"], e["times"]
            if (
                type(at) is not dt.datetime
                or at.tzinfo is not _UTC
                or type(what) is not str
                or (note is not None and type(note) is not str)
                or type(times) is not int
            ):
                return None
            text = '{"at":"' + at.isoformat()[:-6] + 'Z","event":' + _plain(what)
            if note is not None:
                text += ',"note":' + _plain(note)
            if times != 1:
                text += ',"times":' + int.__repr__(times)
            events.append(text + "}")
        parts.append('"history":[' + ",".join(events) + "]")
    return "{" + ",".join(parts) + "}"


def _plain_parts(
    endpoint: str, state: TransactionState, attempts: int, error: str | None, lsn: LSN | None
) -> list[str]:
    """A status body's members up to its history, each as pydantic writes it."""
    parts = []
    if endpoint:
        parts.append('"endpoint":' + _plain(endpoint))
    parts.append(_STATE_JSON[state])
    if attempts:
        parts.append('"attempts":' + int.__repr__(attempts))
    if error is not None:
        parts.append('"last_error":' + _plain(error))
    if lsn is not None:
        parts.append('"commit_lsn":"' + str(lsn) + '"')
    return parts


def status_of(transaction_id: str, raw: bytes | str) -> TransactionStatus | None:
    # The key holds the JSON, then (after a newline) the records the transaction
    # wrote; records without a status (a cache write alone) are no status.
    # A status in a bucketed state index starts with its sequence number (see _state_index).
    text = as_text(raw).partition("\n")[0].lstrip("0123456789")
    if not text:
        return None
    end = text.rfind("}") + 1
    if end != len(text):
        lean = _lean_status(transaction_id, text[:end], text[end + 1 :])
        if lean is not None:
            return lean
    head = '{"transaction_id":' + _quoted(transaction_id)
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


def processing_of(transaction_id: str, raw: bytes | str, at: dt.datetime) -> TransactionStatus:
    """The status a claim wrote ``processing`` at ``at`` over the routine status ``raw``.

    What the drain makes of :func:`status_of` (``Transitions._advance_all``:
    state and ``updated_at`` changed, ``history`` given), built from the
    stored text without the status before it: ``lua/claim.lua`` moves only
    statuses of the routine shape, whose body :func:`_lean_body` reads.
    """
    text = as_text(raw).partition("\n")[0].lstrip("0123456789")
    end = text.rfind("}") + 1
    body = text[:end]
    read = _BODIES.get(body) or _lean_body(body)
    if read is None:  # not a shape the claim moves: the long way, same result
        old = status_of(transaction_id, raw)
        if old is None:
            raise ValueError(f"the status of {transaction_id} holds no status: {raw!r}")
        update = {"state": TransactionState.PROCESSING, "updated_at": at}
        return made_status(
            {**old.__dict__, **update}, old.__pydantic_fields_set__ | {*update, "history"}
        )
    template, names = read
    values = template.copy()
    values["transaction_id"] = transaction_id
    values["state"] = TransactionState.PROCESSING
    values["created_at"] = _EPOCH + int(text[end + 1 :].partition(",")[0]) * _MICRO
    values["updated_at"] = at
    values["generated"] = {}
    return made_status(values, {*names, "updated_at", "history"})


def _lean_status(transaction_id: str, body: str, tail: str) -> TransactionStatus | None:
    """The status pydantic would read from ``body`` and ``tail``, built without it; or ``None``.

    For the shapes :func:`_lean_status_json` writes: anything else (generated
    values, a value of an unexpected type, a damaged text) goes through the
    full validation, which reads it or says what is wrong.
    """
    try:
        read = _BODIES.get(body)
        if read is None:
            read = _lean_body(body)
            if read is None:
                return None
        template, names = read
        values = template.copy()
        values["transaction_id"] = transaction_id
        given = set(names)
        micros = tail.split(",")
        created = int(micros[0])
        if not 0 <= created < _LAST_MICRO or len(micros) > 4:
            return None
        values["created_at"] = _EPOCH + created * _MICRO
        for name, value in zip(_TIMES[1:], micros[1:], strict=False):
            if value:
                values[name] = _EPOCH + (created + int(value)) * _MICRO
                given.add(name)
        if values["updated_at"] is None:
            return None  # never written without one (pydantic's default would be now)
        values["generated"] = {}
    except (ValueError, OverflowError):
        return None
    return made_status(values, given)


def _lean_body(body: str) -> tuple[dict[str, Any], frozenset[str]] | None:
    """A status's fields from its JSON (no id, no times), and the names it sets; or ``None``.

    Remembered for a body with no history nor error: most statuses of a site share
    one of a few (``{"endpoint":"e","state":"buffered"}``).
    """
    try:
        raw = _parse(body)
        if type(raw) is not dict or not raw.keys() <= _LEAN_FIELDS:
            return None
        values = dict(_DEFAULTS)
        values.update(raw)
        values["state"] = _STATES[raw["state"]]
        endpoint, attempts, error = values["endpoint"], values["attempts"], values["last_error"]
        if (
            type(endpoint) is not str
            or type(attempts) is not int
            or (error is not None and type(error) is not str)
        ):
            return None
        lsn = values["commit_lsn"]
        if lsn is not None:
            if type(lsn) is not str:
                return None
            values["commit_lsn"] = LSN.parse(lsn)
        history = values["history"]
        if type(history) is list:
            values["history"] = tuple([_event(e) for e in history])
        elif history != ():
            return None
    except (_Unusual, KeyError, ValueError, TypeError):
        return None
    read = values, frozenset(("transaction_id", "created_at", *raw))
    if not history and error is None and len(_BODIES) < _BODIES_KEPT:
        _BODIES[body] = read
    return read


def _event(raw: Any) -> StatusEvent:
    if type(raw) is not dict or not raw.keys() <= _EVENT_FIELDS:
        raise _Unusual
    at, event, note, times = raw["at"], raw["event"], raw.get("note"), raw.get("times", 1)
    if (
        type(at) is not str
        or not at.endswith("Z")
        or type(event) is not str
        or (note is not None and type(note) is not str)
        or type(times) is not int
    ):
        raise _Unusual
    return made_event(dt.datetime.fromisoformat(at), event, note, times)


def record_text(fields: Mapping[str, Any], record_id: str) -> str:
    """A buffered record's field lines: ``<field>=<JSON value>``, one per field.

    A field whose value is the record's id as text (its key, most often) is
    stored as ``<field>=``: the key already holds that text.
    """
    folded = '"' + record_id + '"'
    lines = []
    for name, value in fields.items():
        # value_json's commonest cases inline: this runs for every field of
        # every record buffered.
        kind = type(value)
        if kind is str:
            text = _quoted(value)
        elif kind is dict and len(value) == 1:
            ((key, inner),) = value.items()
            if type(key) is str and type(inner) is str:
                text = "{" + _quoted(key) + ":" + _quoted(inner) + "}"
            else:
                text = _JSON.encode(value)
        elif kind is int:
            text = int.__repr__(value)
        else:
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

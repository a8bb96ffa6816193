"""The frame of the ``APPLY`` script: commands as tokens, and the call's arguments.

``APPLY`` (``lua/apply.lua``, which writes out the grammar) takes its groups as
one frame in ``ARGV[2]``: tokens ended by the unit separator (byte 31), which no
identifier, number or JSON text holds. Text from outside the library (entries,
receipts, reasons, letter ids) follows as arguments of its own (blobs), so that
it is neither escaped nor parsed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from ccat_buffering.buffer import checks
from ccat_buffering.buffer.protocols import CacheWrite
from ccat_buffering.write.models import TransactionState, TransactionStatus
from ccat_buffering_redis._values import record_text, routine_body, status_json, status_tail

__all__ = [
    "SEP",
    "Command",
    "acks_command",
    "cache_command",
    "command",
    "dead_command",
    "frame",
    "ms",
    "ms_text",
    "push_command",
    "release_command",
    "replicated_command",
    "retry_command",
    "safe_token",
    "status_command",
    "statuses_commands",
]


def ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


_MS_TEXTS: dict[float, str] = {}


def ms_text(seconds: float) -> str:
    """``str(ms(seconds))``, each TTL's once: a site writes with a few, every time."""
    text = _MS_TEXTS.get(seconds)
    if text is None:
        if len(_MS_TEXTS) >= 64:
            _MS_TEXTS.clear()
        text = _MS_TEXTS[seconds] = str(ms(seconds))
    return text


SEP = "\x1f"
"""Ends each token of an ``APPLY`` frame (see ``lua/apply.lua``)."""


class Command(NamedTuple):
    """One staged operation of an ``APPLY`` frame.

    A named tuple rather than a frozen dataclass: every ``buffer()`` makes
    three, and a frozen dataclass's ``__init__`` sets each field through
    ``object.__setattr__`` (about as much as the rest of a push's staging).

    Attributes:
        text: Its tokens, each ended by :data:`SEP`.
        tokens: How many tokens ``text`` holds, the operation's name included.
        blobs: Text from outside the library, sent as arguments of their own.
        models: The models whose records it writes (cache writes).
    """

    text: str
    tokens: int
    blobs: tuple[str | bytes, ...] = ()
    models: tuple[str, ...] = ()

    @property
    def buffers(self) -> bool:
        """Whether the operation needs new memory: it buffers (a push, cache writes)."""
        return self.text.startswith(("push" + SEP, "cache" + SEP))


def command(*tokens: str, blobs: tuple[str | bytes, ...] = ()) -> Command:
    return Command(SEP.join(tokens) + SEP, len(tokens), blobs)


_command = tuple.__new__
"""``_command(Command, (text, tokens, blobs, models))``: a Command, without ``__new__``'s frame."""


def push_command(entry: str | bytes) -> Command:
    """``command("push", blobs=(entry,))``: one per transaction buffered."""
    return _command(Command, (_PUSH, 1, (entry,), ()))


_PUSH = "push" + SEP


def safe_token(text: str, what: str) -> str:
    """``text``, checked to be safe as a token of the frame."""
    if SEP in text:
        raise ValueError(f"{what} {text!r} holds a control character (\\x1f)")
    return text


def _state_place(status: TransactionStatus) -> tuple[str, str]:
    """The score of a status in its state index, and what its member puts before the id.

    A committed status is indexed by its commit LSN (see ``state_member`` in
    ``lua/apply_stage.lua``); any other takes its score in the script.
    """
    if status.state is not TransactionState.COMMITTED:
        return "", ""
    lsn = -1 if status.commit_lsn is None else int(status.commit_lsn)
    return (str(lsn >> 32) if lsn >= 0 else "-1"), f"{max(lsn, 0) & 0xFFFFFFFF:08X}"


def status_command(status: TransactionStatus, ttl_seconds: float) -> Command:
    values = status.__dict__
    transaction_id = values["transaction_id"]
    if SEP in transaction_id:
        safe_token(transaction_id, "transaction id")
    state = values["state"]
    if state is _COMMITTED:
        score, before = _state_place(status)
    else:
        score = before = ""
    text = SEP.join(
        (
            "status",
            transaction_id,
            status_json(status),
            _STATE_TEXT.get(state) or str(state),
            ms_text(ttl_seconds),
            score,
            before + transaction_id,
            "",
        )
    )
    return _command(Command, (text, 7, (), ()))


_COMMITTED = TransactionState.COMMITTED
_STATE_TEXT = {state: str(state) for state in TransactionState}


def statuses_commands(statuses: Sequence[TransactionStatus], ttl_seconds: float) -> list[Command]:
    """The commands that stage ``statuses`` (checked), in order, as many ``status`` would.

    Each run of routine statuses (see :func:`routine_body`) with one body (one
    endpoint, state, attempts and commit LSN) goes in one ``statuses``
    command: the shared tokens once, then each transaction's id and times.
    Any other status is a ``status`` command of its own.
    """
    ttl = str(ms(ttl_seconds))
    ops: list[Command] = []
    run: list[str] = []
    run_body: str | None = None
    run_head: list[str] = []

    def close() -> None:
        if run:
            parts = [*run_head, str(len(run) // 2), *run, ""]
            ops.append(Command(SEP.join(parts), len(parts) - 1))

    for status in statuses:
        checks.check_status(status)
        values = status.__dict__
        body = routine_body(values)
        if body is None:
            close()
            run, run_body = [], None
            ops.append(status_command(status, ttl_seconds))
            continue
        if body != run_body:
            close()
            score, before = _state_place(status)
            run, run_body = [], body
            run_head = ["statuses", str(values["state"]), ttl, score, before, body]
        run += (values["transaction_id"], status_tail(values))
    close()
    return ops


def cache_command(transaction_id: str, writes: Sequence[CacheWrite], ttl_seconds: float) -> Command:
    # Built as one string: it runs for every transaction buffered.
    parts = [
        "cache",
        safe_token(transaction_id, "transaction id"),
        ms_text(ttl_seconds),
        str(len(writes)),
    ]
    models = []
    for write in writes:
        model, record_id = write.model, write.record_id
        parts += (model, record_id, write.kind, record_text(write.fields, record_id))
        models.append(model)
    parts.append("")
    return _command(Command, (SEP.join(parts), len(parts) - 1, (), tuple(dict.fromkeys(models))))


def acks_command(receipts: Sequence[str]) -> Command:
    """The acks of ``receipts`` (checked), as one operation: ``ack`` for one, ``acks`` for more."""
    if len(receipts) == 1:
        return command("ack", blobs=(receipts[0],))
    return command("acks", str(len(receipts)), blobs=tuple(receipts))


def retry_command(receipts: Sequence[str], delay_seconds: float) -> Command:
    receipts = checks.check_retry(receipts, delay_seconds)
    delay = 0 if delay_seconds == 0 else ms(delay_seconds)
    return command("retry", str(delay), str(len(receipts)), blobs=tuple(receipts))


def dead_command(receipt: str, reason: str, transaction_id: str | None) -> Command:
    checks.check_dead_letter(receipt, reason, transaction_id)
    return command("dead", blobs=(receipt, reason, transaction_id or ""))


def release_command(transaction_ids: Sequence[str]) -> Command:
    ids = checks.check_cache_release(transaction_ids)
    return command("release", str(len(ids)), *ids)


def replicated_command(
    transaction_ids: Sequence[str], at_micros: int, ttl_seconds: float
) -> Command:
    """``replicated``: the routine committed statuses of ``transaction_ids`` made replicated.

    At ``at_micros`` (microseconds since 1970), then their caches released
    (see ``replicate_all`` in ``lua/apply_writes.lua``). The ids are checked.
    """
    ids = checks.check_cache_release(transaction_ids)
    return command("replicated", str(ms(ttl_seconds)), str(at_micros), str(len(ids)), *ids)


def frame(groups: list[list[Command]]) -> list[str | bytes]:
    """The ``APPLY`` script's arguments after the prefix: the frame, then the blobs."""
    parts = [str(len(groups)), SEP]
    blobs: list[str | bytes] = []
    for ops in groups:
        tokens = 0
        texts = []
        before = len(blobs)
        for text, count, op_blobs, _ in ops:
            tokens += count
            texts.append(text)
            if op_blobs:
                blobs += op_blobs
        parts += (str(tokens), SEP, str(len(blobs) - before), SEP, *texts)
    return ["".join(parts), *blobs]

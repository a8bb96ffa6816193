"""The write path of :class:`~ccat_buffering_redis.backend.RedisBackend`: groups to ``APPLY``.

``Backend.atomic()`` stages a group of commands (see :mod:`ccat_buffering_redis._frame`);
closing it sends the group, coalesced with those of concurrent callers (see
:mod:`ccat_buffering_redis._coalescer`), in one ``EVALSHA`` of ``APPLY``; each
group's result or refusal reaches its own caller. With ``min_replicas``, the
``WAIT`` goes in the same round trip (see :mod:`ccat_buffering_redis._replicas`).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ccat_buffering.buffer import checks
from ccat_buffering.buffer.checks import check_duration, check_payload, check_status, check_writes
from ccat_buffering.buffer.protocols import CacheWrite
from ccat_buffering.errors import (
    BackendError,
    BackendFullError,
    BackendUnavailableError,
    ConfigurationError,
    WriteNotReplicatedError,
)
from ccat_buffering.write.models import TransactionStatus
from ccat_buffering_redis._frame import (
    Command,
    acks_command,
    cache_command,
    command,
    dead_command,
    frame,
    push_command,
    release_command,
    replicated_command,
    retry_command,
    status_command,
    statuses_commands,
)
from ccat_buffering_redis._memory import POLICY_RECHECK_SECONDS
from ccat_buffering_redis._parts import BackendPart
from ccat_buffering_redis._replicas import apply_and_wait, not_replicated_message
from ccat_buffering_redis._values import as_text, micros_since_epoch
from ccat_buffering_redis.compression import entry_bytes

if TYPE_CHECKING:
    from ccat_buffering_redis._coalescer import Coalescer
    from ccat_buffering_redis._functions import FunctionCall

__all__ = ["RedisWriteBatch", "RedisWrites"]

log = logging.getLogger(__name__)


class RedisWrites(BackendPart):
    """The write path of :class:`~ccat_buffering_redis.backend.RedisBackend`."""

    if TYPE_CHECKING:
        min_replicas: int
        min_replicas_timeout: float
        compression: str | None
        refused_full_at: float | None
        _scripts: dict[str, Any]
        _functions: dict[str, FunctionCall]
        _apply_keys: list[str]
        _coalescer: Coalescer | None
        _unlearned: dict[str, tuple[str, ...]]
        _policy_checked_at: float
        _eviction_problem: str | None

        async def check_policy(self) -> str | None:
            """See :meth:`RedisBackend.check_policy`."""

        async def follow_master(self) -> None:
            """See :meth:`RedisBackend.follow_master`."""

    def _full_message(self, detail: str) -> str:
        return (
            f"{self.where} is full and refuses new writes ({detail.rstrip('.')}); nothing of "
            "this write was stored. The drain still frees memory: submit again once it has "
            "drained, or raise maxmemory (see the Redis page of the docs)"
        )

    async def _apply_groups(self, groups: list[list[Command]]) -> list[int | BackendError]:
        waits = self.min_replicas > 0 and any(op.buffers for group in groups for op in group)
        try:
            if waits:
                with self.translate():
                    reply, acked = await apply_and_wait(
                        self.client,
                        self._scripts["apply"],
                        [self.keys.buffer],
                        [self.keys.prefix, *frame(groups)],
                        self.min_replicas,
                        self.min_replicas_timeout,
                    )
            else:
                # script("apply", ...) without its frame: one per write group sent.
                with self.translate():
                    reply = await self._functions["apply"](
                        self._apply_keys, [self.keys.prefix, *frame(groups)]
                    )
                acked = 0
        except BackendUnavailableError as exc:
            raise BackendUnavailableError(
                f"{exc}: the write may or may not have been stored. Submitting the same "
                "transaction object again is safe: the ledger applies it once"
            ) from exc.__cause__
        unreplicated = waits and acked < self.min_replicas
        results: list[int | BackendError] = []
        for group, item in zip(groups, reply, strict=True):
            if type(item) is int and not unreplicated:
                results.append(item)  # the common case first: applied
            elif not isinstance(item, bytes | str):
                if unreplicated and any(op.buffers for op in group):
                    # Written on the master, not on enough replicas: not acknowledged.
                    results.append(
                        WriteNotReplicatedError(
                            not_replicated_message(
                                self.where, self.min_replicas, acked, self.min_replicas_timeout
                            )
                        )
                    )
                else:
                    results.append(int(item))
            elif (text := as_text(item)).startswith("full: "):
                self.refused_full_at = time.monotonic()
                results.append(BackendFullError(self._full_message(text.removeprefix("full: "))))
            elif (text := as_text(item)).startswith("failed: "):
                results.append(
                    BackendError(
                        f"{self.where} failed partway through a write group, which may be "
                        f"partly written: {text.removeprefix('failed: ')}"
                    )
                )
            else:
                # The script refused this group whole, before writing any of it.
                results.append(BackendError(f"{self.where} refused a write group: {text}"))
        return results

    async def apply(self, ops: list[Command]) -> int:
        """Apply one atomic group of operations.

        Returns:
            How many entries the group's operations touched.

        Raises:
            ConfigurationError: The group buffers and Redis evicts keys.
            BackendFullError: The group buffers and Redis is out of memory.
        """
        if time.monotonic() - self._policy_checked_at > POLICY_RECHECK_SECONDS and any(
            op.buffers for op in ops
        ):
            await self.check_policy()
            await self.follow_master()
        if self._eviction_problem is not None and any(op.buffers for op in ops):
            raise ConfigurationError(self._eviction_problem)
        if self._coalescer is not None:
            result = await self._coalescer.submit(ops)
        else:
            (outcome,) = await self._apply_groups([ops])
            if isinstance(outcome, BackendError):
                raise outcome
            result = outcome
        if self._unlearned:
            await self._learn_configured(ops)
        return result

    async def _learn_configured(self, ops: list[Command]) -> None:
        """Index the ``indexed_fields`` of the models ``ops`` wrote, once per model."""
        for model in {m for op in ops for m in op.models if m in self._unlearned}:
            fields = self._unlearned.pop(model)
            try:
                await self.script("cache_learn", model, *fields)
            except BackendError as exc:
                # The write stands; find() learns the fields on its first call instead.
                log.warning(
                    "could not index %s of %s yet: %s",
                    fields,
                    model,
                    exc,
                    extra={"site": self.site},
                )

    def atomic(self) -> _Atomic:
        """See :meth:`ccat_buffering.buffer.protocols.Backend.atomic`."""
        return _Atomic(self)


class _Atomic:
    """``RedisWrites.atomic()``: a batch to stage into, applied on a clean exit.

    A class rather than ``@asynccontextmanager``: every ``buffer()`` opens one,
    and the generator's three frames cost more than the rest of it.
    """

    __slots__ = ("_batch", "_writes")

    def __init__(self, writes: RedisWrites) -> None:
        self._writes = writes
        self._batch = RedisWriteBatch(writes.compression)

    async def __aenter__(self) -> RedisWriteBatch:
        return self._batch

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # A block that raised applies nothing; its error propagates.
        if exc_type is None and self._batch.ops:
            await self._writes.apply(self._batch.ops)


class RedisWriteBatch:
    """:class:`~ccat_buffering.buffer.protocols.WriteBatch` that stages script operations.

    Args:
        compression: How to store queue entries (see :mod:`ccat_buffering_redis.compression`).
    """

    def __init__(self, compression: str | None = None) -> None:
        self._ops: list[Command] = []
        self._acks: list[str] = []
        self.compression = compression

    @property
    def ops(self) -> list[Command]:
        """The operations staged, in order; acks staged one after another are one."""
        if self._acks:
            # A drain acknowledges a batch at a time: one HDEL and one ZREM in the script.
            self._ops.append(acks_command(self._acks))
            self._acks = []
        return self._ops

    def push(self, payload: str) -> None:
        """Stage a push."""
        check_payload(payload)
        entry = payload if self.compression is None else entry_bytes(payload, self.compression)
        self.ops.append(push_command(entry))

    def ack(self, receipt: str) -> None:
        """Stage an ack."""
        checks.check_receipts([receipt])
        self._acks.append(receipt)

    def retry_later(self, receipts: Sequence[str], delay_seconds: float) -> None:
        """Stage a retry."""
        self.ops.append(retry_command(receipts, delay_seconds))

    def dead_letter(self, receipt: str, reason: str, transaction_id: str | None) -> None:
        """Stage a move to the dead letters."""
        self.ops.append(dead_command(receipt, reason, transaction_id))

    def replay(self, letter_id: str) -> None:
        """Stage the replay of one letter."""
        checks.check_letter_ids([letter_id])
        self.ops.append(command("replay", blobs=(letter_id,)))

    def put_status(self, status: TransactionStatus, ttl_seconds: float) -> None:
        """Stage a status."""
        check_status(status)
        check_duration(ttl_seconds, "ttl_seconds")
        self.ops.append(status_command(status, ttl_seconds))

    def put_statuses(self, statuses: Sequence[TransactionStatus], ttl_seconds: float) -> None:
        """Stage statuses, as :meth:`put_status` each, in order: routine ones share a command."""
        check_duration(ttl_seconds, "ttl_seconds")
        self.ops.extend(statuses_commands(statuses, ttl_seconds))

    def write_cache(
        self, transaction_id: str, writes: Sequence[CacheWrite], ttl_seconds: float
    ) -> None:
        """Stage cache writes."""
        if type(writes) is not list:
            writes = list(writes)
        check_writes(transaction_id, writes)
        check_duration(ttl_seconds, "ttl_seconds")
        self.ops.append(cache_command(transaction_id, writes, ttl_seconds))

    def release_cache(self, transaction_ids: Sequence[str]) -> None:
        """Stage a cache release."""
        self.ops.append(release_command(transaction_ids))

    def replicate(
        self, transaction_ids: Sequence[str], at: dt.datetime, ttl_seconds: float
    ) -> None:
        """Stage the move of routine committed statuses to replicated, then a cache release.

        See :class:`~ccat_buffering.buffer.protocols.SupportsReplicatedMoves`:
        the script makes each new status from the stored one, as
        :mod:`ccat_buffering_redis._values` would write it.
        """
        check_duration(ttl_seconds, "ttl_seconds")
        if type(at) is not dt.datetime or at.utcoffset() != dt.timedelta(0):
            raise ValueError(f"at must be an aware UTC datetime, not {at!r}")
        self.ops.append(replicated_command(transaction_ids, micros_since_epoch(at), ttl_seconds))

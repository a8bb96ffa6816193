"""The Redis key schema of a site: the one place that names a key.

Every key of a site starts with ``site:{<site>}:``. The braces are a Redis
Cluster hash tag, so all keys of a site live in one slot and every script and
transaction is single-slot. :data:`SUFFIXES` is the one source of the names:
the Lua scripts receive the prefix and a fragment generated from it (see
:mod:`ccat_buffering_redis.scripts`), and a test checks this table and the
docs' against it.

==========================================  =======  ==========================================
key                                         type     what
==========================================  =======  ==========================================
``transaction_buffer``                      list     the FIFO: LPUSH in, claimed from the right
``transaction:<transaction_id>``            string   status JSON without the id (the key has it)
                                                     and without default values (in a bucketed
                                                     state after its sequence number); then, after a
                                                     newline, the ``<Model>:<id>`` records it wrote,
                                                     space-separated, while they are buffered; TTL
                                                     once terminal (records alone: as the records)
``cache:ids:<Model>:<id>``                  string   write-through ID cache: the creating
                                                     transaction, only where it is not the
                                                     record's first (flag ``2`` otherwise);
                                                     TTL extended until replicated
``buffered:<Model>:<id>``                   string   buffered record: a head line ``@<created
                                                     0|1|2><deleted 0|1><seq>:<tx>,<tx>...``, then a
                                                     line ``<field>=<JSON value>`` per field (the
                                                     record's id as text: ``<field>=``);
                                                     TTL extended until replicated
``inflight``                                hash     receipt -> claimed entry, as stored
``inflight:leases``                         zset     receipt -> lease deadline (ms)
``hold``                                    string   exists while a retry's backoff holds the head
``seq``                                     string   counter for receipts and the order of dead
                                                     letters, index and state entries; taken a
                                                     budget at a time, so it has gaps
``dead_letters``                            hash     letter id -> the entry, as stored
``dead_letters:meta``                       hash     letter id -> reason, time, transaction id
``dead_letters:order``                      zset     letter id -> arrival order
``state:<state>``                           zset     transaction ids per state: committed by LSN,
                                                     terminal by expiry (ms); buffered, processing
                                                     and retrying: their buckets by number, each
                                                     ``state:<state>:<n>`` the ids of 128 numbers
``index:<Model>``                           zset     a model's buckets by number, each
                                                     ``index:<Model>:<n>`` the record ids of 128
                                                     numbers (first writes); TTL follows the
                                                     longest-lived record (of the bucket)
``state:cursors``                           hash     state -> where the reconciliation of its
                                                     index stands (``status`` checks a slice a look)
``buffer_epoch``                            string   the buffer's marker: ``<epoch> <started ms>``,
                                                     checked against the main database
``fields:<Model>``                          zset     field index: ``<field>=<JSON value><NUL>
                                                     <id>`` per registered field (``<NUL><field>``)
                                                     of each record (values over 64 bytes by their
                                                     start and length); TTL as ``index:``
``lease``                                   string   the processor lease token; PX TTL
``processor``                               string   the draining processor's report (JSON);
                                                     PX TTL
``audit``                                   list     the audit log: operators' actions (JSON),
                                                     newest first, capped (LTRIM)
``idempotency:<sha256 of the key>``         string   an idempotency key's record (JSON): the
                                                     request's fingerprint, its transaction and
                                                     first answer; PX ``idempotency_ttl``
``operator_pause``                          string   the operator's pause of the drain (JSON:
                                                     who, when, why); absent when not paused
``charts``                                  list     the console's chart samples (JSON), newest
                                                     first, capped (LTRIM)
==========================================  =======  ==========================================
"""

from __future__ import annotations

from ccat_buffering.key_schema import SUFFIXES
from ccat_buffering.models import TransactionState, check_identifier

SEQ_STATES = ("buffered", "processing", "retrying")
"""States whose index is kept in buckets (see ``_state_index``)."""

__all__ = ["BOUNDED", "SEQ_STATES", "SUFFIXES", "SiteKeys"]

# SUFFIXES lives in the core (ccat_buffering.key_schema), so that the memory
# backend names its entries as Redis does without importing redis-py.


BOUNDED = (
    "transaction_buffer",
    "inflight",
    "inflight:leases",
    "seq",
    "dead_letters",
    "dead_letters:order",
    "dead_letters:meta",
    *(f"state:{state}" for state in TransactionState),
    "state:cursors",
    "buffer_epoch",
    "audit",
    "operator_pause",
    "charts",
)
"""Suffixes of the site's bounded structures: they need no TTL.

Each is bounded by what the site holds (waiting, in-flight, dead-lettered or
unfinished transactions); terminal entries of the state indexes are pruned
when their statuses expire, and a terminal state's index carries the TTL of
its longest-lived status.
"""


class SiteKeys:
    """The key names of one site.

    Args:
        site: The site's name (a plain identifier).
    """

    def __init__(self, site: str) -> None:
        check_identifier(site, "site name")
        self.site = site
        self.prefix = f"site:{{{site}}}:"

    def _key(self, role: str, *parts: str) -> str:
        return self.prefix + SUFFIXES[role] + ":".join(parts)

    @property
    def buffer(self) -> str:
        """The FIFO list."""
        return self._key("buffer")

    def status(self, transaction_id: str) -> str:
        """A transaction's status."""
        return self._key("status", transaction_id)

    def idempotency(self, digest: str) -> str:
        """An idempotency key's record, by the key's SHA-256 (hex)."""
        return self._key("idempotency", digest)

    def ids(self, model: str, record_id: str) -> str:
        """A record's entry in the write-through ID cache."""
        return self._key("ids", model, record_id)

    def buffered(self, model: str, record_id: str) -> str:
        """A record's entry in the buffered data cache."""
        return self._key("buffered", model, record_id)

    def state(self, state: TransactionState) -> str:
        """The index of the statuses in ``state``."""
        return self._key("state", str(state))

    def index(self, model: str) -> str:
        """The index of a model's buffered records."""
        return self._key("index", model)

    def fields(self, model: str) -> str:
        """The index of a model's buffered records by field value."""
        return self._key("fields", model)

    @property
    def inflight(self) -> str:
        """Claimed entries by receipt."""
        return self._key("inflight")

    @property
    def seq(self) -> str:
        """The site's counter."""
        return self._key("seq")

    @property
    def letters(self) -> str:
        """Dead-lettered payloads."""
        return self._key("letters")

    @property
    def letter_order(self) -> str:
        """Arrival order of dead letters."""
        return self._key("letter_order")

    @property
    def epoch(self) -> str:
        """The buffer's marker, checked against the main database (see ``buffer_loss``)."""
        return self._key("epoch")

    @property
    def pause(self) -> str:
        """The operator's pause of the site's drain (see ``ccat_buffering.operator_pause``)."""
        return self._key("pause")

    @property
    def audit(self) -> str:
        """The audit log of operators' actions (see ``ccat_buffering.audit``)."""
        return self._key("audit")

    @property
    def charts(self) -> str:
        """The console's chart samples (see ``ccat_buffering.console``)."""
        return self._key("charts")

    @property
    def processor(self) -> str:
        """The draining processor's report."""
        return self._key("processor")

    def status_id(self, key: str) -> str | None:
        """The transaction id if ``key`` is a status key of this site, else ``None``.

        A status key has no TTL while its transaction is unfinished: it is
        bounded by the unfinished transactions, as the buffer is.
        """
        start = self.prefix + SUFFIXES["status"]
        return key[len(start) :] if key.startswith(start) else None

    def bounded(self) -> set[str]:
        """Full names of the site's bounded structures (see :meth:`is_bounded` for buckets)."""
        return {self.prefix + suffix for suffix in BOUNDED}

    def is_bounded(self, key: str) -> bool:
        """Whether ``key`` is a bounded structure: one of :meth:`bounded` or a state bucket."""
        if key in self.bounded():
            return True
        state, _, bucket = key.removeprefix(self.prefix + SUFFIXES["state"]).partition(":")
        return key.startswith(self.prefix) and state in SEQ_STATES and bucket.isdigit()

    def state_bucket(self, state: TransactionState, bucket: int) -> str:
        """A bucket of a state index kept in buckets (see ``_state_index``)."""
        return f"{self.state(state)}:{bucket}"

    def index_bucket(self, model: str, bucket: int) -> str:
        """A bucket of a model index (see ``_model_index``)."""
        return f"{self.index(model)}:{bucket}"

    def pattern(self) -> str:
        """A ``SCAN MATCH`` pattern for every key of the site (inspection only)."""
        escaped = self.site.replace("\\", "\\\\")
        for char in "*?[]":
            escaped = escaped.replace(char, "\\" + char)
        return f"site:{{{escaped}}}:*"

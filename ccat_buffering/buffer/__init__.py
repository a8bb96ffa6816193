"""The buffer: what a backend stores and the manager that stores it.

Owns the roles a backend plays (``protocols``, the contract) and the checks
every backend runs at its boundary (``checks``), the transaction manager
(``manager``: buffer, status, caches, retries, dead letters) and how a
transaction moves through its states (``_transitions``, with
``_recent_commits``), what a transaction writes into the caches
(``cache_writes``) and reads back from a claim (``_entries``,
``_entry_decoding``), the key schema (``key_schema``), the buffer's counts
(``counts``), its origin (``_sightings``), retries (``retry``), replays
(``replays``), idempotency keys (``idempotency``) and the audit log (``audit``).

May import: ``write`` and the foundation. Never the drain, the
replication tracker, or a backend package.
"""

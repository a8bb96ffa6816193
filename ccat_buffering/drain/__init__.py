"""The drain: claiming buffered transactions and applying them to the main database.

Owns the background processor (``processor``), one cycle of it
(``_batch_cycle``), running it until the buffer is empty (``_draining``), its
lease (``_lease_holding``), report (``processor_state``) and an operator's
pause (``operator_pause``); the executor (``executor``), the batch it prepares
ahead (``_batch_preparing``), its operators' paths (``_operator_paths``) and
its two paths (``_pipelined`` with ``_pipeline`` and ``_compiled_writes``;
``_session_path`` with ``_drift``), batch planning (``_grouping``), sizing and
the link's timeouts (``_sizing``, ``_link``), the main database and its ledger
(``database``, ``_tls``, ``ledger_pruning``), what became of a batch
(``outcome``), tracing (``tracing``), stopping tasks (``_stopping``) and the
worker's collector (``_heap``).

May import: ``buffer``, ``write``, ``conflicts`` and the foundation. Never
``confirm``, ``read``, ``config`` or anything above them.
"""

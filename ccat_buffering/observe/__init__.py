"""Observation: a site at a glance, and what it did.

Owns the health report (``health``, its reads bounded in time in
``_health_reads``), telling that the buffer lost state (``buffer_loss`` with
``_buffer_looks``, ``_loss_store`` and ``_loss_records``; a reader's look in
one statement in ``_loss_look``) and a process's activity counts
(``activity``).

May import: every stage below it (write to config) and the foundation;
the site and the web integration import it, never the other way.
"""

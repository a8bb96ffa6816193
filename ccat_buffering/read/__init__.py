"""Reads: what the site believes now, its own writes included.

Owns read-your-writes (``reads``), the database side of a read
(``_read_database``) and a model's keys as reads meet them (``_record_keys``).

May import: ``buffer``, ``write`` and the foundation. Never the drain.
"""

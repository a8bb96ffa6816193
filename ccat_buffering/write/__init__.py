"""The write side: what a buffered write is, and building one.

Owns the transaction model (``models``, ``status``, ``lsn``, ``identifiers``,
``payload_limits``), the conversion of values to their columns (``columns``,
``_column_rules``, ``_codec``), the mapped classes a write may touch
(``registry``) and the builder a service writes with (``builder``).

May import: the flat foundation (``errors``, ``masking``, ``logs``) and
``conflicts.kinds`` (the policies a model declares). Never the buffer, the
drain or anything above it.
"""

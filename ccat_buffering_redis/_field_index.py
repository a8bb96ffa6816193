"""The field index (``fields:<Model>``): its Lua is ``lua/field_index.lua``.

Only registered fields are indexed. A field is registered by the first
``CacheStore.find()`` on it, or when a backend first writes a model whose
fields are named in ``indexed_fields``; either way one script builds its
entries from the model's buffered records and registers it, so that the
writes after it index it too. A registration is a member ``<NUL><field>`` of
the same zset, which sorts before every entry and matches no lookup. It lives
as long as the index does; once the key has expired, the next ``find()`` on
the field registers it again. A ``find()`` on a field not registered (yet, or
on a full Redis that refuses the registration) scans the model's records, so
the answer is the same either way.

Indexing every field of every record cost more memory than the records
themselves (issue 12): most fields are never filtered on.
"""

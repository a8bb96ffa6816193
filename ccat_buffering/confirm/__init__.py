"""Confirmation: knowing when a commit is on the site's replica, and waiting for it.

Owns the replication tracker and checkers (``replication``: releases the
caches of what the replica has replayed, marks it ``replicated``) and waits for
a transaction's state (``waiting``).

May import: ``drain``, ``read``, ``buffer``, ``write`` and the foundation.
"""

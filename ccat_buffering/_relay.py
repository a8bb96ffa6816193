"""Deprecated: the relay moved to ``ccat_buffering.demo._relay``.

Kept, with a :class:`DeprecationWarning`, for ``bench/wan_bench.py`` until it
imports the new path; drop it then.
"""

from ccat_buffering._deprecated import forward

__getattr__ = forward(__name__, "ccat_buffering.demo._relay")

"""Deprecated: the example schemas moved to :mod:`ccat_buffering.demo.example`.

``ccat_buffering.example:Base`` (``--models``) and ``from ccat_buffering.example
import ...`` still work for one release, with a :class:`DeprecationWarning`.
"""

from ccat_buffering._deprecated import forward

__getattr__ = forward(__name__, "ccat_buffering.demo.example")

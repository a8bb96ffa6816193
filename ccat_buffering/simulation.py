"""Deprecated: the simulation moved to :mod:`ccat_buffering.demo.simulation`.

``from ccat_buffering.simulation import ...`` still works for one release,
with a :class:`DeprecationWarning`.
"""

from ccat_buffering._deprecated import forward

__getattr__ = forward(__name__, "ccat_buffering.demo.simulation")

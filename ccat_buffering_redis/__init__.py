"""The Redis backend of ccat-buffering (to come: see the project's issues).

The package is installed now so that its place in the ``ccat_buffering.backends``
entry points exists; ``open_backend("redis://...")`` explains that it is not
built yet instead of failing on a missing import.
"""

__all__: list[str] = []

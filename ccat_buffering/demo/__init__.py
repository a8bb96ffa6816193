"""The demonstration: ``ccat-buffering simulate`` and the example schemas it writes.

Nothing in the engine imports this package. :mod:`ccat_buffering.demo.example`
holds two small operations schemas (also used by the tests and the
documentation), :mod:`ccat_buffering.demo.simulation` the outage scenario, and
``ccat_buffering.demo._relay`` the loopback relay the scenario cuts to make a
real outage of a networked database.
"""

"""The demonstration: ``ccat-buffering simulate`` and the example schemas it writes.

Nothing in the engine imports this package. :mod:`ccat_buffering.demo.example`
holds two small operations schemas (also used by the tests and the
documentation) and :mod:`ccat_buffering.demo.simulation` the outage scenario;
``_workload.py`` builds what the scenario writes on each schema,
``_outage.py`` makes the outage real, and ``_relay.py`` is the loopback relay
it cuts for a networked database (the tests use it to delay and hang a link).
"""

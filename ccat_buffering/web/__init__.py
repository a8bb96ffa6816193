"""The web: FastAPI services on a buffering site, and what they expose.

Owns the FastAPI integration (``fastapi``, with ``fastapi_idempotency`` and
``fastapi_waits``), what an unauthenticated caller may see
(``public_views``) and Prometheus metrics (``metrics``, ``service_metrics``).

May import: ``site`` and everything below it. Needs the ``fastapi`` (and
``metrics``) extra.
"""

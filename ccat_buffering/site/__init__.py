"""A site assembled: the coordinator that knows every part.

Owns :class:`~ccat_buffering.site.coordinator.BufferingCoordinator`: its
parts and queries (``coordinator``), what a submit does (``_submitting``),
starting and stopping its background work (``_lifecycle``) and the wiring of
the parts from the settings (``_wiring``).

May import: every stage below (write to observe) and the foundation. Nothing
in the core imports it; ``web``, ``cli``, ``console`` and ``demo`` do.
"""

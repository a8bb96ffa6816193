"""Configuration: a site's settings and the backend they name.

Owns the settings (``settings``), their checks (``_settings_checks``) and
opening a backend from its URL through the entry points (``backends``).

May import: the stages below (write to confirm) and the foundation. Never
a backend package (backends are found through entry points).
"""

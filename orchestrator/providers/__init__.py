"""Provider plugins. Only ``providers/<name>/`` knows a provider's HTTP API; the engine sees
the normalized types and the Protocols in ``base.py``, found through ``registry.py``."""

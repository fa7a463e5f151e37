"""Provider plugins by name, found through the ``tunectl.providers`` entry-point group.

A new provider is a package exporting a ``plugin`` object plus one line in pyproject.toml;
no engine module changes.
"""

from __future__ import annotations

from functools import lru_cache
from importlib.metadata import entry_points

from orchestrator.errors import UnknownProvider
from orchestrator.providers.base import ProviderPlugin


@lru_cache(maxsize=1)
def _plugins() -> dict[str, ProviderPlugin]:
    found: dict[str, ProviderPlugin] = {}
    for ep in entry_points(group="tunectl.providers"):
        found[ep.name] = ep.load()
    return found


def names() -> list[str]:
    """Installed provider names, sorted."""
    return sorted(_plugins())


def get(name: str) -> ProviderPlugin:
    """The plugin called ``name``; raises UnknownProvider with the installed names."""
    try:
        return _plugins()[name]
    except KeyError:
        raise UnknownProvider(
            f"unknown provider {name!r}; installed providers: {', '.join(names()) or 'none'}"
        ) from None

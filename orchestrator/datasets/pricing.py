"""Training prices per provider and base model, and the cost estimate built from them.

The bundled table is ``data/prices.yaml``. A user's table of the same shape (by default
``$TUNECTL_DATA_DIR/prices.yaml``) is tried first, so it can add models or change prices.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from orchestrator.datasets.rules import base_model
from orchestrator.errors import UserError

#: The file name looked up in the data directory for a user's price table.
OVERRIDE_NAME = "prices.yaml"


@dataclass(frozen=True)
class Price:
    """A training price, or an explicit "unknown" (``usd_per_million`` None)."""

    usd_per_million: float | None
    #: Where the price comes from (the table and its stated source).
    source: str


@dataclass(frozen=True)
class PriceTable:
    """Price tables, tried in order (the user's first, then the bundled one)."""

    tables: tuple[tuple[str, dict[str, Any]], ...]

    def lookup(self, provider: str, model: str) -> Price:
        """The price of training ``model`` at ``provider``; unknown if no table has it."""
        name = base_model(model)
        for origin, table in self.tables:
            entry = table.get(provider)
            if not isinstance(entry, dict):
                continue
            for rule in entry.get("models") or []:
                if fnmatch.fnmatchcase(name, str(rule.get("match", ""))):
                    value = rule.get("usd_per_million")
                    source = f"{origin}: {rule.get('source') or entry.get('source') or ''}"
                    return Price(None if value is None else float(value), source.rstrip(": "))
        return Price(None, f"no price for {provider} {model} in {self.origins()}")

    def origins(self) -> str:
        """The tables consulted, for messages."""
        return " or ".join(origin for origin, _ in self.tables)


def load_prices(override: Path | None = None) -> PriceTable:
    """The bundled price table, with ``override`` (if it exists) tried first.

    Raises:
        UserError: the override file is unreadable or malformed.
    """
    bundled = files("orchestrator.datasets").joinpath("data/prices.yaml").read_text("utf-8")
    tables = [("tunectl's bundled prices", _parse(bundled, "data/prices.yaml"))]
    if override is not None and override.exists():
        try:
            text = override.read_text("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"{override}: cannot read the price table ({exc}); fix or "
                            "remove it") from None
        tables.insert(0, (str(override), _parse(text, str(override))))
    return PriceTable(tuple(tables))


@lru_cache(maxsize=8)
def _parse(text: str, source: str) -> dict[str, Any]:
    """The checked table in ``text`` (cached: the validate step loads it for every job)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UserError(f"{source}: invalid YAML in the price table ({exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{source}: a price table maps provider names to "
                        "{source, models: [{match, usd_per_million}]}")
    for provider, entry in data.items():
        models = entry.get("models") if isinstance(entry, dict) else None
        if not isinstance(models, list) or not all(
                isinstance(m, dict) and isinstance(m.get("match"), str) for m in models):
            raise UserError(f"{source}: {provider}: needs models: [{{match: <pattern>, "
                            "usd_per_million: <number or null>}]")
        for m in models:
            value = m.get("usd_per_million")
            if value is not None and (isinstance(value, bool) or not isinstance(
                    value, int | float) or not math.isfinite(value) or value < 0):
                raise UserError(f"{source}: {provider}: {m['match']}: usd_per_million must "
                                "be a non-negative number or null")
    return data


def estimate_usd(billed_tokens: int | None, price: Price) -> float | None:
    """Billed tokens times the price, or None when either is unknown."""
    if billed_tokens is None or price.usd_per_million is None:
        return None
    return billed_tokens * price.usd_per_million / 1_000_000

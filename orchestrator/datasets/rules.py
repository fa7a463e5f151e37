"""Dataset rules per provider and base model, read from ``data/rules.yaml``.

A value of None means the number is not known; the validator skips that check and the
report says so. See the YAML file for every number's source.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, fields
from functools import lru_cache
from importlib.resources import files
from typing import Any

import yaml

from orchestrator.datasets.formats import PROVIDERS
from orchestrator.errors import UserError


@dataclass(frozen=True)
class Rules:
    """The limits that apply to one provider and base model."""

    provider: str
    model: str
    #: The model entry that matched, or None when tunectl has no entry for the model.
    matched: str | None
    sources: tuple[str, ...]
    max_file_bytes: int | None = None
    min_examples: int | None = None
    recommended_min_examples: int | None = None
    max_examples: int | None = None
    max_validation_examples: int | None = None
    token_limit: int | None = None
    token_limit_hyperparameter: str | None = None
    over_limit: str | None = None
    tokenizer: str = "o200k_base"
    tokens_approximate: bool = True
    message_overhead: int = 0
    example_overhead: int = 0
    epochs_hyperparameters: tuple[str, ...] = ()
    default_epochs: int | str | None = None
    max_images_per_example: int | None = None
    max_image_bytes: int | None = None
    image_formats: tuple[str, ...] | None = None

    def as_json(self) -> dict[str, Any]:
        """The rules as plain data (for the report)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


_KEYS = {f.name for f in fields(Rules)} - {"provider", "model", "matched", "sources"}


@lru_cache(maxsize=1)
def _table() -> dict[str, Any]:
    text = files("orchestrator.datasets").joinpath("data/rules.yaml").read_text("utf-8")
    table: dict[str, Any] = yaml.safe_load(text)
    return table


def base_model(model: str) -> str:
    """The base model a model name refers to (``ft:gpt-4o-mini-2024-07-18:org::id`` → the
    base), so a fine-tune of a fine-tuned model gets its base's rules."""
    if model.startswith("ft:"):
        return model[3:].split(":", 1)[0]
    return model


def rules_for(provider: str, model: str) -> Rules:
    """The rules for ``provider`` and ``model``: the provider's defaults, overridden by the
    first model entry whose pattern matches."""
    table = _table()
    if provider not in PROVIDERS or provider not in table:
        raise UserError(f"unknown provider {provider!r}; use one of {', '.join(PROVIDERS)}")
    entry = table[provider]
    values: dict[str, Any] = {k: v for k, v in entry.items() if k in _KEYS}
    sources = list(entry.get("sources", []))
    matched = None
    name = base_model(model)
    for rule in entry.get("models", []):
        if fnmatch.fnmatchcase(name, rule["match"]):
            matched = rule["match"]
            values.update({k: v for k, v in rule.items() if k in _KEYS})
            if rule.get("source"):
                sources.append(f"{rule['match']}: {rule['source']}")
            break
    for key in ("epochs_hyperparameters", "image_formats"):
        if values.get(key) is not None:
            values[key] = tuple(values[key])
    return Rules(provider=provider, model=model, matched=matched, sources=tuple(sources),
                 **values)

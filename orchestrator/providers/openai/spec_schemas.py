"""The vendored subset of OpenAI's OpenAPI spec (spec/fine_tuning.schema.json), by component name.

Regenerate the JSON with tools/extract_openai_spec.py; spec/README.md says where it comes from.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any, cast

from jsonschema import Draft202012Validator, ValidationError
from jsonschema.exceptions import best_match

SPEC_FILE = Path(__file__).parent / "spec" / "fine_tuning.schema.json"


@cache
def _document() -> dict[str, Any]:
    return cast(dict[str, Any], json.loads(SPEC_FILE.read_text(encoding="utf-8")))


def names() -> list[str]:
    """Every component name the vendored file holds."""
    return sorted(_document()["$defs"])


def component(name: str) -> dict[str, Any]:
    """One component as the file holds it (its `$ref`s point into `$defs`)."""
    return cast(dict[str, Any], schema(name)["$defs"][name])


def schema(name: str) -> dict[str, Any]:
    """A self-contained 2020-12 schema for one component (a `$ref` to it plus all `$defs`).

    Raises:
        KeyError: the component is not in the vendored subset.
    """
    document = _document()
    if name not in document["$defs"]:
        raise KeyError(f"{name!r} is not in {SPEC_FILE.name}: add it to the ROOTS of "
                       "tools/extract_openai_spec.py")
    return {"$schema": document["$schema"], "$ref": f"#/$defs/{name}", "$defs": document["$defs"]}


@cache
def _validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(schema(name))


def errors(name: str, instance: Any) -> list[ValidationError]:
    """Every way `instance` breaks component `name`, each narrowed to its likeliest cause.

    A failed `anyOf`/`oneOf` (the spec's "auto"-or-number fields, nullable fields) is reported as
    the branch error that explains it ("0 is less than the minimum of 1"), sorted by path.
    """
    found = [best_match([error]) for error in _validator(name).iter_errors(instance)]
    return sorted(found, key=lambda error: [str(part) for part in error.absolute_path])


def validate(name: str, instance: Any) -> list[str]:
    """Every way `instance` breaks component `name`, as "<json path>: <message>"; empty if valid."""
    return [f"{error.json_path}: {error.message}" for error in errors(name, instance)]

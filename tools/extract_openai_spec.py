"""Regenerate orchestrator/providers/openai/spec/fine_tuning.schema.json from OpenAI's openapi.yaml.

Takes the component schemas of the Files and Fine-tuning APIs, closes them over `$ref`, rewrites
the OpenAPI 3.0 leftovers so a JSON Schema 2020-12 validator reads them as intended, and applies
the few errata listed in ERRATA (places where the spec disagrees with its own examples).

    python tools/extract_openai_spec.py /work/shared/specs/openai/openapi.yaml
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import yaml

ROOTS = (
    "CreateFileRequest",
    "CreateFineTuningJobRequest",
    "DeleteFileResponse",
    "Error",
    "ErrorResponse",
    "FineTuningJob",
    "FineTuningJobCheckpoint",
    "FineTuningJobEvent",
    "ListFilesResponse",
    "ListFineTuningJobCheckpointsResponse",
    "ListFineTuningJobEventsResponse",
    "ListPaginatedFineTuningJobsResponse",
    "OpenAIFile",
    "WebhookFineTuningJobCancelled",
    "WebhookFineTuningJobFailed",
    "WebhookFineTuningJobSucceeded",
)
SPEC_PREFIX = "#/components/schemas/"
DEFS_PREFIX = "#/$defs/"
DEFAULT_OUT = (
    Path(__file__).resolve().parents[1]
    / "orchestrator/providers/openai/spec/fine_tuning.schema.json"
)

Schema = dict[str, Any]


class Erratum(NamedTuple):
    """A deliberate change to one node of one component, with the reason it is needed."""

    component: str
    pointer: tuple[str, ...]
    patch: Callable[[Schema], Schema]
    reason: str


def _nullable(node: Schema) -> Schema:
    return {"anyOf": [node, {"type": "null"}]}


def _add_enum(value: str) -> Callable[[Schema], Schema]:
    def patch(node: Schema) -> Schema:
        return {**node, "enum": [*node["enum"], value]}

    return patch


ERRATA = (
    Erratum(
        "OpenAIFile", ("properties", "expires_at"), _nullable,
        "the API sends expires_at: null for a file that never expires (the SDK types it Optional)",
    ),
    Erratum(
        "OpenAIFile", ("properties", "status_details"), _nullable,
        "the API sends status_details: null when there is nothing to say (SDK: Optional)",
    ),
    Erratum(
        "OpenAIFile", ("properties", "purpose"), _add_enum("evals"),
        "CreateFileRequest accepts purpose 'evals', and the file object echoes it",
    ),
    Erratum(
        "ListFilesResponse", ("properties", "first_id"), _nullable,
        "an empty page has no first id (ListFineTuningJobCheckpointsResponse allows null)",
    ),
    Erratum(
        "ListFilesResponse", ("properties", "last_id"), _nullable,
        "an empty page has no last id (ListFineTuningJobCheckpointsResponse allows null)",
    ),
    Erratum(
        "FineTuningJob", ("properties", "status"), _add_enum("paused"),
        "the spec's own example response of POST /fine_tuning/jobs/{id}/pause has status 'paused'",
    ),
)


def normalize(node: Any) -> Any:
    """Rewrite OpenAPI 3.0 keywords into JSON Schema 2020-12, bottom-up."""
    if isinstance(node, list):
        return [normalize(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: normalize(value) for key, value in node.items()}
    ref = out.get("$ref")
    if isinstance(ref, str) and ref.startswith(SPEC_PREFIX):
        out["$ref"] = DEFS_PREFIX + ref.removeprefix(SPEC_PREFIX)
    for exclusive, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(out.get(exclusive), bool) and out.pop(exclusive):
            out[exclusive] = out.pop(bound)
    if isinstance(out.get("nullable"), bool) and out.pop("nullable"):
        return _nullable(out)
    return out


def _references(node: Any) -> set[str]:
    if isinstance(node, list):
        return set().union(*(_references(item) for item in node))
    if not isinstance(node, dict):
        return set()
    found = {node["$ref"].removeprefix(SPEC_PREFIX)} if isinstance(node.get("$ref"), str) else set()
    return found.union(*(_references(value) for key, value in node.items() if key != "$ref"))


def closure(schemas: dict[str, Schema], roots: tuple[str, ...]) -> list[str]:
    """Names of the roots and of every component they reach through `$ref`, sorted."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(_references(schemas[name]))
    return sorted(seen)


def _apply(defs: dict[str, Schema], erratum: Erratum) -> None:
    *parents, leaf = erratum.pointer
    node = defs[erratum.component]
    for key in parents:
        node = node[key]
    node[leaf] = {**erratum.patch(node[leaf]), "$comment": f"erratum: {erratum.reason}"}


def extract(spec: Schema, source: str) -> Schema:
    """The vendored document: normalized components under `$defs`, errata applied."""
    schemas = spec["components"]["schemas"]
    defs = {name: normalize(schemas[name]) for name in closure(schemas, ROOTS)}
    for erratum in ERRATA:
        _apply(defs, erratum)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$comment": f"Generated by tools/extract_openai_spec.py from {source}. Do not edit.",
        "$defs": defs,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path, help="path to OpenAI's openapi.yaml")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the JSON")
    args = parser.parse_args(argv)
    with args.spec.open(encoding="utf-8") as f:
        spec = yaml.load(f, Loader=yaml.CSafeLoader)
    source = f"openai-openapi openapi.yaml (info.version {spec['info']['version']})"
    document = extract(spec, source)
    args.out.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {len(document['$defs'])} schemas to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

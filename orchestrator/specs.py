"""Job specs: the pydantic model, and loading a YAML or JSON file with one clear error.

A spec error names the file, the line when it can, the field, and the reason, for example
``support.yaml:7: hyperparameters.n_epochs: must be an integer from 1 to 50 or "auto"``.
Aliases, duplicate keys and non-finite numbers are refused: a spec is plain data.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

if TYPE_CHECKING:
    from orchestrator.providers.base import ProviderPlugin

from orchestrator.errors import SpecError, UnknownProvider

MAX_SPEC_BYTES = 1 << 20
#: Far deeper than any spec (notify.0.events.0 is its deepest field); YAML nested deeper is
#: refused before it is composed, which PyYAML does by recursion.
MAX_DEPTH = 32
_LABEL_KEY = re.compile(r"^[a-z0-9][a-z0-9_.\-/]{0,62}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.\-]{0,127}$")
Hyperparameter = int | float | str
NotifyEvent = Literal["succeeded", "failed", "cancelled", "deployed", "undeployed", "all"]
DEFAULT_EVENTS: tuple[NotifyEvent, ...] = ("succeeded", "failed", "cancelled")


class DeployOptions(BaseModel):
    """How to deploy the tuned model, for providers that need a deployment."""

    model_config = ConfigDict(extra="forbid")

    capacity: int = Field(default=1, ge=1, le=1000)
    ttl_hours: float | None = Field(default=None, gt=0)


class NotifyTarget(BaseModel):
    """A webhook endpoint told about the job's outcome."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(pattern=r"^https?://[^\s/@]+(/\S*)?$", max_length=2000)
    #: Name of the signing secret (an environment variable or secret file), never the secret.
    secret: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
    events: list[NotifyEvent] = Field(
        default_factory=lambda: list(DEFAULT_EVENTS), min_length=1)


class JobSpec(BaseModel):
    """A fine-tune job as the user asks for it."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str
    provider: str = Field(min_length=1, max_length=40)
    base_model: str = Field(min_length=1, max_length=200)
    method: Literal["sft", "dpo"] = "sft"
    #: The provider's own training variant (DashScope: sft, efficient_sft, dpo_full, dpo_lora).
    training_type: str | None = Field(default=None, min_length=1, max_length=40)
    training_file: Path
    validation_file: Path | None = None
    hyperparameters: dict[str, Hyperparameter] = Field(default_factory=dict)
    suffix: str | None = Field(default=None, min_length=1, max_length=64)
    seed: int | None = Field(default=None, ge=0, le=2_147_483_647)
    deploy: DeployOptions | None = None
    #: Settings of the provider's own (Vertex: project, location, bucket, prefix).
    provider_options: dict[str, Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        default_factory=dict, max_length=20)
    notify: list[NotifyTarget] = Field(default_factory=list, max_length=20)
    labels: dict[str, Annotated[str, Field(max_length=256)]] = Field(default_factory=dict,
                                                                     max_length=32)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200)
    #: Fail the job at validation when the estimated training cost is over this (US dollars).
    max_cost_usd: float | None = Field(default=None, gt=0, allow_inf_nan=False)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("must be 1-128 letters, digits, spaces, '_', '.' or '-', "
                             "starting with a letter or digit")
        return value

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not _LABEL_KEY.match(key):
                raise ValueError(f"label key {key!r} must be lower-case letters, digits, "
                                 "'_', '.', '-' or '/', at most 63 characters")
        return value

    @field_validator("hyperparameters")
    @classmethod
    def _finite(cls, value: dict[str, Hyperparameter]) -> dict[str, Hyperparameter]:
        for key, item in value.items():
            if isinstance(item, float) and not math.isfinite(item):
                raise ValueError(f"{key} must be a finite number")
        return value


def load_spec(path: Path) -> JobSpec:
    """Read, parse and validate a spec file; dataset paths become absolute.

    Raises:
        SpecError: naming the file (and line), the field and the reason.
    """
    source = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SpecError(source, "", f"cannot read the spec ({exc.strerror})") from exc
    spec = parse_document(raw, source, as_json=path.suffix.lower() == ".json")
    base = path.resolve().parent
    updates: dict[str, Path] = {"training_file": base / spec.training_file}
    if spec.validation_file is not None:
        updates["validation_file"] = base / spec.validation_file
    return spec.model_copy(update=updates)


def read_document(raw: bytes, source: str, *, as_json: bool) -> tuple[Any, dict[str, int]]:
    """Parse a spec's bytes (JSON, else YAML) into plain data, refusing what a spec may not
    hold (aliases, duplicate keys, non-finite numbers); returns (data, line of each field)."""
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError(source, "", f"spec is {len(raw)} bytes; the limit is {MAX_SPEC_BYTES}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(source, "", f"not UTF-8 (byte {exc.start}); save it as UTF-8") from exc
    if as_json:
        return _parse_json(text, source), dict[str, int]()
    return _parse_yaml(text, source)


def parse_document(raw: bytes, source: str, *, as_json: bool) -> JobSpec:
    """Parse and validate a spec's bytes (JSON, else YAML)."""
    data, lines = read_document(raw, source, as_json=as_json)
    return parse_spec(data, source, lines)


def checked_plugin(spec: JobSpec, source: str) -> ProviderPlugin:
    """The spec's provider plugin, after it checked the spec; raises SpecError."""
    from orchestrator.providers import registry
    from orchestrator.providers.base import deploys, option_keys

    try:
        plugin = registry.get(spec.provider)
    except UnknownProvider as exc:
        raise SpecError(source, "provider", str(exc)) from None
    allowed = option_keys(plugin)
    for key in spec.provider_options:
        if key not in allowed:
            takes = f"use {', '.join(sorted(allowed))}" if allowed else "remove provider_options"
            raise SpecError(source, f"provider_options.{key}", f"{spec.provider} takes no "
                            f"such option; {takes}")
    plugin.check_spec(spec, source)
    if spec.deploy is not None and not deploys(plugin):
        raise SpecError(source, "deploy", f"{spec.provider} serves tuned models without a "
                        "deployment; remove the deploy block")
    return plugin


def parse_spec(data: Any, source: str, lines: dict[str, int] | None = None) -> JobSpec:
    """Validate already-parsed spec data (from a file, or later an API body)."""
    if not isinstance(data, dict):
        raise SpecError(source, "", "a spec must be a mapping of fields (name, provider, …)")
    nul = _nul_at(data, "")
    if nul is not None:
        raise SpecError(_with_line(source, lines or {}, nul), nul,
                        "holds a NUL character; remove it")
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        # An unknown field is usually a misspelt one: report it first, with a suggestion.
        errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
        err = errors[0]
        field = ".".join(str(p) for p in err["loc"])
        where = _with_line(source, lines or {}, field)
        reason = _reason(err)
        if err["type"] == "extra_forbidden" and len(err["loc"]) == 1:
            close = difflib.get_close_matches(str(err["loc"][0]), JobSpec.model_fields, n=1)
            if close:
                reason += f"; did you mean {close[0]!r}?"
        more = len(errors) - 1
        if more:
            reason += f" (and {more} more problem{'s' if more > 1 else ''})"
        raise SpecError(where, field, reason) from None


def _nul_at(value: Any, path: str) -> str | None:
    """The field path of the first string (or key) holding a NUL character, if any: no
    database stores one in text."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    items: Any = value.items() if isinstance(value, dict) else \
        enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        child = f"{path}.{key}" if path else str(key)
        if "\x00" in str(key):
            return child
        found = _nul_at(item, child)
        if found is not None:
            return found
    return None


def _reason(err: Any) -> str:
    kind, msg = err["type"], str(err["msg"])
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "is not a known field (check the spelling; see docs/job-spec.md)"
    if kind == "literal_error":
        return msg.replace("Input should be", "must be")
    return msg.removeprefix("Value error, ").replace("Input should", "must")


def _with_line(source: str, lines: dict[str, int], field: str) -> str:
    parts = field.split(".")
    for i in range(len(parts), 0, -1):
        line = lines.get(".".join(parts[:i]))
        if line:
            return f"{source}:{line}"
    return source


def _parse_json(text: str, source: str) -> Any:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise SpecError(source, key, "appears twice; keep one")
            out[key] = value
        return out

    def no_constants(name: str) -> Any:
        raise SpecError(source, "", f"{name} is not a valid number in a spec")

    try:
        return json.loads(text, object_pairs_hook=no_duplicates, parse_constant=no_constants)
    except json.JSONDecodeError as exc:
        raise SpecError(f"{source}:{exc.lineno}", "", f"invalid JSON: {exc.msg}") from None
    except RecursionError:
        raise SpecError(source, "", "nested too deeply") from None


def _parse_yaml(text: str, source: str) -> tuple[Any, dict[str, int]]:
    try:
        _check_depth(text, source)
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(where, "", f"invalid YAML: {problem}") from None
    if root is None:
        raise SpecError(source, "", "the spec is empty")
    lines: dict[str, int] = {}
    _check_nodes(root, "", source, lines, set())
    loader = yaml.SafeLoader(text)
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as exc:
        raise SpecError(source, "", f"invalid YAML: {exc}") from None
    finally:
        loader.dispose()
    return data, lines


def _check_depth(text: str, source: str) -> None:
    """Refuse nesting deeper than MAX_DEPTH from PyYAML's event stream (which does not
    recurse), before anything composes it (which does, once per level)."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                mark = event.start_mark
                raise SpecError(f"{source}:{mark.line + 1}" if mark else source, "",
                                "nested too deeply")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _check_nodes(node: yaml.Node, path: str, source: str, lines: dict[str, int],
                 seen: set[int]) -> None:
    """Refuse aliases and duplicate keys; record the line of each field path."""
    if id(node) in seen:
        raise SpecError(f"{source}:{node.start_mark.line + 1}", path,
                        "YAML aliases are not allowed in a spec; write the value out")
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        keys: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            child = f"{path}.{key}" if path else key
            if key in keys:
                raise SpecError(f"{source}:{key_node.start_mark.line + 1}", child,
                                "appears twice; keep one")
            keys.add(key)
            lines[child] = key_node.start_mark.line + 1
            _check_nodes(value_node, child, source, lines, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            child = f"{path}.{i}"
            lines[child] = item.start_mark.line + 1
            _check_nodes(item, child, source, lines, seen)
    elif (isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:float"
          and node.value.lower().lstrip("+-") in (".nan", ".inf")):
        raise SpecError(f"{source}:{node.start_mark.line + 1}", path, "must be a finite number")

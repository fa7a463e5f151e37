"""Job specs: what loads, and the one-line error for each way a spec can be wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.errors import SpecError
from orchestrator.specs import MAX_DEPTH, MAX_SPEC_BYTES, checked_plugin, load_spec

GOOD = """\
name: support-bot
provider: openai
base_model: gpt-4o-mini-2024-07-18
method: sft
training_file: train.jsonl
hyperparameters:
  n_epochs: 3
  learning_rate_multiplier: 1.8
labels:
  team: support
idempotency_key: k1
"""


def write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    (tmp_path / "train.jsonl").write_text("{}\n")
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(path: Path) -> str:
    with pytest.raises(SpecError) as info:
        checked_plugin(load_spec(path), str(path))
    return str(info.value)


class TestLoad:
    def test_yaml_spec_loads_with_dataset_paths_made_absolute(self, tmp_path: Path) -> None:
        spec = load_spec(write(tmp_path, GOOD))

        assert spec.name == "support-bot"
        assert spec.training_file == tmp_path / "train.jsonl"
        assert spec.hyperparameters == {"n_epochs": 3, "learning_rate_multiplier": 1.8}

    def test_json_spec_loads(self, tmp_path: Path) -> None:
        text = ('{"name": "j", "provider": "openai", "base_model": "gpt-4o-mini-2024-07-18", '
                '"training_file": "train.jsonl", "method": "dpo"}')
        assert load_spec(write(tmp_path, text, "spec.json")).method == "dpo"


@pytest.mark.parametrize(("text", "expected"), [
    pytest.param(GOOD.replace("name: support-bot\n", ""), "spec.yaml: name: is required",
                 id="missing-field"),
    pytest.param(GOOD.replace("method: sft", "methd: sft"),
                 "spec.yaml:4: methd: is not a known field", id="unknown-field-with-line"),
    pytest.param(GOOD.replace("method: sft", "method: rlhf"),
                 "spec.yaml:4: method: must be 'sft' or 'dpo'", id="bad-method"),
    pytest.param(GOOD.replace("n_epochs: 3", "n_epochs: 99"),
                 'hyperparameters.n_epochs: must be an integer from 1 to 50 or "auto"',
                 id="hyperparameter-out-of-range"),
    pytest.param(GOOD.replace("n_epochs: 3", "n_epocs: 3"),
                 "hyperparameters.n_epocs: not an OpenAI sft hyperparameter", id="unknown-hp"),
    pytest.param(GOOD.replace("n_epochs: 3", "n_epochs: .nan"),
                 "spec.yaml:7: hyperparameters.n_epochs: must be a finite number", id="nan"),
    pytest.param(GOOD.replace("team: support", "Team!: support"),
                 "label key 'Team!' must be lower-case", id="bad-label-key"),
    pytest.param(GOOD + "name: again\n", "spec.yaml:12: name: appears twice", id="duplicate-key"),
    pytest.param("base: &b openai\nprovider: *b\n", "YAML aliases are not allowed",
                 id="yaml-alias"),
    pytest.param("name: [unclosed\n", "invalid YAML", id="broken-yaml"),
    pytest.param("- just\n- a list\n", "a spec must be a mapping", id="not-a-mapping"),
    pytest.param("", "the spec is empty", id="empty"),
    pytest.param(GOOD.replace("provider: openai", "provider: nope"),
                 "provider: unknown provider 'nope'; installed providers: dashscope, openai",
                 id="unknown-provider"),
    pytest.param(GOOD + "deploy: {capacity: 1}\n",
                 "deploy: OpenAI serves tuned models without a deployment", id="deploy-on-openai"),
    pytest.param(GOOD + "provider_options: {bucket: b}\n",
                 "provider_options.bucket: openai takes no such option; remove "
                 "provider_options", id="options-on-openai"),
    pytest.param(GOOD.replace("openai", "vertex").replace("gpt-4o-mini-2024-07-18",
                                                          "gemini-2.5-flash")
                 .replace("learning_rate_multiplier: 1.8", "adapter_size: 4")
                 + "provider_options: {region: us}\n",
                 "provider_options.region: vertex takes no such option; use bucket, location, "
                 "prefix, project", id="unknown-vertex-option"),
    pytest.param(GOOD + "max_cost_usd: 0\n", "max_cost_usd: must be greater than 0",
                 id="zero-budget"),
    pytest.param(GOOD + "max_cost_usd: .inf\n", "max_cost_usd: must be a finite number",
                 id="infinite-budget"),
    pytest.param(GOOD + "max_cost_usd: lots\n", "max_cost_usd: must be a valid number",
                 id="text-budget"),
    pytest.param(GOOD.replace("name: support-bot", "name: '../../etc'"),
                 "name: must be 1-128 letters", id="bad-name"),
])
def test_each_invalid_spec_gets_one_clear_line(tmp_path: Path, text: str, expected: str) -> None:
    message = error_of(write(tmp_path, text))

    assert expected in message
    assert "\n" not in message


@pytest.mark.parametrize(("text", "expected"), [
    pytest.param('{"name": "a", "name": "b"}', "name: appears twice", id="duplicate-key"),
    pytest.param('{"name": NaN}', "NaN is not a valid number", id="nan"),
    pytest.param('{"name": ', "spec.json:1: invalid JSON", id="truncated"),
    pytest.param("[" * 100_000, "nested too deeply", id="deep"),
])
def test_json_traps_are_refused(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in error_of(write(tmp_path, text, "spec.json"))


@pytest.mark.parametrize(("text", "line"), [
    pytest.param("[" * 100_000, 1, id="flow-sequences"),
    pytest.param("a: " + "{a: " * 1_000, 1, id="flow-mappings"),
    pytest.param("".join(f"{' ' * i}- \n" for i in range(1_000)), MAX_DEPTH + 1,
                 id="block-sequences"),
])
def test_yaml_nested_too_deeply_is_refused_like_json(tmp_path: Path, text: str,
                                                     line: int) -> None:
    assert error_of(write(tmp_path, text)) == \
        f"{tmp_path / 'spec.yaml'}:{line}: nested too deeply"


def test_oversized_and_non_utf8_specs_are_refused(tmp_path: Path) -> None:
    big = write(tmp_path, "x" * (MAX_SPEC_BYTES + 1))
    assert "the limit is" in error_of(big)
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"name: \xff\n")
    assert "not UTF-8" in error_of(bad)


def test_a_missing_spec_file_is_a_spec_error(tmp_path: Path) -> None:
    assert "cannot read the spec" in error_of(tmp_path / "absent.yaml")

"""validate_file on golden good and bad files of every format, the JSON traps, and the
file-level rules (size, counts, limits, epochs, cost)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.datasets import validate_file
from orchestrator.datasets.jsonl import read_lines
from orchestrator.datasets.pricing import load_prices
from orchestrator.datasets.validate import check_budget
from orchestrator.errors import DatasetError, UserError

GOLDEN = Path(__file__).parent / "golden"
OPENAI = {"provider": "openai", "model": "gpt-4o-mini-2024-07-18"}


def codes(report: object) -> list[tuple[int | None, str]]:
    return [(i.line, i.code) for i in report.log.errors]  # type: ignore[attr-defined]


FORMATS = [
    pytest.param("openai-chat", "openai", "gpt-4o-mini-2024-07-18", "sft", [
        (1, "no_assistant_message"), (2, "unknown_role"), (3, "unknown_key"), (4, "bad_weight"),
        (5, "bad_arguments"), (6, "unknown_tool_call_id"), (7, "image_not_allowed"),
        (8, "no_trainable_message"), (9, "missing_messages"), (10, "missing_content"),
        (None, "too_few_examples")], id="openai chat"),
    pytest.param("openai-dpo", "openai", "gpt-4o-mini-2024-07-18", "dpo", [
        (1, "bad_output"), (2, "input_ends_with_assistant"), (3, "bad_output"),
        (3, "bad_output"), (4, "missing_input"), (None, "too_few_examples")], id="openai dpo"),
    pytest.param("dashscope-chat", "dashscope", "qwen3-8b", "sft", [
        (1, "openai_only_key"), (2, "openai_only_key"), (3, "tools_unsupported"),
        (4, "last_not_assistant"), (5, "system_not_first")], id="dashscope chatml"),
    pytest.param("dashscope-dpo", "dashscope", "qwen3-8b", "dpo", [
        (1, "bad_output"), (2, "must_end_with_user"), (3, "bad_output")], id="dashscope dpo"),
    pytest.param("vertex-gemini", "vertex", "gemini-2.5-flash", "sft", [
        (1, "consecutive_turns"), (2, "unknown_role"), (3, "bad_part"), (4, "no_model_turn"),
        (5, "bad_function"), (6, "bad_file_data")], id="vertex gemini"),
    pytest.param("vertex-preference", "vertex", "gemini-2.5-flash", "dpo", [
        (1, "bad_completions"), (2, "must_end_with_user"), (3, "bad_completions")],
        id="vertex preference"),
]


class TestGoldenFiles:
    @pytest.mark.parametrize(("name", "provider", "model", "method", "expected"), FORMATS)
    def test_the_good_file_is_valid(self, name: str, provider: str, model: str, method: str,
                                    expected: list[tuple[int | None, str]]) -> None:
        report = validate_file(GOLDEN / f"{name}-good.jsonl", provider=provider, model=model,
                               method=method)

        assert report.ok, report.error_line()
        assert report.format == name
        assert report.examples == report.lines

    @pytest.mark.parametrize(("name", "provider", "model", "method", "expected"), FORMATS)
    def test_the_bad_file_reports_each_problem_on_its_line(
            self, name: str, provider: str, model: str, method: str,
            expected: list[tuple[int | None, str]]) -> None:
        report = validate_file(GOLDEN / f"{name}-bad.jsonl", provider=provider, model=model,
                               method=method)

        assert codes(report) == expected
        assert all("; " in i.message or " must " in i.message for i in report.log.errors), \
            "every error says how to fix it (an instruction, or the form it must take)"

    def test_the_method_is_detected_when_not_given(self) -> None:
        report = validate_file(GOLDEN / "openai-dpo-good.jsonl", **OPENAI)

        assert report.ok and report.method == "dpo" and report.format == "openai-dpo"

    def test_a_file_in_another_providers_format_names_the_conversion(self) -> None:
        report = validate_file(GOLDEN / "vertex-gemini-good.jsonl", **OPENAI)

        assert codes(report)[0] == (1, "wrong_format")
        assert "tunectl dataset convert FILE --to openai" in report.log.errors[0].message

    def test_a_dpo_file_for_an_sft_job_says_to_set_the_method(self) -> None:
        report = validate_file(GOLDEN / "openai-dpo-good.jsonl", method="sft", **OPENAI)

        assert codes(report)[0] == (1, "wrong_format")
        assert "set method: dpo" in report.log.errors[0].message


class TestJsonTraps:
    def test_every_trap_is_reported_on_its_own_line(self) -> None:
        report = validate_file(GOLDEN / "traps.jsonl", **OPENAI)

        assert codes(report) == [
            (2, "nan_or_infinity"), (4, "duplicate_key"), (5, "blank_line"),
            (6, "lone_surrogate"), (7, "not_object"), (8, "line_separator"), (9, "too_deep"),
            (10, "nan_or_infinity"), (11, "invalid_json"), (12, "invalid_utf8"), (13, "bom"),
            (None, "too_few_examples")]
        assert report.examples == 2  # lines 1 and 3 are fine

    def test_a_bom_on_the_first_line_says_the_file_starts_with_it(self, tmp_path: Path) -> None:
        path = tmp_path / "bom.jsonl"
        path.write_bytes(b"\xef\xbb\xbf{}\n")

        report = validate_file(path, **OPENAI)

        assert report.log.errors[0].message.startswith("the file starts with a UTF-8 byte")

    def test_recursion_deeper_than_the_parser_is_an_error_not_a_crash(
            self, tmp_path: Path) -> None:
        path = tmp_path / "deep.jsonl"
        path.write_text("[" * 100_000 + "\n")

        assert codes(validate_file(path, **OPENAI))[0] == (1, "too_deep")

    def test_a_huge_integer_is_an_error_not_a_crash(self, tmp_path: Path) -> None:
        path = tmp_path / "big.jsonl"
        path.write_text('{"messages": ' + "9" * 5000 + "}\n")

        assert codes(validate_file(path, **OPENAI))[0] == (1, "invalid_json")

    def test_a_line_over_the_cap_is_skipped_without_holding_it(self) -> None:
        import io

        stream = io.BytesIO(b'{"a": 1}\n' + b"x" * 5000 + b"\n{}\n")

        lines = list(read_lines(stream, max_line_bytes=1000))

        assert [n for n, _, _ in lines] == [1, 2, 3]
        assert lines[1][1].code == "line_too_long"  # type: ignore[union-attr]
        assert lines[1][2] == 5001
        assert lines[2][1] == {}

    def test_crlf_endings_and_a_missing_final_newline_are_fine(self, tmp_path: Path) -> None:
        line = json.dumps({"messages": [{"role": "user", "content": "q"},
                                        {"role": "assistant", "content": "a"}]})
        path = tmp_path / "crlf.jsonl"
        path.write_bytes(((line + "\r\n") * 9 + line).encode())

        report = validate_file(path, **OPENAI)

        assert report.ok and report.examples == 10


class TestFileRules:
    def test_an_empty_file_is_an_error(self, tmp_path: Path) -> None:
        path = tmp_path / "empty.jsonl"
        path.write_bytes(b"")

        assert (None, "empty_file") in codes(validate_file(path, **OPENAI))

    def test_a_missing_file_raises_a_dataset_error(self, tmp_path: Path) -> None:
        with pytest.raises(DatasetError, match="cannot read the dataset"):
            validate_file(tmp_path / "nope.jsonl", **OPENAI)

    def test_an_unknown_provider_is_a_user_error(self) -> None:
        with pytest.raises(UserError, match="use one of openai, dashscope, vertex"):
            validate_file(GOLDEN / "traps.jsonl", provider="anthropic", model="x")

    def test_an_unknown_model_warns_that_its_limit_is_unknown(self) -> None:
        report = validate_file(GOLDEN / "openai-chat-good.jsonl", provider="openai",
                               model="gpt-9-turbo")

        assert report.ok
        assert "unknown_model" in report.log.codes
        assert report.token_limit is None
        assert any("limit" in note and "unknown" in note for note in report.notes)

    def test_a_fine_tuned_model_gets_its_base_models_rules(self) -> None:
        report = validate_file(GOLDEN / "openai-chat-good.jsonl", provider="openai",
                               model="ft:gpt-4o-mini-2024-07-18:acme::abc123")

        assert report.token_limit == 65536 and "unknown_model" not in report.log.codes

    def test_validation_files_have_no_minimum_but_a_maximum(self) -> None:
        report = validate_file(GOLDEN / "dashscope-chat-good.jsonl", provider="openai",
                               model="gpt-4o-mini-2024-07-18", purpose="validation")

        assert report.ok and report.billed_tokens is None

    def test_over_limit_examples_are_counted_and_named(self, tmp_path: Path) -> None:
        long = " word" * 3000
        path = tmp_path / "long.jsonl"
        path.write_text("".join(json.dumps({"messages": [
            {"role": "user", "content": long if i == 4 else "q"},
            {"role": "assistant", "content": "a"}]}) + "\n" for i in range(3, 6)))

        report = validate_file(path, provider="dashscope", model="qwen3-8b",
                               hyperparameters={"max_length": 1024})

        assert report.token_limit == 1024
        assert report.tokens is not None and report.tokens.over_limit == 1
        warning = next(w for w in report.log.warnings if w.code == "example_too_long")
        assert warning.line == 2 and "skipped in training" in warning.message

    def test_a_file_over_the_providers_size_limit_is_an_error(self, tmp_path: Path) -> None:
        from dataclasses import replace

        from orchestrator.datasets import validate as module

        real = module.rules_for
        path = GOLDEN / "openai-chat-good.jsonl"
        module.rules_for = lambda p, m: replace(real(p, m), max_file_bytes=100)  # type: ignore[assignment]
        try:
            report = validate_file(path, **OPENAI)
        finally:
            module.rules_for = real  # type: ignore[assignment]

        assert (None, "file_too_large") in codes(report)


class TestEpochsAndCost:
    def test_billed_tokens_are_tokens_times_epochs(self) -> None:
        report = validate_file(GOLDEN / "openai-chat-good.jsonl", **OPENAI,
                               hyperparameters={"n_epochs": 4})

        assert report.tokens is not None
        assert report.epochs == 4 and report.billed_tokens == 4 * report.tokens.total
        assert report.cost_usd == pytest.approx(report.billed_tokens * 3.0 / 1e6)

    def test_auto_epochs_follow_openais_rule(self) -> None:
        report = validate_file(GOLDEN / "openai-chat-good.jsonl", **OPENAI)

        assert report.epochs == 100 // 12  # few examples: more epochs, up to 25
        assert "cookbook" in report.epochs_source

    def test_dashscope_defaults_to_one_epoch_and_has_no_price(self) -> None:
        report = validate_file(GOLDEN / "dashscope-chat-good.jsonl", provider="dashscope",
                               model="qwen3-8b")

        assert report.epochs == 1 and report.cost_usd is None
        assert report.usd_per_million is None

    def test_vertex_epochs_are_unknown_until_set_and_counts_are_approximate(self) -> None:
        unset = validate_file(GOLDEN / "vertex-gemini-good.jsonl", provider="vertex",
                              model="gemini-2.5-flash")
        set_ = validate_file(GOLDEN / "vertex-gemini-good.jsonl", provider="vertex",
                             model="gemini-2.5-flash", hyperparameters={"epoch_count": 2})

        assert unset.epochs is None and unset.billed_tokens is None
        assert unset.tokens_approximate and set_.summary()["tokens"]["approximate"]
        assert set_.billed_tokens is not None and set_.epochs == 2

    def test_a_user_price_table_wins_over_the_bundled_one(self, tmp_path: Path) -> None:
        prices = tmp_path / "prices.yaml"
        prices.write_text("openai:\n  source: our contract\n  models:\n"
                          "    - match: gpt-4o-mini-*\n      usd_per_million: 1.5\n")

        report = validate_file(GOLDEN / "openai-chat-good.jsonl", **OPENAI,
                               hyperparameters={"n_epochs": 1}, prices=load_prices(prices))

        assert report.usd_per_million == 1.5 and "our contract" in report.price_source

    @pytest.mark.parametrize("text", [
        pytest.param("openai: [1, 2]\n", id="not a mapping of models"),
        pytest.param("openai:\n  models:\n    - match: x\n      usd_per_million: -1\n",
                     id="negative price"),
        pytest.param("openai: {models: [{match: x, usd_per_million: .nan}]}\n", id="nan"),
        pytest.param("- a\n", id="a list"),
    ])
    def test_a_malformed_price_table_is_a_user_error(self, tmp_path: Path, text: str) -> None:
        prices = tmp_path / "prices.yaml"
        prices.write_text(text)

        with pytest.raises(UserError, match=r"prices\.yaml"):
            load_prices(prices)

    def test_the_budget_check_names_the_estimate_and_the_limit(self) -> None:
        report = validate_file(GOLDEN / "openai-chat-good.jsonl", **OPENAI,
                               hyperparameters={"n_epochs": 2})

        assert check_budget(report, 100.0) is None
        message = check_budget(report, 0.0001)
        assert message is not None
        assert "estimated training cost $" in message and "max_cost_usd $0.0001" in message

    def test_a_budget_without_a_price_cannot_pass(self) -> None:
        report = validate_file(GOLDEN / "dashscope-chat-good.jsonl", provider="dashscope",
                               model="qwen3-8b")

        message = check_budget(report, 10.0)

        assert message is not None and "cannot be estimated" in message


class TestReportLine:
    def test_the_error_line_holds_the_first_errors_and_the_rest_as_a_count(self) -> None:
        report = validate_file(GOLDEN / "openai-chat-bad.jsonl", **OPENAI, label="train.jsonl")

        line = report.error_line()

        assert line.startswith("train.jsonl:1: the example has no assistant message")
        assert "train.jsonl:2: " in line and "[unknown_role]" in line
        assert line.endswith("(+8 more errors)")
        assert "\n" not in line

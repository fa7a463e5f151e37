"""``validate_file``: check a dataset for a provider and base model in one streaming pass.

Memory stays bounded whatever the file size: lines are read one at a time (capped), the
problem log keeps only the first problems of each kind, and token statistics live in a
bounded histogram. The report gives problems, statistics, billed tokens and the estimate.
"""

from __future__ import annotations

import contextlib
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from orchestrator.datasets import dashscope_format, openai_format, vertex_format
from orchestrator.datasets.formats import Example, Format, detect, expected_format, same_shape
from orchestrator.datasets.issues import IssueLog
from orchestrator.datasets.jsonl import BadLine, read_lines
from orchestrator.datasets.pricing import PriceTable, estimate_usd, load_prices
from orchestrator.datasets.report import Report
from orchestrator.datasets.rules import Rules, rules_for
from orchestrator.datasets.stats import TokenStats
from orchestrator.datasets.tokens import counter
from orchestrator.datasets.zipimages import ImageZip, UnsafeZip
from orchestrator.errors import DatasetError

Checker = Callable[[dict[str, Any], IssueLog, Rules], Example | None]
CHECKERS: dict[Format, Checker] = {
    Format.OPENAI_CHAT: openai_format.check_chat,
    Format.OPENAI_DPO: openai_format.check_dpo,
    Format.DASHSCOPE_CHAT: dashscope_format.check_chat,
    Format.DASHSCOPE_DPO: dashscope_format.check_dpo,
    Format.DASHSCOPE_IMAGE: dashscope_format.check_image,
    Format.VERTEX_GEMINI: vertex_format.check_gemini,
    Format.VERTEX_PREFERENCE: vertex_format.check_preference,
}
#: OpenAI bills at least this many tokens per image (``detail: low``); more for high detail.
OPENAI_IMAGE_TOKENS = 85
Hyperparameters = Mapping[str, int | float | str]


def validate_file(path: Path, *, provider: str, model: str, method: str | None = None,
                  hyperparameters: Hyperparameters | None = None, purpose: str = "training",
                  count_tokens: bool = True, prices: PriceTable | None = None,
                  label: str | None = None, cap: int = 50) -> Report:
    """Validate ``path`` for ``provider``/``model``; ``method`` None means detect it.

    Raises:
        DatasetError: the file cannot be read at all.
        UserError: the provider or method is unknown.
    """
    rules = rules_for(provider, model)
    label = label or str(path)
    hyper = dict(hyperparameters or {})
    try:
        size = path.stat().st_size
        zipped = _is_zip(path)
    except OSError as exc:
        raise DatasetError(f"{label}: cannot read the dataset ({exc.strerror})") from None
    fmt = expected_format(provider, method or "sft", zipped=zipped)
    report = Report(label=label, provider=provider, model=model, method=method or "sft",
                    format=fmt.value, purpose=purpose, rules=rules, log=IssueLog(cap=cap),
                    bytes=size, tokens_approximate=rules.tokens_approximate)
    log = report.log
    if rules.matched is None:
        log.warn("unknown_model", f"tunectl has no rules for {provider} model {model!r}; "
                 "its per-example token limit is unknown", line=None)
    if rules.max_file_bytes is not None and size > rules.max_file_bytes:
        log.error("file_too_large", f"the file is {size:,} bytes; {provider} accepts at most "
                  f"{rules.max_file_bytes:,}; split it", line=None)
    limit = _token_limit(rules, hyper)
    report.rules = rules = _with_limit(rules, limit)
    tally = _Tally(rules, limit, counter(rules.tokenizer)) if count_tokens else None
    with _open(path, zipped, fmt, log) as (stream, images):
        if stream is None:
            return _finish(report, tally, hyper, prices)
        checker: Checker | None = None
        number = examples = 0
        try:
            for number, value, _ in read_lines(stream):
                log.line = number
                if isinstance(value, BadLine):
                    log.error(value.code, value.message)
                    continue
                if checker is None:
                    found = detect(value)
                    if method is None and found is not None:
                        report.method = found.method
                        fmt = expected_format(provider, found.method, zipped=zipped)
                        report.format = fmt.value
                    if found is not None and not same_shape(fmt, found):
                        log.error("wrong_format", _wrong_format(found, fmt, provider))
                        break
                    checker = CHECKERS[fmt]
                example = checker(value, log, rules)
                if example is None:
                    continue
                if images is not None:
                    for reference in example.image_files:
                        problem = images.check_image(reference, rules.max_image_bytes)
                        if problem:
                            log.error("bad_image", problem)
                examples += 1
                if tally is not None:
                    tally.add(example, log)
        except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            # Only a zip member can break mid-stream (corrupt deflate data, a bad CRC).
            log.error("zip_unsafe", f"the JSONL stops being readable after line {number} "
                      f"({exc}); re-create the zip", line=None)
        report.lines, report.examples = number, examples
    log.line = None
    return _finish(report, tally, hyper, prices)


class _Tally:
    """Token statistics and billable tokens, one valid example at a time."""

    def __init__(self, rules: Rules, limit: int | None, count: Callable[[str], int]) -> None:
        self.rules, self.limit, self.count = rules, limit, count
        self.stats = TokenStats()
        #: Tokens billed per epoch: OpenAI bills a truncated example up to the limit,
        #: DashScope drops (and so does not bill) one over max_length.
        self.billable = 0

    def add(self, example: Example, log: IssueLog) -> None:
        rules, limit = self.rules, self.limit
        tokens = rules.example_overhead + example.messages * rules.message_overhead
        tokens += sum(self.count(text) for text in example.texts)
        if rules.provider == "openai":
            tokens += example.images * OPENAI_IMAGE_TOKENS
        self.stats.add(tokens, limit)
        if limit is None or tokens <= limit:
            self.billable += tokens
            return
        effect = {"truncated": "the end is cut off in training",
                  "dropped": "the example is skipped in training"}.get(
                      rules.over_limit or "", "the provider may reject it")
        log.warn("example_too_long", f"the example has {tokens:,} tokens, over "
                 f"{rules.model}'s limit of {limit:,}; {effect}: shorten it")
        self.billable += 0 if rules.over_limit == "dropped" else limit


def _finish(report: Report, tally: _Tally | None, hyper: dict[str, Any],
            prices: PriceTable | None) -> Report:
    rules, log = report.rules, report.log
    stats = report.tokens = tally.stats if tally is not None else None
    if report.lines == 0 and log.error_count == 0:
        log.error("empty_file", "the file holds no examples; write one JSON object per line",
                  line=None)
    n = report.examples
    if report.purpose == "training":
        if rules.min_examples is not None and n < rules.min_examples:
            log.error("too_few_examples", f"{n} valid examples; {report.provider} needs at "
                      f"least {rules.min_examples}", line=None)
        elif rules.recommended_min_examples is not None and n < rules.recommended_min_examples:
            log.warn("few_examples", f"{n} examples; {report.provider} recommends at least "
                     f"{rules.recommended_min_examples} for a useful fine-tune", line=None)
        if rules.max_examples is not None and n > rules.max_examples:
            log.error("too_many_examples", f"{n:,} examples; {report.provider} takes at most "
                      f"{rules.max_examples:,}", line=None)
    elif rules.max_validation_examples is not None and n > rules.max_validation_examples:
        log.error("too_many_validation_examples", f"{n:,} validation examples; "
                  f"{report.model} takes at most {rules.max_validation_examples:,}", line=None)
    if stats is not None and stats.over_limit:
        log.warn("over_limit", f"{stats.over_limit:,} examples are over the "
                 f"{rules.token_limit:,}-token limit", line=None)
    if rules.token_limit is None:
        report.notes.append(f"the per-example token limit of {report.model} is unknown, so "
                            "no example was checked against it")
    if report.tokens_approximate:
        report.notes.append(f"token counts are approximate ({rules.tokenizer} stands in for "
                            f"{report.provider}'s own tokenizer for {report.model})")
    if report.purpose != "training":
        report.notes.append("a validation file is not counted in the training cost")
        return report
    report.epochs, report.epochs_source = _epochs(rules, hyper, n)
    if tally is not None and report.epochs is not None:
        report.billed_tokens = tally.billable * report.epochs
    table = prices or load_prices()
    price = table.lookup(report.provider, report.model)
    report.usd_per_million, report.price_source = price.usd_per_million, price.source
    report.cost_usd = estimate_usd(report.billed_tokens, price)
    return report


def check_budget(report: Report, max_cost_usd: float) -> str | None:
    """None if the estimate is within ``max_cost_usd``; otherwise why the job must stop."""
    if report.cost_usd is None:
        missing = ("token counting was off" if report.tokens is None else
                   "the number of epochs is unknown (set it in hyperparameters)"
                   if report.epochs is None else f"there is no price ({report.price_source})")
        return (f"max_cost_usd is {usd(max_cost_usd)} but the cost cannot be estimated: "
                f"{missing}; add a price in prices.yaml or remove max_cost_usd")
    if report.cost_usd <= max_cost_usd:
        return None
    billed = report.billed_tokens or 0
    return (f"estimated training cost {usd(report.cost_usd)} ({billed:,} billed tokens = "
            f"{billed // max(1, report.epochs or 1):,} tokens x {report.epochs} epochs, at "
            f"{usd(report.usd_per_million or 0)} per 1M for {report.model}) is over "
            f"max_cost_usd {usd(max_cost_usd)}; shrink the dataset, lower the epochs, or raise "
            "max_cost_usd")


def usd(amount: float) -> str:
    """Dollars for people: cents above $1, four significant digits below."""
    return f"${amount:,.2f}" if amount >= 1 else f"${amount:.4g}"


def _token_limit(rules: Rules, hyper: dict[str, Any]) -> int | None:
    key = rules.token_limit_hyperparameter
    value = hyper.get(key) if key else None
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return rules.token_limit


def _with_limit(rules: Rules, limit: int | None) -> Rules:
    from dataclasses import replace

    return rules if limit == rules.token_limit else replace(rules, token_limit=limit)


def _epochs(rules: Rules, hyper: dict[str, Any], examples: int) -> tuple[int | None, str]:
    for key in rules.epochs_hyperparameters:
        value = hyper.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value, f"hyperparameters.{key}"
        if isinstance(value, str) and value.isdigit() and int(value) > 0:
            return int(value), f"hyperparameters.{key}"
    default = rules.default_epochs
    if isinstance(default, int):
        return default, f"{rules.provider}'s default"
    if default == "auto" and examples:
        return _auto_epochs(examples), ("estimated with OpenAI's cookbook rule for "
                                        "n_epochs=auto (OpenAI picks the real number)")
    return None, "unknown: set the number of epochs in hyperparameters"


def _auto_epochs(examples: int) -> int:
    """OpenAI's documented default: 3 epochs, raised for small and lowered for big sets."""
    target, low, high = 3, 100, 25_000
    if examples * target < low:
        return min(25, low // examples)
    if examples * target > high:
        return max(1, high // examples)
    return target


def _wrong_format(found: Format, expected: Format, provider: str) -> str:
    if found.method != expected.method:
        return (f"this is a {found.method.upper()} file ({found.value}) but the job's method "
                f"is {expected.method}; set method: {found.method} or use a "
                f"{expected.method.upper()} file")
    return (f"this file is in {found.value} format, not {provider}'s {expected.value}; "
            f"convert it with `tunectl dataset convert FILE --to {provider}`")


def _is_zip(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == b"PK\x03\x04"


@contextlib.contextmanager
def _open(path: Path, zipped: bool, fmt: Format, log: IssueLog,
          ) -> Iterator[tuple[IO[bytes] | None, ImageZip | None]]:
    if not zipped:
        with path.open("rb", buffering=1 << 20) as stream:
            yield stream, None
        return
    if fmt is not Format.DASHSCOPE_IMAGE:
        log.error("unexpected_zip", f"a zip is only accepted for DashScope image SFT; give "
                  f"{fmt.provider} a .jsonl file", line=None)
        yield None, None
        return
    try:
        archive = ImageZip.open(path)
    except UnsafeZip as exc:
        log.error("zip_unsafe", str(exc), line=None)
        yield None, None
        return
    try:
        with archive.open_jsonl() as stream:
            yield stream, archive
    finally:
        archive.close()

"""``tunectl dataset``: validate a dataset for a provider and model, or convert it.

``validate`` prints the report as rich tables (``--json`` for scripts) and exits 1 when the
dataset has errors; ``convert`` writes the converted file and exits 1 when a line could not
be converted. Usage mistakes (unknown provider, unreadable file) exit 2 like every command.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from orchestrator.config import get_settings
from orchestrator.datasets.convert import TARGETS, ConversionReport, convert_file
from orchestrator.datasets.issues import Issue
from orchestrator.datasets.pricing import OVERRIDE_NAME, load_prices
from orchestrator.datasets.report import Report
from orchestrator.datasets.validate import usd, validate_file
from orchestrator.errors import UserError

app = typer.Typer(no_args_is_help=True, help="Validate and convert fine-tuning datasets.")
out = Console()
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


@app.command()
def validate(
    file: Annotated[Path, typer.Argument(help="The dataset: JSONL, or a zip for DashScope "
                                              "image SFT.")],
    provider: Annotated[str, typer.Option(help="openai, dashscope or vertex.")],
    model: Annotated[str, typer.Option(help="The base model to tune.")],
    method: Annotated[str | None, typer.Option(help="sft or dpo (default: detected).")] = None,
    validation: Annotated[bool, typer.Option(
        "--validation", help="Check it as a validation file.")] = False,
    epochs: Annotated[int | None, typer.Option(min=1, help="Planned epochs.")] = None,
    max_length: Annotated[int | None, typer.Option(
        min=1, help="DashScope max_length (the per-example token limit).")] = None,
    tokens: Annotated[bool, typer.Option(help="Count tokens (--no-tokens is faster).")] = True,
    prices: Annotated[Path | None, typer.Option(
        help=f"A price table tried before the bundled one (default: <data dir>/{OVERRIDE_NAME})."
    )] = None,
    max_errors: Annotated[int, typer.Option(min=1, help="Problems listed per kind.")] = 50,
    as_json: JsonFlag = False,
) -> None:
    """Check a dataset before anything is uploaded: problems, token statistics and cost."""
    hyper: dict[str, int | float | str] = {}
    if epochs is not None:
        hyper.update(n_epochs=epochs, epoch_count=epochs)
    if max_length is not None:
        hyper["max_length"] = max_length
    table = load_prices(prices or get_settings().data_dir / OVERRIDE_NAME)
    if prices is not None and not prices.exists():
        raise UserError(f"--prices {prices}: no such file")
    if not file.is_file():
        raise UserError(f"{file}: no such file; give the path of a JSONL dataset")
    report = validate_file(file, provider=provider, model=model, method=method,
                           hyperparameters=hyper, count_tokens=tokens,
                           purpose="validation" if validation else "training", prices=table,
                           cap=max_errors)
    if as_json:
        sys.stdout.write(json.dumps(report.as_json(), indent=2) + "\n")
    else:
        _print_report(report)
    if not report.ok:
        sys.exit(1)  # not typer.Exit: main() runs click with standalone_mode=False


@app.command()
def convert(
    file: Annotated[Path, typer.Argument(help="A JSONL dataset in any known format.")],
    to: Annotated[str, typer.Option(help=f"Target provider: {', '.join(TARGETS)}.")],
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Where to write (default: FILE.<to>.jsonl beside it).")] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing output file.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Convert a dataset to another provider's format, reporting what cannot convert."""
    if to not in TARGETS:
        raise UserError(f"--to {to}: use one of {', '.join(TARGETS)}")
    target = output or file.with_name(f"{file.stem}.{to}.jsonl")
    if target.resolve() == file.resolve():
        raise UserError(f"{target}: the output would overwrite the input; pass --output")
    if target.exists() and not force:
        raise UserError(f"{target} exists; pass --force to overwrite it or --output elsewhere")
    report = convert_file(file, to, target)
    if as_json:
        sys.stdout.write(json.dumps(report.as_json(), indent=2) + "\n")
    else:
        _print_conversion(report, file)
    if report.skipped:
        sys.exit(1)


def _print_report(report: Report) -> None:
    verdict = ("[bold green]valid[/]" if report.ok else
               f"[bold red]{report.log.error_count:,} error"
               f"{'s' if report.log.error_count != 1 else ''}[/]")
    out.print(f"[bold]{escape(report.label)}[/]: {report.format} for {report.provider} "
              f"{escape(report.model)} ({report.purpose}): {verdict}, "
              f"{report.log.warning_count:,} warning{'s' if report.log.warning_count != 1 else ''}")
    _print_issues(report.log.errors + report.log.warnings, report.label,
                  report.log.error_count - len(report.log.errors),
                  report.log.warning_count - len(report.log.warnings))
    stats = Table(title="Statistics", title_justify="left")
    stats.add_column("statistic")
    stats.add_column("value", overflow="fold", ratio=1)
    stats.add_row("examples (valid)", f"{report.examples:,} of {report.lines:,} lines")
    stats.add_row("file size", f"{report.bytes:,} bytes")
    tokens = report.tokens
    if tokens is None:
        stats.add_row("tokens", "not counted (--no-tokens)")
    elif tokens.count:
        approx = " (approximate)" if report.tokens_approximate else ""
        stats.add_row(f"tokens per example{approx}",
                      f"min {tokens.minimum:,} / mean {tokens.mean or 0:,.1f} / p95 "
                      f"{tokens.percentile(0.95) or 0:,} / max {tokens.maximum:,}")
        limit = report.token_limit
        stats.add_row("over the model's limit", f"{tokens.over_limit:,} (limit "
                      f"{'unknown' if limit is None else f'{limit:,}'})")
    if report.purpose == "training":
        stats.add_row("epochs", f"{report.epochs if report.epochs is not None else 'unknown'}"
                      f" ({report.epochs_source})")
        stats.add_row("billed tokens", "unknown" if report.billed_tokens is None
                      else f"{report.billed_tokens:,}")
        cost = "unknown" if report.cost_usd is None else usd(report.cost_usd)
        rate = ("" if report.usd_per_million is None
                else f" at ${report.usd_per_million:,.2f} per 1M tokens")
        stats.add_row("estimated training cost", f"{cost}{rate}")
        stats.add_row("price source", escape(report.price_source))
    out.print(stats)
    for note in report.notes:
        out.print(f"note: {escape(note)}", highlight=False)


def _print_issues(issues: list[Issue], label: str, more_errors: int,
                  more_warnings: int) -> None:
    if not issues:
        return
    table = Table(title="Problems", title_justify="left")
    table.add_column("where", overflow="fold")
    table.add_column("severity")
    table.add_column("code", overflow="fold")
    table.add_column("how to fix", overflow="fold", ratio=1)
    for issue in issues:
        style = "red" if issue.severity == "error" else "yellow"
        table.add_row(escape(issue.where(label)), f"[{style}]{issue.severity}[/]", issue.code,
                      escape(issue.message))
    out.print(table)
    for count, kind in ((more_errors, "error"), (more_warnings, "warning")):
        if count > 0:
            out.print(f"… and {count:,} more {kind}{'s' if count != 1 else ''} "
                      "(--max-errors lists more, --json has the counts per code)")


def _print_conversion(report: ConversionReport, source: Path) -> None:
    out.print(f"[bold]{escape(str(source))}[/] ({report.source}) → "
              f"[bold]{escape(report.output)}[/] ({report.target}): {report.converted:,} "
              f"converted, {report.skipped:,} not converted")
    log = report.log
    _print_issues(log.errors + log.warnings, str(source), log.error_count - len(log.errors),
                  log.warning_count - len(log.warnings))


"""Datasets: validation, conversion and cost estimates, before anything is uploaded.

    formats          the formats tunectl knows; which one a provider expects; detection
    jsonl            bounded line reading; every JSON trap reported by line
    openai_format    OpenAI chat SFT and DPO checks
    dashscope_format DashScope ChatML SFT, image SFT and DPO checks
    vertex_format    Vertex Gemini supervised and preference checks
    zipimages        DashScope image zips, opened as untrusted input
    rules            limits per provider and base model (data/rules.yaml)
    tokens           offline token counts (vocabularies shipped in a wheel)
    stats, issues    bounded statistics and the capped problem log
    pricing          price tables (data/prices.yaml + a user override) and estimates
    validate         validate_file: one streaming pass → Report
    report           the report: JSON, a job summary, one error line
    convert          conversion between the formats, reporting what cannot convert
    cli              ``tunectl dataset validate|convert``
"""

from orchestrator.datasets.formats import Format
from orchestrator.datasets.pricing import PriceTable, load_prices
from orchestrator.datasets.report import Report
from orchestrator.datasets.validate import check_budget, validate_file

__all__ = ["Format", "PriceTable", "Report", "check_budget", "load_prices", "validate_file"]

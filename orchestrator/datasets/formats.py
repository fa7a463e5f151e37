"""The dataset formats tunectl knows, which one a provider and method expect, and how to
recognise a format from one record.

Each format has a checker module (openai_format, dashscope_format, vertex_format) whose
``check`` validates one record and returns the text to count as an ``Example``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from orchestrator.errors import UserError

PROVIDERS = ("openai", "dashscope", "vertex")
METHODS = ("sft", "dpo")


class Format(StrEnum):
    """A dataset line format."""

    #: {"messages": [...], "tools"?, "parallel_tool_calls"?, "functions"?}
    OPENAI_CHAT = "openai-chat"
    #: {"input": {"messages": [...]}, "preferred_output": [...], "non_preferred_output": [...]}
    OPENAI_DPO = "openai-dpo"
    #: {"messages": [system?, user, assistant, ...]} without name or weight
    DASHSCOPE_CHAT = "dashscope-chat"
    #: {"messages": [...], "chosen": {...}, "rejected": {...}}
    DASHSCOPE_DPO = "dashscope-dpo"
    #: a .zip of one JSONL (content lists of {"text"} / {"image": file}) and its images
    DASHSCOPE_IMAGE = "dashscope-image"
    #: {"systemInstruction"?, "contents": [{"role": "user"|"model", "parts": [...]}], "tools"?}
    VERTEX_GEMINI = "vertex-gemini"
    #: {"system_instruction"?, "contents": [... user], "completions": [{score, completion}] x2}
    VERTEX_PREFERENCE = "vertex-preference"

    @property
    def method(self) -> str:
        """``sft`` or ``dpo``."""
        return "dpo" if self in _DPO else "sft"

    @property
    def provider(self) -> str:
        """The provider whose format this is."""
        return self.value.split("-")[0]


_DPO = {Format.OPENAI_DPO, Format.DASHSCOPE_DPO, Format.VERTEX_PREFERENCE}


@dataclass(slots=True)
class Example:
    """What a valid record contributes to the statistics."""

    #: Every piece of text the provider tokenizes (content, tool calls, tool schemas …).
    texts: list[str] = field(default_factory=list)
    #: Messages (or contents), for per-message framing tokens.
    messages: int = 0
    #: Images in the example (counted, not tokenized).
    images: int = 0
    #: Image files the example refers to inside a DashScope zip, to check they exist.
    image_files: list[str] = field(default_factory=list)


def expected_format(provider: str, method: str, *, zipped: bool = False) -> Format:
    """The format ``provider`` expects for ``method`` (a zip means DashScope image SFT)."""
    if provider not in PROVIDERS:
        raise UserError(f"unknown provider {provider!r}; use one of {', '.join(PROVIDERS)}")
    if method not in METHODS:
        raise UserError(f"unknown method {method!r}; use sft or dpo")
    if provider == "openai":
        return Format.OPENAI_DPO if method == "dpo" else Format.OPENAI_CHAT
    if provider == "dashscope":
        if method == "dpo":
            return Format.DASHSCOPE_DPO
        return Format.DASHSCOPE_IMAGE if zipped else Format.DASHSCOPE_CHAT
    return Format.VERTEX_PREFERENCE if method == "dpo" else Format.VERTEX_GEMINI


def detect(record: dict[str, Any]) -> Format | None:
    """The format one record is written in, from its keys, or None if unrecognisable.

    OpenAI and DashScope chat records look alike; a record with ``name``, ``weight``,
    ``tool_calls`` or OpenAI content parts reads as OpenAI, one with ``{"text"}`` /
    ``{"image"}`` parts as DashScope, and a plain one as OpenAI chat.
    """
    if "input" in record and ("preferred_output" in record or "non_preferred_output" in record):
        return Format.OPENAI_DPO
    if "chosen" in record or "rejected" in record:
        return Format.DASHSCOPE_DPO
    if "contents" in record:
        return Format.VERTEX_PREFERENCE if "completions" in record else Format.VERTEX_GEMINI
    messages = record.get("messages")
    if isinstance(messages, list):
        for message in messages:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, list) and any(
                    isinstance(p, dict) and ("image" in p or ("text" in p and "type" not in p))
                    for p in content):
                return Format.DASHSCOPE_IMAGE
        return Format.OPENAI_CHAT
    return None


def same_shape(expected: Format, found: Format) -> bool:
    """Whether a record detected as ``found`` may be checked as ``expected``.

    Plain chat records fit both OpenAI and DashScope, so detection alone cannot tell them
    apart; the checker then says what does not fit.
    """
    chat = {Format.OPENAI_CHAT, Format.DASHSCOPE_CHAT, Format.DASHSCOPE_IMAGE}
    return found == expected or (expected in chat and found in chat)

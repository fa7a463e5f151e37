"""Conversion between the formats, through OpenAI's as the common form.

Every record is checked against its source format first; then ``to_openai`` and
``from_openai`` map it. What has no equivalent is reported: a loss that keeps the example
usable (a dropped ``name``, a ``weight: 0`` that the target will train) is a warning on its
line, and a record that cannot be converted at all (a tool result for DashScope, an inline
image for Gemini) is skipped with an error on its line — never silently dropped.
"""

from __future__ import annotations

import json
import mimetypes
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.datasets.formats import Format, detect
from orchestrator.datasets.issues import IssueLog
from orchestrator.datasets.jsonl import BadLine, read_lines
from orchestrator.datasets.rules import rules_for
from orchestrator.datasets.vertex_format import field as vfield
from orchestrator.errors import UserError

TARGETS = ("openai", "dashscope", "vertex")


class NotConvertible(Exception):
    """The record has something the target format cannot express."""


@dataclass
class Conversion:
    """A record in the target format, and what was lost on the way."""

    record: dict[str, Any]
    losses: list[str] = field(default_factory=list)


def target_format(source: Format, provider: str) -> Format:
    """The format of ``provider`` for the source's method."""
    if provider not in TARGETS:
        raise UserError(f"cannot convert to {provider!r}; use one of {', '.join(TARGETS)}")
    dpo = source.method == "dpo"
    return {("openai", False): Format.OPENAI_CHAT, ("openai", True): Format.OPENAI_DPO,
            ("dashscope", False): Format.DASHSCOPE_CHAT, ("dashscope", True): Format.DASHSCOPE_DPO,
            ("vertex", False): Format.VERTEX_GEMINI, ("vertex", True): Format.VERTEX_PREFERENCE,
            }[(provider, dpo)]


def convert_record(record: dict[str, Any], source: Format, target: Format) -> Conversion:
    """Convert one *valid* record; raises NotConvertible with the reason."""
    losses: list[str] = []
    canonical = to_openai(record, source, losses)
    return Conversion(from_openai(canonical, target, losses), losses)


# --- into OpenAI's form -------------------------------------------------------------------

def to_openai(record: dict[str, Any], source: Format, losses: list[str]) -> dict[str, Any]:
    """``record`` (valid in ``source``) as an OpenAI chat or DPO record."""
    if source in (Format.OPENAI_CHAT, Format.OPENAI_DPO):
        return record
    if source in (Format.DASHSCOPE_CHAT, Format.DASHSCOPE_IMAGE):
        return {"messages": [_from_chatml(m, losses) for m in record["messages"]]}
    if source is Format.DASHSCOPE_DPO:
        return {"input": {"messages": [_from_chatml(m, losses) for m in record["messages"]]},
                "preferred_output": [_from_chatml(record["chosen"], losses)],
                "non_preferred_output": [_from_chatml(record["rejected"], losses)]}
    if source is Format.VERTEX_GEMINI:
        return _from_gemini(record)
    return _from_preference(record)


def _from_chatml(message: dict[str, Any], losses: list[str]) -> dict[str, Any]:
    content = message["content"]
    if isinstance(content, list):
        if any("image" in part for part in content):
            raise NotConvertible("an {\"image\": file} part refers to a file inside a DashScope "
                                 "zip; OpenAI needs the image as a URL")
        content = "".join(part["text"] for part in content)
    if "loss_weight" in message:
        losses.append("loss_weight dropped (OpenAI only has weight 0 or 1)")
    return {"role": message["role"], "content": content}


def _from_gemini(record: dict[str, Any]) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    system = vfield(record, "systemInstruction")
    if system:
        messages.append({"role": "system", "content": _texts(system["parts"])})
    pending: dict[str, list[str]] = {}
    calls = 0
    for content in record["contents"]:
        texts: list[dict[str, Any]] = []
        tool_calls: list[dict[str, Any]] = []
        for part in content["parts"]:
            if "text" in part:
                texts.append({"type": "text", "text": part["text"]})
            elif (call := vfield(part, "functionCall")) is not None:
                calls += 1
                call_id = f"call_{calls}"
                pending.setdefault(call["name"], []).append(call_id)
                tool_calls.append({"id": call_id, "type": "function", "function": {
                    "name": call["name"], "arguments": _dumps(call.get("args") or {})}})
            elif (response := vfield(part, "functionResponse")) is not None:
                ids = pending.get(response["name"]) or []
                if not ids:
                    raise NotConvertible(f"functionResponse {response['name']!r} answers no "
                                         "earlier functionCall; OpenAI needs the call first")
                body = response.get("response") or {}
                text = body["content"] if list(body) == ["content"] and isinstance(
                    body["content"], str) else _dumps(body)
                messages.append({"role": "tool", "tool_call_id": ids.pop(0), "content": text})
            else:
                data = vfield(part, "fileData")
                uri, mime = vfield(data, "fileUri"), vfield(data, "mimeType")
                if not (uri.startswith("https://") and mime.startswith("image/")):
                    raise NotConvertible(f"fileData {uri[:60]!r} ({mime}) has no OpenAI "
                                         "equivalent; OpenAI takes images by https URL only")
                texts.append({"type": "image_url", "image_url": {"url": uri}})
        if content["role"] == "user" and texts:
            messages.append({"role": "user", "content": _simplify(texts)})
        elif content["role"] == "model":
            message: dict[str, Any] = {"role": "assistant"}
            if texts:
                message["content"] = _simplify(texts)
            if tool_calls:
                message["tool_calls"] = tool_calls
            messages.append(message)
    out: dict[str, Any] = {"messages": messages}
    if record.get("tools"):
        out["tools"] = [{"type": "function", "function": d} for tool in record["tools"]
                        for d in vfield(tool, "functionDeclarations")]
    return out


def _from_preference(record: dict[str, Any]) -> dict[str, Any]:
    chat = _from_gemini({k: v for k, v in record.items() if k != "completions"})
    by_score = {item["score"]: item["completion"] for item in record["completions"]}
    return {"input": chat,
            "preferred_output": [{"role": "assistant", "content": _texts(by_score[1]["parts"])}],
            "non_preferred_output": [{"role": "assistant",
                                      "content": _texts(by_score[0]["parts"])}]}


# --- out of OpenAI's form -----------------------------------------------------------------

def from_openai(record: dict[str, Any], target: Format, losses: list[str]) -> dict[str, Any]:
    """An OpenAI chat or DPO record as ``target``."""
    if target in (Format.OPENAI_CHAT, Format.OPENAI_DPO):
        return record
    if target is Format.DASHSCOPE_CHAT:
        _no_tools(record, losses)
        messages = _to_chatml(record["messages"], losses, sft=True)
        return {"messages": messages}
    if target is Format.DASHSCOPE_DPO:
        _no_tools(record["input"], losses)
        return {"messages": _to_chatml(record["input"]["messages"], losses, sft=False),
                "chosen": _to_chatml(record["preferred_output"], losses, sft=False)[0],
                "rejected": _to_chatml(record["non_preferred_output"], losses, sft=False)[0]}
    if target is Format.VERTEX_GEMINI:
        return _to_gemini(record, losses)
    return _to_preference(record, losses)


def _no_tools(record: dict[str, Any], losses: list[str]) -> None:
    if record.get("tools") or record.get("functions"):
        losses.append("tool definitions dropped (DashScope's documented format has none)")


def _to_chatml(messages: list[dict[str, Any]], losses: list[str], *,
               sft: bool) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        role = message["role"]
        if role in ("tool", "function") or "tool_calls" in message or "function_call" in message:
            raise NotConvertible(f"messages[{i}] is a tool call or tool result; DashScope's "
                                 "documented SFT and DPO formats have no tool messages")
        if role == "system" and out:
            raise NotConvertible(f"messages[{i}] is a system message after the start; "
                                 "DashScope takes one, first")
        if "name" in message:
            losses.append(f"messages[{i}].name dropped (DashScope has no names)")
        if message.get("weight") == 0:
            losses.append(f"messages[{i}] has weight 0 but DashScope trains every assistant "
                          "message")
        out.append({"role": role, "content": _plain_text(message.get("content"), i)})
    if sft:
        while out and out[-1]["role"] != "assistant":
            out.pop()
            losses.append("a message after the last assistant reply dropped (it was not "
                          "trained, and DashScope examples end with the assistant)")
    return out


def _plain_text(content: Any, i: int) -> str:
    if isinstance(content, str):
        return content
    if any(part.get("type") != "text" for part in content):
        raise NotConvertible(f"messages[{i}] holds an image; DashScope image SFT needs a zip of "
                             "image files, which tunectl does not build")
    return "".join(part["text"] for part in content)


def _to_gemini(record: dict[str, Any], losses: list[str]) -> dict[str, Any]:
    messages = record["messages"]
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}
    for i, message in enumerate(messages):
        role = message["role"]
        if "name" in message and role != "function":
            losses.append(f"messages[{i}].name dropped (Gemini has no names)")
        if message.get("weight") == 0:
            losses.append(f"messages[{i}] has weight 0 but Gemini trains every model turn")
        if role == "system":
            if contents:
                raise NotConvertible(f"messages[{i}] is a system message after the start; "
                                     "Gemini takes one systemInstruction")
            system.extend(_gemini_parts(message.get("content"), i))
            continue
        parts = _gemini_parts(message.get("content"), i) if role in ("user", "assistant") else []
        if role == "assistant":
            for call in message.get("tool_calls") or []:
                names[call["id"]] = call["function"]["name"]
                parts.append({"functionCall": _gemini_call(call["function"], i)})
            if message.get("function_call"):
                parts.append({"functionCall": _gemini_call(message["function_call"], i)})
        elif role == "tool":
            parts = [{"functionResponse": {"name": names[message["tool_call_id"]],
                                           "response": _response(message["content"])}}]
        elif role == "function":
            parts = [{"functionResponse": {"name": message["name"],
                                           "response": _response(message["content"])}}]
        gemini_role = "model" if role == "assistant" else "user"
        if contents and contents[-1]["role"] == gemini_role:
            contents[-1]["parts"].extend(parts)  # Gemini roles must alternate: merge
        else:
            contents.append({"role": gemini_role, "parts": parts})
    out: dict[str, Any] = {}
    if system:
        out["systemInstruction"] = {"parts": system}
    out["contents"] = contents
    declarations = [t["function"] for t in record.get("tools") or []]
    declarations += record.get("functions") or []
    if declarations:
        out["tools"] = [{"functionDeclarations": declarations}]
    if "parallel_tool_calls" in record:
        losses.append("parallel_tool_calls dropped (Gemini tuning has no such setting)")
    return out


def _to_preference(record: dict[str, Any], losses: list[str]) -> dict[str, Any]:
    chat = _to_gemini(record["input"], losses)
    if "tools" in chat or any("text" not in p for c in chat["contents"] for p in c["parts"]):
        raise NotConvertible("preference tuning on Vertex takes text only (no tools, images "
                             "or function calls)")
    out: dict[str, Any] = {}
    if "systemInstruction" in chat:
        out["system_instruction"] = chat["systemInstruction"]
    out["contents"] = chat["contents"]
    out["completions"] = [
        {"score": score, "completion": {"role": "model", "parts": _gemini_parts(
            record[key][0].get("content"), 0)}}
        for score, key in ((1, "preferred_output"), (0, "non_preferred_output"))]
    if any(record[key][0].get("tool_calls") for key in ("preferred_output",
                                                          "non_preferred_output")):
        raise NotConvertible("an output holds tool calls; Vertex preference tuning is text only")
    return out


def _gemini_parts(content: Any, i: int) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}]
    parts: list[dict[str, Any]] = []
    for part in content:
        if part["type"] == "text":
            parts.append({"text": part["text"]})
            continue
        url = part["image_url"]["url"]
        mime = mimetypes.guess_type(url.split("?", 1)[0])[0]
        if not url.startswith("https://") or not mime or not mime.startswith("image/"):
            raise NotConvertible(f"messages[{i}] has an image Gemini cannot take by reference "
                                 "(inline data or an unknown type); upload it to Cloud "
                                 "Storage and use its gs:// URI")
        parts.append({"fileData": {"mimeType": mime, "fileUri": url}})
    return parts


def _gemini_call(function: dict[str, Any], i: int) -> dict[str, Any]:
    args = json.loads(function["arguments"])
    if not isinstance(args, dict):
        raise NotConvertible(f"messages[{i}]: tool call arguments are not a JSON object, and "
                             "Gemini's args must be one")
    return {"name": function["name"], "args": args}


def _response(content: Any) -> dict[str, Any]:
    text = content if isinstance(content, str) else "".join(p["text"] for p in content)
    return {"content": text}


def _texts(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    return _simplify([{"type": "text", "text": p["text"]} for p in parts])


def _simplify(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    if len(parts) == 1 and parts[0]["type"] == "text":
        return str(parts[0]["text"])
    return parts


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _line(record: dict[str, Any]) -> str:
    # Raw U+2028/U+2029 may only occur inside strings, where the escapes mean the same.
    text = json.dumps(record, ensure_ascii=False)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029") + "\n"


# --- files --------------------------------------------------------------------------------

@dataclass
class ConversionReport:
    """What ``convert_file`` did: counts, and every problem and loss by line."""

    source: str
    target: str
    output: str
    lines: int = 0
    converted: int = 0
    skipped: int = 0
    log: IssueLog = field(default_factory=IssueLog)

    def as_json(self) -> dict[str, Any]:
        """The report as plain data."""
        return {"source_format": self.source, "target_format": self.target,
                "output": self.output, "lines": self.lines, "converted": self.converted,
                "skipped": self.skipped, "error_count": self.log.error_count,
                "warning_count": self.log.warning_count,
                "errors": [i.as_json() for i in self.log.errors],
                "warnings": [i.as_json() for i in self.log.warnings]}


def file_format(path: Path) -> Format | None:
    """The format of the first JSON object in a JSONL file, if it has a known one."""
    with path.open("rb") as stream:
        for _, value, _ in read_lines(stream):
            if not isinstance(value, BadLine):
                return detect(value)
    return None


def convert_file(source: Path, provider: str, output: Path, *, cap: int = 50) -> ConversionReport:
    """Convert the JSONL ``source`` into ``provider``'s format, written to ``output``.

    The output is written to a temporary file and renamed into place at the end.

    Raises:
        UserError: the source cannot be read, is a zip, or has no recognisable record.
    """
    try:
        stream = source.open("rb")
    except OSError as exc:
        raise UserError(f"{source}: cannot read ({exc.strerror})") from None
    with stream:
        if stream.read(4) == b"PK\x03\x04":
            raise UserError(f"{source}: is a zip; convert the JSONL inside it instead")
        stream.seek(0)
        fmt: Format | None = None
        report: ConversionReport | None = None
        log = IssueLog(cap=cap)
        fd, tmp = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                for number, value, _ in read_lines(stream):
                    log.line = number
                    if isinstance(value, BadLine):
                        log.error(value.code, f"not converted: {value.message}")
                        continue
                    if fmt is None:
                        fmt = detect(value)
                        if fmt is None:
                            raise UserError(f"{source}:{number}: not a known dataset format "
                                            "(no messages, input or contents key)")
                        target = target_format(fmt, provider)
                        report = ConversionReport(fmt.value, target.value, str(output), log=log)
                    assert report is not None
                    report.lines = number
                    if _convert_line(value, fmt, target, log, out):
                        report.converted += 1
                    else:
                        report.skipped += 1
            if report is None:
                raise UserError(f"{source}: holds no JSON object to convert")
            report.lines = log.line or 0
            report.skipped = report.lines - report.converted
            os.replace(tmp, output)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return report


def _convert_line(value: dict[str, Any], fmt: Format, target: Format, log: IssueLog,
                  out: Any) -> bool:
    from orchestrator.datasets.validate import CHECKERS

    found = detect(value)
    if found is not None and found.method != fmt.method:
        log.error("mixed_formats", f"not converted: this line is {found.value} but the file "
                  f"started as {fmt.value}")
        return False
    before = log.error_count
    probe = IssueLog(cap=1)
    probe.line = log.line
    source = found if found in (Format.DASHSCOPE_IMAGE,) else fmt
    if CHECKERS[source](value, probe, rules_for(source.provider, "-")) is None:
        first = probe.errors[0] if probe.errors else None
        log.error(first.code if first else "invalid",
                  f"not converted: {first.message if first else 'invalid record'}")
        return False
    try:
        result = convert_record(value, source, target)
    except NotConvertible as exc:
        log.error("not_convertible", f"not converted: {exc}")
        return False
    # The converted record must itself be valid: anything the mapping missed shows here.
    check = IssueLog(cap=1)
    if CHECKERS[target](result.record, check, rules_for(target.provider, "-")) is None:
        problem = check.errors[0].message if check.errors else "invalid"
        log.error("not_convertible", f"not converted: the {target.value} record would be "
                  f"invalid ({problem})")
        return False
    for loss in dict.fromkeys(result.losses):
        log.warn("lossy", loss)
    out.write(_line(result.record))
    return log.error_count == before

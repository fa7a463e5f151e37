"""Google Vertex AI Gemini line formats: supervised tuning (``contents`` of ``parts``, roles
``user``/``model`` alternating, optional ``systemInstruction`` and ``tools``) and preference
tuning (``contents`` ending with a user turn, two ``completions`` scored 1 and 0).

Field names are accepted in camelCase or snake_case, as Vertex's JSON parser does.
"""

from __future__ import annotations

import json
from typing import Any

from orchestrator.datasets.formats import Example
from orchestrator.datasets.issues import IssueLog
from orchestrator.datasets.rules import Rules

_ALIASES = {"system_instruction": "systemInstruction", "file_data": "fileData",
            "function_call": "functionCall", "function_response": "functionResponse",
            "mime_type": "mimeType", "file_uri": "fileUri",
            "function_declarations": "functionDeclarations"}
_SHAPE = ('{"contents": [{"role": "user", "parts": [{"text": "..."}]}, '
          '{"role": "model", "parts": [{"text": "..."}]}]}')


def field(obj: dict[str, Any], name: str) -> Any:
    """``obj[name]`` under its camelCase or snake_case spelling."""
    if name in obj:
        return obj[name]
    for snake, camel in _ALIASES.items():
        if camel == name and snake in obj:
            return obj[snake]
    return None


def check_gemini(record: dict[str, Any], log: IssueLog, rules: Rules) -> Example | None:
    """Check one supervised-tuning record."""
    before = log.error_count
    example = Example()
    _unknown_keys(record, {"systemInstruction", "contents", "tools"}, log)
    _system(record, log, example)
    contents = record.get("contents")
    if not isinstance(contents, list) or not contents:
        log.error("missing_contents", f'"contents" must be a non-empty list; write the example '
                  f"as {_SHAPE}")
        return None
    roles = [_content(c, f"contents[{i}]", log, example, text_only=False)
             for i, c in enumerate(contents)]
    _alternation(roles, log)
    tools = record.get("tools")
    if tools is not None:
        _tools(tools, log, example)
    if log.error_count > before:
        return None
    if "model" not in roles:
        log.error("no_model_turn", "the example has no model turn, so there is nothing to "
                  'learn; add {"role": "model", "parts": [{"text": "..."}]}')
        return None
    if roles[0] != "user":
        log.warn("first_not_user", "the conversation starts with a model turn; start it with "
                 "the user")
    if roles[-1] != "model":
        log.warn("last_not_model", "the last turn is from the user; end the example with the "
                 "model's reply it should learn")
    example.messages = len(contents)
    return example


def check_preference(record: dict[str, Any], log: IssueLog, rules: Rules) -> Example | None:
    """Check one preference-tuning record."""
    before = log.error_count
    example = Example()
    _unknown_keys(record, {"systemInstruction", "contents", "completions"}, log)
    _system(record, log, example)
    contents = record.get("contents")
    if not isinstance(contents, list) or not contents:
        log.error("missing_contents", '"contents" must be a non-empty list ending with the '
                  "user turn that the completions answer")
        return None
    roles = [_content(c, f"contents[{i}]", log, example, text_only=True)
             for i, c in enumerate(contents)]
    _alternation(roles, log)
    if roles[-1] not in (None, "user"):
        log.error("must_end_with_user", '"contents" must end with the user turn that the '
                  "completions answer")
    completions = record.get("completions")
    if not isinstance(completions, list) or len(completions) != 2:
        log.error("bad_completions", '"completions" must hold exactly two items: '
                  '{"score": 1, "completion": {...}} and {"score": 0, "completion": {...}}')
    else:
        scores = []
        for i, item in enumerate(completions):
            at = f"completions[{i}]"
            if not isinstance(item, dict) or item.get("score") not in (0, 1) \
                    or isinstance(item.get("score"), bool):
                log.error("bad_completions", f'{at} needs "score" 1 (preferred) or 0 '
                          "(dispreferred)")
                continue
            scores.append(item["score"])
            role = _content(item.get("completion"), f"{at}.completion", log, example,
                            text_only=True)
            if role is not None and role != "model":
                log.error("bad_completions", f'{at}.completion must have role "model"')
        if sorted(scores) != [0, 1] and len(scores) == 2:
            log.error("bad_completions", "one completion must score 1 and the other 0")
    if log.error_count > before:
        return None
    example.messages = len(contents) + 2
    return example


def _system(record: dict[str, Any], log: IssueLog, example: Example) -> None:
    system = field(record, "systemInstruction")
    if system is None:
        return
    parts = system.get("parts") if isinstance(system, dict) else None
    if not isinstance(parts, list) or not parts or not all(
            isinstance(p, dict) and isinstance(p.get("text"), str) for p in parts):
        log.error("bad_system_instruction", 'systemInstruction must be {"parts": [{"text": '
                  '"..."}]}')
        return
    example.texts.extend(p["text"] for p in parts)


def _content(content: Any, at: str, log: IssueLog, example: Example, *,
             text_only: bool) -> str | None:
    if not isinstance(content, dict):
        log.error("bad_content", f'{at} must be {{"role": "user" or "model", "parts": [...]}}')
        return None
    role = content.get("role")
    if role not in ("user", "model"):
        hint = ' (OpenAI\'s "assistant" is "model" here)' if role == "assistant" else ""
        log.error("unknown_role", f'{at}.role must be "user" or "model"{hint}')
        role = None
    for key in content:
        if key not in ("role", "parts"):
            log.error("unknown_key", f"{at} has key {json.dumps(key)[:40]}; a content holds "
                      "only role and parts")
    parts = content.get("parts")
    if not isinstance(parts, list) or not parts:
        log.error("missing_parts", f'{at}.parts must be a non-empty list such as '
                  '[{"text": "..."}]')
        return role
    for k, part in enumerate(parts):
        _part(part, f"{at}.parts[{k}]", role, log, example, text_only=text_only)
    return role


def _part(part: Any, at: str, role: str | None, log: IssueLog, example: Example, *,
          text_only: bool) -> None:
    keys = [_ALIASES.get(k, k) for k in part] if isinstance(part, dict) else []
    if len(keys) != 1:
        log.error("bad_part", f"{at} must hold exactly one of text, fileData, functionCall or "
                  "functionResponse")
        return
    kind, value = keys[0], next(iter(part.values()))
    if kind == "text":
        if not isinstance(value, str) or not value:
            log.error("missing_text", f"{at}.text must be a non-empty string")
        else:
            example.texts.append(value)
        return
    if text_only:
        log.error("text_only", f"{at}: preference tuning takes text parts only")
        return
    if kind == "fileData":
        uri = field(value, "fileUri") if isinstance(value, dict) else None
        mime = field(value, "mimeType") if isinstance(value, dict) else None
        if not isinstance(uri, str) or not uri.startswith(("gs://", "https://", "http://")):
            log.error("bad_file_data", f"{at}.fileData.fileUri must be a gs:// or https:// URI")
        if not isinstance(mime, str) or "/" not in mime:
            log.error("bad_file_data", f'{at}.fileData.mimeType must be a MIME type such as '
                      '"image/jpeg"')
        example.images += 1
    elif kind == "functionCall":
        if role == "user":
            log.error("bad_part", f"{at}: a functionCall belongs in a model turn")
        _function(value, at, "args", log, example)
    elif kind == "functionResponse":
        if role == "model":
            log.error("bad_part", f"{at}: a functionResponse belongs in a user turn")
        _function(value, at, "response", log, example)
    else:
        log.error("bad_part", f"{at} has {json.dumps(kind)[:40]}; use text, fileData, "
                  "functionCall or functionResponse")


def _function(value: Any, at: str, payload: str, log: IssueLog, example: Example) -> None:
    name = value.get("name") if isinstance(value, dict) else None
    body = value.get(payload) if isinstance(value, dict) else None
    if not isinstance(name, str) or not name:
        log.error("bad_function", f"{at} needs a function name")
        return
    if body is not None and not isinstance(body, dict):
        log.error("bad_function", f"{at}.{payload} must be a JSON object (not a string)")
        return
    example.texts.append(name)
    example.texts.append(json.dumps(body or {}, ensure_ascii=False, separators=(",", ":")))


def _tools(tools: Any, log: IssueLog, example: Example) -> None:
    declarations = [field(t, "functionDeclarations") for t in tools] \
        if isinstance(tools, list) else None
    if not declarations or not all(isinstance(d, list) and d and all(
            isinstance(f, dict) and isinstance(f.get("name"), str) for f in d)
            for d in declarations):
        log.error("bad_tools", '"tools" must be [{"functionDeclarations": [{"name": ..., '
                  '"parameters": {...}}]}]')
        return
    example.texts.append(json.dumps(tools, ensure_ascii=False, separators=(",", ":")))


def _alternation(roles: list[str | None], log: IssueLog) -> None:
    for i in range(1, len(roles)):
        if roles[i] is not None and roles[i] == roles[i - 1]:
            log.error("consecutive_turns", f"contents[{i - 1}] and contents[{i}] are both "
                      f"{roles[i]} turns; roles must alternate, so merge their parts")
            return


def _unknown_keys(record: dict[str, Any], allowed: set[str], log: IssueLog) -> None:
    for key in record:
        if _ALIASES.get(key, key) not in allowed:
            log.warn("unknown_key", f"Vertex's format has no top-level key "
                     f"{json.dumps(key)[:40]}; remove it")

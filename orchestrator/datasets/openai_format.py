"""OpenAI's fine-tuning line formats: chat SFT (tools, legacy function calling, the
per-message ``weight``) and DPO (``input`` / ``preferred_output`` / ``non_preferred_output``).

``check_chat`` and ``check_dpo`` record each problem in the log (with a fix) and return the
text to count, or None when the record has errors.
"""

from __future__ import annotations

import json
import re
from typing import Any

from orchestrator.datasets.formats import Example
from orchestrator.datasets.issues import IssueLog
from orchestrator.datasets.jsonl import BadLine, parse_json
from orchestrator.datasets.rules import Rules

_KEYS = {
    "system": {"role", "content", "name"},
    "user": {"role", "content", "name"},
    "assistant": {"role", "content", "name", "weight", "tool_calls", "function_call"},
    "tool": {"role", "content", "tool_call_id"},
    "function": {"role", "content", "name"},
}
_TOP_KEYS = {"messages", "tools", "parallel_tool_calls", "functions"}
_PLAIN = frozenset({"system", "user", "assistant"})
_FUNCTION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_DATA_URL = re.compile(r"^data:image/(jpeg|jpg|png|webp);base64,", re.IGNORECASE)
CHAT_SHAPE = ('{"messages": [{"role": "user", "content": "..."}, '
              '{"role": "assistant", "content": "..."}]}')


def check_chat(record: dict[str, Any], log: IssueLog, rules: Rules) -> Example | None:
    """Check one chat SFT record."""
    before = log.error_count
    example = Example()
    if not _TOP_KEYS.issuperset(record):
        for key in record:
            if key not in _TOP_KEYS:
                log.warn("unknown_key", f"OpenAI's chat format has no top-level key "
                         f"{json.dumps(key)}; remove it (allowed: messages, tools, "
                         "parallel_tool_calls, functions)")
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        log.error("missing_messages", f'"messages" must be a non-empty list; write the '
                  f"example as {CHAT_SHAPE}")
        return None
    if "tools" in record or "functions" in record:
        _check_tools(record, log, example)
    if "parallel_tool_calls" in record and not isinstance(record["parallel_tool_calls"], bool):
        log.error("bad_type", '"parallel_tool_calls" must be true or false')
    call_ids: dict[str, str] = {}
    texts = example.texts
    trainable = assistants = 0
    seen_other = False
    for i, message in enumerate(messages):
        # Inline fast path for {"role": ..., "content": "<text>"}, the common message.
        if (type(message) is dict and len(message) == 2
                and (role := message.get("role")) in _PLAIN
                and type(content := message.get("content")) is str and content):
            texts.append(content)
        else:
            role = _check_message(message, i, log, example, rules, call_ids, dpo=False)
            if role is None:
                continue
        if role == "system":
            if seen_other:
                log.warn("system_not_first", f"messages[{i}] is a system message after the "
                         "conversation started; put system messages first")
        else:
            seen_other = True
            if role == "assistant":
                assistants += 1
                trainable += message.get("weight", 1) != 0
    if log.error_count > before:
        return None
    if not assistants:
        log.error("no_assistant_message", "the example has no assistant message, so there is "
                  'nothing to learn; add the reply as {"role": "assistant", "content": "..."}')
        return None
    if not trainable:
        log.error("no_trainable_message", 'every assistant message has "weight": 0, so '
                  "nothing is trained; set weight 1 on at least one")
        return None
    last = messages[-1].get("role")
    if last != "assistant":
        log.warn("last_not_assistant", f"the last message is from {last}; messages after the "
                 "last assistant reply are not trained, so end with the assistant's reply")
    example.messages = len(messages)
    return example


def check_dpo(record: dict[str, Any], log: IssueLog, rules: Rules) -> Example | None:
    """Check one DPO record."""
    before = log.error_count
    example = Example()
    for key in record:
        if key not in {"input", "preferred_output", "non_preferred_output"}:
            log.warn("unknown_key", f"OpenAI's DPO format has no top-level key "
                     f"{json.dumps(key)}; remove it")
    source = record.get("input")
    if not isinstance(source, dict):
        log.error("missing_input", '"input" must be an object: {"messages": [...]}, '
                  'followed by "preferred_output" and "non_preferred_output"')
        return None
    messages = source.get("messages")
    if not isinstance(messages, list) or not messages:
        log.error("missing_messages", '"input.messages" must be a non-empty list of the '
                  "conversation up to the user turn the outputs answer")
        return None
    _check_tools(source, log, example)
    call_ids: dict[str, str] = {}
    for i, message in enumerate(messages):
        _check_message(message, i, log, example, rules, call_ids, dpo=True, where="input.")
    if isinstance(messages[-1], dict) and messages[-1].get("role") == "assistant":
        log.error("input_ends_with_assistant", "input.messages ends with an assistant "
                  "message; end it with the user turn that the preferred and non-preferred "
                  "outputs answer")
    outputs = []
    for key in ("preferred_output", "non_preferred_output"):
        output = record.get(key)
        if not isinstance(output, list) or len(output) != 1:
            log.error("bad_output", f'"{key}" must be a list holding exactly one assistant '
                      'message: [{"role": "assistant", "content": "..."}]')
            continue
        role = _check_message(output[0], 0, log, example, rules, call_ids, dpo=True,
                              where=f"{key}.")
        if role is not None and role != "assistant":
            log.error("bad_output", f'{key}[0] must have role "assistant", not {role!r}')
        outputs.append(output[0])
    if log.error_count > before:
        return None
    if len(outputs) == 2 and outputs[0] == outputs[1]:
        log.warn("identical_outputs", "preferred_output and non_preferred_output are the "
                 "same, so this example teaches nothing; make them differ")
    example.messages = len(messages) + 2
    return example


def _check_message(message: Any, i: int, log: IssueLog, example: Example, rules: Rules,
                   call_ids: dict[str, str], *, dpo: bool, where: str = "") -> str | None:
    """Check one message; return its role when the role is known."""
    # Fast path for the common message, {"role": ..., "content": "<text>"}: nothing to report.
    if type(message) is dict and len(message) == 2:
        role, content = message.get("role"), message.get("content")
        if role in _PLAIN and type(content) is str and content:
            example.texts.append(content)
            return str(role)
    at = f"{where}messages[{i}]" if not where.endswith("output.") else f"{where[:-1]}[{i}]"
    if not isinstance(message, dict):
        log.error("bad_message", f"{at} must be an object with a role and content")
        return None
    role = message.get("role")
    if role not in _KEYS:
        if role is None:
            log.error("missing_role", f'{at} has no "role"; use system, user, assistant or '
                      "tool")
        else:
            log.error("unknown_role", f"{at}.role {_short(role)} is not an OpenAI role; "
                      "use system, user, assistant, tool or function")
        return None
    for key in message:
        if key not in _KEYS[role]:
            log.error("unknown_key", f"{at} ({role}) has key {json.dumps(key)}, which "
                      f"OpenAI does not accept there; remove it (allowed: "
                      f"{', '.join(sorted(_KEYS[role]))})")
    name = message.get("name")
    if name is not None:
        if isinstance(name, str) and name:
            example.texts.append(name)
        else:
            log.error("bad_type", f'{at}.name must be a non-empty string')
    if "weight" in message and (message["weight"] not in (0, 1)
                                or isinstance(message["weight"], bool | float)):
        log.error("bad_weight", f"{at}.weight must be 0 (do not train this turn) or 1")
    if role == "assistant":
        _check_assistant(message, at, log, example, call_ids)
    elif role == "tool":
        call_id = message.get("tool_call_id")
        if not isinstance(call_id, str) or not call_id:
            log.error("missing_tool_call_id", f'{at} needs "tool_call_id", the id of the '
                      "assistant tool call it answers")
        elif call_id not in call_ids:
            log.error("unknown_tool_call_id", f"{at}.tool_call_id {_short(call_id)} matches "
                      "no earlier assistant tool call; use the id from tool_calls")
        _content(message, at, log, example, rules, text_only=True, required=True)
    elif role == "function":
        if not isinstance(message.get("name"), str):
            log.error("missing_name", f'{at} (function) needs "name", the function whose '
                      "result it holds")
        _content(message, at, log, example, rules, text_only=True, required=True)
    else:
        _content(message, at, log, example, rules, text_only=dpo or role == "system",
                 required=True)
    return str(role)


def _check_assistant(message: dict[str, Any], at: str, log: IssueLog, example: Example,
                     call_ids: dict[str, str]) -> None:
    calls = message.get("tool_calls")
    function_call = message.get("function_call")
    if calls is not None:
        if not isinstance(calls, list) or not calls:
            log.error("bad_tool_calls", f"{at}.tool_calls must be a non-empty list of "
                      '{"id": ..., "type": "function", "function": {"name", "arguments"}}')
        else:
            for j, call in enumerate(calls):
                _check_call(call, f"{at}.tool_calls[{j}]", log, example, call_ids)
    if function_call is not None:
        if isinstance(function_call, dict):
            _check_function(function_call, f"{at}.function_call", log, example)
        else:
            log.error("bad_function_call", f'{at}.function_call must be {{"name": ..., '
                      '"arguments": "<JSON string>"}')
    has_call = calls is not None or function_call is not None
    content = message.get("content")
    if content is None and has_call:
        return
    if content is None or content == "" or content == []:
        log.error("missing_content", f"{at} (assistant) has no content; write the reply in "
                  '"content" (or give tool_calls)')
        return
    _text_parts(content, at, log, example, allow_images=False, image_role="assistant")


def _check_call(call: Any, at: str, log: IssueLog, example: Example,
                call_ids: dict[str, str]) -> None:
    if not isinstance(call, dict):
        log.error("bad_tool_calls", f"{at} must be an object")
        return
    call_id = call.get("id")
    if not isinstance(call_id, str) or not call_id:
        log.error("bad_tool_calls", f'{at} needs an "id" string (tool messages refer to it)')
    if call.get("type", "function") != "function":
        log.error("bad_tool_calls", f'{at}.type must be "function"')
    function = call.get("function")
    if not isinstance(function, dict):
        log.error("bad_tool_calls", f'{at}.function must be {{"name": ..., "arguments": '
                  '"<JSON string>"}')
        return
    name = _check_function(function, f"{at}.function", log, example)
    if isinstance(call_id, str) and name:
        call_ids[call_id] = name


def _check_function(function: dict[str, Any], at: str, log: IssueLog,
                    example: Example) -> str | None:
    name, arguments = function.get("name"), function.get("arguments")
    if not isinstance(name, str) or not _FUNCTION_NAME.match(name):
        log.error("bad_function_name", f"{at}.name must be 1-64 letters, digits, '_' or '-'")
        name = None
    if not isinstance(arguments, str):
        log.error("bad_arguments", f"{at}.arguments must be a JSON *string* such as "
                  '"{\\"city\\": \\"Paris\\"}", not an object')
        return name
    parsed = parse_json(arguments)
    if isinstance(parsed, BadLine):
        log.error("bad_arguments", f"{at}.arguments is not valid JSON ({parsed.message})")
    example.texts.append(arguments)
    if name:
        example.texts.append(name)
    return name


def _check_tools(record: dict[str, Any], log: IssueLog, example: Example) -> None:
    for key in ("tools", "functions"):
        if key not in record:
            continue
        items = record[key]
        if not isinstance(items, list) or not items:
            log.error("bad_tools", f'"{key}" must be a non-empty list of function definitions')
            continue
        for j, item in enumerate(items):
            function = item.get("function") if key == "tools" and isinstance(item, dict) else item
            if key == "tools" and (not isinstance(item, dict) or item.get("type") != "function"):
                log.error("bad_tools", f'tools[{j}] must be {{"type": "function", "function": '
                          '{"name": ..., "parameters": {...}}}')
                continue
            if not isinstance(function, dict) or not isinstance(function.get("name"), str) \
                    or not _FUNCTION_NAME.match(function["name"]):
                log.error("bad_tools", f"{key}[{j}] needs a function name of 1-64 letters, "
                          "digits, '_' or '-'")
                continue
            parameters = function.get("parameters")
            if parameters is not None and not isinstance(parameters, dict):
                log.error("bad_tools", f"{key}[{j}] parameters must be a JSON Schema object")
        example.texts.append(json.dumps(items, ensure_ascii=False, separators=(",", ":")))


def _content(message: dict[str, Any], at: str, log: IssueLog, example: Example,
             rules: Rules, *, text_only: bool, required: bool) -> None:
    if "content" not in message or message["content"] is None:
        if required:
            log.error("missing_content", f'{at} has no "content"; add the message text')
        return
    content = message["content"]
    if content == "" or content == []:
        log.error("missing_content", f"{at} has empty content; write the message text or "
                  "drop the message")
        return
    images = _text_parts(content, at, log, example, allow_images=not text_only,
                         image_role=str(message.get("role")))
    if images and rules.max_images_per_example is not None \
            and example.images > rules.max_images_per_example:
        log.error("too_many_images", f"the example has more than "
                  f"{rules.max_images_per_example} images; split it")
    for url in images:
        _check_image_url(url, at, log, rules)


def _text_parts(content: Any, at: str, log: IssueLog, example: Example, *,
                allow_images: bool, image_role: str) -> list[str]:
    """Collect text from a string or a list of parts; return the image URLs found."""
    if isinstance(content, str):
        example.texts.append(content)
        return []
    if not isinstance(content, list):
        log.error("bad_content", f"{at}.content must be a string or a list of content parts")
        return []
    urls = []
    for k, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            example.texts.append(part["text"])
        elif kind == "image_url":
            if not allow_images:
                why = ("images are not allowed in assistant messages" if image_role ==
                       "assistant" else f"images are not allowed here ({image_role} or DPO)")
                log.error("image_not_allowed", f"{at}.content[{k}]: {why}; remove it")
                continue
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else None
            if not isinstance(url, str):
                log.error("bad_image", f'{at}.content[{k}] needs "image_url": {{"url": ...}}')
                continue
            example.images += 1
            urls.append(url)
        else:
            log.error("bad_content", f'{at}.content[{k}] must be {{"type": "text", "text": ...}}'
                      ' or {"type": "image_url", "image_url": {"url": ...}}')
    return urls


def _check_image_url(url: str, at: str, log: IssueLog, rules: Rules) -> None:
    if url.startswith(("https://", "http://")):
        return
    match = _DATA_URL.match(url)
    if not match:
        allowed = ", ".join(rules.image_formats or ()) or "JPEG, PNG or WEBP"
        log.error("bad_image", f"{at}: an image must be an http(s) URL or a "
                  f"data:image/...;base64 URL of {allowed}")
        return
    size = (len(url) - match.end()) * 3 // 4
    if rules.max_image_bytes is not None and size > rules.max_image_bytes:
        log.error("image_too_large", f"{at}: an inline image is about {size:,} bytes, over "
                  f"the {rules.max_image_bytes:,}-byte limit; shrink it")


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value
    text = text if len(text) <= 40 else text[:37] + "..."
    return json.dumps(text, ensure_ascii=False)

"""Alibaba DashScope (Model Studio) line formats: ChatML SFT, image SFT (content lists of
``{"text"}`` / ``{"image": file}`` inside a zip) and DPO (``messages`` + ``chosen`` /
``rejected`` objects).

DashScope documents no ``name`` or ``weight`` (every assistant message is trained) and no
tool messages in its SFT format, so those are errors here.
"""

from __future__ import annotations

import json
from typing import Any

from orchestrator.datasets.formats import Example
from orchestrator.datasets.issues import IssueLog
from orchestrator.datasets.rules import Rules

_ROLES = ("system", "user", "assistant")
_SHAPE = ('{"messages": [{"role": "system", "content": "..."}, {"role": "user", '
          '"content": "..."}, {"role": "assistant", "content": "..."}]}')


def check_chat(record: dict[str, Any], log: IssueLog, rules: Rules) -> Example | None:
    """Check one text ChatML SFT record."""
    return _check_sft(record, log, images=False)


def check_image(record: dict[str, Any], log: IssueLog, rules: Rules) -> Example | None:
    """Check one image-understanding SFT record (images are looked up in the zip later)."""
    return _check_sft(record, log, images=True)


def check_dpo(record: dict[str, Any], log: IssueLog, rules: Rules) -> Example | None:
    """Check one DPO record: the conversation up to a user turn, then chosen/rejected."""
    before = log.error_count
    example = Example()
    _unknown_keys(record, {"messages", "chosen", "rejected"}, log)
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        log.error("missing_messages", '"messages" must be a non-empty list ending with the '
                  'user turn that "chosen" and "rejected" answer')
        return None
    roles = [_message(m, f"messages[{i}]", log, example, images=False)
             for i, m in enumerate(messages)]
    _order(roles, log)
    if roles[-1] not in (None, "user"):
        log.error("must_end_with_user", f"messages ends with a {roles[-1]} message; end it "
                  'with the user turn that "chosen" and "rejected" answer')
    answers = []
    for key in ("chosen", "rejected"):
        answer = record.get(key)
        if isinstance(answer, list):
            log.error("bad_output", f'"{key}" must be one message object, not a list: '
                      f'"{key}": {{"role": "assistant", "content": "..."}}')
            continue
        role = _message(answer, key, log, example, images=False)
        if role is not None and role != "assistant":
            log.error("bad_output", f'"{key}" must have role "assistant", not {role!r}')
        answers.append(answer)
    if log.error_count > before:
        return None
    if len(answers) == 2 and answers[0] == answers[1]:
        log.warn("identical_outputs", '"chosen" and "rejected" are the same, so this '
                 "example teaches nothing; make them differ")
    example.messages = len(messages) + 2
    return example


def _check_sft(record: dict[str, Any], log: IssueLog, *, images: bool) -> Example | None:
    before = log.error_count
    example = Example()
    _unknown_keys(record, {"messages"}, log)
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        log.error("missing_messages", f'"messages" must be a non-empty list; write the '
                  f"example as {_SHAPE}")
        return None
    roles = [_message(m, f"messages[{i}]", log, example, images=images)
             for i, m in enumerate(messages)]
    _order(roles, log)
    if log.error_count > before:
        return None
    if "assistant" not in roles:
        log.error("no_assistant_message", "the example has no assistant message, so there is "
                  'nothing to learn; add the reply as {"role": "assistant", "content": "..."}')
        return None
    if roles[-1] != "assistant":
        log.error("last_not_assistant", f"the last message is from {roles[-1]}; DashScope "
                  "trains on assistant replies, so end the example with one")
        return None
    example.messages = len(messages)
    return example


def _message(message: Any, at: str, log: IssueLog, example: Example, *,
             images: bool) -> str | None:
    if not isinstance(message, dict):
        log.error("bad_message", f"{at} must be an object with a role and content")
        return None
    role = message.get("role")
    if role not in _ROLES:
        if role in ("tool", "function") or "tool_calls" in message:
            log.error("tools_unsupported", f"{at}: DashScope's documented SFT format has no "
                      "tool messages or tool calls; remove them (tunectl does not know a "
                      "DashScope function-calling format)")
        elif role is None:
            log.error("missing_role", f'{at} has no "role"; use system, user or assistant')
        else:
            log.error("unknown_role", f"{at}.role {json.dumps(role)[:40]} is not one of "
                      "system, user, assistant")
        return None
    for key in message:
        if key in ("name", "weight"):
            log.error("openai_only_key", f'{at} has "{key}", which DashScope does not support '
                      "(every assistant message is trained); remove it")
        elif key == "loss_weight" and role == "assistant":
            log.warn("preview_key", f'{at}.loss_weight is an invitation-only DashScope '
                     "preview; without access it is rejected or ignored")
        elif key == "tool_calls":
            log.error("tools_unsupported", f"{at}: DashScope's documented SFT format has no "
                      "tool calls; remove them")
        elif key not in ("role", "content"):
            log.error("unknown_key", f"{at} has key {json.dumps(key)[:40]}; DashScope "
                      "messages hold only role and content")
    content = message.get("content")
    if isinstance(content, str):
        if not content:
            log.error("missing_content", f"{at} has empty content; write the message text")
        else:
            example.texts.append(content)
            if role == "assistant":
                _check_think(content, at, log)
    elif images and isinstance(content, list) and content:
        _parts(content, at, role, log, example)
    elif content is None:
        log.error("missing_content", f'{at} has no "content"; add the message text')
    else:
        shape = 'a string or a list of {"text": ...} / {"image": "<file>"} items' if images \
            else "a string"
        log.error("bad_content", f"{at}.content must be {shape}")
    return str(role)


def _parts(content: list[Any], at: str, role: str, log: IssueLog, example: Example) -> None:
    for k, part in enumerate(content):
        if isinstance(part, dict) and len(part) == 1 and isinstance(part.get("text"), str):
            example.texts.append(part["text"])
        elif isinstance(part, dict) and len(part) == 1 and isinstance(part.get("image"), str):
            if role == "assistant":
                log.error("image_not_allowed", f"{at}.content[{k}]: an assistant reply cannot "
                          "hold an image; move it to the user message")
            elif not part["image"]:
                log.error("bad_image", f"{at}.content[{k}].image is empty; name an image "
                          "file in the zip")
            else:
                example.images += 1
                example.image_files.append(part["image"])
        else:
            log.error("bad_content", f'{at}.content[{k}] must be {{"text": "..."}} or '
                      '{"image": "<file in the zip>"}')


def _order(roles: list[str | None], log: IssueLog) -> None:
    for i, role in enumerate(roles):
        if role == "system" and i > 0:
            log.error("system_not_first", f"messages[{i}] is a system message; DashScope "
                      "takes at most one, as the first message")


def _check_think(content: str, at: str, log: IssueLog) -> None:
    if "<think>" in content and not (content.startswith("<think>\n")
                                     and "\n</think>\n\n" in content):
        log.warn("think_format", f"{at}: thinking content must be written as "
                 '"<think>\\n...\\n</think>\\n\\n" before the answer, newlines included')


def _unknown_keys(record: dict[str, Any], allowed: set[str], log: IssueLog) -> None:
    for key in record:
        if key not in allowed:
            log.warn("unknown_key", f"DashScope's format has no top-level key "
                     f"{json.dumps(key)[:40]}; remove it")

"""Hypothesis strategies that build valid records of every dataset format."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1,
               max_size=24)
name = st.from_regex(r"[a-z][a-z0-9_]{0,15}", fullmatch=True)


@st.composite
def openai_chat(draw: st.DrawFn, *, tools: bool = True, extras: bool = True) -> dict[str, Any]:
    """An OpenAI chat SFT record, sometimes with a system message, names, weights and a
    tool call answered by a tool message."""
    messages: list[dict[str, Any]] = []
    if draw(st.booleans()):
        messages.append({"role": "system", "content": draw(text)})
    for turn in range(draw(st.integers(1, 3))):
        user: dict[str, Any] = {"role": "user", "content": draw(text)}
        if extras and draw(st.booleans()):
            user["name"] = draw(name)
        messages.append(user)
        if tools and turn == 0 and draw(st.booleans()):
            function = draw(name)
            messages.append({"role": "assistant", "tool_calls": [{
                "id": "call_0", "type": "function",
                "function": {"name": function, "arguments": '{"q": 1}'}}]})
            messages.append({"role": "tool", "tool_call_id": "call_0", "content": draw(text)})
        reply: dict[str, Any] = {"role": "assistant", "content": draw(text)}
        if extras and draw(st.booleans()):
            reply["weight"] = 1
        messages.append(reply)
    return {"messages": messages}


@st.composite
def openai_dpo(draw: st.DrawFn) -> dict[str, Any]:
    """An OpenAI DPO record."""
    messages = [{"role": "user", "content": draw(text)}]
    if draw(st.booleans()):
        messages.insert(0, {"role": "system", "content": draw(text)})
    good, bad = draw(st.lists(text, min_size=2, max_size=2, unique=True))
    return {"input": {"messages": messages},
            "preferred_output": [{"role": "assistant", "content": good}],
            "non_preferred_output": [{"role": "assistant", "content": bad}]}


@st.composite
def dashscope_chat(draw: st.DrawFn) -> dict[str, Any]:
    """A DashScope ChatML record."""
    record = draw(openai_chat(tools=False, extras=False))
    return record


@st.composite
def dashscope_dpo(draw: st.DrawFn) -> dict[str, Any]:
    """A DashScope DPO record."""
    record = draw(openai_dpo())
    return {"messages": record["input"]["messages"],
            "chosen": record["preferred_output"][0],
            "rejected": record["non_preferred_output"][0]}


@st.composite
def dashscope_image(draw: st.DrawFn, images: tuple[str, ...]) -> dict[str, Any]:
    """A DashScope image-SFT record referring to some of ``images``."""
    parts: list[dict[str, str]] = [{"text": draw(text)}]
    parts += [{"image": image} for image in draw(st.lists(st.sampled_from(images),
                                                          min_size=1, max_size=2))]
    return {"messages": [{"role": "user", "content": parts},
                         {"role": "assistant", "content": [{"text": draw(text)}]}]}


@st.composite
def vertex_gemini(draw: st.DrawFn) -> dict[str, Any]:
    """A Vertex Gemini supervised record with alternating turns."""
    contents = []
    for _ in range(draw(st.integers(1, 3))):
        contents.append({"role": "user", "parts": [{"text": draw(text)}]})
        contents.append({"role": "model", "parts": [{"text": draw(text)}]})
    record: dict[str, Any] = {"contents": contents}
    if draw(st.booleans()):
        record["systemInstruction"] = {"parts": [{"text": draw(text)}]}
    return record


@st.composite
def vertex_preference(draw: st.DrawFn) -> dict[str, Any]:
    """A Vertex preference record."""
    good, bad = draw(st.lists(text, min_size=2, max_size=2, unique=True))
    return {"contents": [{"role": "user", "parts": [{"text": draw(text)}]}],
            "completions": [
                {"score": 1, "completion": {"role": "model", "parts": [{"text": good}]}},
                {"score": 0, "completion": {"role": "model", "parts": [{"text": bad}]}}]}

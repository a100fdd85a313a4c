"""Tool calls in the Hermes format: presenting ``tools`` to a chat template (its own ``tools``
support, or a Hermes system block for a template without it), and reading
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` back out of a reply.

The server (:mod:`agentgym.serving.engine`) and the trainer's policies
(:mod:`agentgym.trainers.hf_policy`, conversation mode) render through :func:`render_chat`, so a
model sees tools the same way wherever it runs.

A malformed call is never an error: the reply stays plain ``content`` and the problem is logged.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from typing import Any

__all__ = [
    "TOOL_CALL_CLOSE",
    "TOOL_CALL_OPEN",
    "parse_tool_calls",
    "render_chat",
    "template_has_tools",
]

TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
_TOOL_CALL_RE = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)


def _hermes_messages(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Present ``tools`` as Qwen2.5's template does, for a template without tools support.

    The tool list goes into the system message; earlier assistant tool calls become
    ``<tool_call>`` text and tool results ``<tool_response>`` user turns, so the model sees one
    consistent format.
    """
    listing = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
    block = (
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
        f"{listing}\n</tools>\n\nFor each function call, return a json object with function name "
        "and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
        '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
    )
    out: list[dict[str, Any]] = []
    rest = messages
    if messages and messages[0]["role"] == "system":
        out.append({"role": "system", "content": messages[0]["content"] + "\n\n" + block})
        rest = messages[1:]
    else:
        out.append({"role": "system", "content": block})
    for m in rest:
        if m["role"] == "assistant" and m.get("tool_calls"):
            calls = "\n".join(
                TOOL_CALL_OPEN
                + "\n"
                + json.dumps(
                    {"name": c["function"]["name"], "arguments": c["function"]["arguments"]},
                    ensure_ascii=False,
                )
                + "\n"
                + TOOL_CALL_CLOSE
                for c in m["tool_calls"]
            )
            text = (m.get("content") or "") + ("\n" if m.get("content") else "") + calls
            out.append({"role": "assistant", "content": text})
        elif m["role"] == "tool":
            out.append(
                {"role": "user", "content": f"<tool_response>\n{m['content']}\n</tool_response>"}
            )
        else:
            out.append({"role": m["role"], "content": m.get("content") or ""})
    return out


def template_has_tools(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template reads ``tools`` (a template that never mentions them
    would drop them silently)."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # named templates: the default one is used
        template = template.get("default")
    return isinstance(template, str) and "tools" in template


def render_chat(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    tools: Sequence[dict[str, Any]] | None = None,
    *,
    add_generation_prompt: bool = True,
) -> str:
    """``messages`` through the chat template, with ``tools`` presented if any: passed as
    ``apply_chat_template(..., tools=...)`` when the template reads them, else as the Hermes
    system block of :func:`_hermes_messages` (what Qwen2.5's template writes)."""
    kwargs: dict[str, Any] = {"add_generation_prompt": add_generation_prompt, "tokenize": False}
    if tools:
        if template_has_tools(tokenizer):
            kwargs["tools"] = list(tools)
        else:
            messages = _hermes_messages(messages, list(tools))
    return tokenizer.apply_chat_template(messages, **kwargs)


def parse_tool_calls(text: str) -> tuple[str | None, list[dict[str, Any]] | None, str]:
    """Split a reply into ``(content, tool_calls, problem)``.

    ``tool_calls`` is None when the reply holds no ``<tool_call>`` or when one of them is malformed
    (then ``problem`` says what was wrong and the whole reply is plain content). Each call is
    OpenAI's ``{"id", "type": "function", "function": {"name", "arguments": <JSON string>}}``.
    """
    start = text.find(TOOL_CALL_OPEN)
    if start < 0:
        return text, None, ""
    calls: list[dict[str, Any]] = []
    tail = text[start:]
    blocks = _TOOL_CALL_RE.findall(tail)
    leftover = _TOOL_CALL_RE.sub("", tail).strip()
    if not blocks or leftover:
        return text, None, "a <tool_call> block is not closed by </tool_call> or text follows it"
    for k, raw in enumerate(blocks):
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            return text, None, f"tool call {k} is not valid JSON ({e})"
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
            return text, None, f'tool call {k} needs a "name" string'
        args = obj.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except json.JSONDecodeError as e:
                return text, None, f"tool call {k}'s arguments are not valid JSON ({e})"
        if not isinstance(args, dict):
            return text, None, f"tool call {k}'s arguments must be a JSON object"
        calls.append(
            {
                "id": "call_" + uuid.uuid4().hex[:24],
                "type": "function",
                "function": {
                    "name": obj["name"],
                    "arguments": json.dumps(args, ensure_ascii=False),
                },
            }
        )
    content = text[:start].rstrip()
    return content or None, calls, ""

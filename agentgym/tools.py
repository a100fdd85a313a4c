"""Env-declared tools: OpenAI function schemas, their validation, and tool calls as actions.

An environment may declare the actions it takes as **tools**, in the OpenAI function format that
chat templates and OpenAI-compatible servers understand::

    {"type": "function",
     "function": {"name": "bash", "description": "Run a shell command.",
                  "parameters": {"type": "object",
                                 "properties": {"command": {"type": "string"}},
                                 "required": ["command"]}}}

Where tools are declared:

* ``register(..., tools=[...])`` stores them on the :class:`~agentgym.registration.EnvSpec`:
  the default for every turn of every episode;
* an :class:`~agentgym.core.Observation` may carry its own ``tools`` (a per-turn override, e.g.
  a tool that only exists after a login); ``()`` says "no tools this turn", ``None`` (the
  default) falls back to the spec's.

How a policy uses them: model-backed policies present the tools to the model (the chat
template's ``tools`` support, or a Hermes system block for a template without it, see
:mod:`agentgym.serving.tools`) and turn the model's call into the action sent to the env, which
is the JSON text ``{"tool": name, **arguments}`` (:func:`tool_call_action`). An env that
declares tools therefore accepts that JSON form; it may keep accepting its own text form too
(the ``<action>...</action>`` reply still works, see :func:`reply_action`).

A call the policy cannot turn into an action (bad JSON, no name, several calls in one turn) is
the model's mistake, never an exception: the turn is invalid and the problem is reported to the
model at the start of its next observation (:func:`tool_error_note`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

__all__ = [
    "Tools",
    "validate_tools",
    "tool_call_action",
    "reply_action",
    "tool_error_note",
    "tool_names",
]

#: Tools as stored on specs and observations: a tuple of OpenAI function tools.
Tools = tuple[dict[str, Any], ...]

#: OpenAI's rule for function names (the API rejects others).
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_JSON_TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")


def _bad(where: str, what: str) -> ValueError:
    return ValueError(
        f"{where} {what}; a tool is {{'type': 'function', 'function': {{'name', 'description', "
        "'parameters': {'type': 'object', 'properties': {...}, 'required': [...]}}}"
    )


def _check_parameters(params: Any, where: str) -> None:
    """The structural rules every chat template and server relies on; the JSON-schema
    meta-schema too when ``jsonschema`` happens to be installed (it is not a dependency)."""
    if not isinstance(params, dict) or params.get("type") != "object":
        raise _bad(where, f"is {params!r:.80}, not a JSON schema with type 'object'")
    props = params.get("properties", {})
    if not isinstance(props, dict):
        raise _bad(f"{where}.properties", "must be an object mapping argument names to schemas")
    for name, schema in props.items():
        if not isinstance(schema, dict):
            raise _bad(f"{where}.properties.{name}", f"is {schema!r:.60}, not a JSON schema")
        kind = schema.get("type")
        kinds = kind if isinstance(kind, list) else [kind] if kind is not None else []
        bad = [k for k in kinds if k not in _JSON_TYPES]
        if bad:
            raise _bad(
                f"{where}.properties.{name}.type",
                f"is {bad[0]!r}, not one of {', '.join(_JSON_TYPES)}",
            )
    required = params.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise _bad(f"{where}.required", "must be a list of argument names")
    missing = [r for r in required if r not in props]
    if missing:
        raise _bad(f"{where}.required", f"names {missing[0]!r}, which is not in its properties")
    try:
        import jsonschema
    except ImportError:
        return
    try:
        jsonschema.validators.validator_for(params).check_schema(params)
    except jsonschema.SchemaError as e:
        raise _bad(where, f"is not a valid JSON schema ({e.message})") from None


def validate_tools(tools: Any, *, where: str = "tools") -> Tools:
    """``tools`` as a tuple, or a one-line :class:`ValueError` naming the bad entry and the form.

    Checked: each entry is ``{"type": "function", "function": {...}}``; names follow OpenAI's
    ``[A-Za-z0-9_-]{1,64}`` and are unique; ``description`` is a string; ``parameters`` is an
    object schema whose ``required`` names are among its ``properties`` and whose property
    types are JSON types.
    """
    if isinstance(tools, (str, bytes, dict)) or not isinstance(tools, Sequence):
        raise _bad(where, f"is a {type(tools).__name__}, not a list of tools")
    seen: set[str] = set()
    for k, tool in enumerate(tools):
        at = f"{where}[{k}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise _bad(at, f"is {tool!r:.80}, not a function tool")
        fn = tool.get("function")
        if not isinstance(fn, dict):
            raise _bad(f"{at}.function", "is missing")
        name = fn.get("name")
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise _bad(f"{at}.function.name", f"is {name!r}, not 1-64 of [A-Za-z0-9_-]")
        if name in seen:
            raise _bad(f"{at}.function.name", f"repeats {name!r}; tool names must be unique")
        seen.add(name)
        if not isinstance(fn.get("description", ""), str):
            raise _bad(f"{at}.function.description", "must be a string")
        _check_parameters(
            fn.get("parameters", {"type": "object", "properties": {}}), f"{at}.function.parameters"
        )
    return tuple(tools)


def tool_names(tools: Sequence[dict[str, Any]] | None) -> list[str]:
    """The function names of ``tools``."""
    return [t["function"]["name"] for t in tools or ()]


def tool_call_action(calls: Any) -> tuple[str, str]:
    """``(action, "")`` for one usable OpenAI tool call, else ``("", what is wrong)``.

    The action is ``{"tool": name, **arguments}`` as JSON. One turn takes one action, so a reply
    with several calls is refused rather than silently cut to the first.
    """
    if not isinstance(calls, list) or not calls:
        return "", "tool_calls must be a non-empty list"
    if len(calls) > 1:
        return "", f"the reply made {len(calls)} tool calls; one turn takes exactly one"
    call = calls[0]
    fn = call.get("function") if isinstance(call, dict) else None
    name = fn.get("name") if isinstance(fn, dict) else None
    if not isinstance(name, str) or not name:
        return "", "the tool call has no function name"
    args: Any = fn.get("arguments") or "{}"
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError as e:
            return "", f"the arguments of tool call {name!r} are not valid JSON ({e})"
    if not isinstance(args, dict):
        return "", f"the arguments of tool call {name!r} must be a JSON object"
    rest = {k: v for k, v in args.items() if k != "tool"}
    return json.dumps({"tool": name, **rest}, ensure_ascii=False), ""


def reply_action(text: str) -> tuple[str, bool, str]:
    """A model reply as ``(action, format_ok, problem)``.

    A reply holding ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (Hermes/Qwen) is
    read with :func:`agentgym.serving.tools.parse_tool_calls` and becomes the env's JSON action;
    a malformed call gives ``("", False, what was wrong)``. Any other reply is read as
    ``<action>...</action>`` (:func:`agentgym.policies.parse_action`), so text actions keep working.
    """
    from agentgym.policies import parse_action
    from agentgym.serving.tools import TOOL_CALL_OPEN, parse_tool_calls

    if TOOL_CALL_OPEN not in text:
        action, ok = parse_action(text)
        return action, ok, ""
    _, calls, problem = parse_tool_calls(text)
    if calls is None:
        return "", False, problem or "the <tool_call> block could not be read"
    action, problem = tool_call_action(calls)
    return action, not problem, problem


def tool_error_note(problem: str) -> str:
    """The line that opens the next observation after a malformed tool call."""
    return (
        f"Your last reply had an invalid tool call: {problem}. Call one tool as "
        '<tool_call>{"name": ..., "arguments": {...}}</tool_call>.'
    )

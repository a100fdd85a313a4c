"""The SWE env's actions as OpenAI function tools (the JSON schemas of its JSON tool-call form).

Plain data, imported when the family registers (no Docker, no sandbox): the spec carries them
(``agentgym.spec("swe/Builtin-v0").tools``), model-backed policies present them to the model, and
a call comes back as the env's JSON action ``{"tool": name, **arguments}``, which
:func:`agentgym.environments.swe.env.parse_tool_call` reads like the tagged text form.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SWE_TOOLS"]


def _tool(name: str, description: str, props: dict[str, Any], required: list[str]) -> dict:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": props,
                "required": required,
                "additionalProperties": False,
            },
        },
    }


_PATH = {"type": "string", "description": "file path relative to /workspace, e.g. pkg/mod.py"}

SWE_TOOLS: tuple[dict[str, Any], ...] = (
    _tool(
        "bash",
        "Run a shell command in the repository (/workspace, no network); returns its output "
        "and exit code.",
        {"command": {"type": "string", "description": "the command, e.g. python3 -m pytest -q"}},
        ["command"],
    ),
    _tool(
        "view",
        "Show a file with line numbers, optionally only lines start..end (1-based, inclusive).",
        {
            "path": _PATH,
            "start": {"type": "integer", "minimum": 1, "description": "first line shown"},
            "end": {"type": "integer", "minimum": 1, "description": "last line shown"},
        },
        ["path"],
    ),
    _tool(
        "create",
        "Create a file, or overwrite it, with the given content.",
        {"path": _PATH, "content": {"type": "string", "description": "the whole file content"}},
        ["path", "content"],
    ),
    _tool(
        "replace",
        "Replace one exact occurrence of a text in a file; old must occur exactly once.",
        {
            "path": _PATH,
            "old": {"type": "string", "description": "the exact text to replace"},
            "new": {"type": "string", "description": "the text to put in its place"},
        },
        ["path", "old", "new"],
    ),
    _tool(
        "submit",
        "Finish the episode: the changes are graded by the hidden tests.",
        {},
        [],
    ),
)

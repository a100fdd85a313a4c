"""Env-declared tools: schema validation (register, check_env), Hermes replies read into env
actions, and the rollout telling the model what was wrong with a malformed call."""

from __future__ import annotations

import copy
import json

import pytest
from tool_toy_env import DOOR_TOOLS

import agentgym
from agentgym.checker import EnvCheckError, check_env
from agentgym.core import Observation
from agentgym.policies import PolicyOutput, TurnContext, build_messages
from agentgym.pool import EnvPool
from agentgym.rollout import rollout
from agentgym.tools import reply_action, tool_call_action, validate_tools

GOOD = '<tool_call>\n{"name": "open_door", "arguments": {"color": "red"}}\n</tool_call>'


def _broken(path: str, value: object) -> list[dict]:
    """DOOR_TOOLS with one entry changed: ``path`` is dotted keys under the first tool."""
    tools = copy.deepcopy(list(DOOR_TOOLS))
    node = tools[0]
    *parents, last = path.split(".")
    for k in parents:
        node = node[k]
    node[last] = value
    return tools


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("type", "tool", r"tools\[0\] is .* not a function tool"),
        ("function.name", "open door", r"function.name is 'open door', not 1-64"),
        ("function.description", 3, "description must be a string"),
        ("function.parameters", {"type": "string"}, "not a JSON schema with type 'object'"),
        ("function.parameters.required", ["colour"], "names 'colour', which is not in"),
        ("function.parameters.properties", {"color": {"type": "text"}}, "'text', not one of"),
    ],
)
def test_validate_tools_names_the_bad_entry_and_the_form(path, value, message):
    assert validate_tools(DOOR_TOOLS) == DOOR_TOOLS
    with pytest.raises(ValueError, match=message) as e:
        validate_tools(_broken(path, value))
    assert "a tool is {'type': 'function'" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ValueError, match="repeats 'open_door'"):
        validate_tools([*DOOR_TOOLS, *DOOR_TOOLS])
    with pytest.raises(ValueError, match="is a dict, not a list of tools"):
        validate_tools(DOOR_TOOLS[0])


def test_register_rejects_a_bad_schema_with_the_env_id():
    with pytest.raises(ValueError, match=r"test/BadTools-v0 tools\[0\].function.name"):
        agentgym.register(
            "test/BadTools-v0", "tool_toy_env:ToolDoors", tools=_broken("function.name", "")
        )
    assert "test/BadTools-v0" not in agentgym.registry
    assert agentgym.spec("test/ToolDoors-v0").tools == DOOR_TOOLS
    assert agentgym.spec("test/ToolDoors-v0").to_dict()["tools"] == list(DOOR_TOOLS)


def test_check_env_validates_spec_and_observation_tools():
    check_env(agentgym.make("test/ToolDoors-v0"))
    check_env(agentgym.make("test/ToolDoors-v0", obs_tools=()))  # "no tools this turn" is valid
    bad = _broken("function.parameters.required", ["colour"])
    with pytest.raises(EnvCheckError, match=r"reset\(\) observation tools\[0\].*'colour'"):
        check_env(agentgym.make("test/ToolDoors-v0", obs_tools=tuple(bad)))
    # A spec whose tools were never validated (built by hand, not by register).
    spec = agentgym.spec("test/ToolDoors-v0")
    import dataclasses

    env = agentgym.make(dataclasses.replace(spec, tools=tuple(bad)))
    with pytest.raises(EnvCheckError, match=r"spec tools\[0\]"):
        check_env(env)


def test_turn_tools_spec_default_and_observation_override():
    ctx = TurnContext(env_id="x", observation=Observation(text="t"), tools=DOOR_TOOLS)
    assert ctx.turn_tools == DOOR_TOOLS
    ctx.observation = Observation(text="t", tools=())
    assert ctx.turn_tools is None  # this turn has none
    other = validate_tools(_broken("function.name", "knock"))
    ctx.observation = Observation(text="t", tools=other)
    assert ctx.turn_tools == other
    # The prompt asks for a tool call only when the turn has tools.
    system, user = build_messages(ctx)
    assert "call exactly one tool" in system["content"]
    assert user["content"].endswith("Answer with one tool call.")
    ctx.observation, ctx.tools = Observation(text="t"), None
    system, user = build_messages(ctx)
    assert "<action>" in system["content"] and user["content"].endswith("<action>...</action>.")


@pytest.mark.parametrize(
    ("reply", "action", "problem"),
    [
        (GOOD, {"tool": "open_door", "color": "red"}, ""),
        ("I think red.\n" + GOOD, {"tool": "open_door", "color": "red"}, ""),
        (
            '<tool_call>{"name": "open_door", "arguments": "{\\"color\\": \\"blue\\"}"}</tool_call>',
            {"tool": "open_door", "color": "blue"},
            "",
        ),
        ("<action>open red door</action>", "open red door", ""),
        (
            '<tool_call>{"name": "open_door", "arguments": {"color": </tool_call>',
            "",
            "tool call 0 is not valid JSON",
        ),
        ('<tool_call>{"arguments": {}}</tool_call>', "", 'needs a "name" string'),
        (
            '<tool_call>{"name": "open_door", "arguments": [1]}</tool_call>',
            "",
            "must be a JSON object",
        ),
        ('<tool_call>{"name": "open_door"', "", "not closed by </tool_call>"),
        (GOOD + GOOD, "", "made 2 tool calls; one turn takes exactly one"),
    ],
)
def test_reply_action_reads_hermes_calls_into_env_actions(reply, action, problem):
    got, ok, why = reply_action(reply)
    assert ok == (not problem) and problem in why and (why == "") == (not problem)
    assert (json.loads(got) if isinstance(action, dict) else got) == action


def test_tool_call_action_is_shared_with_the_http_policy():
    from agentgym import http_policy

    assert http_policy.tool_call_action is tool_call_action


class _Scripted:
    """Replies in order, each read by the real reply parser (what a model policy does)."""

    needs_expert = False
    name = "scripted"

    def __init__(self, replies: list[str]) -> None:
        self.replies = list(replies)
        self.seen: list[TurnContext] = []

    def act(self, contexts):
        outs = []
        for ctx in contexts:
            self.seen.append(TurnContext(ctx.env_id, ctx.observation, tools=ctx.tools))
            action, ok, problem = reply_action(self.replies.pop(0))
            extras = {"tool_call_error": problem} if problem else {}
            outs.append(PolicyOutput(action=action, response="", format_ok=ok, extras=extras))
        return outs


def test_rollout_gives_the_spec_tools_and_reports_a_malformed_call():
    bad = '<tool_call>{"name": "open_door", "arguments": {"color": </tool_call>'
    with agentgym.make("test/ToolDoors-v0", rooms=1) as env:
        env.reset(seed=0)
        color = env.unwrapped.path[0]
    good = GOOD.replace("red", color)
    pol = _Scripted([bad, good])
    with EnvPool("test/ToolDoors-v0", num_envs=1, backend="sync", env_kwargs={"rooms": 1}) as pool:
        (traj,) = rollout(pool, pol, num_groups=1)
    assert all(c.tools == DOOR_TOOLS for c in pol.seen)
    first, second = traj.turns
    assert not first.valid and not first.format_ok
    assert first.policy["tool_call_error"].startswith("tool call 0 is not valid JSON")
    # The model reads what was wrong at the top of its next observation.
    assert second.observation.startswith("Your last reply had an invalid tool call: tool call 0")
    assert "Not a door" in second.observation  # the env's own answer follows
    assert json.loads(second.action) == {"tool": "open_door", "color": color}
    assert second.valid and traj.won

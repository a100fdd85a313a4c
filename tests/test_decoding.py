"""The one decoding loop (agentgym.decoding.decode) as both of its callers use it: per-row
sampling params in one batch, seeded rows independent of their batch, exact log-probs, top
log-probs, the streaming callback, and the server's engine going through it."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from agentgym.decoding import SamplingParams, decode  # noqa: E402
from agentgym.models import load_model  # noqa: E402

TEXTS = [
    "You stand before a locked door. Speak the word. <action>alpha</action> beta gamma delta",
    "Say the secret word (hint: it has 5 letters). Nothing happens when you say beta.",
] * 20

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from agentgym.trainers.tiny_model import init_model

    return init_model(tmp_path_factory.mktemp("m") / "tiny", TEXTS, vocab_size=400, hidden_size=32)


@pytest.fixture(scope="module")
def loaded(model_dir):
    model, tok = load_model(model_dir, device="cpu")
    model.eval()
    return model, tok


def _prompts(tok) -> list[list[int]]:
    texts = ["You stand before", "Say the secret word (hint: it has 5 letters).", "beta"]
    return [tok(t, add_special_tokens=False)["input_ids"] for t in texts]


def _run(model, tok, prompts, params, **kw):
    return decode(model, prompts, params, eos_ids={tok.eos_token_id}, pad_id=tok.pad_token_id, **kw)


def test_seeded_rows_with_their_own_params_do_not_depend_on_the_batch(loaded) -> None:
    model, tok = loaded
    prompts = _prompts(tok)
    params = [
        SamplingParams(8, temperature=1.0, seed=3),
        SamplingParams(5, temperature=0.0),
        SamplingParams(6, temperature=0.7, top_p=0.5, seed=9, top_logprobs=3),
    ]
    both = _run(model, tok, prompts, params)
    for i in range(3):
        alone = _run(model, tok, [prompts[i]], [params[i]])
        assert alone.tokens[0] == both.tokens[i]
        assert alone.logprobs[0] == pytest.approx(both.logprobs[i], abs=1e-4)
    for row, p in zip(both.tokens, params):
        assert 1 <= len(row) <= p.max_tokens
    assert both.finish == [
        "stop" if row[-1] == tok.eos_token_id else "length" for row in both.tokens
    ]


def test_logprobs_scaled_or_raw_and_top_logprobs_through_the_callback(loaded) -> None:
    model, tok = loaded
    prompt = _prompts(tok)[:1]
    p = SamplingParams(6, temperature=0.5, seed=1, top_logprobs=4)
    seen: list[tuple[int, float, list[tuple[int, float]]]] = []
    raw = _run(
        model,
        tok,
        prompt,
        [p],
        scale_logprobs=False,
        on_token=lambda i, t, lp, top: seen.append((t, lp, top)) or False,
    )
    scaled = _run(model, tok, prompt, [p])
    assert raw.tokens == scaled.tokens  # the same seed draws the same tokens
    # recompute both kinds of log-prob with one forward pass over prompt + reply
    ids = torch.tensor([prompt[0] + raw.tokens[0]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt[0]) - 1 : -1].float()
    picked = torch.tensor(raw.tokens[0])[:, None]
    want_raw = torch.log_softmax(logits, -1).gather(-1, picked).squeeze(-1)
    want_scaled = torch.log_softmax(logits / 0.5, -1).gather(-1, picked).squeeze(-1)
    torch.testing.assert_close(torch.tensor(raw.logprobs[0]), want_raw, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.tensor(scaled.logprobs[0]), want_scaled, atol=1e-4, rtol=1e-4)
    # the callback saw every token but eos, with the 4 most likely alternatives, best first
    shown = [t for t in raw.tokens[0] if t != tok.eos_token_id]
    assert [t for t, _, _ in seen] == shown
    for _, lp, top in seen:
        assert len(top) == 4 and [v for _, v in top] == sorted((v for _, v in top), reverse=True)
        assert lp <= top[0][1] + 1e-6


def test_the_callback_ends_its_row_and_only_its_row(loaded) -> None:
    model, tok = loaded
    prompts = _prompts(tok)[:2]
    params = [SamplingParams(10, temperature=0.0), SamplingParams(10, temperature=0.0)]
    free = _run(model, tok, prompts, params)
    cut = _run(model, tok, prompts, params, on_token=lambda i, t, lp, top: i == 0)
    assert cut.tokens[0] == free.tokens[0][:1] and cut.finish[0] == "stop"
    assert cut.tokens[1] == free.tokens[1] and cut.finish[1] == free.finish[1]


def test_one_shared_generator_is_reproducible_and_advances(loaded) -> None:
    """The trainer's mode: one generator for the batch, whose state is what a checkpoint keeps."""
    model, tok = loaded
    prompts = _prompts(tok)
    params = [SamplingParams(8, temperature=1.0)] * 3

    def gen(seed: int):
        g = torch.Generator()
        g.manual_seed(seed)
        return g

    g = gen(5)
    first = _run(model, tok, prompts, params, generator=g)
    second = _run(model, tok, prompts, params, generator=g)
    assert _run(model, tok, prompts, params, generator=gen(5)).tokens == first.tokens
    assert second.tokens != first.tokens


def test_the_server_engine_decodes_through_the_core_loop(model_dir, loaded) -> None:
    from agentgym.serving import ChatEngine

    engine = ChatEngine(model_dir, device="cpu")
    model, tok = loaded
    prompts = _prompts(tok)
    params = [SamplingParams(6, temperature=1.0, seed=s) for s in (1, 2, 3)]
    rows: list[list[int]] = [[], [], []]
    finish = engine.decode(prompts, params, lambda i, t, lp, top: rows[i].append(t) or False)
    core = decode(
        model, prompts, params, eos_ids=engine.eos_ids, pad_id=engine.pad_id, scale_logprobs=False
    )
    assert finish == core.finish
    assert rows == [[t for t in r if t not in engine.eos_ids] for r in core.tokens]

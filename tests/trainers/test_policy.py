"""HFPolicy on a tiny model built by init_model: batched generation, parsing, exact log-probs."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from doors import CORPUS, doors_contexts  # noqa: E402

from agentgym.policies import Policy  # noqa: E402
from agentgym.trainers.hf_policy import HFPolicy, encode_prompt  # noqa: E402
from agentgym.trainers.losses import Sample, collate, token_logprobs  # noqa: E402
from agentgym.trainers.sft import (  # noqa: E402
    IGNORE_INDEX,
    SFTExample,
    encode_example,
    sft_loss,
    sft_train,
)
from agentgym.trainers.tiny_model import init_model  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return init_model(
        tmp_path_factory.mktemp("tiny"),
        CORPUS,
        vocab_size=400,
        hidden_size=32,
        num_layers=2,
        seed=0,
    )


def test_model_dir_loads_with_auto_classes(model_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert model.config.model_type == "qwen2"
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 2
    assert tok.eos_token == "<|im_end|>" and tok.pad_token is not None
    text = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    ids = tok("<action>look</action>", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids)[0] == "<action>"  # one token
    assert tok.decode(ids) == "<action>look</action>"


def test_batched_generation_logprobs_match_forward_pass(model_dir):
    policy = HFPolicy.from_pretrained(model_dir, seed=3, max_new_tokens=12, temperature=1.0)
    assert isinstance(policy, Policy) and policy.needs_expert is False
    ctxs = doors_contexts(5)
    outs = policy.act(ctxs)
    assert len(outs) == 5
    # prompts of different lengths were left-padded into one batch
    assert len({len(o.extras["prompt_ids"]) for o in outs}) > 1
    samples = []
    for ctx, o in zip(ctxs, outs):
        ex = o.extras
        assert ex["prompt_ids"] == policy.prompt_ids(ctx)
        assert 1 <= len(ex["response_ids"]) <= 12
        assert len(ex["logprobs"]) == len(ex["response_ids"])
        assert all(lp <= 0 for lp in ex["logprobs"])
        # the untrained model emits no <action> tag: the reply is kept, flagged as bad format
        assert isinstance(o.action, str) and o.format_ok == (
            "<action>" in o.response and "</action>" in o.response
        )
        samples.append(
            Sample(tuple(ex["prompt_ids"]), tuple(ex["response_ids"]), tuple(ex["logprobs"]), 0.0)
        )
    # recompute every log-prob with one right-padded forward pass (as the trainer does)
    b = collate(samples, pad_id=policy.tokenizer.pad_token_id)
    with torch.no_grad():
        lp, _ = token_logprobs(policy.model, b["input_ids"], b["attention_mask"], b["targets"])
    torch.testing.assert_close(
        lp[b["mask"] > 0], b["old_logp"][b["mask"] > 0], atol=1e-4, rtol=1e-4
    )


def test_sampling_is_reproducible_and_greedy_is_deterministic(model_dir):
    a = HFPolicy.from_pretrained(model_dir, seed=7, max_new_tokens=8)
    b = HFPolicy.from_pretrained(model_dir, seed=7, max_new_tokens=8)
    ctxs = doors_contexts(3)
    assert [o.extras["response_ids"] for o in a.act(ctxs)] == [
        o.extras["response_ids"] for o in b.act(ctxs)
    ]
    g = HFPolicy.from_pretrained(model_dir, seed=1, max_new_tokens=8, temperature=0.0)
    first = [o.extras["response_ids"] for o in g.act(ctxs)]
    assert first == [o.extras["response_ids"] for o in g.act(ctxs)]
    # a batch of one gives the same greedy reply as inside the batch (padding is invisible)
    assert g.act(ctxs[2:])[0].extras["response_ids"] == first[2]


def test_sft_masks_prompt_and_teaches_the_format(model_dir):
    policy = HFPolicy.from_pretrained(model_dir, seed=0, max_new_tokens=10, temperature=0.0)
    tok = policy.tokenizer
    ctxs = doors_contexts(4)
    from agentgym.policies import build_messages

    pairs = [
        (build_messages(c), ["open red door", "open blue door"][i % 2]) for i, c in enumerate(ctxs)
    ]
    ex = encode_example(tok, pairs[0][0], pairs[0][1])
    prompt = encode_prompt(tok, pairs[0][0], 1024)
    assert ex.labels[: len(prompt)] == (IGNORE_INDEX,) * len(prompt)
    assert ex.input_ids[: len(prompt)] == tuple(prompt)
    reply = ex.labels[len(prompt) :]
    assert tok.decode(list(reply)) == "<action>open red door</action><|im_end|>"
    assert reply[-1] == tok.eos_token_id
    examples = [encode_example(tok, m, a) for m, a in pairs]
    losses = sft_train(
        policy.model,
        examples,
        pad_id=tok.pad_token_id,
        epochs=25,
        lr=1e-2,
        batch_size=4,
        micro_batch_size=2,
        seed=0,
    )
    assert losses[-1] < 0.25 * losses[0]
    outs = policy.act(ctxs)
    # the format is learnt (which door per room is not asked of 25 steps on a 32-wide model)
    assert all(o.format_ok for o in outs), [o.response for o in outs]
    assert all(o.action in ("open red door", "open blue door") for o in outs)


def test_sft_loss_scores_only_the_reply_and_matches_full_logits_cross_entropy(model_dir):
    """The reply-suffix path (left padding, logits at reply positions only) gives the loss and
    the gradients of a cross-entropy over every position's logits with the prompt masked."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    gen, vocab = torch.Generator().manual_seed(0), model.config.vocab_size
    batch = []
    for prompt_len, reply_len in [(23, 4), (31, 7), (17, 2)]:
        ids = torch.randint(3, vocab, (prompt_len + reply_len,), generator=gen).tolist()
        batch.append(SFTExample(tuple(ids), (IGNORE_INDEX,) * prompt_len + tuple(ids[prompt_len:])))
    n = float(sum(e.num_targets for e in batch))

    model.zero_grad()
    loss = sft_loss(model, batch, pad_id=0, num_targets=n)
    loss.backward()
    got = [p.grad.clone() for p in model.parameters()]

    model.zero_grad()
    width = max(len(e.input_ids) for e in batch)
    ids = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX)
    att = torch.zeros((len(batch), width), dtype=torch.long)
    for i, e in enumerate(batch):  # right-padded, every position's logits
        ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids)
        labels[i, : len(e.input_ids)] = torch.tensor(e.labels)
        att[i, : len(e.input_ids)] = 1
    logits = model(input_ids=ids, attention_mask=att).logits[:, :-1]
    ref = (
        torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), reduction="sum"
        )
        / n
    )
    ref.backward()
    assert float(loss) == pytest.approx(float(ref), rel=1e-5)
    for g, p in zip(got, model.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-6)

    with pytest.raises(ValueError, match="end of its input_ids"):
        sft_loss(model, [SFTExample((5, 6, 7), (5, IGNORE_INDEX, 7))], pad_id=0, num_targets=2)


def test_parse_action_keeps_the_lines_of_a_multi_line_action():
    """A tool call that carries a file or a patch keeps its line breaks and indentation; the
    SWE env then parses it as one tool call."""
    from agentgym.environments.swe.env import parse_tool_call
    from agentgym.policies import parse_action

    block = "replace: pkg/mod.py\n<<<<<<< OLD\n    return a\n=======\n    return b\n>>>>>>> NEW"
    action, ok = parse_action(f"I will fix it.\n<action>\n{block}\n</action>\n")
    assert ok and action == block
    call, error = parse_tool_call(action)
    assert error == "" and call == {
        "tool": "replace",
        "path": "pkg/mod.py",
        "old": "    return a",
        "new": "    return b",
    }
    assert parse_action("<action>  open   red door </action>") == ("open   red door", True)
    assert parse_action("<action> </action>") == ("", False)
    assert parse_action("no tag here\n at all") == ("no tag here at all", False)

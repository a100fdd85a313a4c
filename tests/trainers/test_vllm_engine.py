"""The vLLM policy on a real engine: log-probs against the trainer's, and weight sync.

Runs wherever vLLM can start: a CUDA machine with ``vllm``, or any machine with vLLM's CPU build
(``make test-vllm`` builds that in ``.venv-vllm``: vLLM pins its own transformers, so it cannot
share the main environment). Skipped, with the reason, elsewhere.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from doors import CORPUS, doors_contexts  # noqa: E402

from agentgym.policies import build_messages  # noqa: E402
from agentgym.trainers.hf_policy import load_model  # noqa: E402
from agentgym.trainers.tiny_model import init_model  # noqa: E402
from agentgym.trainers.vllm_policy import VLLMPolicy, vllm_unavailable_reason  # noqa: E402

REASON = vllm_unavailable_reason()
pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(REASON is not None, reason=f"vLLM cannot run here: {REASON}"),
]

#: Largest |vLLM log-prob - trainer log-prob| accepted per token. Both run float32; the engine's
#: kernels sum in another order (measured here with vLLM's CPU build: at most 1.7e-6).
LOGPROB_TOL = 1e-4


def _record(out):
    """(prompt ids, response ids, log-probs) of one policy output."""
    tok = getattr(out, "tokens", None)
    if tok is not None:
        return list(tok.prompt_ids), list(tok.response_ids), list(tok.logprobs)
    e = out.extras
    return list(e["prompt_ids"]), list(e["response_ids"]), list(e["logprobs"])


def _trainer_logprobs(model, prompt, response, temperature: float, device: str) -> torch.Tensor:
    ids = torch.tensor([prompt + response], device=device)
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float() / temperature
    lp = torch.log_softmax(logits, dim=-1)
    return lp.gather(1, torch.tensor(response, device=device)[:, None])[:, 0].cpu()


def _engine(path, *, max_new_tokens: int) -> VLLMPolicy:
    """A float32 engine at temperature 1, small enough for a CPU or a shared GPU."""
    return VLLMPolicy(
        path,
        seed=0,
        max_new_tokens=max_new_tokens,
        temperature=1.0,
        dtype="float32",
        gpu_memory_utilization=0.2,
        enforce_eager=True,
        max_model_len=1024,
    )


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # head_dim 64: a size every vLLM attention backend supports (CPU and GPU)
    path = init_model(
        tmp_path_factory.mktemp("m"), CORPUS, vocab_size=400, hidden_size=128, num_heads=2
    )
    vp = _engine(path, max_new_tokens=10)
    model, tok = load_model(path, device=device, dtype="float32")
    return vp, model, tok, device


def _max_logprob_gap(vp, model, device) -> float:
    gaps = []
    for out in vp.act(doors_contexts(6)):
        prompt, response, logprobs = _record(out)
        assert len(response) == len(logprobs) > 0
        ref = _trainer_logprobs(model, prompt, response, vp.temperature, device)
        gaps.append(float((ref - torch.tensor(logprobs)).abs().max()))
    return max(gaps)


def test_engine_logprobs_match_the_trainers(engine) -> None:
    vp, model, _, device = engine
    assert _max_logprob_gap(vp, model, device) < LOGPROB_TOL


def _hf_greedy(model, prompt: list[int], n: int) -> list[int]:
    ids = torch.tensor([prompt], device=model.device)
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n, do_sample=False, attention_mask=None)
    return out[0, len(prompt) :].tolist()


def test_weight_sync_moves_the_engine_to_the_new_weights(engine) -> None:
    from agentgym.trainers.sft import encode_example, sft_train

    vp, model, tok, device = engine
    ctxs = doors_contexts(6)
    # train the HF model on the answer format: the engine still samples from the old weights
    pairs = [
        (build_messages(c), ["open red door", "open blue door"][i % 2]) for i, c in enumerate(ctxs)
    ]
    examples = [encode_example(tok, m, a) for m, a in pairs]
    sft_train(model, examples, pad_id=tok.pad_token_id, epochs=25, lr=1e-2, batch_size=6, seed=0)
    model.eval()
    vp.temperature = 0.0

    def engine_vs_trainer() -> tuple[list[list[int]], list[list[int]]]:
        got, want = [], []
        for out in vp.act(ctxs):
            prompt, response, _ = _record(out)
            got.append(response)
            want.append(_hf_greedy(model, prompt, vp.max_new_tokens))
        return got, want

    got, want = engine_vs_trainer()
    assert got != want  # stale engine
    version = vp.weight_version
    vp.sync_weights(model)  # in memory: nothing is written to disk
    assert vp.weight_version == version + 1
    got, want = engine_vs_trainer()
    assert got == want  # greedy replies of the engine are now the trained model's
    vp.temperature = 1.0
    # and so are its sampling log-probs
    assert _max_logprob_gap(vp, model, device) < LOGPROB_TOL


def test_builtin_smollm2_logprobs_match_the_trainers() -> None:
    """The built-in pretrained chat model (SmolLM2-135M-Instruct, its own chat template and 49k
    vocabulary) on the engine: sampled replies' per-token log-probs agree with the trainer's
    forward pass. `make test-vllm` converts the model into the cache first (with the main
    environment: the conversion's packages are not in vLLM's)."""
    from agentgym.models import BUILTIN_MODELS, builtin_path, is_ready

    model = BUILTIN_MODELS["smollm2-135m-instruct"]
    path = builtin_path(model)
    if not is_ready(path):
        pytest.skip(f"{path} is not converted: run `agentgym model prepare {model.name}` first")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    vp = _engine(str(path), max_new_tokens=12)
    hf, _ = load_model(path, device=device, dtype="float32")
    assert _max_logprob_gap(vp, hf, device) < LOGPROB_TOL


@pytest.mark.parametrize("staleness", [0, 1])
def test_train_rolls_out_with_vllm_and_syncs_after_each_update(tmp_path, staleness) -> None:
    """`agentgym train --rollout-engine vllm`: the engine plays every training episode, its
    weights are the trainer's (synced once at the start, over the SFT weights, then after each
    update), each turn records the trainer's version and the engine's sync count, and the
    trainer's log-probs of the engine's tokens agree (the mismatch is measured every step)."""
    import json

    from test_train import _records, _small

    from agentgym.trainers.train import train
    from agentgym.trajectory import read_trajectories

    path = init_model(tmp_path / "m", CORPUS, vocab_size=400, hidden_size=128, num_heads=2)
    out = tmp_path / "run"
    steps = 3
    cfg = _small(
        out,
        str(path),
        steps=steps,
        kl_coef=0.0,
        tis_cap=2.0,  # scores every step: loss/mismatch_abs on each
        rollout_engine="vllm",
        async_staleness=staleness,
        sync_timeout=120.0,
    )
    train(cfg)
    recs = [r for r in _records(out) if "train/success" in r]
    assert [r["step"] for r in recs] == list(range(1, steps + 1))
    for r in recs:
        assert r["async/staleness"] <= staleness
        # the engine held the trainer's weights of the version that played (not the initial
        # ones); a stale batch is measured against newer trainer weights, so it differs more
        if r["async/staleness"] == 0:
            assert r["loss/mismatch_abs"] < LOGPROB_TOL, r
    assert recs[0]["async/staleness"] == 0
    trajs = list(read_trajectories(out / "trajectories.jsonl"))
    assert len(trajs) == steps * 2 * 2
    for t in trajs:
        step = int(t.id.split("-")[0][1:])
        for u in t.turns:
            v = u.tokens.policy_version
            assert step - 1 - staleness <= v <= step - 1
            # sync k (k = 1 at the start) loaded the weights of version k - 1 (synchronous: one
            # sync per update; asynchronous: the worker may skip a version it never needed)
            synced = u.policy["weight_version"]
            assert synced == v + 1 if staleness == 0 else 1 <= synced <= v + 1, json.dumps(u.policy)

"""Rollout throughput bench, the vLLM policy (fake engine on CPU, real one on a GPU), GPU bench."""

from __future__ import annotations

import copy
import json
import sys
import types
from types import SimpleNamespace
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from doors import CORPUS, doors_contexts  # noqa: E402

from agentgym.benchmarks import gpu as bench_gpu  # noqa: E402
from agentgym.cli import main  # noqa: E402
from agentgym.policies import make_policy  # noqa: E402
from agentgym.trainers.hf_policy import HFPolicy, load_model  # noqa: E402
from agentgym.trainers.tiny_model import init_model  # noqa: E402
from agentgym.trainers.vllm_policy import (  # noqa: E402
    VLLMPolicy,
    merged_hf_weights,
    vllm_unavailable_reason,
)

VLLM_REASON = vllm_unavailable_reason()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return init_model(
        tmp_path_factory.mktemp("tiny"), CORPUS, vocab_size=400, hidden_size=32, num_layers=2
    )


# ------------------------------------------------------------------------------------------------
# agentgym bench rollout
# ------------------------------------------------------------------------------------------------
def test_bench_rollout_batched_vs_per_env_same_episodes(corridor_id: str, capsys) -> None:
    rc = main(
        [
            "bench",
            "rollout",
            "--env",
            corridor_id,
            "--episodes",
            "4",
            "--num-envs",
            "4",
            "--pool-backend",
            "sync",
            "--max-new-tokens",
            "6",
            "--tiny-hidden",
            "32",
            "--tiny-vocab",
            "400",
            "--json",
        ]
    )
    assert rc == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    b = r["backends"]
    assert list(b) == ["random", "hf-unbatched", "hf", "vllm"]
    hf, per_env, rnd = b["hf"], b["hf-unbatched"], b["random"]
    # greedy decoding: batched and per-env calls give the same replies, hence the same episodes
    assert r["same_episodes"] is True
    assert hf["episodes_digest"] == per_env["episodes_digest"] != rnd["episodes_digest"]
    assert hf["env_steps"] == per_env["env_steps"] > 0
    assert hf["generated_tokens"] == per_env["generated_tokens"] > 0
    assert hf["generated_tokens"] <= 6 * hf["env_steps"]
    # one generate call per env step vs one per turn of the whole batch
    assert per_env["generate_calls"] == per_env["env_steps"]
    assert hf["generate_calls"] < hf["env_steps"]
    assert rnd["generated_tokens"] == 0 and "generate_calls" not in rnd
    expect = hf["env_steps_per_s"] / per_env["env_steps_per_s"]
    assert r["batched_speedup_vs_per_env"] == pytest.approx(expect, rel=1e-2)
    assert hf["prompt_tokens"] > hf["shared_prefix_tokens"] > 0
    assert r["model"]["hidden_size"] == 32 and r["device"] == "cpu"
    if VLLM_REASON:
        assert b["vllm"] == {"available": False, "reason": VLLM_REASON}


def test_bench_rollout_rejects_unknown_backend(corridor_id: str, capsys) -> None:
    rc = main(["bench", "rollout", "--env", corridor_id, "--backends", "hf,tpu"])
    assert rc == 2
    assert "unknown backends ['tpu']" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# VLLMPolicy without vLLM: import path, clear error, weight extraction
# ------------------------------------------------------------------------------------------------
@pytest.mark.skipif(VLLM_REASON is None, reason="vLLM can run here")
def test_vllm_policy_imports_and_explains_without_vllm(model_dir) -> None:
    assert isinstance(VLLM_REASON, str) and VLLM_REASON
    with pytest.raises(ImportError, match="cannot run here"):
        make_policy(f"vllm:{model_dir}")


def test_merged_hf_weights_plain_and_lora(model_dir) -> None:
    model, _ = load_model(model_dir)
    with merged_hf_weights(model) as w:
        names = [n for n, _ in w]
        assert names == list(model.state_dict())
    lora, _ = load_model(model_dir, lora={"r": 4})
    for n, p in lora.named_parameters():
        if "lora_B" in n:
            with torch.no_grad():
                p.normal_(0, 0.5)  # a trained adapter: the merge must change the weights
    merged_ref = copy.deepcopy(lora).merge_and_unload().state_dict()
    x = torch.tensor([[3, 5, 7, 9]])
    with torch.no_grad():
        before = lora(input_ids=x).logits
    with merged_hf_weights(lora) as w:
        got = dict((n, t.clone()) for n, t in w)
    assert set(got) == set(merged_ref)  # plain checkpoint names, no adapter tensors
    for n, t in merged_ref.items():
        torch.testing.assert_close(got[n], t)
    assert not torch.equal(
        got["model.layers.0.self_attn.q_proj.weight"],
        model.state_dict()["model.layers.0.self_attn.q_proj.weight"],
    )
    with torch.no_grad():
        torch.testing.assert_close(lora(input_ids=x).logits, before)  # unmerged again


# ------------------------------------------------------------------------------------------------
# VLLMPolicy against a stand-in engine that follows vLLM's generate/apply_model API
# ------------------------------------------------------------------------------------------------
class _FakeSamplingParams:
    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)


class _FakeEngineModel:
    """``load_weights`` as vLLM's models do it: HF names, a tied lm_head skipped."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def load_weights(self, weights: Any) -> set[str]:
        params = self.model.state_dict()
        loaded = set()
        for name, t in weights:
            if name == "lm_head.weight" and self.model.config.tie_word_embeddings:
                continue
            params[name].copy_(t)
            loaded.add(name)
        return loaded


class _FakeLLM:
    """Greedy, one prompt at a time, outputs shaped like vLLM's RequestOutput."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.params: list[Any] = []
        self.prefix_resets = 0

    def generate(self, prompts: list[dict], params: Any, use_tqdm: bool = True) -> list[Any]:
        assert params.temperature == 0.0 and params.logprobs == 0 and not params.detokenize
        self.params.append(params)
        outs = []
        for p in prompts:
            ids = list(p["prompt_token_ids"])
            toks, steps = [], []
            for _ in range(params.max_tokens):
                with torch.no_grad():
                    logits = self.model(input_ids=torch.tensor([ids])).logits[0, -1]
                logp = torch.log_softmax(logits.float(), -1)
                t = int(logp.argmax())
                decoy = (
                    t + 1
                ) % logp.numel()  # vLLM also returns top-k entries: pick the right one
                steps.append(
                    {
                        decoy: SimpleNamespace(logprob=float(logp[decoy])),
                        t: SimpleNamespace(logprob=float(logp[t])),
                    }
                )
                toks.append(t)
                ids.append(t)
                if t in params.stop_token_ids:
                    break
            outs.append(SimpleNamespace(outputs=[SimpleNamespace(token_ids=toks, logprobs=steps)]))
        return outs

    def apply_model(self, fn: Any) -> list[Any]:
        return [fn(_FakeEngineModel(self.model))]

    def reset_prefix_cache(self) -> bool:
        self.prefix_resets += 1
        return True


def test_vllm_policy_matches_hf_and_syncs_weights(model_dir, monkeypatch) -> None:
    monkeypatch.setitem(
        sys.modules, "vllm", types.SimpleNamespace(SamplingParams=_FakeSamplingParams)
    )
    engine_model, _ = load_model(model_dir)
    engine = _FakeLLM(engine_model)
    trained, tok = load_model(model_dir)
    hf = HFPolicy(trained, tok, max_new_tokens=8, temperature=0.0)
    vp = VLLMPolicy(model_dir, llm=engine, max_new_tokens=8, temperature=0.0)
    ctxs = doors_contexts(4)

    def check_same() -> None:
        a, b = hf.act(ctxs), vp.act(ctxs)
        for x, y in zip(a, b):
            assert y.extras["prompt_ids"] == x.extras["prompt_ids"]
            assert y.extras["response_ids"] == x.extras["response_ids"]
            assert (y.action, y.response, y.format_ok) == (x.action, x.response, x.format_ok)
            torch.testing.assert_close(
                torch.tensor(y.extras["logprobs"]),
                torch.tensor(x.extras["logprobs"]),
                atol=1e-4,
                rtol=1e-4,
            )

    check_same()
    assert engine.params[-1].stop_token_ids == [tok.eos_token_id]
    assert engine.params[-1].max_tokens == 8
    # an update changes the trained model; sync makes the engine follow it
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    stale = [o.extras["response_ids"] for o in vp.act(ctxs)]
    assert stale != [o.extras["response_ids"] for o in hf.act(ctxs)]  # the engine lags behind
    n = vp.sync_weights(trained)
    assert n == len(trained.state_dict())
    assert engine.prefix_resets == 1 and vp.weight_version == 1
    for (k, a), b in zip(trained.state_dict().items(), engine_model.state_dict().values()):
        assert torch.equal(a, b), k
    check_same()
    assert vp.act(ctxs[:1])[0].extras["weight_version"] == 1


def test_vllm_policy_rejects_negative_temperature(model_dir) -> None:
    with pytest.raises(ValueError, match="temperature"):
        VLLMPolicy(model_dir, llm=object(), temperature=-1.0)


# ------------------------------------------------------------------------------------------------
# bench_gpu
# ------------------------------------------------------------------------------------------------
def test_qwen2_05b_shape_has_494m_params() -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    with torch.device("meta"):
        m = Qwen2ForCausalLM(Qwen2Config(**bench_gpu.QWEN2_05B))
    assert sum(p.numel() for p in m.parameters()) == 494_032_768  # Qwen2-0.5B: 494M
    assert bench_gpu.matmul_params(m) == 494_032_768  # tied: the embedding is the lm_head


def test_peak_lookup() -> None:
    assert bench_gpu.peak_bf16_flops("NVIDIA H200") == 989e12
    assert bench_gpu.peak_bf16_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert bench_gpu.peak_bf16_flops("NVIDIA H100 PCIe") == 756e12
    assert bench_gpu.peak_bf16_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert bench_gpu.peak_bf16_flops("NVIDIA L40S") == 362e12
    assert bench_gpu.peak_bf16_flops("Tesla T4") is None


def test_bench_gpu_small_runs_on_cpu(capsys) -> None:
    rc = bench_gpu.main(["--small", "--json", "--device", "cpu", "--peak-tflops", "1"])
    assert rc == 0
    r = json.loads(capsys.readouterr().out)
    assert r["model"]["shape"] == "small" and r["model"]["params"] > 0
    t = r["training"]
    assert t["tokens_per_step"] == 2 * 32 and t["tokens_per_s"] > 0
    n = r["model"]["matmul_params"]
    assert t["mfu"] == pytest.approx(6 * n * t["tokens_per_s"] / 1e12, rel=1e-3)
    cfg = r["model"]
    attn = 12 * cfg["num_hidden_layers"] * cfg["hidden_size"] * t["seq_len"]
    assert t["mfu_with_attention"] == pytest.approx(t["mfu"] * (6 * n + attn) / (6 * n), rel=1e-3)
    assert t["mfu_with_attention"] > t["mfu"]
    (g,) = r["rollout_hf"]
    assert g["generated_tokens"] == g["batch"] * g["gen_tokens"] == 2 * 4
    if VLLM_REASON:
        assert r["rollout_vllm"] == {"available": False, "reason": VLLM_REASON}

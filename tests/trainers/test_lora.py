"""Fused LoRA layers (:mod:`agentgym.lora`): the same function and gradients as peft's layers,
the same adapters on disk, and peft's own path wherever fusing does not apply."""

from __future__ import annotations

import copy
import pickle

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from agentgym import lora as fused  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _llama(seed: int = 0):
    import transformers

    cfg = transformers.LlamaConfig(
        vocab_size=97,
        hidden_size=48,
        intermediate_size=80,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_hidden_layers=2,
        max_position_embeddings=128,
    )
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(cfg).float()


def _pair(**lora_kwargs):
    """The same LoRA model twice, adapters randomised (B starts at zero): peft's and fused."""
    from peft import LoraConfig, get_peft_model

    from agentgym.models import LORA_DEFAULTS

    cfg = LoraConfig(task_type="CAUSAL_LM", **{**LORA_DEFAULTS, "r": 4, **lora_kwargs})
    model = get_peft_model(_llama(), cfg)
    torch.manual_seed(1)
    for name, p in model.named_parameters():
        if "lora_" in name:
            p.data.normal_(0, 0.05)
    other = copy.deepcopy(model)
    return model, other, fused.fuse_lora(other)


@pytest.fixture
def merges(monkeypatch):
    """How many merged weights the fused layers built."""
    calls = []
    real = fused._merged

    def counting(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(fused, "_merged", counting)
    return calls


def _ids(rows: int = 4, cols: int = 40):
    return torch.randint(0, 97, (rows, cols), generator=torch.Generator().manual_seed(2))


def _loss_and_grads(model, ids):
    model.zero_grad()
    loss = model(ids).logits.float().pow(2).mean()
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_fused_layers_give_peft_s_loss_and_gradients(merges):
    ref, model, switched = _pair()
    assert switched == 2 * 7  # every targeted projection of both layers
    assert all(
        type(m).__name__ == "FusedLoraLinear"
        for m in model.modules()
        if hasattr(m, "lora_A") and m.lora_A
    )
    ids = _ids()
    loss_ref, g_ref = _loss_and_grads(ref, ids)
    assert not merges  # peft's layers never merge
    loss, g = _loss_and_grads(model, ids)
    assert merges  # the fused path ran
    assert loss == pytest.approx(loss_ref, rel=1e-5)
    assert (
        g.keys() == g_ref.keys() and any("lora_A" in k for k in g) and any("lora_B" in k for k in g)
    )
    for name in g:
        scale = g_ref[name].abs().max().clamp_min(1e-12)
        assert (g[name] - g_ref[name]).abs().max() / scale < 1e-4, name


def test_an_optimizer_step_trains_the_same_adapters():
    ref, model, _ = _pair()
    ids = _ids()
    for m in (ref, model):
        opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5)
        for _ in range(3):
            opt.zero_grad()
            m(ids).logits.pow(2).mean().backward()
            opt.step()
    a = {n: p for n, p in ref.named_parameters() if "lora_" in n}
    b = {n: p for n, p in model.named_parameters() if "lora_" in n}
    moved = max(
        (a[n] - p.detach()).abs().max().item() for n, p in _pair()[0].named_parameters() if n in a
    )
    assert moved > 1e-3  # the steps changed the adapters, so the comparison below means something
    assert max((a[n] - b[n]).abs().max().item() for n in a) < 1e-5


def test_few_rows_no_grad_and_inference_mode_match_peft(merges):
    ref, model, _ = _pair()
    few = _ids(1, 3)  # 3 rows: merging a weight would cost more than the LoRA products
    with torch.no_grad():
        assert torch.allclose(model(few).logits, ref(few).logits, atol=1e-5)
    assert not merges
    many = _ids()
    with torch.inference_mode():
        out = model(many).logits
    assert merges and torch.allclose(out, ref(many).logits.detach(), atol=1e-5)


@pytest.mark.parametrize(
    "kwargs", [{"lora_dropout": 0.1}, {"use_dora": True}, {"lora_bias": True}], ids=str
)
def test_layers_fusing_does_not_cover_keep_peft_s_forward(kwargs, merges):
    ref, model, _ = _pair(**kwargs)
    ref.eval(), model.eval()  # dropout off, so the two agree
    ids = _ids()
    assert torch.allclose(model(ids).logits, ref(ids).logits, atol=1e-5)
    assert not merges


def test_autocast_and_disabled_adapters_keep_peft_s_forward(merges):
    ref, model, _ = _pair()
    ids = _ids()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(ids)
    assert not merges
    with model.disable_adapter(), ref.disable_adapter():
        assert torch.allclose(model(ids).logits, ref(ids).logits, atol=1e-5)
    assert not merges
    base = _llama()
    with torch.no_grad():
        assert torch.allclose(ref(ids).logits, model(ids).logits, atol=1e-5)
        assert not torch.allclose(base(ids).logits, model(ids).logits, atol=1e-3)


def test_fused_models_copy_pickle_save_and_merge_like_peft_s(tmp_path):
    from peft import PeftModel

    ref, model, _ = _pair()
    ids = _ids()
    with torch.no_grad():
        want = ref(ids).logits
        for m in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
            assert (
                type(m.base_model.model.model.layers[0].self_attn.q_proj) is fused.FusedLoraLinear
            )
            assert torch.allclose(m(ids).logits, want, atol=1e-5)
        model.save_pretrained(tmp_path / "adapter")
        back = PeftModel.from_pretrained(_llama(), tmp_path / "adapter")
        assert torch.allclose(back(ids).logits, want, atol=1e-5)
        merged = copy.deepcopy(model).merge_and_unload()
        assert not any(hasattr(m, "lora_A") for m in merged.modules())
        assert torch.allclose(merged(ids).logits, want, atol=1e-4)


def test_load_model_trains_lora_through_the_fused_layers(tmp_path):
    from agentgym.models import load_model

    _llama().save_pretrained(tmp_path / "m")
    from transformers import PreTrainedTokenizerFast

    pytest.importorskip("tokenizers")
    from tokenizers import Tokenizer, models

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>"))
    )
    tok.eos_token = "<unk>"
    tok.save_pretrained(tmp_path / "m")
    model, _ = load_model(tmp_path / "m", device="cpu", lora={"r": 4})
    kinds = {type(m).__name__ for m in model.modules() if hasattr(m, "lora_A") and m.lora_A}
    assert kinds == {"FusedLoraLinear"}

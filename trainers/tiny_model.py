"""A tiny causal language model built from scratch on environment text.

No model hub is reachable in our CI or on air-gapped machines, so the default training run and
the tests build their own model: a byte-level BPE tokenizer trained with ``tokenizers`` on a
corpus of environment text, a ChatML chat template, and a small randomly initialised Qwen2
decoder. Both are saved with ``save_pretrained`` into a normal Hugging Face model directory, so
every tool that loads a local HF model (``AutoModelForCausalLM.from_pretrained``, our
:class:`~agentgym.trainers.hf_policy.HFPolicy`, vLLM) loads it too.

``<action>`` and ``</action>`` are single tokens, so the model can answer in the required format
with few decisions; ``<|im_end|>`` ends a reply (eos) and ``<|endoftext|>`` pads.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = ["init_model", "CHATML_TEMPLATE", "SPECIAL_TOKENS", "collect_env_texts"]

#: The ChatML template (the format of Qwen2 chat models).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
#: Ordinary (non-special) tokens added whole: decoding keeps them, the model emits them in one step.
ACTION_TOKENS = ("<action>", "</action>")


def init_model(
    out_dir: str | os.PathLike[str],
    texts: Sequence[str],
    *,
    vocab_size: int = 2048,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int | None = None,
    max_positions: int = 2048,
    seed: int = 0,
) -> Path:
    """Train a byte-level BPE on ``texts``, build a tiny Qwen2 causal LM, save both to ``out_dir``.

    Args:
        out_dir: the model directory to write (created).
        texts: the tokenizer's training corpus (environment observations, actions, prompts).
        vocab_size: BPE vocabulary size including special tokens (at least 300: 256 bytes plus
            merges and specials).
        hidden_size: model width (64-256 is "tiny"; must be divisible by ``num_heads``).
        num_layers: decoder layers.
        num_heads: attention heads (default: ``hidden_size // 32``, at least 2).
        max_positions: the longest sequence (prompt + reply) the model accepts.
        seed: seeds the weight initialisation.

    Returns:
        ``out_dir`` as a :class:`Path`.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    if not texts:
        raise ValueError("init_model needs a non-empty text corpus to train the tokenizer on")
    if vocab_size < 300:
        raise ValueError(
            f"vocab_size={vocab_size} is too small: use at least 300 (256 bytes + merges)"
        )
    heads = num_heads or max(2, hidden_size // 32)
    if hidden_size % heads:
        raise ValueError(
            f"hidden_size={hidden_size} is not divisible by num_heads={heads}: pick a multiple"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(list(texts), trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        padding_side="left",
        model_max_length=max_positions,
    )
    tok.add_tokens(list(ACTION_TOKENS))
    tok.chat_template = CHATML_TEMPLATE
    tok.save_pretrained(out)

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 4,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        bos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        rope_theta=10000.0,
        use_cache=True,
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
    return out


def collect_env_texts(
    env_ids: Iterable[str],
    *,
    episodes: int = 16,
    seed: int = 0,
    env_kwargs: dict | None = None,
    history_len: int = 2,
    backend: str = "process",
) -> list[str]:
    """A tokenizer corpus: the rendered prompts and replies of expert and random rollouts.

    The texts are the exact chat-formatted prompts the policy will see, so the BPE merges cover
    the system prompt, observations and actions.
    """
    import agentgym
    from agentgym.policies import ExpertPolicy, RandomPolicy, TurnContext, build_messages
    from agentgym.pool import EnvPool
    from agentgym.rollout import rollout

    texts: list[str] = []

    class _Recorder:
        def __init__(self, inner: object) -> None:
            self.inner = inner
            self.name = inner.name  # type: ignore[attr-defined]
            self.needs_expert = inner.needs_expert  # type: ignore[attr-defined]

        def act(self, contexts: Sequence[TurnContext]) -> list:
            outs = self.inner.act(contexts)  # type: ignore[attr-defined]
            for ctx, o in zip(contexts, outs):
                msgs = build_messages(ctx, history_len=history_len)
                texts.append(_render(msgs) + o.response + "<|im_end|>\n")
            return outs

    agentgym.load_plugins()
    for env_id in env_ids:
        with EnvPool(
            env_id, num_envs=min(4, episodes), backend=backend, env_kwargs=env_kwargs or {}
        ) as pool:
            for k, pol in enumerate((ExpertPolicy(seed), RandomPolicy(seed))):
                rollout(
                    pool,
                    _Recorder(pol),
                    num_groups=max(1, episodes // 2),
                    seed=seed + 1000 * k,
                    history_len=history_len,
                    run_id=f"corpus{k}",
                )
    return texts


def _render(messages: list[dict[str, str]]) -> str:
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages) + (
        "<|im_start|>assistant\n"
    )

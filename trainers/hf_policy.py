"""A policy backed by a local Hugging Face causal LM (batched sampling with log-probs).

:class:`HFPolicy` follows :class:`agentgym.policies.Policy`: each turn it renders one prompt per
context with :func:`agentgym.policies.build_messages` and the tokenizer's chat template,
left-pads them into one batch, and decodes all of them together with a KV cache. It records the
log-probability of every sampled token under the sampling distribution (logits divided by the
temperature, as the trainer recomputes them), so PPO can form importance ratios without a second
forward pass. ``PolicyOutput.extras`` carries ``prompt_ids``, ``response_ids`` and ``logprobs``.

With ``context="conversation"`` the episode is instead one token sequence that grows turn by turn
(:mod:`agentgym.trainers.conversation`): the prompt of a turn is the kept conversation so far, the
sampled ids are kept as drawn, and ``extras`` adds ``window_start`` (the first turn still in the
context window) and, when the drift check only logs, ``drift``.

Tools: when the env declares tools (:attr:`agentgym.policies.TurnContext.turn_tools`), the
prompt presents them through the chat template's ``tools`` support, or, for a template without
it, as the Hermes system block (:func:`agentgym.serving.tools.render_chat`, the renderer
``agentgym serve`` uses). A reply's ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``
becomes the env's JSON action ``{"tool": name, **arguments}``
(:func:`agentgym.tools.reply_action`); a malformed call is an invalid turn with
``extras["tool_call_error"]``, which the rollout puts at the top of the next observation.

Loading and decoding are the core's, shared with ``agentgym serve``:
:func:`agentgym.models.load_model` and :func:`agentgym.decoding.decode`, which keeps the log-probs
exact and draws from this policy's private ``torch.Generator``, so a run is reproducible from its
seed and the generator state can be checkpointed. ``load_model`` and ``resolve_device`` are
re-exported here for the code that imports them from this module.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from agentgym.decoding import SamplingParams, decode
from agentgym.models import load_model, resolve_device
from agentgym.policies import PolicyOutput, TurnContext, build_messages
from agentgym.serving.tools import render_chat
from agentgym.tools import reply_action
from agentgym.trainers.conversation import CONTEXTS, DRIFT_CHECKS, Conversation, DriftError
from agentgym.trainers.conversation import log as conversation_log

__all__ = ["HFPolicy", "load_model", "resolve_device"]


class HFPolicy:
    """Batched sampling from a local causal LM; answers parsed as a Hermes tool call (when the
    env declares tools) or ``<action>...</action>``.

    Args:
        model, tokenizer: a loaded causal LM and its tokenizer (see :meth:`from_pretrained`).
        seed: seeds the sampling generator.
        max_new_tokens: reply budget per turn (reasoning + tagged action).
        temperature: sampling temperature; ``0`` is greedy (evaluation).
        history_len: (observation, action) pairs of history in each prompt.
        max_prompt_tokens: longer prompts keep their last tokens (the current observation);
            in conversation mode the oldest whole turns leave the context window first.
        context: ``"stepwise"`` (each turn prompted from scratch) or ``"conversation"`` (the
            episode is one token sequence; ``history_len`` is then unused).
        drift_check: conversation mode: on a mismatch between the kept tokens and a fresh
            rendering, ``"error"`` raises :class:`DriftError`, ``"log"`` logs it once per
            episode and marks the turn, ``"off"`` does not compare.
    """

    needs_expert = False

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        seed: int = 0,
        max_new_tokens: int = 32,
        temperature: float = 1.0,
        history_len: int = 2,
        max_prompt_tokens: int = 1024,
        name: str = "hf",
        context: str = "stepwise",
        drift_check: str = "error",
    ) -> None:
        import torch

        if temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
        if context not in CONTEXTS:
            raise ValueError(f"context={context!r}: use one of {', '.join(CONTEXTS)}")
        if drift_check not in DRIFT_CHECKS:
            raise ValueError(f"drift_check={drift_check!r}: use one of {', '.join(DRIFT_CHECKS)}")
        self.context = context
        self.drift_check = drift_check
        self.model = model
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.history_len = history_len
        self.max_prompt_tokens = max_prompt_tokens
        self.name = name
        self.device = next(model.parameters()).device
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)
        self.eos_ids = {tokenizer.eos_token_id}
        self.pad_id = tokenizer.pad_token_id
        #: weights version recorded with each turn's tokens (the trainer sets its update count)
        self.version: int | None = None

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike[str],
        *,
        seed: int = 0,
        device: str | None = None,
        dtype: Any = None,
        lora: dict[str, Any] | None = None,
        max_new_tokens: int = 32,
        temperature: float = 1.0,
        history_len: int = 2,
        max_prompt_tokens: int = 1024,
        context: str = "stepwise",
        drift_check: str = "error",
    ) -> HFPolicy:
        model, tok = load_model(path, device=device, dtype=dtype, lora=lora)
        model.eval()
        return cls(
            model,
            tok,
            seed=seed,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            history_len=history_len,
            max_prompt_tokens=max_prompt_tokens,
            name=f"hf:{Path(path).name}",
            context=context,
            drift_check=drift_check,
        )

    # -- prompts ------------------------------------------------------------------------------
    def prompt_ids(self, ctx: TurnContext) -> list[int]:
        """Token ids of the chat-formatted prompt of one turn (ends with the assistant header)."""
        return encode_prompt(
            self.tokenizer,
            build_messages(ctx, history_len=self.history_len),
            self.max_prompt_tokens,
            tools=ctx.turn_tools,
        )

    # -- acting -------------------------------------------------------------------------------
    def act(self, contexts: Sequence[TurnContext]) -> list[PolicyOutput]:
        if self.context == "conversation":
            return self._act_conversation(contexts)
        prompts = [self.prompt_ids(c) for c in contexts]
        responses, logprobs = self.generate(prompts)
        version = {} if self.version is None else {"policy_version": self.version}
        return decode_outputs(
            self.tokenizer,
            prompts,
            responses,
            logprobs,
            budget=(self.max_new_tokens, self.eos_ids),
            **version,
        )

    def _act_conversation(self, contexts: Sequence[TurnContext]) -> list[PolicyOutput]:
        """One turn of each episode's conversation: the new observation is appended to the kept
        tokens, the model decodes from them, and its sampled ids are appended as drawn."""
        convs, prompts, notes = [], [], []
        for ctx in contexts:
            conv = ctx.memory.get("conversation")
            if conv is None:
                # The tools of the first turn hold for the episode: they are rendered in the
                # header, which the kept sequence never rewrites.
                conv = ctx.memory["conversation"] = Conversation(
                    self.tokenizer, tools=ctx.turn_tools
                )
            conv.observe(ctx.observation, ctx.turn)
            prompt = conv.prompt(self.max_prompt_tokens)
            note: dict[str, object] = {"window_start": prompt.window_start}
            if prompt.cut:
                note["prompt_cut"] = True
            if self.drift_check != "off":
                note.update(self._check_drift(conv, ctx))
            convs.append(conv)
            prompts.append(prompt.ids)
            notes.append(note)
        responses, logprobs = self.generate(prompts)
        for conv, r in zip(convs, responses):
            conv.reply(r)
        version = {} if self.version is None else {"policy_version": self.version}
        outs = decode_outputs(
            self.tokenizer,
            prompts,
            responses,
            logprobs,
            budget=(self.max_new_tokens, self.eos_ids),
            **version,
        )
        for o, note in zip(outs, notes):
            o.extras.update(note)
        return outs

    def _check_drift(self, conv: Conversation, ctx: TurnContext) -> dict[str, bool]:
        """The drift check of one turn: raise, or log once per episode and mark the turn."""
        found = conv.drift()
        if found is None:
            return {}
        if self.drift_check == "error":
            raise DriftError(found.message())
        if not ctx.memory.get("drift_logged"):
            ctx.memory["drift_logged"] = True
            conversation_log.warning(
                "%s (env %s; logged once per episode)", found.message(), ctx.env_id
            )
        return {"drift": True}

    def generate(self, prompts: Sequence[list[int]]) -> tuple[list[list[int]], list[list[float]]]:
        """Decode a batch of prompts together; response ids (ending with eos when the reply
        ended) and their log-probs under ``logits / temperature``, as the trainer recomputes
        them."""
        params = SamplingParams(self.max_new_tokens, self.temperature)
        out = decode(
            self.model,
            prompts,
            [params] * len(prompts),
            eos_ids=self.eos_ids,
            pad_id=self.pad_id,
            generator=self.generator,
        )
        return out.tokens, out.logprobs


def finish_reasons(
    responses: Sequence[Sequence[int]], max_new_tokens: int, eos_ids: Iterable[int]
) -> list[str]:
    """Why each reply ended, as the OpenAI API says it: ``"length"`` when it used the whole
    token budget without ending in an eos id (cut off, often mid-action), else ``"stop"``."""
    eos = set(eos_ids)
    return [
        "length" if len(r) >= max_new_tokens and (not r or r[-1] not in eos) else "stop"
        for r in responses
    ]


def decode_outputs(
    tokenizer: Any,
    prompts: Sequence[list[int]],
    responses: Sequence[list[int]],
    logprobs: Sequence[list[float]],
    *,
    budget: tuple[int, Iterable[int]] | None = None,
    **extras: Any,
) -> list[PolicyOutput]:
    """Policy outputs of generated replies: decoded text, the action (a Hermes tool call or the
    ``<action>`` tag, :func:`agentgym.tools.reply_action`), and the token ids and log-probs a
    trainer needs (plus ``extras`` in every output's ``extras``). A malformed tool call is an
    invalid turn whose ``extras["tool_call_error"]`` says what was wrong. ``budget``: the
    decoder's ``(max_new_tokens, eos ids)``; with it each reply's :func:`finish_reasons` entry
    is kept as ``extras["finish_reason"]`` (episode statistics count the replies cut by the
    token budget from it)."""
    finishes = None if budget is None else finish_reasons(responses, *budget)
    outs = []
    for i, (p, r, lp) in enumerate(zip(prompts, responses, logprobs)):
        text = tokenizer.decode(r, skip_special_tokens=True)
        action, ok, problem = reply_action(text)
        more: dict[str, Any] = {"tool_call_error": problem} if problem else {}
        if finishes is not None:
            more["finish_reason"] = finishes[i]
        outs.append(
            PolicyOutput(
                action=action,
                response=text,
                format_ok=ok,
                extras={"prompt_ids": p, "response_ids": r, "logprobs": lp, **extras, **more},
            )
        )
    return outs


def encode_prompt(
    tokenizer: Any,
    messages: list[dict[str, str]],
    max_tokens: int,
    *,
    tools: Sequence[dict[str, Any]] | None = None,
) -> list[int]:
    """Chat-template ``messages`` (with the generation prompt, and ``tools`` presented if any)
    into token ids, keeping the tail."""
    text = render_chat(tokenizer, messages, tools)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids[-max_tokens:] if len(ids) > max_tokens else ids

"""The model side of ``agentgym serve``: :class:`ChatEngine` renders and tokenises prompts and
decodes batches; :class:`ReplyText` turns generated tokens into what a client may see.

The engine loads its model with :func:`agentgym.models.load_model` and decodes with
:func:`agentgym.decoding.decode`, the loader and loop the trainer's policy uses, so a model
served here samples as it did in training.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from typing import Any

from agentgym.decoding import SamplingParams, TokenCallback, decode
from agentgym.models import load_model, resolve_device
from agentgym.serving.protocol import Choice, GenerationRequest, RequestError
from agentgym.serving.tools import (
    TOOL_CALL_OPEN,
    parse_tool_calls,
    render_chat,
    template_has_tools,
)

__all__ = ["ChatEngine"]

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------- the model
class ChatEngine:
    """A causal LM + chat tokenizer: renders prompts and decodes batches of sequences."""

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        *,
        device: str | None = None,
        dtype: str | None = None,
    ) -> None:
        self.device = resolve_device(device)
        if dtype is None:  # bfloat16 halves a GPU's memory and time; CPUs are slow at it
            dtype = "bfloat16" if self.device.startswith("cuda") else "float32"
        self.model, self.tokenizer = load_model(model_dir, device=self.device, dtype=dtype)
        self.model.eval()
        template = self.tokenizer.chat_template
        if template is None:
            raise ValueError(
                f"the tokenizer in {model_dir} has no chat_template; set tokenizer.chat_template "
                "(e.g. ChatML) and save it again"
            )
        # A template that never mentions tools would drop them silently; those get the tools as
        # a Hermes-style system block instead (see render_messages).
        self.template_has_tools = template_has_tools(self.tokenizer)
        cfg = self.model.config
        self.max_context = int(getattr(cfg, "max_position_embeddings", 0) or 1 << 30)
        eos: set[int] = set()
        for src in (self.model.generation_config.eos_token_id, self.tokenizer.eos_token_id):
            if isinstance(src, int):
                eos.add(src)
            elif isinstance(src, (list, tuple)):
                eos.update(int(x) for x in src)
        im_end = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        if isinstance(im_end, int) and im_end != self.tokenizer.unk_token_id and im_end >= 0:
            eos.add(im_end)
        self.eos_ids = eos
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else next(iter(eos), 0))
        # Fast tokenizers reconfigure truncation/padding on every call, which is not safe from
        # several connection threads at once ("Already borrowed"): encoding is serialised here,
        # in the connection threads, never in the batching thread.
        self._encode_lock = threading.Lock()
        self._byte_decoder = _byte_level_decoder(self.tokenizer)
        self._token_bytes_cache: dict[int, bytes] = {}
        # No token spells more than this many bytes, so a prompt longer than max_context times
        # it cannot fit: such prompts are refused without spending seconds tokenising them.
        self.max_token_bytes = max(
            (len(self.token_bytes(t)) for t in range(len(self.tokenizer))), default=1
        )
        self._token_bytes_cache.clear()  # filled again by the tokens actually generated

    # -- prompts
    def render_messages(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
    ) -> str:
        """The prompt text: the chat template applied, with ``tools`` presented if given."""
        return render_chat(self.tokenizer, messages, tools)

    def encode(self, req: GenerationRequest) -> list[int]:
        """Tokenise ``req``'s prompt; raise :class:`RequestError` when it does not fit."""
        try:
            text = self.render_messages(req.messages, req.tools)
        except Exception as e:  # a template may raise on a conversation it does not accept
            raise RequestError(
                f"the model's chat template rejected these messages: {type(e).__name__}: {e}",
                param="messages",
            ) from None
        limit = (self.max_context - req.max_tokens) * max(self.max_token_bytes, 1)
        if len(text) > limit or len(text.encode()) > limit:
            raise RequestError(
                f"the prompt has {len(text.encode())} bytes, more than {self.max_context} tokens "
                f"of context minus max_tokens={req.max_tokens} can hold (at most "
                f"{self.max_token_bytes} bytes per token); send a shorter prompt",
                code="context_length_exceeded",
                param="messages",
            )
        with self._encode_lock:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) + req.max_tokens > self.max_context:
            raise RequestError(
                f"the prompt has {len(ids)} tokens and max_tokens is {req.max_tokens}, more than "
                f"the model's context of {self.max_context} tokens; lower max_tokens or send a "
                "shorter prompt (e.g. a smaller history_len)",
                code="context_length_exceeded",
                param="messages",
            )
        return ids

    # -- text of generated tokens
    def text(self, tokens: Sequence[int]) -> str:
        return self.tokenizer.decode(list(tokens), skip_special_tokens=True)

    def token_bytes(self, token: int) -> bytes:
        """The raw bytes of one token (byte-level BPE pieces can be part of a UTF-8 character)."""
        got = self._token_bytes_cache.get(token)
        if got is None:
            piece = self.tokenizer.convert_ids_to_tokens(token)
            if self._byte_decoder is not None and isinstance(piece, str):
                try:
                    got = bytes(self._byte_decoder[c] for c in piece)
                except KeyError:  # an added token written in plain text
                    got = piece.encode()
            else:
                got = self.tokenizer.decode([token]).encode()
            self._token_bytes_cache[token] = got
        return got

    # -- the model
    def decode(
        self,
        prompts: Sequence[Sequence[int]],
        params: Sequence[SamplingParams],
        on_token: TokenCallback,
    ) -> list[str]:
        """Sample a reply for every prompt together; return each row's finish reason.

        The batching worker's one call into the model, through the decoding loop the trainer's
        policy uses too (:func:`agentgym.decoding.decode`), with a generator per row seeded from
        its params and log-probs under the model's own distribution, as OpenAI reports them.
        ``on_token(row, token, logprob, top)`` is called for every sampled token that is not
        end-of-sequence (``top`` holds the ``params[row].top_logprobs`` most likely
        ``(token, logprob)``); it returns True to end the row (a stop string, a cancelled client):
        that row finishes with ``"stop"``. A row also ends at eos (``"stop"``) or after
        ``max_tokens`` (``"length"``).
        """
        out = decode(
            self.model,
            prompts,
            params,
            eos_ids=self.eos_ids,
            pad_id=self.pad_id,
            on_token=on_token,
            scale_logprobs=False,
        )
        return out.finish


def _byte_level_decoder(tokenizer: Any) -> dict[str, int] | None:
    """GPT-2's unicode-to-byte table when the tokenizer is byte-level BPE, else None."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or "ByteLevel" not in type(backend.decoder).__name__ + repr(backend.decoder):
        return None
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    k = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + k)
            k += 1
    return {chr(c): b for b, c in zip(bs, cs)}


# ------------------------------------------------------------------------------- replies
def _held_back(text: str, markers: Sequence[str]) -> int:
    """Length of the longest suffix of ``text`` that could be the start of one of ``markers``."""
    best = 0
    for m in markers:
        for k in range(min(len(m) - 1, len(text)), best, -1):
            if text.endswith(m[:k]):
                best = k
                break
    return best


class ReplyText:
    """Turns a choice's tokens into the text a client may see, now (streaming) or at the end."""

    def __init__(self, engine: ChatEngine, req: GenerationRequest) -> None:
        self.engine = engine
        self.req = req
        self.markers = list(req.stop) + ([TOOL_CALL_OPEN] if req.tools else [])

    def cut(self, text: str) -> tuple[str, bool]:
        """``text`` up to the first stop string; True when one was found."""
        k = min((i for i in (text.find(s) for s in self.req.stop) if i >= 0), default=-1)
        return (text[:k], True) if k >= 0 else (text, False)

    def visible(self, tokens: Sequence[int]) -> str:
        """What can be streamed so far without ever taking it back."""
        text, _ = self.cut(self.engine.text(tokens))
        text = text.rstrip("\ufffd")  # an incomplete UTF-8 character
        if self.req.tools:
            k = text.find(TOOL_CALL_OPEN)
            if k >= 0:
                return text[:k].rstrip()
        text = text[: len(text) - _held_back(text, self.markers)]
        return text.rstrip() if self.req.tools else text

    def final(self, c: Choice) -> tuple[str | None, list[dict[str, Any]] | None, str, int]:
        """``(content, tool_calls, finish_reason, tokens kept)`` of a finished choice."""
        text, stopped = self.cut(self.engine.text(c.tokens))
        reason = "stop" if stopped else (c.finish or "length")
        kept = len(c.tokens)
        if stopped:  # drop the tokens that spelled the stop string from the logprobs
            limit, total, kept = len(text.encode()), 0, 0
            for t in c.tokens:
                total += len(self.engine.token_bytes(t))
                if total > limit:
                    break
                kept += 1
        calls = None
        content: str | None = text
        if self.req.tools:
            content, calls, problem = parse_tool_calls(text)
            if calls:
                reason = "tool_calls"
            elif problem:
                log.info("reply kept as plain content: %s", problem)
        return content, calls, reason, kept

    def logprob_items(self, c: Choice, start: int, end: int) -> list[dict[str, Any]]:
        items = []
        for t, lp, top in zip(c.tokens[start:end], c.logprobs[start:end], c.tops[start:end]):
            items.append(
                {
                    **self._token_item(t, lp),
                    "top_logprobs": [self._token_item(a, alp) for a, alp in top],
                }
            )
        return items

    def _token_item(self, t: int, lp: float) -> dict[str, Any]:
        raw = self.engine.token_bytes(t)
        return {"token": raw.decode("utf-8", "replace"), "logprob": lp, "bytes": list(raw)}


class StopCheck:
    """Stop-string detection on the decoded tail of a growing reply."""

    def __init__(self, engine: ChatEngine, stops: list[str]) -> None:
        self.engine = engine
        self.stops = stops

    def hit(self, tokens: list[int]) -> bool:
        if not self.stops:
            return False
        tail = self.engine.text(tokens[-16:])
        return any(s in tail for s in self.stops)

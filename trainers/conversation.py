"""Conversation mode: an episode is one token sequence in the model's chat template.

In step-wise mode (the default) every turn is prompted from scratch: task, the last ``H`` turns
as text, the current observation. In conversation mode the episode is one growing conversation
-- system prompt, the task with the first observation, then the model's replies and the env's
answers alternating -- kept as **token ids**:

* the model's sampled ids (the end-of-turn token included) are appended exactly as they were
  generated, never re-tokenized from their text: a byte-level BPE can split the same text in
  several ways, and the loss must score the tokens the model actually drew;
* an env message is appended through the template's *incremental rendering*: the conversation is
  rendered with the new message and without it, and the tokens of the difference are appended
  (the template's own end-of-turn text after a reply, e.g. ChatML's ``"\\n"`` after
  ``<|im_end|>``, comes with it).

The **drift check** (:meth:`Conversation.drift`) compares, each turn, the kept sequence with a
fresh ``apply_chat_template`` of the same conversation. Ids that differ while the texts agree are
the model's own tokenization of its replies (no drift: that is why the ids are kept); a
different *text* means the template renders earlier turns differently once the conversation
grows (templates that drop the reasoning of past replies, or trim their whitespace), so the
model would be trained on a context that no fresh rendering reproduces.

**Context window.** When the prompt grows past ``max_prompt_tokens``, the oldest whole turns
leave it: the header (system prompt, task and first observation) always stays, then the turns
from ``window_start`` on (each the env's message and the model's reply). The kept sequence is
rebuilt from the same pieces (the replies' sampled ids again), ``window_start`` is recorded with
every turn, and the drift check compares against the windowed conversation.

Training samples stay one per turn: the prompt is the kept prefix and the response that turn's
sampled ids, so every credit estimator and loss sees the same turn boundaries as in step-wise
mode. That costs O(T^2) tokens for T turns; one packed sequence per episode with a mask over the
model's tokens would be the later optimisation.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

from agentgym.core import Observation
from agentgym.policies import SYSTEM_PROMPT, TOOLS_SYSTEM_PROMPT, answer_instruction
from agentgym.serving.tools import render_chat

__all__ = [
    "CONTEXTS",
    "DRIFT_CHECKS",
    "CONVERSATION_SYSTEM_PROMPT",
    "CONVERSATION_TOOLS_SYSTEM_PROMPT",
    "Conversation",
    "Drift",
    "DriftError",
    "Prompt",
    "observation_message",
]

CONTEXTS = ("stepwise", "conversation")
DRIFT_CHECKS = ("error", "log", "off")

log = logging.getLogger(__name__)

_SEES = (
    "Each turn you see the task, your recent history and the current observation.",
    "The conversation holds the task, your earlier replies and what the environment answered.",
)
CONVERSATION_SYSTEM_PROMPT = SYSTEM_PROMPT.replace(*_SEES)
#: The system prompt of an episode whose env declares tools.
CONVERSATION_TOOLS_SYSTEM_PROMPT = TOOLS_SYSTEM_PROMPT.replace(*_SEES)

#: A neutral exchange used to learn how a template renders one more message when the kept text
#: no longer matches a fresh rendering (after a drift), see :meth:`Conversation._piece`.
_PROBE = [
    {"role": "system", "content": "s"},
    {"role": "user", "content": "u"},
    {"role": "assistant", "content": "a"},
]


class DriftError(RuntimeError):
    """The kept tokens of a conversation no longer match a fresh rendering of it."""


def observation_message(
    obs: Observation, *, first: bool, tools: Sequence[dict[str, Any]] | None = None
) -> str:
    """The env's message of one turn: the task (first turn only), the observation, the
    admissible actions and the answer format (the step-wise prompt's pieces, without history):
    a tool call when the episode has ``tools``."""
    parts = []
    if first and obs.task:
        parts.append(f"Task: {obs.task}")
    parts.append(f"Observation:\n{obs.text}")
    if obs.admissible_actions:
        parts.append("Admissible actions: " + ", ".join(obs.admissible_actions))
    parts.append(answer_instruction(tools))
    return "\n\n".join(parts)


@dataclasses.dataclass(frozen=True)
class Drift:
    """Where the kept conversation and a fresh rendering first differ (character offset in the
    rendered text) and a snippet of each from there."""

    turn: int
    offset: int
    kept: str
    fresh: str

    def message(self) -> str:
        return (
            f"conversation drift at turn {self.turn}: the kept tokens read {self.kept!r} where a "
            f"fresh rendering of the chat template reads {self.fresh!r} (character {self.offset}); "
            "the template renders earlier turns differently as the conversation grows. Use "
            "--context stepwise, or --drift-check log to train on the kept tokens anyway"
        )


@dataclasses.dataclass(frozen=True)
class Prompt:
    """What the model is fed for one turn: token ids, the first turn still in the window, and
    whether even the smallest window was too long (its oldest tokens were cut)."""

    ids: list[int]
    window_start: int
    cut: bool = False


@dataclasses.dataclass
class _Turn:
    user: str
    reply: list[int] | None = None


class Conversation:
    """One episode as one token sequence: the messages, and the ids the model saw and drew.

    Call :meth:`observe` with each new observation, :meth:`prompt` for the ids to decode from,
    then :meth:`reply` with the sampled ids. ``ids`` / ``text`` hold the kept sequence up to the
    end of the last message (the generation prompt is added by :meth:`prompt`).

    ``tools`` (OpenAI function schemas) are presented in every rendering, through the template's
    ``tools`` support or a Hermes system block (:func:`agentgym.serving.tools.render_chat`); they
    live in the header, so they are fixed for the episode. With tools the default system prompt
    and each env message ask for a tool call.
    """

    def __init__(
        self,
        tokenizer: Any,
        *,
        system_prompt: str | None = None,
        tools: Sequence[dict[str, Any]] | None = None,
    ) -> None:
        self.tok = tokenizer
        self.tools = tuple(tools) if tools else None
        if system_prompt is None:
            system_prompt = (
                CONVERSATION_TOOLS_SYSTEM_PROMPT if self.tools else CONVERSATION_SYSTEM_PROMPT
            )
        self.system_prompt = system_prompt
        self.turns: list[_Turn] = []
        self.window_start = 0
        eos = tokenizer.eos_token_id
        self.eos_ids = {eos} if isinstance(eos, int) else set(eos or ())
        self._eos_text = tokenizer.eos_token or ""
        self._rebuild()

    # -- the conversation ---------------------------------------------------------------------
    def observe(self, obs: Observation, turn: int | None = None) -> None:
        """Add the env's message of turn ``turn`` (default: the next one). A turn asked again
        (a retried policy call) replaces the pending one rather than adding a second."""
        turn = len(self.turns) if turn is None else turn
        if turn < len(self.turns):
            del self.turns[turn:]
            self.window_start = min(self.window_start, turn)
            self.turns.append(_Turn(self._message(obs, turn)))
            self._rebuild()
            return
        self.turns.append(_Turn(self._message(obs, turn)))
        self._add_user(self.turns[-1].user)

    def _message(self, obs: Observation, turn: int) -> str:
        return observation_message(obs, first=turn == 0, tools=self.tools)

    def reply(self, ids: Sequence[int]) -> None:
        """Append the model's sampled ids to the pending turn, exactly as drawn."""
        if not self.turns or self.turns[-1].reply is not None:
            raise RuntimeError("Conversation.reply needs a pending turn: call observe first")
        self.turns[-1].reply = list(ids)
        self._add_reply(self.turns[-1].reply)

    def messages(self) -> list[dict[str, str]]:
        """The chat messages of the window (what a fresh rendering renders)."""
        out = [{"role": "system", "content": self.system_prompt}]
        for t, with_reply in self._window():
            out.append({"role": "user", "content": t.user})
            if with_reply and t.reply is not None:
                out.append({"role": "assistant", "content": self._content(t.reply)})
        return out

    def _window(self) -> list[tuple[_Turn, bool]]:
        """The turns in the window and whether their reply is: turn 0's env message (the task
        and first observation) always, then every turn from ``window_start`` on."""
        return [
            (t, k >= self.window_start)
            for k, t in enumerate(self.turns)
            if k == 0 or k >= self.window_start
        ]

    # -- prompts and the window ---------------------------------------------------------------
    def prompt(self, max_prompt_tokens: int) -> Prompt:
        """The ids to decode the pending turn from: the kept sequence plus the generation
        prompt. Past ``max_prompt_tokens`` the oldest whole turns leave the window (the header
        stays); if even the header and this turn are too long, the oldest tokens are cut."""
        ids = self.ids + self._encode(self._generation_prompt())
        last = len(self.turns) - 1
        while len(ids) > max_prompt_tokens and self.window_start < last:
            self.window_start = max(self.window_start + 1, 1)
            self._rebuild()
            ids = self.ids + self._encode(self._generation_prompt())
        if len(ids) > max_prompt_tokens:
            return Prompt(ids[-max_prompt_tokens:], self.window_start, cut=True)
        return Prompt(ids, self.window_start)

    def drift(self) -> Drift | None:
        """Compare the kept sequence (with the generation prompt) with a fresh rendering of the
        windowed conversation; ``None`` when they agree."""
        fresh = self._render(self.messages(), True)
        ids = self.ids + self._encode(self._generation_prompt())
        if ids == self._encode(fresh):
            return None
        kept = self.tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if kept == fresh:
            return None  # the model's own tokenization of its replies: kept on purpose
        at = next(
            (i for i, (a, b) in enumerate(zip(kept, fresh)) if a != b), min(len(kept), len(fresh))
        )
        lo = max(0, at - 20)
        return Drift(len(self.turns) - 1, at, kept[lo : at + 40], fresh[lo : at + 40])

    # -- incremental rendering ----------------------------------------------------------------
    def _rebuild(self) -> None:
        """Build the kept sequence of the window from its pieces (replies: their sampled ids)."""
        self.ids: list[int] = []
        self.text = ""
        self._msgs: list[dict[str, str]] = [{"role": "system", "content": self.system_prompt}]
        for t, with_reply in self._window():
            self._add_user(t.user)
            if with_reply and t.reply is not None:
                self._add_reply(t.reply)

    def _add_user(self, content: str) -> None:
        new = {"role": "user", "content": content}
        piece = self._piece(new)
        self._msgs.append(new)
        self.ids += self._encode(piece)
        self.text += piece

    def _add_reply(self, ids: list[int]) -> None:
        gen = self._generation_prompt()
        self.ids += self._encode(gen) + ids
        self.text += gen + self.tok.decode(
            ids, skip_special_tokens=False, clean_up_tokenization_spaces=False
        )
        self._msgs.append({"role": "assistant", "content": self._content(ids)})

    def _piece(self, message: dict[str, str]) -> str:
        """The text a template adds after the kept text for one more message: the difference of
        the renderings with and without it. When the kept text is no rendering's prefix any more
        (a drift), the message is rendered as it would follow a neutral exchange, after the
        template's end-of-reply text (minus an end-of-turn token the model drew itself)."""
        full = self._render([*self._msgs, message], False)
        if full.startswith(self.text):
            return full[len(self.text) :]
        after_reply = self._msgs[-1]["role"] == "assistant"
        probe = _PROBE if after_reply else _PROBE[:2]
        base = self._render(probe, False)
        more = self._render([*probe, message], False)
        delta = more[len(base) :] if more.startswith(base) else more
        if not after_reply:
            return delta
        before = self._render(probe[:-1], True)
        closure = base[len(before) + len("a") :] if base.startswith(before + "a") else ""
        if self._eos_text and self.text.endswith(self._eos_text):
            closure = closure.removeprefix(self._eos_text)
        return closure + delta

    def _generation_prompt(self) -> str:
        full = self._render(self._msgs, True)
        if full.startswith(self.text):
            return full[len(self.text) :]
        plain = self._render(self._msgs, False)
        return full[len(plain) :] if full.startswith(plain) else ""

    def _content(self, ids: list[int]) -> str:
        """A reply's message content: its text without the end-of-turn token (which the
        template adds); other special tokens stay, as the model drew them."""
        body = ids[:-1] if ids and ids[-1] in self.eos_ids else ids
        return self.tok.decode(body, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def _render(self, messages: list[dict[str, str]], generation: bool) -> str:
        return render_chat(self.tok, messages, self.tools, add_generation_prompt=generation)

    def _encode(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"]) if text else []

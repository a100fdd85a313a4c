"""Supervised warm start on expert trajectories.

The env's expert (:class:`agentgym.policies.ExpertPolicy`) plays episodes through the normal
:class:`~agentgym.pool.EnvPool` + :func:`~agentgym.rollout.rollout` path. A recording wrapper
keeps, for every turn where the expert knew a move, the chat messages the policy would see
(:func:`agentgym.policies.build_messages`, same history length) and the reply
``<action>a</action>``. With ``context="conversation"`` the messages are instead the episode's
conversation so far (system prompt, the env's messages and the moves played as replies), the
prompt a conversation-mode policy sees (:mod:`agentgym.trainers.conversation`). Training is next-token cross-entropy on the reply tokens only (the
prompt's labels are ``-100``), averaged over all reply tokens of a batch, with the same
micro-batching rule as the RL loss (normalise by the global token count).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence
from typing import Any

from agentgym.policies import ExpertPolicy, PolicyOutput, TurnContext, build_messages

__all__ = [
    "SFTExample",
    "collect_expert_pairs",
    "encode_example",
    "sft_train",
    "IGNORE_INDEX",
]

IGNORE_INDEX = -100


@dataclasses.dataclass(frozen=True)
class SFTExample:
    """One supervised turn: ``input_ids`` = prompt + reply, ``labels`` = -100 on the prompt."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]

    @property
    def num_targets(self) -> int:
        return sum(lab != IGNORE_INDEX for lab in self.labels)


class _PromptingExpert:
    """ExpertPolicy whose outputs carry the turn's chat messages (``extras["messages"]``) and the
    expert's move (``extras["label"]``), so the rollout stores each prompt next to its label.

    With ``explore > 0`` the move actually played is, with that probability, a random admissible
    action instead of the expert's (the label stays the expert's move from the state reached).
    This is noise injection in the spirit of DART (Laskey et al., 2017): the data then covers
    the states a learner reaches after a mistake, and how to recover from them, not only the
    expert's own path.
    """

    needs_expert = True

    def __init__(
        self, history_len: int, seed: int, explore: float = 0.0, context: str = "stepwise"
    ) -> None:
        self.inner = ExpertPolicy(seed)
        self.name = "expert"
        self.history_len = history_len
        self.explore = explore
        self.context = context
        self.rng = random.Random(seed + 1)

    def act(self, contexts: Sequence[TurnContext]) -> list[PolicyOutput]:
        outs = self.inner.act(contexts)
        for ctx, o in zip(contexts, outs):
            o.extras["messages"] = self._messages(ctx)
            o.extras["label"] = o.action
            acts = ctx.observation.admissible_actions
            if self.explore > 0 and acts and self.rng.random() < self.explore:
                o.action = self.rng.choice(acts)
                o.response = f"<action>{o.action}</action>"
                o.extras["explored"] = True
            if self.context == "conversation":  # the move played is the reply that stays
                ctx.memory["messages"].append({"role": "assistant", "content": o.response})
        return outs

    def _messages(self, ctx: TurnContext) -> list[dict[str, str]]:
        """The prompt's messages: step-wise, or the conversation so far (kept in the episode's
        ``ctx.memory``) with this turn's env message.

        Rendered without the env's tools: the labels are the expert's text moves in
        ``<action>`` tags (which envs with tools keep accepting), and a prompt asking for a tool
        call would contradict them. Turning expert moves into tool calls needs each env's
        mapping from text to call (docs/conversation.md, "Tools")."""
        ctx = dataclasses.replace(
            ctx, tools=None, observation=dataclasses.replace(ctx.observation, tools=None)
        )
        if self.context != "conversation":
            return build_messages(ctx, history_len=self.history_len)
        from agentgym.trainers.conversation import CONVERSATION_SYSTEM_PROMPT, observation_message

        msgs = ctx.memory.setdefault(
            "messages", [{"role": "system", "content": CONVERSATION_SYSTEM_PROMPT}]
        )
        msgs.append(
            {"role": "user", "content": observation_message(ctx.observation, first=not ctx.turn)}
        )
        return list(msgs)


def collect_expert_pairs(
    env_id: str,
    *,
    episodes: int,
    seed: int = 0,
    env_kwargs: dict[str, Any] | None = None,
    history_len: int = 2,
    num_envs: int = 4,
    backend: str = "process",
    only_won: bool = True,
    explore: float = 0.0,
    context: str = "stepwise",
) -> tuple[list[tuple[list[dict[str, str]], str]], float]:
    """Roll out the expert; return its (messages, expert action) pairs and its success rate.

    Turns where the expert had no move (the fallback acted) are dropped; with ``only_won``, so
    are the turns of episodes the expert did not win. ``explore``: probability of playing a
    random admissible action instead of the expert's at each turn (labels stay the expert's;
    see :class:`_PromptingExpert`); then ``only_won`` does not apply, since every label is the
    expert's move from a state it still knew how to win from, and the success rate reported is
    that of the noisy expert. ``context``: the prompts of a ``stepwise`` or ``conversation``
    policy.
    """
    from agentgym.pool import EnvPool
    from agentgym.rollout import rollout

    if not 0.0 <= explore < 1.0:
        raise ValueError(f"explore must be in [0, 1), got {explore}")
    policy = _PromptingExpert(history_len, seed, explore, context)
    with EnvPool(
        env_id, num_envs=min(num_envs, episodes), backend=backend, env_kwargs=env_kwargs or {}
    ) as pool:
        trajs = rollout(
            pool,
            policy,
            num_groups=episodes,
            group_size=1,
            seed=seed,
            history_len=history_len,
            run_id="sft",
        )
    trajs.sort(key=lambda t: int(t.id.rsplit("-g", 1)[1].split("-")[0]))
    pairs = []
    for t in trajs:
        if only_won and not t.won and explore == 0:
            continue
        for turn in t.turns:
            extras = turn.policy
            if "messages" in extras and not extras.get("expert_missing"):
                pairs.append((extras["messages"], extras.get("label", turn.action)))
    won = sum(t.won for t in trajs) / max(len(trajs), 1)
    return pairs, won


def encode_example(
    tokenizer: Any, messages: list[dict[str, str]], action: str, *, max_prompt_tokens: int = 1024
) -> SFTExample:
    """Tokenise one turn: prompt (chat template + generation prompt) then ``<action>a</action>``
    and eos; labels copy the reply ids and mask the prompt with -100."""
    from agentgym.trainers.hf_policy import encode_prompt

    prompt = encode_prompt(tokenizer, messages, max_prompt_tokens)
    reply = tokenizer(f"<action>{action}</action>", add_special_tokens=False)["input_ids"]
    reply = list(reply) + [tokenizer.eos_token_id]
    return SFTExample(
        input_ids=tuple(prompt + reply), labels=tuple([IGNORE_INDEX] * len(prompt) + reply)
    )


def sft_loss(model: Any, batch: Sequence[SFTExample], pad_id: int, num_targets: float) -> Any:
    """Summed reply-token NLL of ``batch`` divided by ``num_targets`` (the global count).

    The labelled tokens of an example are a suffix (the reply and eos), so rows are left-padded
    and scored by :func:`~agentgym.trainers.losses.token_logprobs`, the RL loss's path: only the
    reply positions reach the output projection and the softmax (and, for Llama/Qwen2 models,
    the last decoder layer), instead of a ``[B, L, vocab]`` logits tensor over every prompt
    token. For a 49k-token vocabulary that tensor, its float copy and their gradients were most
    of SFT's memory and a fifth of its FLOPs."""
    import torch

    from agentgym.trainers.losses import token_logprobs

    device = next(model.parameters()).device
    width = max(len(e.input_ids) for e in batch)
    keep = max(e.num_targets for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    att = torch.zeros((len(batch), width), dtype=torch.long)
    mask = torch.zeros((len(batch), keep), dtype=torch.float32)
    for i, e in enumerate(batch):
        n, r = len(e.input_ids), e.num_targets
        if any(lab == IGNORE_INDEX for lab in e.labels[n - r :]):
            raise ValueError("an SFT example's labelled tokens must be the end of its input_ids")
        ids[i, width - n :] = torch.tensor(e.input_ids)
        att[i, width - n :] = 1
        mask[i, keep - r :] = 1.0
    ids, att, mask = ids.to(device), att.to(device), mask.to(device)
    logp, _ = token_logprobs(model, ids, att, ids[:, width - keep :])
    return -(logp * mask).sum() / max(num_targets, 1.0)


def sft_train(
    model: Any,
    examples: Sequence[SFTExample],
    *,
    pad_id: int,
    epochs: int = 3,
    lr: float = 1e-3,
    batch_size: int = 16,
    micro_batch_size: int = 8,
    max_grad_norm: float = 1.0,
    seed: int = 0,
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train ``model`` on ``examples``; return the loss of every optimizer step."""
    import torch

    from agentgym.trainers.losses import make_optimizer

    if not examples:
        raise ValueError("no SFT examples: the expert produced no moves (does the env have one?)")
    rng = random.Random(seed)
    opt = make_optimizer(model, lr=lr, weight_decay=0.0)
    params = [p for p in model.parameters() if p.requires_grad]
    total_steps = epochs * -(-len(examples) // batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / max(1, total_steps // 10)) * max(0.05, 1 - s / total_steps),
    )
    model.train()
    losses: list[float] = []
    step = 0
    for _ in range(epochs):
        order = list(range(len(examples)))
        rng.shuffle(order)
        for start in range(0, len(order), batch_size):
            batch = [examples[i] for i in order[start : start + batch_size]]
            n = float(sum(e.num_targets for e in batch))
            total = 0.0
            for m in range(0, len(batch), micro_batch_size):
                loss = sft_loss(model, batch[m : m + micro_batch_size], pad_id, n)
                loss.backward()
                total += float(loss.detach())
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(total)
            step += 1
            if on_step is not None:
                on_step(step, total)
    model.eval()
    return losses

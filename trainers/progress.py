"""SPA's stepwise progress estimator (Wang et al. 2025, "SPA-RL: Reinforcing LLM Agents via
Stepwise Progress Attribution", Sec. 3.2).

The estimator is a :class:`~agentgym.trainers.value.TurnScorer` (a copy of the policy's backbone
plus a scalar head) read at the last token of each turn's prompt + response. Its output on turn t
is the turn's *contribution* ``c_t``. It is trained so that the contributions of an episode add
up to the episode's final reward ``R`` (MSE over episodes, eq. 4 of the paper)::

    L = mean_episodes ( sum_t c_t - R )^2

Nothing ties an individual ``c_t`` to a target: the split of ``R`` across turns is learned from
many episodes, so a turn whose kind of action tends to appear in successful episodes gets a large
share and a useless one gets little.

:meth:`ProgressEstimator.annotate` puts the contributions into ``CreditBatch.extras["progress"]``,
where ``compute_advantages("spa", ...)`` reads them as ``c_t`` (together with the grounding
signal ``g_t``). Unlike the released SPA code, which replaces ``c_t`` with a leave-one-out
final-reward baseline at the end, ``c_t`` is used as predicted.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from agentgym.trainers.value import TurnScorer, collate_sequences, turn_token_ids

if TYPE_CHECKING:
    from agentgym.trainers.credit import CreditBatch
    from agentgym.trajectory import Trajectory

__all__ = ["ProgressConfig", "ProgressEstimator", "final_rewards"]

_TARGETS = ("won", "return")


@dataclasses.dataclass(frozen=True)
class ProgressConfig:
    """Settings of the progress estimator.

    Attributes:
        lr: AdamW learning rate (backbone and head).
        epochs: passes over the episodes given to :meth:`ProgressEstimator.fit`.
        episodes_per_step: episodes per optimizer step (all their turns in one forward pass).
        target: the final reward the contributions must add up to: ``"won"`` (1 if the episode
            was won, else 0; the paper's success signal) or ``"return"`` (the episode's summed
            env reward).
        max_grad_norm: gradient clipping norm.
        replay: episodes kept from earlier iterations and mixed into each fit (0: only the
            current iteration's episodes). A buffer keeps the estimator from chasing one batch.
    """

    lr: float = 1e-3
    epochs: int = 1
    episodes_per_step: int = 8
    target: str = "won"
    max_grad_norm: float = 1.0
    replay: int = 256

    def __post_init__(self) -> None:
        if self.target not in _TARGETS:
            raise ValueError(f"ProgressConfig.target={self.target!r}: use one of {_TARGETS}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"ProgressConfig.lr={self.lr} must be a positive number, e.g. 1e-3")
        if self.epochs < 1 or self.episodes_per_step < 1 or self.replay < 0:
            raise ValueError("ProgressConfig: epochs, episodes_per_step >= 1 and replay >= 0")


def final_rewards(trajs: Sequence[Trajectory], target: str = "won") -> np.ndarray:
    """The regression target of each episode: ``won`` as 0/1, or its summed reward."""
    if target == "won":
        return np.array([float(t.won) for t in trajs])
    if target == "return":
        return np.array([float(sum(u.reward for u in t.turns)) for t in trajs])
    raise ValueError(f"target={target!r}: use one of {_TARGETS}")


class ProgressEstimator:
    """Per-turn contributions ``c_t`` whose episode sum regresses to the final reward."""

    def __init__(
        self, scorer: TurnScorer, config: ProgressConfig, *, pad_id: int, seed: int = 0
    ) -> None:
        self.scorer = scorer
        self.config = config
        self.pad_id = pad_id
        self.rng = random.Random(seed)
        self.optimizer = torch.optim.AdamW(scorer.parameters(), lr=config.lr)
        self._buffer: list[tuple[tuple[tuple[int, ...], ...], float]] = []

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        config: ProgressConfig,
        *,
        pad_id: int,
        device: Any = "cpu",
        seed: int = 0,
    ) -> ProgressEstimator:
        """An estimator whose backbone starts from the local HF model at ``path``."""
        return cls(
            TurnScorer.from_pretrained(path, device=device), config, pad_id=pad_id, seed=seed
        )

    # -- inference ----------------------------------------------------------------------------
    def contributions_of(self, episodes: Sequence[Sequence[Sequence[int]]]) -> list[np.ndarray]:
        """``c_t`` for each turn: ``episodes[i][t]`` = token ids of turn t (prompt + reply)."""
        flat = [s for ep in episodes for s in ep]
        scores = self.scorer.score(flat, pad_id=self.pad_id) if flat else np.zeros(0)
        out, k = [], 0
        for ep in episodes:
            out.append(scores[k : k + len(ep)])
            k += len(ep)
        return out

    def contributions(self, trajs: Sequence[Trajectory]) -> list[np.ndarray]:
        return self.contributions_of([turn_token_ids(t, with_response=True) for t in trajs])

    def annotate(self, batch: CreditBatch, trajs: Sequence[Trajectory]) -> CreditBatch:
        """A copy of ``batch`` (built from ``trajs``, same order) with ``extras["progress"]``."""
        if len(batch) != len(trajs):
            raise ValueError(f"batch has {len(batch)} trajectories but {len(trajs)} were given")
        return batch.replace(extras={**batch.extras, "progress": self.contributions(trajs)})

    # -- training -----------------------------------------------------------------------------
    def loss_on(
        self, episodes: Sequence[Sequence[Sequence[int]]], targets: Sequence[float]
    ) -> torch.Tensor:
        """``mean_i (sum_t c_{i,t} - R_i)^2`` over ``episodes`` (differentiable)."""
        flat = [s for ep in episodes for s in ep]
        dev = self.scorer.device
        ep_index = torch.tensor(
            [i for i, ep in enumerate(episodes) for _ in ep], dtype=torch.long, device=dev
        )
        ids, att = collate_sequences(flat, self.pad_id, dev)
        c = self.scorer(ids, att)
        sums = torch.zeros(len(episodes), device=dev, dtype=c.dtype).index_add(0, ep_index, c)
        tgt = torch.tensor(list(targets), device=dev, dtype=c.dtype)
        return ((sums - tgt) ** 2).mean()

    def mse(self, episodes: Sequence[Sequence[Sequence[int]]], targets: Sequence[float]) -> float:
        """The regression loss without gradients (for monitoring)."""
        sums = np.array([c.sum() for c in self.contributions_of(episodes)])
        return float(np.mean((sums - np.asarray(targets, dtype=np.float64)) ** 2))

    def fit_on(
        self, episodes: Sequence[Sequence[Sequence[int]]], targets: Sequence[float]
    ) -> dict[str, float]:
        """Train on ``(episode turns, final reward)`` pairs plus the replay buffer.

        Episodes without turns are skipped. Returns the mean loss of the first and last epoch.
        """
        cfg = self.config
        new = [
            (tuple(tuple(s) for s in ep), float(r))
            for ep, r in zip(episodes, targets)
            if len(ep) > 0
        ]
        data = new + self._buffer
        if cfg.replay:
            self._buffer = (new + self._buffer)[: cfg.replay]
        if not data:
            return {"progress_loss_first": 0.0, "progress_loss": 0.0}
        self.scorer.train()
        epoch_losses = []
        for _ in range(cfg.epochs):
            order = list(range(len(data)))
            self.rng.shuffle(order)
            total, n = 0.0, 0
            for start in range(0, len(order), cfg.episodes_per_step):
                mb = [data[i] for i in order[start : start + cfg.episodes_per_step]]
                loss = self.loss_on([m[0] for m in mb], [m[1] for m in mb])
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.scorer.parameters(), cfg.max_grad_norm)
                self.optimizer.step()
                total += float(loss.detach()) * len(mb)
                n += len(mb)
            epoch_losses.append(total / n)
        self.scorer.eval()
        return {"progress_loss_first": epoch_losses[0], "progress_loss": epoch_losses[-1]}

    def fit(self, trajs: Sequence[Trajectory]) -> dict[str, float]:
        """Train on finished trajectories (targets from ``config.target``)."""
        episodes = [turn_token_ids(t, with_response=True) for t in trajs]
        return self.fit_on(episodes, final_rewards(trajs, self.config.target).tolist())

    def state_dict(self) -> dict[str, Any]:
        return {
            "scorer": self.scorer.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "buffer": self._buffer,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scorer.load_state_dict(state["scorer"])
        self.optimizer.load_state_dict(state["optimizer"])
        self._buffer = list(state.get("buffer", []))

"""Stateful credit pieces: the parts of credit assignment that hold a model or a history.

Most estimators are pure functions of a :class:`~agentgym.trainers.credit.CreditBatch`. Some need
state that lives across iterations; each such state is a *piece* with one interface,
:class:`CreditPiece`, so the training loop calls every piece the same way and knows none by name:

* :class:`CriticPiece` (estimator ``ppo``): a turn-level value model. ``annotate`` fills
  ``batch.values`` with ``V(s_t)``; ``update`` regresses it on the GAE lambda-returns.
* :class:`ProgressPiece` (estimator ``spa``): SPA's progress estimator. ``annotate`` fits it on the
  iteration's finished episodes, then fills ``batch.extras["progress"]`` with ``c_t``.
* :class:`EntropyPiece` (loss term ``epo``): EPO's per-turn-index entropy history. It adds the EPO
  loss term with this step's phase weights; the term feeds the history after the update.

Which pieces a run builds is read from :data:`ESTIMATOR_PIECES` and :data:`TERM_PIECES`: an
estimator that needs its own model is one ``register_estimator`` in ``credit.py`` plus one piece
class and one line here.

Under torchrun every rank calls its pieces with the trajectories of ALL ranks (gathered by the
loop, in rank order), so the replicated models see the same data in the same order and stay
identical, as in one process; rank 0's state is the one checkpointed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "CreditPiece",
    "CriticPiece",
    "ProgressPiece",
    "EntropyPiece",
    "PieceContext",
    "ESTIMATOR_PIECES",
    "TERM_PIECES",
    "build_pieces",
]


class CreditPiece(Protocol):
    """A stateful part of credit assignment. ``name`` keys its state in checkpoints."""

    name: str

    def annotate(self, batch: Any, trajs: Sequence[Any]) -> tuple[Any, dict[str, float]]:
        """Before advantages: a copy of ``batch`` (built from ``trajs``) with what the estimator
        needs filled in, and metrics."""
        ...

    def loss_terms(self, step: int, total_steps: int) -> tuple[list[Any], dict[str, float]]:
        """Extra policy-loss terms for this step, and metrics."""
        ...

    def update(self, batch: Any, trajs: Sequence[Any]) -> dict[str, float]:
        """After the policy update: learn from this iteration; metrics."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class _NoTerms:
    def loss_terms(self, step: int, total_steps: int) -> tuple[list[Any], dict[str, float]]:
        return [], {}


@dataclasses.dataclass
class CriticPiece(_NoTerms):
    """Turn-level PPO's critic (:class:`~agentgym.trainers.value.TurnCritic`)."""

    critic: Any
    credit_cfg: Any
    name: str = "critic"
    _old_values: list[Any] = dataclasses.field(default_factory=list, repr=False)

    def annotate(self, batch: Any, trajs: Sequence[Any]) -> tuple[Any, dict[str, float]]:
        self._old_values = self.critic.values(trajs)
        return batch.replace(values=self._old_values), {}

    def update(self, batch: Any, trajs: Sequence[Any]) -> dict[str, float]:
        from agentgym.trainers.credit import turn_returns

        return self.critic.update(trajs, turn_returns(batch, self.credit_cfg), self._old_values)

    def state_dict(self) -> dict[str, Any]:
        return self.critic.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.critic.load_state_dict(state)


@dataclasses.dataclass
class ProgressPiece(_NoTerms):
    """SPA's progress estimator (:class:`~agentgym.trainers.progress.ProgressEstimator`). It is
    fitted on the iteration's episodes BEFORE their contributions are read (as in the paper)."""

    estimator: Any
    name: str = "progress_estimator"

    def annotate(self, batch: Any, trajs: Sequence[Any]) -> tuple[Any, dict[str, float]]:
        metrics = self.estimator.fit(trajs)
        return self.estimator.annotate(batch, trajs), metrics

    def update(self, batch: Any, trajs: Sequence[Any]) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return self.estimator.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.estimator.load_state_dict(state)


@dataclasses.dataclass
class EntropyPiece:
    """EPO's entropy history and phase schedule (:mod:`agentgym.trainers.epo`)."""

    epo_cfg: Any
    history: Any
    name: str = "entropy_history"

    def annotate(self, batch: Any, trajs: Sequence[Any]) -> tuple[Any, dict[str, float]]:
        return batch, {}

    def loss_terms(self, step: int, total_steps: int) -> tuple[list[Any], dict[str, float]]:
        from agentgym.trainers.epo import phase_coefs
        from agentgym.trainers.terms import EPOTerm

        lam, beta, _ = phase_coefs(step, total_steps, self.epo_cfg)
        term = EPOTerm(self.history, lam, beta, self.epo_cfg.k_low, self.epo_cfg.k_high)
        return [term], {"epo/entropy_coef": lam, "epo/smooth_coef": beta}

    def update(self, batch: Any, trajs: Sequence[Any]) -> dict[str, float]:
        return {}  # EPOTerm.finish fed the history with the update's measured entropies

    def state_dict(self) -> dict[str, Any]:
        return self.history.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history.load_state_dict(state)


@dataclasses.dataclass(frozen=True)
class PieceContext:
    """What building a piece may need: the settings, the model its scorer starts from, the pad
    token and the device."""

    cfg: Any
    scorer_from: str | Path
    pad_id: int
    device: Any


def _critic(pc: PieceContext) -> CreditPiece:
    from agentgym.trainers.value import TurnCritic, ValueConfig

    cfg = pc.cfg
    critic = TurnCritic.from_pretrained(
        pc.scorer_from,
        ValueConfig(lr=cfg.value_lr, epochs=cfg.value_epochs, clip=cfg.value_clip),
        pad_id=pc.pad_id,
        device=pc.device,
        seed=cfg.seed,
    )
    return CriticPiece(critic, cfg.credit_config())


def _progress(pc: PieceContext) -> CreditPiece:
    from agentgym.trainers.progress import ProgressConfig, ProgressEstimator

    cfg = pc.cfg
    est = ProgressEstimator.from_pretrained(
        pc.scorer_from,
        ProgressConfig(
            lr=cfg.progress_lr,
            epochs=cfg.progress_epochs,
            target=cfg.progress_target,
            replay=cfg.progress_replay,
        ),
        pad_id=pc.pad_id,
        device=pc.device,
        seed=cfg.seed,
    )
    return ProgressPiece(est)


def _entropy(pc: PieceContext) -> CreditPiece:
    from agentgym.trainers.epo import EntropyHistory, EPOConfig

    cfg = pc.cfg
    epo_cfg = EPOConfig(
        entropy_coef=cfg.epo_entropy_coef,
        smooth_coef=cfg.epo_smooth_coef,
        k_low=cfg.epo_k_low,
        k_high=cfg.epo_k_high,
    )
    return EntropyPiece(epo_cfg, EntropyHistory(epo_cfg.momentum))


#: estimator name -> builder of the piece it needs.
ESTIMATOR_PIECES: dict[str, Callable[[PieceContext], CreditPiece]] = {
    "ppo": _critic,
    "spa": _progress,
}
#: loss term name -> builder of the piece it needs.
TERM_PIECES: dict[str, Callable[[PieceContext], CreditPiece]] = {"epo": _entropy}


def needs_scorer(cfg: Any) -> bool:
    """Whether the run's estimator builds a model of its own (a scorer start is needed)."""
    return cfg.algo in ESTIMATOR_PIECES


def build_pieces(pc: PieceContext) -> list[CreditPiece]:
    """The pieces the run's estimator and loss terms need, in a fixed order."""
    builders = [ESTIMATOR_PIECES[pc.cfg.algo]] if pc.cfg.algo in ESTIMATOR_PIECES else []
    builders += [TERM_PIECES[t] for t in pc.cfg.loss_terms() if t in TERM_PIECES]
    return [b(pc) for b in builders]

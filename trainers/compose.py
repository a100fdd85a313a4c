"""Which credit-assignment pieces go together: estimator + reward transforms + loss terms.

The three axes are chosen independently (``--algo``, ``--transform``, ``--kl-coef`` /
``--entropy-coef`` / ``--epo``); :func:`validate_combination` rejects the combinations that
cannot work and says why, before any model is loaded or episode played:

* ``ppo`` needs a value head (a critic fills ``CreditBatch.values``);
* ``spa`` needs a progress estimator (it fills ``extras["progress"]``);
* group estimators (``grpo``, ``rloo``, ``gigpo``, and ``spa``, which normalises within the
  episode group) need ``group_size >= 2``: a group of one has no baseline and every advantage
  would be 0;
* ``gigpo`` with an env that publishes no anchors degenerates to ``grpo`` (a warning, not an
  error);
* ``gated`` / ``direct`` need every gate channel to exist in the env's trajectories, and
  ``gated`` needs at least two channels (a gate and a gated one); ``spa`` ignores
  ``batch.rewards``, so a transform before it would do nothing (an error);
* ``kl`` needs a reference model; ``entropy`` and ``epo`` are both entropy bonuses, so asking
  for both counts the bonus twice (an error; EPO already contains a trajectory-level bonus).

Known estimators and transforms are read from the registries in
:mod:`agentgym.trainers.credit`, so a newly registered one is accepted here too.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Collection, Sequence

__all__ = [
    "Composition",
    "validate_combination",
    "LOSS_TERMS",
    "GROUP_ESTIMATORS",
    "CombinationError",
]

LOSS_TERMS = ("kl", "entropy", "epo")
#: Estimators that compare an episode (or turn) with the rest of its episode group.
GROUP_ESTIMATORS = ("grpo", "rloo", "gigpo", "spa")
#: Channels every CreditBatch built from trajectories has (``reward`` = batch.rewards).
BUILTIN_CHANNELS = ("reward", "won", "valid")


class CombinationError(ValueError):
    """An estimator / transform / loss-term combination that cannot train; the message says why."""


@dataclasses.dataclass(frozen=True)
class Composition:
    """A validated combination: what the trainer must build and apply."""

    algo: str
    transforms: tuple[str, ...]
    terms: tuple[str, ...]
    needs_value_head: bool
    needs_progress: bool
    needs_reference: bool


def validate_combination(
    algo: str,
    transforms: Sequence[str] = (),
    terms: Sequence[str] = (),
    *,
    group_size: int = 2,
    has_value_head: bool | None = None,
    has_progress_estimator: bool | None = None,
    has_reference: bool | None = None,
    channels: Collection[str] | None = None,
    gate_channels: Sequence[str] = ("won", "reward"),
    env_has_anchors: bool | None = None,
) -> Composition:
    """Check one combination; return what it needs, or raise :class:`CombinationError`.

    Args:
        algo: estimator name (see ``agentgym.trainers.credit.ESTIMATORS``).
        transforms: reward transforms applied in order before the estimator.
        terms: extra loss terms, from :data:`LOSS_TERMS`.
        group_size: episodes per group.
        has_value_head, has_progress_estimator, has_reference: whether the trainer will build a
            critic / a progress estimator / a reference model. ``None`` = "will be built as
            needed" (only the returned ``needs_*`` flags are set); ``False`` = it is not
            available, so a combination that needs it is rejected.
        channels: reward channels present in the env's trajectories (``reward_channels`` keys
            and ``info_keys``); the built-ins ``reward``, ``won``, ``valid`` are always there.
            ``None`` = unknown, not checked.
        gate_channels: the channels ``gated`` / ``direct`` combine.
        env_has_anchors: whether the env fills ``Observation.anchor`` (None: unknown).
    """
    transforms, terms = tuple(transforms), tuple(terms)
    _check_names(algo, transforms, terms)
    if algo in GROUP_ESTIMATORS and group_size < 2:
        raise CombinationError(
            f"{algo} normalises within an episode group, so it needs group_size >= 2 (got "
            f"{group_size}): every advantage would be 0; use --group-size 4 or more"
        )
    if group_size < 1:
        raise CombinationError(f"group_size={group_size} must be >= 1")
    needs_value, needs_progress, needs_ref = _check_available(
        algo, terms, has_value_head, has_progress_estimator, has_reference
    )
    if algo == "spa" and transforms:
        raise CombinationError(
            f"spa builds its per-turn rewards from progress c_t and grounding g_t and ignores "
            f"batch.rewards, so the transform(s) {list(transforms)} would have no effect: drop "
            f"them, or use them with grpo, rloo, gigpo or ppo"
        )
    if any(t in ("gated", "direct") for t in transforms):
        _check_gates(transforms, gate_channels, channels)
    if algo == "gigpo" and env_has_anchors is False:
        warnings.warn(
            "gigpo: the env publishes no anchors, so there are no step groups and gigpo equals "
            "grpo",
            stacklevel=2,
        )
    return Composition(
        algo=algo,
        transforms=transforms,
        terms=terms,
        needs_value_head=needs_value,
        needs_progress=needs_progress,
        needs_reference=needs_ref,
    )


def _check_names(algo: str, transforms: tuple[str, ...], terms: tuple[str, ...]) -> None:
    """Every name is registered, none repeats, and no two exclude each other."""
    from agentgym.trainers.credit import ESTIMATORS, TRANSFORMS

    if algo not in ESTIMATORS:
        raise CombinationError(
            f"unknown estimator {algo!r}: use one of {', '.join(sorted(ESTIMATORS))}"
        )
    for t in transforms:
        if t not in TRANSFORMS:
            raise CombinationError(
                f"unknown reward transform {t!r}: use one of {', '.join(sorted(TRANSFORMS))}"
            )
    if len(set(transforms)) != len(transforms):
        raise CombinationError(f"transforms {list(transforms)} repeat one: give each at most once")
    if {"gated", "direct"} <= set(transforms):
        raise CombinationError(
            "'gated' and 'direct' both rewrite the rewards from the same channels (the second "
            "would combine the first's output again): choose one"
        )
    for t in terms:
        if t not in LOSS_TERMS:
            raise CombinationError(f"unknown loss term {t!r}: use any of {', '.join(LOSS_TERMS)}")
    if "entropy" in terms and "epo" in terms:
        raise CombinationError(
            "'entropy' and 'epo' both add an entropy bonus (EPO's is trajectory-level): use "
            "'epo' alone, or 'entropy' without EPO"
        )


def _check_available(
    algo: str,
    terms: tuple[str, ...],
    has_value_head: bool | None,
    has_progress_estimator: bool | None,
    has_reference: bool | None,
) -> tuple[bool, bool, bool]:
    """``(needs_value_head, needs_progress, needs_reference)``; raises when a needed model is
    declared unavailable (``False``; ``None`` means "built as needed")."""
    needs_value = algo == "ppo"
    if needs_value and has_value_head is False:
        raise CombinationError(
            "ppo runs GAE over per-turn values, so it needs a value head (critic) to fill "
            "CreditBatch.values; enable the critic or pick a critic-free estimator "
            "(grpo, rloo, gigpo)"
        )
    needs_progress = algo == "spa"
    if needs_progress and has_progress_estimator is False:
        raise CombinationError(
            "spa attributes the final reward to turns with a progress estimator (it fills "
            "extras['progress'] = c_t); enable the progress estimator or pick another estimator"
        )
    needs_ref = "kl" in terms
    if needs_ref and has_reference is False:
        raise CombinationError(
            "the 'kl' term penalises divergence from a reference model, but none is available: "
            "keep the SFT model as reference or drop 'kl'"
        )
    return needs_value, needs_progress, needs_ref


def _check_gates(
    transforms: tuple[str, ...], gate_channels: Sequence[str], channels: Collection[str] | None
) -> None:
    """``gated`` / ``direct`` have channels to combine, and the env reports every one of them."""
    if not gate_channels:
        raise CombinationError("'gated'/'direct' need at least one gate channel")
    if "gated" in transforms and len(gate_channels) < 2:
        raise CombinationError(
            f"'gated' with the single channel {list(gate_channels)} gates nothing (a channel "
            "counts only if the channels BEFORE it pass): give a gate and a gated channel, "
            "e.g. the channels ('won', 'reward')"
        )
    if channels is not None:
        have = set(channels) | set(BUILTIN_CHANNELS)
        missing = [c for c in gate_channels if c not in have]
        if missing:
            raise CombinationError(
                f"transform 'gated'/'direct' combines channels {list(gate_channels)}, but "
                f"{missing} never appear in the env's trajectories (available: "
                f"{sorted(have)}); the env must report them in "
                f"turn.info['reward_channels'], or set --gate-channels to existing ones"
            )

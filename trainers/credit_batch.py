"""The data of credit assignment: :class:`CreditConfig` (the estimators' settings) and
:class:`CreditBatch` (per-turn rewards, anchors, groups and channels of N episodes).

Split from :mod:`agentgym.trainers.credit` (the estimators and transforms), which re-exports
both names. numpy only, like the estimators.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from agentgym.trajectory import Trajectory

__all__ = ["CreditConfig", "CreditBatch"]

_NORMS = ("std", "mean")


# --------------------------------------------------------------------------------------------
# Config and batch
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CreditConfig:
    """Hyper-parameters of every estimator and transform (each reads the fields it needs).

    Attributes:
        gamma: discount factor in [0, 1] for per-turn returns (``gigpo`` step values, ``ppo``,
            ``spa``). ``grpo``/``rloo`` and the GiGPO episode part use undiscounted sums.
        omega: weight of the GiGPO step advantage: ``A = A_episode + omega * A_step``. 0 turns
            ``gigpo`` into ``grpo``.
        norm: ``"std"`` divides the centred value by the group's sample standard deviation
            (+ ``eps``); ``"mean"`` only subtracts the group mean (Dr.GRPO-style, GiGPO's
            ``mean_norm`` variant). Used by ``grpo``, ``gigpo`` (both parts) and ``spa``.
        lam: GAE lambda in [0, 1] for ``ppo`` (1 = Monte-Carlo return minus V, 0 = one-step TD).
        eps: added to the standard deviation so a group with identical returns gets 0, not NaN.
        spa_beta: weight of the grounding signal in SPA's per-turn reward
            ``r_t = c_t + spa_beta * g_t``.
        gate_channels: reward channels combined by the ``gated`` / ``direct`` transforms, in
            priority order (highest first). ``"reward"`` is the batch's current per-turn rewards;
            any other name is read from ``batch.extras`` (``"won"`` is always there when the
            batch came from :meth:`CreditBatch.from_trajectories`).
        gate_thresholds: one threshold per channel except the last: channel ``k`` *passes* for a
            trajectory when the trajectory's total of that channel is ``>= gate_thresholds[k]``.
            With ``gated``, channel ``k`` counts only if every channel before it passes.
        gate_weights: optional weight per channel (default 1 each); a weight of 0 makes a
            channel a pure gate that adds nothing to the reward.
    """

    gamma: float = 0.95
    omega: float = 1.0
    norm: str = "std"
    lam: float = 0.95
    eps: float = 1e-6
    spa_beta: float = 1.0
    gate_channels: tuple[str, ...] = ("won", "reward")
    gate_thresholds: tuple[float, ...] = (1.0,)
    gate_weights: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.norm not in _NORMS:
            raise ValueError(f"CreditConfig.norm={self.norm!r} is unknown: use 'std' or 'mean'")
        for name in ("gamma", "lam"):
            v = getattr(self, name)
            if not (0.0 <= v <= 1.0):
                raise ValueError(f"CreditConfig.{name}={v} must be in [0, 1]")
        if not (self.eps > 0.0 and math.isfinite(self.eps)):
            raise ValueError(
                f"CreditConfig.eps={self.eps} must be a small positive number, e.g. 1e-6"
            )
        for name in ("omega", "spa_beta"):
            v = getattr(self, name)
            if not math.isfinite(v) or v < 0:
                raise ValueError(f"CreditConfig.{name}={v} must be a finite number >= 0")
        # Tuples keep the config hashable/frozen; accept lists from callers and normalise.
        object.__setattr__(self, "gate_channels", tuple(self.gate_channels))
        object.__setattr__(self, "gate_thresholds", tuple(float(x) for x in self.gate_thresholds))
        if self.gate_weights is not None:
            object.__setattr__(self, "gate_weights", tuple(float(x) for x in self.gate_weights))
        if not self.gate_channels:
            raise ValueError("CreditConfig.gate_channels is empty: name at least one channel")
        if len(set(self.gate_channels)) != len(self.gate_channels):
            raise ValueError(f"CreditConfig.gate_channels={self.gate_channels} repeats a channel")
        if len(self.gate_thresholds) != len(self.gate_channels) - 1:
            raise ValueError(
                f"CreditConfig.gate_thresholds has {len(self.gate_thresholds)} value(s) for "
                f"{len(self.gate_channels)} channel(s) {self.gate_channels}: give one threshold per "
                f"channel except the last (the last gates nothing), i.e. "
                f"{len(self.gate_channels) - 1} value(s)"
            )
        if self.gate_weights is not None and len(self.gate_weights) != len(self.gate_channels):
            raise ValueError(
                f"CreditConfig.gate_weights has {len(self.gate_weights)} value(s) for "
                f"{len(self.gate_channels)} channel(s): give one weight per channel or None"
            )


def _as_1d(x: Any, n: int | None, what: str) -> np.ndarray:
    a = x if type(x) is np.ndarray and x.dtype == np.float64 else np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{what} must be a 1-D per-turn array, got shape {a.shape}")
    if n is not None and a.shape[0] != n:
        raise ValueError(f"{what} has {a.shape[0]} entries but the trajectory has {n} turns")
    return a


def _check_finite(arrs: Sequence[np.ndarray], ids: Sequence[str], what: str) -> None:
    """One vectorised NaN/inf check over all trajectories; the error names the first bad one."""
    if not arrs or np.isfinite(np.concatenate(arrs)).all():
        return
    for i, a in enumerate(arrs):
        if not np.isfinite(a).all():
            raise ValueError(f"{what} of trajectory {ids[i]!r} contains NaN or inf: {a.tolist()}")


@dataclass
class CreditBatch:
    """One batch of trajectories for every estimator (N trajectories, trajectory i has T_i turns).

    Attributes:
        rewards: N arrays ``[T_i]``, the reward received after each turn's action.
        anchors: N lists of T_i strings, the anchor (canonical state key) of the observation the
            agent acted on; ``""`` = none, such a turn is never put in a step group.
        groups: N group ids; trajectories with the same id started from the same task and seed.
        ids: N trajectory ids (used in error messages and CLI output).
        values: optional N arrays of value estimates for ``ppo``: ``[T_i]`` = ``V(s_0..s_{T-1})``,
            or ``[T_i + 1]`` where the extra last entry is ``V(s_T)`` of the state after the last
            turn (used only to bootstrap truncated episodes).
        truncated: optional N flags: True = the episode was cut (turn limit, crashed worker) rather
            than ended by the env, so its return continues past the last turn. None = all
            terminated.
        extras: named per-turn channels, each N arrays ``[T_i]``: ``"progress"`` (SPA c_t),
            ``"valid"`` / ``"grounding"`` (SPA g_t), ``"won"`` and reward channels for gating.

    Arrays are converted to float64 and checked in ``__post_init__``.
    """

    rewards: list[np.ndarray]
    anchors: list[list[str]]
    groups: list[str]
    ids: list[str]
    values: list[np.ndarray] | None = None
    truncated: list[bool] | None = None
    extras: dict[str, list[np.ndarray]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.rewards)
        for name in ("anchors", "groups", "ids"):
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"CreditBatch.{name} has {len(getattr(self, name))} entries for {n} "
                    f"trajectories: give one per trajectory"
                )
        self.ids = [str(x) for x in self.ids]
        self.groups = [str(x) for x in self.groups]
        self.rewards = [
            _as_1d(r, None, f"rewards of trajectory {self.ids[i]!r}")
            for i, r in enumerate(self.rewards)
        ]
        _check_finite(self.rewards, self.ids, "rewards")
        lengths = [r.shape[0] for r in self.rewards]
        anchors = []
        for i, a in enumerate(self.anchors):
            if not (type(a) is list and all(type(x) is str for x in a)):
                a = ["" if x is None else str(x) for x in a]
            if len(a) != lengths[i]:
                raise ValueError(
                    f"trajectory {self.ids[i]!r} has {lengths[i]} rewards but {len(a)} anchors"
                )
            anchors.append(a)
        self.anchors = anchors
        if self.values is not None:
            if len(self.values) != n:
                raise ValueError(f"CreditBatch.values has {len(self.values)} entries for {n}")
            vals = []
            for i, v in enumerate(self.values):
                v = _as_1d(v, None, f"values of trajectory {self.ids[i]!r}")
                if v.shape[0] not in (lengths[i], lengths[i] + 1):
                    raise ValueError(
                        f"values of trajectory {self.ids[i]!r} has {v.shape[0]} entries: give "
                        f"T={lengths[i]} (V(s_0..s_T-1)) or T+1={lengths[i] + 1} (plus V(s_T))"
                    )
                vals.append(v)
            _check_finite(vals, self.ids, "values")
            self.values = vals
        if self.truncated is not None:
            if len(self.truncated) != n:
                raise ValueError(f"CreditBatch.truncated has {len(self.truncated)} entries for {n}")
            self.truncated = [bool(x) for x in self.truncated]
        extras = {}
        for key, arrs in self.extras.items():
            if len(arrs) != n:
                raise ValueError(f"CreditBatch.extras[{key!r}] has {len(arrs)} entries for {n}")
            extras[key] = [
                _as_1d(a, lengths[i], f"extras[{key!r}] of trajectory {self.ids[i]!r}")
                for i, a in enumerate(arrs)
            ]
            _check_finite(extras[key], self.ids, f"extras[{key!r}]")
        self.extras = extras

    def __len__(self) -> int:
        return len(self.rewards)

    @property
    def lengths(self) -> np.ndarray:
        """``[N]`` int64 number of turns of each trajectory."""
        return np.fromiter((r.shape[0] for r in self.rewards), dtype=np.int64, count=len(self))

    def is_truncated(self, i: int) -> bool:
        return bool(self.truncated[i]) if self.truncated is not None else False

    def replace(self, **changes: Any) -> CreditBatch:
        """A new, re-validated batch with some fields replaced (unchanged arrays are shared)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_trajectories(
        cls, trajs: Sequence[Trajectory], *, info_keys: Sequence[str] = ()
    ) -> CreditBatch:
        """Build a batch from :class:`agentgym.trajectory.Trajectory` records.

        Filled in: rewards, anchors, groups, ids from the records; ``truncated`` = the episode was
        truncated or its worker crashed (either way it did not end on its own); extras:

        * ``"valid"``: 1.0 where ``turn.valid`` else 0.0 (SPA's default grounding g_t);
        * ``"won"``: 1.0 on the last turn of a won episode, else 0.0 (an outcome channel);
        * ``"progress"``: ``turn.info["progress"]``, only if every turn of every record has it;
        * each name in ``turn.info["reward_channels"]`` (a dict name -> float; missing = 0.0);
        * each key of ``info_keys``: ``float(turn.info[key])`` (missing = 0.0).

        ``values`` is ``turn.info["value"]`` when every turn of every record has it, else None.
        """
        trajs = list(trajs)
        channels: dict[str, list[np.ndarray]] = {}
        chan_names: set[str] = set()
        for t in trajs:
            for turn in t.turns:
                rc = turn.info.get("reward_channels")
                if isinstance(rc, dict):
                    chan_names.update(str(k) for k in rc)
        reserved = {"valid", "won", "progress", "penalty"} & (chan_names | set(info_keys))
        if reserved:
            raise ValueError(
                f"reward channel name(s) {sorted(reserved)} clash with built-in extras: rename them"
            )
        all_turns = [turn for t in trajs for turn in t.turns]
        has_progress = bool(all_turns) and all(
            _is_number(u.info.get("progress")) for u in all_turns
        )
        has_value = bool(all_turns) and all(_is_number(u.info.get("value")) for u in all_turns)
        channels["valid"] = [np.array([float(u.valid) for u in t.turns]) for t in trajs]
        won = []
        for t in trajs:
            w = np.zeros(len(t.turns))
            if t.won and t.turns:
                w[-1] = 1.0
            won.append(w)
        channels["won"] = won
        if has_progress:
            channels["progress"] = [
                np.array([float(u.info["progress"]) for u in t.turns]) for t in trajs
            ]
        for name in sorted(chan_names):
            channels[name] = [
                np.array([_channel_value(u.info.get("reward_channels"), name) for u in t.turns])
                for t in trajs
            ]
        for key in info_keys:
            channels[key] = [
                np.array([float(u.info.get(key, 0.0)) for u in t.turns]) for t in trajs
            ]
        values = (
            [np.array([float(u.info["value"]) for u in t.turns]) for t in trajs]
            if has_value
            else None
        )
        return cls(
            rewards=[np.array(t.rewards, dtype=np.float64) for t in trajs],
            anchors=[t.anchors for t in trajs],
            groups=[t.group for t in trajs],
            ids=[t.id for t in trajs],
            values=values,
            truncated=[bool(t.truncated or t.crashed) for t in trajs],
            extras=channels,
        )


def _channel_value(rc: Any, name: str) -> float:
    v = rc.get(name, 0.0) if isinstance(rc, dict) else 0.0
    if isinstance(v, bool) or (isinstance(v, (int, float)) and math.isfinite(v)):
        return float(v)
    raise ValueError(
        f"reward channel {name!r} has the value {v!r}: channels must be finite numbers or bools "
        "(put labels such as an outcome name in another info key)"
    )


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

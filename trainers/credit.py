"""Credit assignment: per-turn advantages from trajectories, as pure numpy functions.

Every estimator has ONE signature, ``estimator(batch: CreditBatch, config: CreditConfig) ->
list[np.ndarray]``: it takes one batch of trajectories and returns, for each trajectory ``i``, a
float64 array of shape ``[T_i]`` with the advantage of each turn. The trainer never special-cases
an estimator; it picks one by name::

    from agentgym.trainers.credit import CreditBatch, CreditConfig, compute_advantages

    batch = CreditBatch.from_trajectories(trajs)
    adv = compute_advantages("gigpo", batch, CreditConfig(gamma=0.95, omega=1.0))

Estimators (see each function's docstring for the equations):

* ``grpo``  - group-normalised outcome (Shao et al. 2024), same advantage on every turn.
* ``rloo``  - leave-one-out baseline (Ahmadian et al. 2024).
* ``gigpo`` - episode advantage + omega * anchor-state step advantage (Feng et al. 2025).
* ``ppo``   - turn-level GAE over per-turn value estimates (Schulman et al. 2016).
* ``spa``   - progress-attributed per-turn rewards c_t + beta * g_t (Wang et al. 2025), then
  group-normalised discounted return-to-go.

Reward transforms rewrite ``batch.rewards`` before any estimator and return a new batch:

* ``gated``  - gated reward accumulation (G-RA, Sun et al. 2025), with prioritised channels.
* ``direct`` - plain (ungated) sum of the same channels, for comparison.

Terminology: a *group* is the set of episodes reset to the same task and seed (one GRPO group);
an *anchor* is the env's canonical key of the state the agent saw before acting on a turn
(``""`` = the env gives none, never grouped).

This module imports numpy only (no torch), so it can run in data workers and tests.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from agentgym.trajectory import Trajectory

__all__ = [
    "CreditConfig",
    "CreditBatch",
    "Estimator",
    "Transform",
    "ESTIMATORS",
    "TRANSFORMS",
    "register_estimator",
    "get_estimator",
    "compute_advantages",
    "register_transform",
    "get_transform",
    "apply_transforms",
    "discounted_returns",
    "gigpo_components",
    "turn_returns",
    "spa_rewards",
]

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
        reserved = {"valid", "won", "progress"} & (chan_names | set(info_keys))
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


# --------------------------------------------------------------------------------------------
# Registries
# --------------------------------------------------------------------------------------------

Estimator = Callable[[CreditBatch, CreditConfig], list[np.ndarray]]
Transform = Callable[[CreditBatch, CreditConfig], CreditBatch]

ESTIMATORS: dict[str, Estimator] = {}
TRANSFORMS: dict[str, Transform] = {}


def register_estimator(name: str) -> Callable[[Estimator], Estimator]:
    """Decorator: register ``fn(batch, config) -> list[np.ndarray]`` under ``name``."""

    def deco(fn: Estimator) -> Estimator:
        if name in ESTIMATORS and ESTIMATORS[name] is not fn:
            raise ValueError(
                f"advantage estimator {name!r} is already registered: pick another name"
            )
        ESTIMATORS[name] = fn
        return fn

    return deco


def get_estimator(name: str) -> Estimator:
    try:
        return ESTIMATORS[name]
    except KeyError:
        raise ValueError(
            f"unknown advantage estimator {name!r}: registered are {', '.join(sorted(ESTIMATORS))}"
        ) from None


def compute_advantages(name: str, batch: CreditBatch, config: CreditConfig) -> list[np.ndarray]:
    """Run estimator ``name``; returns N float64 arrays, ``[T_i]`` each, checked for shape/NaN."""
    out = get_estimator(name)(batch, config)
    if len(out) != len(batch):
        raise RuntimeError(
            f"estimator {name!r} returned {len(out)} arrays for {len(batch)} trajectories"
        )
    res = []
    for i, a in enumerate(out):
        if not (type(a) is np.ndarray and a.dtype == np.float64):
            a = np.asarray(a, dtype=np.float64)
        if a.shape != batch.rewards[i].shape:
            raise RuntimeError(
                f"estimator {name!r} returned shape {a.shape} for trajectory {batch.ids[i]!r} "
                f"with {batch.rewards[i].shape[0]} turns"
            )
        res.append(a)
    if res and not np.isfinite(np.concatenate(res)).all():
        bad = next(i for i, a in enumerate(res) if not np.isfinite(a).all())
        raise RuntimeError(f"estimator {name!r} produced NaN/inf for {batch.ids[bad]!r}")
    return res


def register_transform(name: str) -> Callable[[Transform], Transform]:
    """Decorator: register ``fn(batch, config) -> CreditBatch`` (a reward transform)."""

    def deco(fn: Transform) -> Transform:
        if name in TRANSFORMS and TRANSFORMS[name] is not fn:
            raise ValueError(f"reward transform {name!r} is already registered: pick another name")
        TRANSFORMS[name] = fn
        return fn

    return deco


def get_transform(name: str) -> Transform:
    try:
        return TRANSFORMS[name]
    except KeyError:
        raise ValueError(
            f"unknown reward transform {name!r}: registered are {', '.join(sorted(TRANSFORMS))}"
        ) from None


def apply_transforms(names: Sequence[str], batch: CreditBatch, config: CreditConfig) -> CreditBatch:
    """Apply reward transforms left to right; the input batch is not modified."""
    if isinstance(names, str):
        names = [names]
    fns = [get_transform(n) for n in names]  # fail on a typo before doing any work
    for fn in fns:
        batch = fn(batch, config)
    return batch


# --------------------------------------------------------------------------------------------
# Vectorised helpers
# --------------------------------------------------------------------------------------------


def _pad(arrs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``[N, Tmax]`` zero-padded matrix and ``[N, Tmax]`` bool mask of real turns."""
    lengths = np.fromiter((a.shape[0] for a in arrs), dtype=np.int64, count=len(arrs))
    tmax = int(lengths.max()) if len(arrs) else 0
    mask = np.arange(tmax)[None, :] < lengths[:, None]
    mat = np.zeros((len(arrs), tmax))
    if tmax:
        mat[mask] = np.concatenate(arrs)
    return mat, mask


def _unpad(mat: np.ndarray, mask: np.ndarray, lengths: Sequence[int]) -> list[np.ndarray]:
    flat = mat[mask]
    return np.split(flat, np.cumsum(lengths)[:-1]) if len(lengths) else []


def discounted_returns(rewards: Sequence[np.ndarray], gamma: float) -> list[np.ndarray]:
    """Return-to-go ``R_t = sum_{k>=t} gamma^(k-t) r_k`` for each trajectory (``[T_i]`` each).

    Computed backwards over a padded ``[N, Tmax]`` matrix, one vector op per time step, so it is
    exact (no ``gamma^-t`` rescaling that would overflow on long episodes).
    """
    if not rewards:
        return []
    lengths = np.fromiter((r.shape[0] for r in rewards), np.int64, len(rewards))
    return _split(_discounted_flat(rewards, gamma), lengths)


def _discounted_flat(rewards: Sequence[np.ndarray], gamma: float) -> np.ndarray:
    """:func:`discounted_returns`, concatenated into one ``[sum T_i]`` array."""
    mat, mask = _pad(rewards)
    # Time-major [Tmax, N] so that each backward step reads one contiguous row.
    mat_t = np.ascontiguousarray(mat.T)
    out = np.empty_like(mat_t)
    acc = np.zeros(mat_t.shape[1])
    for t in range(mat_t.shape[0] - 1, -1, -1):
        acc = mat_t[t] + gamma * acc  # padding is zero, so it contributes nothing
        out[t] = acc
    return out.T[mask]


def _group_normalise(
    values: np.ndarray, keys: np.ndarray, norm: str, eps: float, valid: np.ndarray | None = None
) -> np.ndarray:
    """Centre (and scale) ``values`` [M] within the groups given by int ``keys`` [M].

    ``(v - mean_g) / (std_g + eps)`` with the SAMPLE std (ddof=1), or ``v - mean_g`` for
    ``norm="mean"``. Members of groups of size 1 and entries with ``valid=False`` get 0.
    """
    out = np.zeros(values.shape[0])
    if valid is not None:
        idx = np.flatnonzero(valid)
        values, keys = values[idx], keys[idx]
    else:
        idx = None
    if values.shape[0] == 0:
        return out
    if int(keys.max()) < 4 * keys.shape[0] + 64:
        inv = keys  # dense enough: bin directly, no sort (empty bins are never indexed)
    else:
        inv = np.unique(keys, return_inverse=True)[1].reshape(-1)
    nbins = int(inv.max()) + 1
    counts = np.bincount(inv, minlength=nbins).astype(np.float64)
    sums = np.bincount(inv, weights=values, minlength=nbins)
    mean = np.divide(sums, counts, out=np.zeros(nbins), where=counts > 0)
    centred = values - mean[inv]
    if norm == "std":
        ss = np.bincount(inv, weights=centred * centred, minlength=nbins)
        std = np.sqrt(ss / np.maximum(counts - 1.0, 1.0))
        res = centred / (std[inv] + eps)
    else:
        res = centred
    res = np.where(counts[inv] > 1, res, 0.0)
    if idx is None:
        return res
    out[idx] = res
    return out


def _group_index(groups: Sequence[str]) -> np.ndarray:
    """``[N]`` int64 index of each trajectory's group (dense, order of first appearance)."""
    table: dict[str, int] = {}
    return np.fromiter((table.setdefault(g, len(table)) for g in groups), np.int64, len(groups))


def _episode_returns(batch: CreditBatch) -> np.ndarray:
    """``[N]`` undiscounted return of each trajectory (one bincount over all turns)."""
    n = len(batch)
    if n == 0:
        return np.zeros(0)
    owner = np.repeat(np.arange(n), batch.lengths)
    return np.bincount(owner, weights=np.concatenate(batch.rewards), minlength=n)


def _episode_advantages(batch: CreditBatch, config: CreditConfig) -> np.ndarray:
    """``[N]`` GRPO advantage of each trajectory's undiscounted return within its group."""
    returns = _episode_returns(batch)
    return _group_normalise(returns, _group_index(batch.groups), config.norm, config.eps)


def _split(flat: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
    """Cut a ``[sum T_i]`` array into N ``[T_i]`` arrays (views)."""
    return np.split(flat, np.cumsum(lengths)[:-1]) if len(lengths) else []


def _broadcast(per_traj: np.ndarray, batch: CreditBatch) -> list[np.ndarray]:
    lengths = batch.lengths
    return _split(np.repeat(per_traj, lengths), lengths)


# --------------------------------------------------------------------------------------------
# Estimators
# --------------------------------------------------------------------------------------------


@register_estimator("grpo")
def grpo(batch: CreditBatch, config: CreditConfig) -> list[np.ndarray]:
    """GRPO outcome advantage (Shao et al. 2024, DeepSeekMath eq. 3 "outcome supervision").

    Shapes: N trajectories, ``R`` is ``[N]``; output N arrays ``[T_i]``.

        R_i = sum_t r_{i,t}                         (undiscounted episode return)
        A_i = (R_i - mean_G(R)) / (std_G(R) + eps)  norm="std", std with ddof=1 (sample std)
        A_i = R_i - mean_G(R)                       norm="mean"
        A_{i,t} = A_i for every turn t

    ``G`` is the trajectory's group. A group of one trajectory gets 0 (no baseline exists);
    a group whose returns are all equal gets 0 (0 / (0 + eps)).
    """
    return _broadcast(_episode_advantages(batch, config), batch)


@register_estimator("rloo")
def rloo(batch: CreditBatch, config: CreditConfig) -> list[np.ndarray]:
    """REINFORCE leave-one-out (Kool et al. 2019; Ahmadian et al. 2024, eq. 6).

        A_i = R_i - 1/(n-1) * sum_{j in G, j != i} R_j  =  n/(n-1) * (R_i - mean_G(R))

    with R_i the undiscounted return and n = |G|; same value on every turn; a group of one gets
    0. ``norm`` and ``eps`` are not used (RLOO does not scale by the std).
    """
    returns = _episode_returns(batch)
    g = _group_index(batch.groups)
    n = np.bincount(g).astype(np.float64)[g]
    total = np.bincount(g, weights=returns)[g]
    others = total - returns
    adv = np.where(n > 1, returns - others / np.maximum(n - 1.0, 1.0), 0.0)
    return _broadcast(adv, batch)


def gigpo_components(
    batch: CreditBatch, config: CreditConfig
) -> tuple[np.ndarray, list[np.ndarray]]:
    """The two parts of GiGPO: ``[N]`` episode advantages and N ``[T_i]`` step advantages.

    Step groups (Feng et al. 2025, Sec. 3.2 "anchor state grouping"): inside one episode group,
    every turn whose anchor string is identical, across trajectories AND time steps (an anchor
    revisited inside one trajectory contributes one member per visit). Key = (group, anchor)
    encoded as one int64 per turn (dense anchor ids from one dict pass over the distinct anchors),
    then counts, means and variances of all step groups come from ``np.bincount`` at once.

        R_{i,t} = sum_{k>=t} gamma^(k-t) r_{i,k}                  (discounted return from turn t)
        A^S_{i,t} = (R_{i,t} - mean_g) / (std_g + eps)            norm="std" (ddof=1)
        A^S_{i,t} = R_{i,t} - mean_g                              norm="mean"

    Turns with an empty anchor and step groups of one get ``A^S = 0``.
    """
    ep, step = _gigpo_flat(batch, config)
    return ep, _split(step, batch.lengths)


def _gigpo_flat(batch: CreditBatch, config: CreditConfig) -> tuple[np.ndarray, np.ndarray]:
    """``[N]`` episode advantages and ``[sum T_i]`` step advantages (turns concatenated)."""
    ep = _episode_advantages(batch, config)
    lengths = batch.lengths
    if lengths.sum() == 0:
        return ep, np.zeros(0)
    returns = _discounted_flat(batch.rewards, config.gamma)
    gidx = np.repeat(_group_index(batch.groups), lengths)
    flat_anchors = list(itertools.chain.from_iterable(batch.anchors))
    # Dense anchor ids, 0 reserved for "" (never grouped). dict.fromkeys dedupes at C speed, so
    # the Python-level loop runs over distinct anchors only.
    table: dict[str, int] = {"": 0}
    for a in dict.fromkeys(flat_anchors):
        table.setdefault(a, len(table))
    aidx = np.fromiter(map(table.__getitem__, flat_anchors), np.int64, len(flat_anchors))
    keys = gidx * np.int64(len(table)) + aidx
    step = _group_normalise(returns, keys, config.norm, config.eps, valid=aidx != 0)
    return ep, step


@register_estimator("gigpo")
def gigpo(batch: CreditBatch, config: CreditConfig) -> list[np.ndarray]:
    """GiGPO (Feng et al. 2025, "Group-in-Group Policy Optimization for LLM Agent Training").

        A_{i,t} = A^E_i + omega * A^S_{i,t}

    ``A^E`` is the GRPO episode advantage of the undiscounted return (each trajectory counts
    once), ``A^S`` the anchor-state step advantage of the discounted return-to-go, see
    :func:`gigpo_components`. Output: N arrays ``[T_i]``.
    """
    ep, step = _gigpo_flat(batch, config)
    lengths = batch.lengths
    return _split(np.repeat(ep, lengths) + config.omega * step, lengths)


def _gae(batch: CreditBatch, config: CreditConfig) -> tuple[list[np.ndarray], list[np.ndarray]]:
    if batch.values is None:
        raise ValueError(
            "estimator 'ppo' needs per-turn value estimates: set CreditBatch.values (from the "
            "critic) or turn.info['value'] in every trajectory record"
        )
    lengths = batch.lengths
    v_cur = [v[: r.shape[0]] for v, r in zip(batch.values, batch.rewards)]
    v_next = []
    for i, (v, r) in enumerate(zip(batch.values, batch.rewards)):
        t = r.shape[0]
        if t == 0:
            v_next.append(np.zeros(0))
            continue
        if batch.is_truncated(i):
            # Bootstrap: the return goes on after the cut. V(s_T) if given, else the last value we
            # have, V(s_{T-1}), stands in for the unseen next state.
            boot = v[t] if v.shape[0] == t + 1 else v[t - 1]
        else:
            boot = 0.0  # terminated: nothing follows the last turn
        v_next.append(np.concatenate([v[1:t], [boot]]))
    r_mat, mask = _pad(batch.rewards)
    v_mat, _ = _pad(v_cur)
    vn_mat, _ = _pad(v_next)
    delta = r_mat + config.gamma * vn_mat - v_mat  # zero on padding
    adv = np.zeros_like(delta)
    acc = np.zeros(delta.shape[0])
    for t in range(delta.shape[1] - 1, -1, -1):
        acc = delta[:, t] + config.gamma * config.lam * acc
        adv[:, t] = acc
    return _unpad(adv, mask, lengths.tolist()), v_cur


@register_estimator("ppo")
def ppo(batch: CreditBatch, config: CreditConfig) -> list[np.ndarray]:
    """Turn-level GAE (Schulman et al. 2016, eqs. 11-16); one "step" is one agent turn.

    Inputs ``rewards`` ``[T_i]``, ``values`` ``[T_i]`` or ``[T_i + 1]``; output N arrays ``[T_i]``.

        delta_t = r_t + gamma * V_{t+1} - V_t
        A_t = sum_{l>=0} (gamma * lam)^l * delta_{t+l}   (computed backwards)

    ``V_T`` (after the last turn) is 0 for a terminated episode. For a truncated one it is
    bootstrapped: ``values[i][T]`` when a ``[T+1]`` array was given, else ``V_{T-1}`` (the last
    value available; exact when the value is locally constant, and never worse than treating a
    cut episode as a terminal failure). Advantages are not whitened here: the loss may do it.
    """
    return _gae(batch, config)[0]


def turn_returns(batch: CreditBatch, config: CreditConfig) -> list[np.ndarray]:
    """Value targets for the critic: ``R_t = A_t + V_t`` (GAE lambda-returns), N arrays ``[T_i]``."""
    adv, v = _gae(batch, config)
    return [a + vv for a, vv in zip(adv, v)]


def spa_rewards(batch: CreditBatch, config: CreditConfig) -> list[np.ndarray]:
    """SPA per-turn rewards ``r_t = c_t + spa_beta * g_t`` (Wang et al. 2025, Sec. 3.3).

    ``c_t`` = ``batch.extras["progress"]``: the progress estimator's stepwise contributions
    (trained so that ``sum_t c_t`` matches the episode's final reward). ``g_t`` =
    ``batch.extras["grounding"]`` if present, else ``batch.extras["valid"]`` (1 if the action
    was executable, else 0). The env rewards in ``batch.rewards`` are NOT used.
    """
    if "progress" not in batch.extras:
        raise ValueError(
            "estimator 'spa' needs batch.extras['progress'] (per-turn contributions c_t from a "
            "progress estimator): pass it in CreditBatch(extras=...) or set "
            "turn.info['progress'] on every turn of the trajectory records"
        )
    g_key = "grounding" if "grounding" in batch.extras else "valid"
    if g_key not in batch.extras:
        raise ValueError(
            "estimator 'spa' needs a grounding signal: batch.extras['grounding'] or ['valid'] "
            "(CreditBatch.from_trajectories fills 'valid' from turn.valid)"
        )
    return [c + config.spa_beta * g for c, g in zip(batch.extras["progress"], batch.extras[g_key])]


@register_estimator("spa")
def spa(batch: CreditBatch, config: CreditConfig) -> list[np.ndarray]:
    """SPA-RL (Wang et al. 2025, "Reinforcing LLM Agents via Stepwise Progress Attribution").

        r_t = c_t + spa_beta * g_t                          (see :func:`spa_rewards`)
        R_t = sum_{k>=t} gamma^(k-t) r_k                    (return-to-go, [T_i])
        A_t = (R_t - mean_G) / (std_G + eps)   or   R_t - mean_G   (norm)

    where ``mean_G``/``std_G`` (ddof=1) are taken over ALL turns of ALL trajectories of the
    episode group (each turn one member), so turns are compared with turns of the same task. A
    group with a single turn in total gets 0. The paper trains these rewards with PPO; a
    critic-free group baseline is used here so ``spa`` needs no value model; for the paper's
    critic variant, run ``ppo`` on ``batch.replace(rewards=spa_rewards(batch, config))``. Unlike
    the released code, ``c_t`` is used as is: the final reward is not substituted back in.
    """
    rewards = spa_rewards(batch, config)
    lengths = batch.lengths
    if lengths.sum() == 0:
        return [np.zeros(0) for _ in range(len(batch))]
    ret = _discounted_flat(rewards, config.gamma)
    keys = np.repeat(_group_index(batch.groups), lengths)
    adv = _group_normalise(ret, keys, config.norm, config.eps)
    return _split(adv, lengths)


# --------------------------------------------------------------------------------------------
# Reward transforms
# --------------------------------------------------------------------------------------------


def _channels(batch: CreditBatch, config: CreditConfig) -> list[list[np.ndarray]]:
    out = []
    for name in config.gate_channels:
        if name == "reward":
            out.append(batch.rewards)
        elif name in batch.extras:
            out.append(batch.extras[name])
        else:
            raise ValueError(
                f"reward channel {name!r} is not in the batch: available are 'reward' and "
                f"{sorted(batch.extras)}; set CreditConfig.gate_channels accordingly"
            )
    return out


def _combine(batch: CreditBatch, config: CreditConfig, gated: bool) -> CreditBatch:
    chans = _channels(batch, config)
    weights = config.gate_weights or (1.0,) * len(chans)
    new = []
    for i in range(len(batch)):
        r = np.zeros(batch.rewards[i].shape[0])
        open_ = True
        for k, ch in enumerate(chans):
            if open_:
                r = r + weights[k] * ch[i]
            if gated and k < len(config.gate_thresholds):
                # Channel k passes on the trajectory's total; later channels need all to pass.
                open_ = open_ and bool(ch[i].sum() >= config.gate_thresholds[k])
        new.append(r)
    extras = dict(batch.extras)
    extras.setdefault("reward_raw", batch.rewards)
    return batch.replace(rewards=new, extras=extras)


@register_transform("gated")
def gated(batch: CreditBatch, config: CreditConfig) -> CreditBatch:
    """Gated reward accumulation (G-RA; Sun et al. 2025), generalised to prioritised channels.

    Channels ``c_0..c_{K-1}`` = ``config.gate_channels`` (highest priority first), each N arrays
    ``[T_i]``; thresholds ``tau_0..tau_{K-2}``; weights ``w_k``. For trajectory i:

        pass_k = (sum_t c_k[i, t] >= tau_k)
        open_0 = 1,   open_k = pass_0 * ... * pass_{k-1}
        r'[i, t] = sum_k open_k * w_k * c_k[i, t]

    With two channels (outcome, immediate) this is G-RA: immediate rewards accumulate only if
    the outcome reaches its threshold; the outcome itself always counts. The new rewards
    replace ``batch.rewards``; the old ones are kept as ``extras["reward_raw"]``.
    """
    return _combine(batch, config, gated=True)


@register_transform("direct")
def direct(batch: CreditBatch, config: CreditConfig) -> CreditBatch:
    """Direct (ungated) accumulation: ``r'[i, t] = sum_k w_k * c_k[i, t]`` over the same channels
    as ``gated`` (the baseline that G-RA is compared with)."""
    return _combine(batch, config, gated=False)

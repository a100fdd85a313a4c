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

import itertools
from collections.abc import Callable, Sequence

import numpy as np

from agentgym.trainers.credit_batch import CreditBatch, CreditConfig

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
    "step_group_stats",
    "turn_returns",
    "spa_rewards",
]

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
    keys, anchored = _step_group_keys(batch)
    step = _group_normalise(returns, keys, config.norm, config.eps, valid=anchored)
    return ep, step


def _step_group_keys(batch: CreditBatch) -> tuple[np.ndarray, np.ndarray]:
    """``[sum T_i]`` int64 step-group key of every turn (turns concatenated) and ``[sum T_i]``
    bool mask of the turns that have an anchor (the only ones ever put in a step group).

    Key = (group, anchor) as one int64: dense anchor ids, 0 reserved for ``""``.
    """
    lengths = batch.lengths
    gidx = np.repeat(_group_index(batch.groups), lengths)
    flat_anchors = list(itertools.chain.from_iterable(batch.anchors))
    # dict.fromkeys dedupes at C speed, so the Python-level loop runs over distinct anchors only.
    table: dict[str, int] = {"": 0}
    for a in dict.fromkeys(flat_anchors):
        table.setdefault(a, len(table))
    aidx = np.fromiter(map(table.__getitem__, flat_anchors), np.int64, len(flat_anchors))
    return gidx * np.int64(len(table)) + aidx, aidx != 0


def step_group_stats(batch: CreditBatch) -> dict[str, float]:
    """How much GiGPO's anchor-state grouping has to work with in ``batch``, whatever the
    estimator: it describes the data, so every method logs it and runs compare on it.

    * ``credit/nonsingleton_frac``: share of ALL turns whose (group, anchor) step group has
      >= 2 members (turns without an anchor count as ungrouped). Only these turns get a non-zero
      GiGPO step advantage; Feng et al. 2025 report that most states recur (> 65%).
    * ``credit/step_groups``: number of distinct step groups (anchored turns only).
    * ``credit/anchored_frac``: share of turns that carry an anchor at all.

    A batch without turns gives 0 for all three.
    """
    total = int(batch.lengths.sum())
    if total == 0:
        return dict.fromkeys(
            ("credit/nonsingleton_frac", "credit/step_groups", "credit/anchored_frac"), 0.0
        )
    keys, anchored = _step_group_keys(batch)
    _, inv, counts = np.unique(keys[anchored], return_inverse=True, return_counts=True)
    shared = int((counts[inv.reshape(-1)] >= 2).sum())
    return {
        "credit/nonsingleton_frac": shared / total,
        "credit/step_groups": float(counts.shape[0]),
        "credit/anchored_frac": float(anchored.sum()) / total,
    }


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
    was executable, else 0). The env rewards in ``batch.rewards`` are NOT used; a per-turn
    ``batch.extras["penalty"]`` (the trainer's ``--invalid-penalty`` for malformed replies) is
    subtracted, so the format penalty that every other estimator sees in the rewards holds for
    SPA too.
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
    rewards = [
        c + config.spa_beta * g for c, g in zip(batch.extras["progress"], batch.extras[g_key])
    ]
    if "penalty" in batch.extras:  # the trainer's invalid-format penalty, charged as for others
        rewards = [r - p for r, p in zip(rewards, batch.extras["penalty"])]
    return rewards


@register_estimator("spa")
def spa(batch: CreditBatch, config: CreditConfig) -> list[np.ndarray]:
    """SPA-RL (Wang et al. 2025, "Reinforcing LLM Agents via Stepwise Progress Attribution").

        r_t = c_t + spa_beta * g_t - penalty_t              (see :func:`spa_rewards`)
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

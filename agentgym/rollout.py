"""Multi-turn rollout: a policy plays episodes in an :class:`~agentgym.pool.EnvPool`.

Episodes are jobs ``(group, member)``. Group ``g`` uses seed ``seed + g`` (or the task given in
``tasks[g]``), so the ``group_size`` members of a group play the same task from the same state,
as GRPO and GiGPO need. Members need not run at the same time: a free env slot takes the next job,
and all active slots are stepped together, one batched policy call per turn.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from agentgym.core import Observation
from agentgym.policies import Policy, TurnContext
from agentgym.pool import EnvPool
from agentgym.tools import tool_error_note
from agentgym.trajectory import (
    TOKEN_KEYS,
    TokenRecord,
    Trajectory,
    TrajectoryWriter,
    Turn,
    episode_metrics,
)

__all__ = [
    "rollout",
    "RolloutObserver",
    "EpisodeStats",
    "RolloutStats",
    "summarize",
    "episode_metric_sums",
]


class RolloutObserver(Protocol):
    """Hears about each episode's end in env slot ``index``; may add to ``traj.meta``."""

    def episode_done(self, index: int, traj: Trajectory) -> None: ...


@dataclass
class _Slot:
    traj: Trajectory
    ctx: TurnContext
    last_text: str = ""


@dataclass
class EpisodeStats:
    """Counts over a set of episodes: the one episode summary that ``agentgym rollout``, the
    trainer's per-step metrics, its held-out evaluation and ``agentgym eval``'s summary share
    (rates are computed from it).

    Per-turn counts (``turns``, ``invalid``, ``format_ok``) cover the executed turns only
    (:attr:`~agentgym.trajectory.Turn.executed`): the turn the eval harness records when it
    stops an episode past its time limit was never sent to the env. Outside the harness every
    turn is executed."""

    episodes: int = 0
    won: int = 0
    turns: int = 0
    invalid: int = 0
    crashed: int = 0
    seconds: float = 0.0
    #: sum of episode returns, and turns whose reply had a parsable action
    return_sum: float = 0.0
    format_ok: int = 0
    #: episodes cut short (turn limit, timeout), and those the eval harness timed out
    #: (``meta["timed_out"]``)
    truncated: int = 0
    timed_out: int = 0
    #: executed turns whose reply used the whole token budget without ending (a model policy's
    #: ``finish_reason`` ``"length"``): cut off, often in the middle of the action
    cut: int = 0
    extras: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, trajs: Sequence[Trajectory]) -> EpisodeStats:
        s = cls()
        for t in trajs:
            turns = t.executed_turns
            s.episodes += 1
            s.won += int(t.won)
            s.turns += len(turns)
            s.invalid += sum(not x.valid for x in turns)
            s.crashed += int(t.crashed)
            s.return_sum += t.return_
            s.format_ok += sum(x.format_ok for x in turns)
            s.truncated += int(t.truncated)
            s.timed_out += int(bool(t.meta.get("timed_out")))
            s.cut += sum(x.policy.get("finish_reason") == "length" for x in turns)
        return s

    @property
    def success_rate(self) -> float:
        return self.won / self.episodes if self.episodes else 0.0

    @property
    def mean_turns(self) -> float:
        return self.turns / self.episodes if self.episodes else 0.0

    @property
    def mean_return(self) -> float:
        return self.return_sum / self.episodes if self.episodes else 0.0

    def counts(self) -> dict[str, float]:
        """The additive fields (sum them over ranks or shards, then rebuild with ``**``)."""
        return {
            "episodes": self.episodes,
            "won": self.won,
            "turns": self.turns,
            "invalid": self.invalid,
            "crashed": self.crashed,
            "return_sum": self.return_sum,
            "format_ok": self.format_ok,
            "truncated": self.truncated,
            "timed_out": self.timed_out,
            "cut": self.cut,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "episodes": self.episodes,
            "success_rate": self.success_rate,
            "mean_turns": self.mean_turns,
            "invalid_action_rate": self.invalid / self.turns if self.turns else 0.0,
            "reply_cut_rate": self.cut / self.turns if self.turns else 0.0,
            "crashed": self.crashed,
            "seconds": round(self.seconds, 3),
        }


#: The former name of :class:`EpisodeStats`.
RolloutStats = EpisodeStats


def summarize(trajs: Sequence[Trajectory]) -> EpisodeStats:
    """:class:`EpisodeStats` of ``trajs``."""
    return EpisodeStats.of(trajs)


def episode_metric_sums(trajs: Sequence[Trajectory]) -> dict[str, float]:
    """Per-episode env metrics (:func:`~agentgym.trajectory.episode_metrics`) summed over
    episodes; an episode that lacks a name (a crash, a turn limit before the env's end) counts 0
    for it. Divide by the number of episodes for rates. ``{}`` when no episode reports metrics."""
    sums: dict[str, float] = {}
    for t in trajs:
        for k, v in episode_metrics(t.turns[-1].info if t.turns else None).items():
            sums[k] = sums.get(k, 0.0) + v
    return sums


def _with_tool_error(obs: Observation, extras: dict[str, Any]) -> Observation:
    """The next observation, opened by what was wrong with the reply's tool call, if it was.

    The policy could not turn a malformed call into an action, so the env only saw an empty or
    invalid one; the model learns what it got wrong from this line (:mod:`agentgym.tools`)."""
    problem = extras.get("tool_call_error")
    if not problem:
        return obs
    return dataclasses.replace(obs, text=f"{tool_error_note(problem)}\n\n{obs.text}")


def rollout(
    pool: EnvPool,
    policy: Policy,
    *,
    num_groups: int,
    group_size: int = 1,
    seed: int = 0,
    tasks: Sequence[Any] | None = None,
    history_len: int = 2,
    writer: TrajectoryWriter | None = None,
    on_episode: Callable[[Trajectory], None] | None = None,
    run_id: str | None = None,
    skip: set[str] | None = None,
    observer: RolloutObserver | None = None,
) -> list[Trajectory]:
    """Play ``num_groups * group_size`` episodes; return their trajectories (finish order).

    Args:
        tasks: optional per-group task selectors passed as ``reset(options={"task": tasks[g]})``.
        writer: each finished trajectory is appended as soon as it ends.
        on_episode: called with each finished trajectory (progress bars, live metrics).
        run_id: prefix of trajectory ids (default: random); ids are ``{run_id}-g{g}-m{m}``, so a
            resumed run can ``skip`` the ids it already has.
        observer: told when an episode ends in env slot ``i`` (before it is written), so a
            harness wrapping the pool can put its own per-episode data into ``traj.meta``.
    """
    if group_size < 1 or num_groups < 1:
        raise ValueError("num_groups and group_size must be >= 1")
    run_id = run_id or uuid.uuid4().hex[:8]
    skip = skip or set()
    jobs = [
        (g, m)
        for g in range(num_groups)
        for m in range(group_size)
        if f"{run_id}-g{g}-m{m}" not in skip
    ]
    jobs.reverse()  # pop() from the end takes them in order
    slots: dict[int, _Slot] = {}
    done: list[Trajectory] = []
    env_id = pool.spec.id
    spec_tools = getattr(pool.spec, "tools", None)

    def start(indices: list[int]) -> None:
        reqs: dict[int, Any] = {}
        meta: dict[int, tuple[int, int]] = {}
        for i in indices:
            if not jobs:
                break
            g, m = jobs.pop()
            opts = {"task": tasks[g]} if tasks is not None else None
            reqs[i] = (seed + g, opts)
            meta[i] = (g, m)
        if not reqs:
            return
        for i, (obs, info) in pool.reset_many(reqs).items():
            g, m = meta[i]
            traj = Trajectory(
                id=f"{run_id}-g{g}-m{m}",
                group=f"{run_id}-g{g}",
                env=env_id,
                task=str(info.get("task_id", "")),
                seed=seed + g,
                meta={
                    "policy": getattr(policy, "name", type(policy).__name__),
                    "task_text": obs.task,
                },
            )
            if info.get("crashed"):
                traj.crashed = traj.truncated = True
                finish(traj)
                continue
            slots[i] = _Slot(
                traj=traj, ctx=TurnContext(env_id=env_id, observation=obs, tools=spec_tools)
            )

    def finish(traj: Trajectory) -> None:
        done.append(traj)
        if writer is not None:
            writer.write(traj)
        if on_episode is not None:
            on_episode(traj)

    start(list(range(pool.num_envs)))
    while slots:
        active = sorted(slots)
        if policy.needs_expert:
            experts = pool.call_many("expert_action", active)
            for i in active:
                slots[i].ctx.expert_action = experts.get(i)
        t0 = time.perf_counter()
        outputs = policy.act([slots[i].ctx for i in active])
        policy_s = time.perf_counter() - t0
        results = pool.step_many({i: o.action for i, o in zip(active, outputs)})
        freed = []
        for i, out in zip(active, outputs):
            slot, res = slots[i], results[i]
            extras = dict(out.extras)
            tokens = TokenRecord.from_extras(extras)
            slot.traj.turns.append(
                Turn(
                    observation=slot.ctx.observation.text,
                    action=out.action,
                    reward=res.reward,
                    anchor=slot.ctx.observation.anchor,
                    valid=bool(res.info.get("valid", True)) and out.format_ok,
                    info=dict(res.info),
                    tokens=tokens,
                    format_ok=out.format_ok,
                    response=out.response
                    if out.response and out.response != f"<action>{out.action}</action>"
                    else None,
                    policy={k: v for k, v in extras.items() if k not in TOKEN_KEYS}
                    if tokens is not None
                    else extras,
                    policy_s=round(policy_s / len(active), 6),
                )
            )
            slot.ctx.history.append((slot.ctx.observation.text, out.action))
            slot.ctx.observation = _with_tool_error(res.observation, extras)
            slot.ctx.turn += 1
            if res.done:
                t = slot.traj
                t.won = bool(res.info.get("won", False))
                t.truncated = res.truncated
                t.crashed = bool(res.info.get("crashed", False))
                t.meta["final_observation"] = res.observation.text
                if observer is not None:
                    observer.episode_done(i, t)
                finish(t)
                del slots[i]
                freed.append(i)
        if freed:
            start(freed)
    return done

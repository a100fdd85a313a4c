"""The evaluation harness behind ``agentgym eval``: resumable, timed, retried, summarised.

A run lives in one folder ``DIR``::

    DIR/config.json      what was asked (env, policy, seed, groups ...) + the run id + sessions
    DIR/episodes.jsonl   one trajectory record per finished episode, appended as it ends
    DIR/screenshots/     PNG observations of GUI envs, DIR/screenshots/<episode id>/turn-<k>.png
    DIR/summary.json     metrics with 95 % confidence intervals, per task type when known
    DIR/summary.md       the same as Markdown tables

Episodes are played by :func:`agentgym.rollout.rollout` over an :class:`agentgym.pool.EnvPool`, the
single episode loop of the project. The harness adds three things around it without touching it:

* **Resume.** Episode ids are ``{run_id}-g{g}-m{m}`` and the run id is stored in ``config.json``;
  ``--resume`` passes the ids already in ``episodes.jsonl`` as ``skip``, so an interrupted run
  (Ctrl-C, SIGKILL, a dead server) continues where it stopped and never plays an episode twice.
* **Per-episode timeouts.** :class:`TimedPool` wraps the pool: when an episode has run longer than
  ``timeout_s`` (env time + policy time), its next step is not sent to the env; the episode ends
  ``truncated`` with ``info["timed_out"] = True`` and the run goes on. A single env step that hangs
  is covered by the pool's own ``step_timeout`` (the worker is replaced, its episodes are marked
  crashed).
* **Retries.** :class:`RetryingPolicy` retries a policy call that failed with a transient error
  (connection refused, timeouts, HTTP 429/5xx) with exponential backoff; if the policy stays down,
  the run stops cleanly and can be resumed.

The retries live in :mod:`.retry`, the episode records (``episodes.jsonl`` written and read back)
in :mod:`.episodes`, the timeouts in :mod:`.timed_pool`; this module holds the run and its
summary, and re-exports the names of the others.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import agentgym.evaluation.stats as stats
from agentgym.evaluation.episodes import EPISODES_FILE, EpisodeSink, load_episodes, task_type_of
from agentgym.evaluation.retry import RetryingPolicy, is_transient
from agentgym.evaluation.timed_pool import TimedPool
from agentgym.policies import Policy
from agentgym.rollout import EpisodeStats, rollout
from agentgym.trajectory import Trajectory, TrajectoryWriter, episode_metrics
from agentgym.utils import atomic_write, atomic_write_json

__all__ = [
    "EvalConfig",
    "EvalInterrupted",
    "RetryingPolicy",
    "TimedPool",
    "run_eval",
    "summarize",
    "write_summary",
    "load_episodes",
    "task_type_of",
    "EPISODES_FILE",
    "CONFIG_FILE",
]

CONFIG_FILE = "config.json"
SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"

# Fields that must match between a run and its resumption (the rest may change freely).
_IDENTITY_FIELDS = ("env", "split", "policy", "group_size", "seed", "env_kwargs", "policy_kwargs")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """One evaluation.

    Attributes:
        env: registered env id.
        policy: policy string (``random``, ``expert``, ``hf:/path``, ``openai:URL#model``, ``vllm:/path``).
        episodes: episodes to play; rounded up to a multiple of ``group_size``.
        group_size: episodes per task/seed (``G``; pass@G is reported when G > 1).
        seed: group ``g`` resets with seed ``seed + g``; also seeds the policy.
        parallel: env copies stepped together (and the policy's batch size).
        split: passed to the env as ``split=`` when set (e.g. ALFWorld's ``valid_unseen``).
        timeout_s: wall-clock limit of one episode (env + policy); ``None``: no limit.
        env_kwargs: overrides of the spec's kwargs.
        policy_kwargs: keyword arguments of the policy constructor (``max_tokens``, ...).
        backend: EnvPool backend (``process``, ``sync``, ``ray``).
        retries: extra attempts of a policy call that failed transiently.
        backoff_s: first retry delay; doubles per attempt.
        run_id: prefix of episode ids; chosen at random for a new run, kept on resume.
    """

    env: str
    policy: str = "random"
    episodes: int = 10
    group_size: int = 1
    seed: int = 0
    parallel: int = 8
    split: str | None = None
    timeout_s: float | None = None
    env_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    policy_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    backend: str = "auto"
    retries: int = 3
    backoff_s: float = 2.0
    run_id: str = ""

    def __post_init__(self) -> None:
        if self.episodes < 1:
            raise ValueError(f"episodes must be >= 1, got {self.episodes}")
        if self.group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {self.group_size}")
        if self.parallel < 1:
            raise ValueError(f"parallel must be >= 1, got {self.parallel}")
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0 (or unset for no limit), got {self.timeout_s}")
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")

    @property
    def num_groups(self) -> int:
        return -(-self.episodes // self.group_size)

    @property
    def total_episodes(self) -> int:
        return self.num_groups * self.group_size

    def episode_ids(self) -> list[str]:
        return [
            f"{self.run_id}-g{g}-m{m}"
            for g in range(self.num_groups)
            for m in range(self.group_size)
        ]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EvalConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class EvalInterrupted(RuntimeError):
    """The run stopped before all episodes finished (policy down, Ctrl-C); resume it later."""


# --------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------
def _trajectory(rec: Mapping[str, Any]) -> Trajectory:
    """A record as a :class:`Trajectory`, read as leniently as the summary always read records
    (``agentgym report`` summarises any JSONL of them): a missing id, or ``null`` turns, turn
    info or meta, are taken as empty."""
    turns = [{**t, "info": t.get("info") or {}} for t in rec.get("turns") or []]
    return Trajectory.from_dict(
        {**rec, "id": rec.get("id", ""), "turns": turns, "meta": rec.get("meta") or {}}
    )


def _metrics(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The metrics of ``records`` with their intervals. The counts are
    :class:`~agentgym.rollout.EpisodeStats` (executed turns only, as in training); the t
    intervals need the per-episode values behind two of them."""
    trajs = [_trajectory(r) for r in records]
    c = EpisodeStats.of(trajs)
    # A record's stored "return" is what the summary reports (written as the sum of its turn
    # rewards, which is Trajectory.return_, the value for records without it).
    returns = [float(r["return"]) if "return" in r else t.return_ for r, t in zip(records, trajs)]
    turns = [len(t.executed_turns) for t in trajs]
    # The env's own per-episode metrics (info["metrics"] of the last turn; missing = 0).
    last = [episode_metrics(t.turns[-1].info if t.turns else None) for t in trajs]
    names = sorted({k for m in last for k in m})
    env_metrics = {k: stats.mean([m.get(k, 0.0) for m in last]).to_dict() for k in names}
    return {
        "episodes": c.episodes,
        "success_rate": stats.rate(c.won, c.episodes).to_dict(),
        "mean_reward": stats.mean(returns).to_dict(),
        "mean_turns": stats.mean(turns, lower=0.0).to_dict(),
        "invalid_action_rate": stats.rate(c.invalid, c.turns).to_dict(),
        "timeout_rate": stats.rate(c.timed_out, c.episodes).to_dict(),
        "reply_cut_rate": stats.rate(c.cut, c.turns).to_dict(),
        **({"env_metrics": env_metrics} if env_metrics else {}),
        "won": c.won,
        "timed_out": c.timed_out,
        "crashed": c.crashed,
        "truncated": c.truncated,
        "turns": c.turns,
    }


def summarize(
    records: Sequence[Mapping[str, Any]], *, config: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Summary metrics of episode records (see module docs for the intervals used)."""
    config = dict(config or {})
    s: dict[str, Any] = {
        "env": config.get("env") or (records[0].get("env") if records else ""),
        "split": config.get("split"),
        "policy": config.get(
            "policy", (records[0].get("meta") or {}).get("policy") if records else ""
        ),
        "run_id": config.get("run_id", ""),
        "planned_episodes": None,
        "confidence": 0.95,
        "intervals": {
            "rates": "Wilson score interval",
            "means": "Student-t interval",
            "note": "episodes are treated as independent",
        },
        **_metrics(records),
    }
    if config.get("env"):
        s["planned_episodes"] = EvalConfig.from_dict(config).total_episodes
    group_size = int(config.get("group_size", 1) or 1)
    if group_size > 1:
        s["intervals"]["note"] += (
            f"; with group_size={group_size} the members of a group share a task, so the "
            "intervals are somewhat too narrow"
        )
        groups: dict[str, list[Mapping[str, Any]]] = {}
        for r in records:
            groups.setdefault(str(r.get("group", r.get("id"))), []).append(r)
        full = [g for g in groups.values() if len(g) == group_size]
        s[f"pass@{group_size}"] = stats.rate(
            sum(any(bool(x.get("won")) for x in g) for g in full), len(full)
        ).to_dict()
    by_type: dict[str, list[Mapping[str, Any]]] = {}
    for r in records:
        tt = task_type_of(r)
        if tt is not None:
            by_type.setdefault(tt, []).append(r)
    if by_type:
        s["by_task_type"] = {k: _metrics(v) for k, v in sorted(by_type.items())}
    secs = [float((r.get("meta") or {}).get("seconds", 0.0)) for r in records]
    s["mean_episode_seconds"] = round(sum(secs) / len(secs), 4) if secs else 0.0
    wall = sum(float(x.get("seconds", 0.0)) for x in config.get("sessions", []) or [])
    if wall:
        s["wall_seconds"] = round(wall, 3)
        s["episodes_per_second"] = round(len(records) / wall, 4)
    return s


def _est(d: Mapping[str, Any]) -> stats.Estimate:
    return stats.Estimate(d["value"], d["low"], d["high"], d["n"])


def summary_markdown(s: Mapping[str, Any]) -> str:
    """The summary as Markdown (a metrics table and, when known, a per-task-type table)."""
    lines = [
        f"# Evaluation: {s.get('env', '')}" + (f" ({s['split']} split)" if s.get("split") else ""),
        "",
        f"Policy `{s.get('policy', '')}`, run `{s.get('run_id', '')}`: "
        f"{s['episodes']} episodes"
        + (f" of {s['planned_episodes']} planned" if s.get("planned_episodes") else "")
        + f"; {s['timed_out']} timed out, {s['crashed']} crashed.",
        "",
        "| metric | value | 95% CI | n |",
        "|---|---|---|---|",
    ]

    def row(name: str, d: Mapping[str, Any], percent: bool) -> None:
        e = _est(d)
        if e.n == 0:
            lines.append(f"| {name} | n/a | | 0 |")
            return
        val = f"{100 * e.value:.1f}%" if percent else f"{e.value:.3f}"
        if e.low is None or e.high is None:
            ci = ""
        elif percent:
            ci = f"[{100 * e.low:.1f}%, {100 * e.high:.1f}%]"
        else:
            ci = f"[{e.low:.3f}, {e.high:.3f}]"
        lines.append(f"| {name} | {val} | {ci} | {e.n} |")

    row("success rate", s["success_rate"], True)
    row("mean reward", s["mean_reward"], False)
    row("mean turns", s["mean_turns"], False)
    row("invalid-action rate (per turn)", s["invalid_action_rate"], True)
    row("timeout rate", s["timeout_rate"], True)
    if s.get("reply_cut_rate"):  # summaries written before it have none
        row("replies cut by the token budget (per turn)", s["reply_cut_rate"], True)
    for k, v in s.items():
        if k.startswith("pass@"):
            row(f"{k} (per group)", v, True)
    for k, v in (s.get("env_metrics") or {}).items():
        row(f"{k} (env metric, mean per episode)", v, False)
    if s.get("by_task_type"):
        lines += [
            "",
            "## By task type",
            "",
            "| task type | episodes | success rate [95% CI] | mean reward | mean turns | invalid |",
            "|---|---|---|---|---|---|",
        ]
        for tt, m in s["by_task_type"].items():
            lines.append(
                f"| {tt} | {m['episodes']} | {_est(m['success_rate']).fmt(percent=True)} | "
                f"{_est(m['mean_reward']).fmt()} | {_est(m['mean_turns']).fmt()} | "
                f"{_est(m['invalid_action_rate']).fmt(percent=True)} |"
            )
    lines += [
        "",
        "Intervals: Wilson score for rates, Student-t for means; episodes treated as independent.",
        "",
    ]
    return "\n".join(lines)


def write_summary(out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Recompute ``summary.json`` and ``summary.md`` of a run folder from its episodes."""
    out = Path(out_dir)
    cfg_path = out / CONFIG_FILE
    config = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
    records = load_episodes(out)
    if config.get("run_id"):
        planned = set(EvalConfig.from_dict(config).episode_ids())
        records = [r for r in records if r["id"] in planned]
    s = summarize(records, config=config)
    atomic_write_json(out / SUMMARY_JSON, s)
    with atomic_write(out / SUMMARY_MD) as f:
        f.write(summary_markdown(s))
    return s


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------
def _prepare(config: EvalConfig, out: Path, resume: bool) -> tuple[EvalConfig, dict[str, Any]]:
    cfg_path = out / CONFIG_FILE
    if cfg_path.exists():
        stored = json.loads(cfg_path.read_text())
        if not resume:
            raise ValueError(
                f"{out} already holds an evaluation (run {stored.get('run_id')!r}); pass --resume "
                "to continue it or choose a new --out folder"
            )
        old = EvalConfig.from_dict(stored)
        for name in _IDENTITY_FIELDS:
            if getattr(old, name) != getattr(config, name):
                raise ValueError(
                    f"cannot resume {out}: it was started with {name}={getattr(old, name)!r} but "
                    f"this run asks for {name}={getattr(config, name)!r}; use the same value or a "
                    "new --out folder"
                )
        if config.episodes < old.episodes:
            raise ValueError(
                f"cannot resume {out} with fewer episodes ({config.episodes}) than it was started "
                f"with ({old.episodes}); pass --episodes {old.episodes} or more"
            )
        config = dataclasses.replace(config, run_id=old.run_id)
        meta = {
            k: v
            for k, v in stored.items()
            if k not in {f.name for f in dataclasses.fields(EvalConfig)}
        }
    else:
        if (out / EPISODES_FILE).exists() and (out / EPISODES_FILE).stat().st_size:
            raise ValueError(
                f"{out / EPISODES_FILE} exists but {CONFIG_FILE} does not; choose a new --out folder"
            )
        config = dataclasses.replace(config, run_id=config.run_id or uuid.uuid4().hex[:8])
        meta = {"created": time.strftime("%Y-%m-%dT%H:%M:%S"), "sessions": []}
    return config, meta


def _save_config(out: Path, config: EvalConfig, meta: Mapping[str, Any]) -> None:
    atomic_write_json(out / CONFIG_FILE, {**config.to_dict(), **meta})


def run_eval(
    config: EvalConfig,
    out_dir: str | os.PathLike[str],
    *,
    resume: bool = False,
    progress: bool = True,
    policy: Policy | None = None,
) -> dict[str, Any]:
    """Play the episodes of ``config`` not yet in ``out_dir``; write records and the summary.

    Args:
        policy: an already built policy (default: ``make_policy(config.policy, ...)``).

    Returns the summary dict. Raises :class:`EvalInterrupted` (after writing the summary of what
    finished) when the policy fails beyond its retries or the run is interrupted.
    """
    import agentgym
    from agentgym.policies import make_policy
    from agentgym.pool import EnvPool

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    agentgym.load_plugins()
    env_spec = agentgym.spec(config.env)  # fail early on an unknown id
    config, meta = _prepare(config, out, resume)
    _save_config(out, config, meta)

    planned = config.episode_ids()
    done_ids = {r["id"] for r in load_episodes(out)} & set(planned)
    todo = len(planned) - len(done_ids)
    if todo == 0:
        return write_summary(out)

    env_kwargs = dict(config.env_kwargs)
    if config.split is not None:
        env_kwargs["split"] = config.split
    if policy is None:
        policy = make_policy(config.policy, seed=config.seed, **config.policy_kwargs)
    retrying = RetryingPolicy(policy, retries=config.retries, backoff_s=config.backoff_s)

    from tqdm import tqdm

    won_before = sum(bool(r.get("won")) for r in load_episodes(out) if r["id"] in done_ids)
    counts = {"n": len(done_ids), "won": won_before}
    bar = tqdm(
        total=len(planned),
        initial=len(done_ids),
        desc=f"eval {config.env}",
        unit="ep",
        disable=not progress,
        file=sys.stderr,
    )

    def on_episode(t: Trajectory) -> None:
        counts["n"] += 1
        counts["won"] += int(t.won)
        bar.update(1)
        bar.set_postfix(success=f"{counts['won'] / counts['n']:.1%}", refresh=False)

    # Recorded before playing, so a session that is killed still shows up (as "running").
    session: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "status": "running",
        "episodes": 0,
        "seconds": 0.0,
    }
    meta.setdefault("sessions", []).append(session)
    _save_config(out, config, meta)
    t0 = time.perf_counter()
    error: BaseException | None = None
    writer = TrajectoryWriter(out / EPISODES_FILE)
    sink = EpisodeSink(out, writer)
    try:
        with EnvPool(
            env_spec,
            num_envs=min(config.parallel, todo),
            backend=config.backend,
            env_kwargs=env_kwargs,
            step_timeout=config.timeout_s,
        ) as pool:
            timed_pool = TimedPool(pool, config.timeout_s)
            sink.images = timed_pool.images
            rollout(
                timed_pool,  # type: ignore[arg-type]
                retrying,
                num_groups=config.num_groups,
                group_size=config.group_size,
                seed=config.seed,
                writer=sink,  # type: ignore[arg-type]
                on_episode=on_episode,
                run_id=config.run_id,
                skip=done_ids,
                observer=timed_pool,
            )
    except (Exception, KeyboardInterrupt) as e:
        error = e
    finally:
        bar.close()
        writer.close()
        with contextlib.suppress(Exception):
            close = getattr(policy, "close", None)
            if callable(close):
                close()
        session["episodes"] = sink.written
        session["seconds"] = round(time.perf_counter() - t0, 3)
        session["policy_retries"] = retrying.retried
        session["status"] = "finished" if error is None else "stopped"
        if error is not None:
            session["error"] = f"{type(error).__name__}: {error}"
        _save_config(out, config, meta)
        summary = write_summary(out)
    if error is not None:
        if isinstance(error, KeyboardInterrupt):
            raise EvalInterrupted(
                f"interrupted after {summary['episodes']}/{len(planned)} episodes; "
                f"continue with --resume --out {out}"
            ) from error
        if is_transient(error):
            raise EvalInterrupted(
                f"stopped after {summary['episodes']}/{len(planned)} episodes because the policy "
                f"kept failing ({error}); continue with --resume --out {out}"
            ) from error
        raise error
    return summary

"""Trajectory records: one JSON line per episode, written append-safely.

Schema (one line of a ``.jsonl`` file)::

    {"id": str,            # unique episode id
     "group": str,         # episodes reset to the same task/seed share a group (GRPO/GiGPO)
     "env": str,           # env id, e.g. "textworld/Simple-v0"
     "task": str,          # task id the env reported at reset
     "seed": int | null,
     "turns": [{"observation": str,   # text the agent saw before acting
                "action": str,        # action sent to the env
                "reward": float,      # reward of this step
                "anchor": str,        # canonical state key of the observation ("" = none)
                "valid": bool,        # the env accepted the action (and the reply parsed)
                "info": {...}}],      # step info (won, score, ...), plus the annotations below
     "won": bool, "return": float,    # sum of rewards
     "truncated": bool,               # cut by the turn limit or a crashed worker
     "crashed": bool,                 # the env worker died during this episode
     "meta": {...}}                   # free-form (policy name, task text, timings)

A turn's ``info`` in the file also carries the rollout's annotations of that turn: ``format_ok``,
``response`` (the raw reply, when more than ``<action>...</action>``), ``policy`` (a model
policy's ``prompt_ids`` / ``response_ids`` / ``logprobs`` / ``policy_version`` and other backend
data such as ``usage``) and ``policy_s``. In memory these are typed fields of :class:`Turn`
(``tokens: TokenRecord | None``, ``format_ok``, ``response``, ``policy``, ``policy_s``) and
``Turn.info`` is the env's alone; :meth:`Turn.to_dict` / ``Turn(...)`` map between the two, so
files of every version load and the JSON layout readers rely on is unchanged. Episode data of the
eval harness (timing, reset info) is written to the record's ``meta`` (files of older versions
kept it in the last turn's ``info["episode"]``, where it stays when they are read).

Writers append each line with one ``write`` on an ``O_APPEND`` descriptor and flush it, so
concurrent writers never interleave lines and a crash loses at most the line being written;
readers skip a torn last line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "Turn",
    "TokenRecord",
    "Trajectory",
    "TrajectoryWriter",
    "episode_metrics",
    "read_trajectories",
    "scan_records",
    "write_trajectories",
]


def episode_metrics(last_info: Mapping[str, Any] | None) -> dict[str, float]:
    """An episode's own env metrics: the numeric entries of its last turn's ``info["metrics"]``
    (e.g. SWE's ``completion`` / ``modification`` / ``resolution``); ``{}`` when it has none."""
    m = (last_info or {}).get("metrics")
    if not isinstance(m, Mapping):
        return {}
    return {str(k): float(v) for k, v in m.items() if isinstance(v, (int, float))}


#: ``info`` keys of the JSON layout that hold rollout annotations, not env data; in memory they
#: live in typed :class:`Turn` fields (see :meth:`Turn.__post_init__`).
ANNOTATION_KEYS = ("format_ok", "response", "policy", "policy_s")
TOKEN_KEYS = ("prompt_ids", "response_ids", "logprobs", "policy_version")


@dataclasses.dataclass(frozen=True)
class TokenRecord:
    """What a model policy generated for one turn: the prompt's token ids, the reply's token
    ids and their log-probs under the sampling distribution (one per reply token), and the
    version of the weights that produced them (the trainer's step count; ``None``: unknown)."""

    prompt_ids: tuple[int, ...]
    response_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    policy_version: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompt_ids", tuple(int(x) for x in self.prompt_ids))
        object.__setattr__(self, "response_ids", tuple(int(x) for x in self.response_ids))
        object.__setattr__(self, "logprobs", tuple(float(x) for x in self.logprobs))

    @classmethod
    def from_extras(cls, extras: Mapping[str, Any]) -> TokenRecord | None:
        """The token data in a policy's ``extras`` (``None`` if it has no ``prompt_ids``)."""
        if "prompt_ids" not in extras:
            return None
        return cls(
            tuple(extras["prompt_ids"]),
            tuple(extras.get("response_ids") or ()),
            tuple(extras.get("logprobs") or ()),
            extras.get("policy_version"),
        )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "prompt_ids": list(self.prompt_ids),
            "response_ids": list(self.response_ids),
            "logprobs": list(self.logprobs),
        }
        if self.policy_version is not None:
            d["policy_version"] = self.policy_version
        return d


@dataclasses.dataclass
class Turn:
    """One agent turn.

    ``info`` holds only what the env's ``step`` returned. What the policy produced is typed:
    ``tokens`` (a model policy's ids and log-probs, else ``None``), ``format_ok`` (the reply had
    a parsable action), ``response`` (the raw reply when it was more than ``<action>...``),
    ``policy`` (other backend data, e.g. an OpenAI server's ``usage``) and ``policy_s`` (this
    turn's share of the batched policy call, seconds).

    Records written before these fields existed kept them in ``info``; building a Turn moves
    them out (so ``Turn(info={"format_ok": False, "policy": {...}})`` reads as it always did).
    """

    observation: str
    action: str
    reward: float = 0.0
    anchor: str = ""
    valid: bool = True
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    tokens: TokenRecord | None = None
    format_ok: bool = True
    response: str | None = None
    policy: dict[str, Any] = dataclasses.field(default_factory=dict)
    policy_s: float | None = None

    def __post_init__(self) -> None:
        if not any(k in self.info for k in ANNOTATION_KEYS):
            return
        info = dict(self.info)
        if "format_ok" in info:
            self.format_ok = bool(info.pop("format_ok"))
        if "response" in info:
            self.response = info.pop("response")
        if "policy_s" in info:
            self.policy_s = float(info.pop("policy_s"))
        extras = info.pop("policy", None)
        if isinstance(extras, Mapping):
            if self.tokens is None:
                self.tokens = TokenRecord.from_extras(extras)
            rest = {k: v for k, v in extras.items() if k not in TOKEN_KEYS}
            self.policy = {**rest, **self.policy}
        self.info = info

    @property
    def executed(self) -> bool:
        """Whether the env ran this turn's action. The eval harness ends an episode past its time
        limit with a turn whose action was never sent (``info["executed"] = False``); it is
        recorded (the reply was made) but is no turn of the agent in the env, so episode
        statistics leave it out."""
        return bool(self.info.get("executed", True))

    def to_dict(self) -> dict[str, Any]:
        """The JSON layout: annotations go under ``info`` (the layout every version reads)."""
        info = dict(self.info)
        info["format_ok"] = self.format_ok
        if self.response is not None:
            info["response"] = self.response
        extras = {**(self.tokens.to_dict() if self.tokens else {}), **self.policy}
        if extras:
            info["policy"] = extras
        if self.policy_s is not None:
            info["policy_s"] = self.policy_s
        return {
            "observation": self.observation,
            "action": self.action,
            "reward": self.reward,
            "anchor": self.anchor,
            "valid": self.valid,
            "info": info,
        }


@dataclasses.dataclass
class Trajectory:
    id: str
    group: str
    env: str
    task: str = ""
    seed: int | None = None
    turns: list[Turn] = dataclasses.field(default_factory=list)
    won: bool = False
    truncated: bool = False
    crashed: bool = False
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def return_(self) -> float:
        return float(sum(t.reward for t in self.turns))

    @property
    def executed_turns(self) -> list[Turn]:
        """The turns the env ran (see :attr:`Turn.executed`)."""
        return [t for t in self.turns if t.executed]

    @property
    def rewards(self) -> list[float]:
        return [t.reward for t in self.turns]

    @property
    def anchors(self) -> list[str]:
        return [t.anchor for t in self.turns]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "group": self.group,
            "env": self.env,
            "task": self.task,
            "seed": self.seed,
            "turns": [t.to_dict() for t in self.turns],
            "won": self.won,
            "return": self.return_,
            "truncated": self.truncated,
            "crashed": self.crashed,
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Trajectory:
        turns = [
            Turn(
                observation=t.get("observation", ""),
                action=t.get("action", ""),
                reward=float(t.get("reward", 0.0)),
                anchor=t.get("anchor", ""),
                valid=bool(t.get("valid", True)),
                info=dict(t.get("info", {})),
            )
            for t in d.get("turns", [])
        ]
        return cls(
            id=str(d["id"]),
            group=str(d.get("group", d["id"])),
            env=d.get("env", ""),
            task=str(d.get("task", "")),
            seed=d.get("seed"),
            turns=turns,
            won=bool(d.get("won", False)),
            truncated=bool(d.get("truncated", False)),
            crashed=bool(d.get("crashed", False)),
            meta=dict(d.get("meta", {})),
        )


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, default=_json_default)


def _json_default(o: Any) -> Any:
    if isinstance(o, bytes):
        return None  # images are not stored inline in trajectory lines
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return dataclasses.asdict(o)
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


class TrajectoryWriter:
    """Appends trajectories to a JSONL file, one atomic ``write`` per line.

    Several processes may append to one file: each line is written under an exclusive
    ``flock``, so the torn-tail check of a writer that opens meanwhile never sees another
    writer's line half-written.
    """

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._fsync = fsync
        self._repair_torn_tail()

    def _repair_torn_tail(self) -> None:
        # A process killed mid-write can leave a last line without "\n"; start on a fresh line so
        # the next record is not glued to the torn one.
        with self._locked():
            size = os.path.getsize(self.path)
            if size:
                with open(self.path, "rb") as f:
                    f.seek(size - 1)
                    if f.read(1) != b"\n":
                        os.write(self._fd, b"\n")  # type: ignore[arg-type]

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fcntl.flock(self._fd, fcntl.LOCK_EX)  # type: ignore[arg-type]
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)  # type: ignore[arg-type]

    def write(self, traj: Trajectory | dict[str, Any]) -> None:
        if self._fd is None:
            raise ValueError(f"TrajectoryWriter for {self.path} is closed")
        d = traj.to_dict() if isinstance(traj, Trajectory) else traj
        data = (_dumps(d) + "\n").encode()
        with self._locked():
            n = os.write(self._fd, data)
        if n != len(data):  # pragma: no cover - regular files write fully
            raise OSError(f"short write to {self.path}")
        if self._fsync:
            os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> TrajectoryWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_trajectories(path: str | os.PathLike[str], trajs: Iterable[Trajectory]) -> None:
    with TrajectoryWriter(path) as w:
        for t in trajs:
            w.write(t)


def scan_records(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """``(line number, record)`` for each JSON object line of a JSONL file, and
    ``(line number, reason)`` for each bad line: invalid UTF-8, not JSON (a line torn by a crash
    mid-write is one), or JSON that is not an object. Blank lines are skipped."""
    with open(path, "rb") as f:
        for no, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError as e:
                yield no, f"not UTF-8 ({e.reason} at byte {e.start})"
                continue
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                yield no, f"not JSON ({e.msg} at column {e.colno})"
                continue
            if isinstance(rec, dict):
                yield no, rec
            else:
                yield no, f"a JSON {type(rec).__name__}, not an object"


def iter_records(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Yield the JSON objects of a JSONL file, skipping blank and bad (e.g. torn) lines."""
    for _, rec in scan_records(path):
        if isinstance(rec, dict):
            yield rec


def read_trajectories(
    path: str | os.PathLike[str], errors: list[tuple[int, str]] | None = None
) -> list[Trajectory]:
    """The trajectories of a JSONL file. Bad lines (see :func:`scan_records`) and objects that
    are not trajectory records are skipped; with ``errors`` given, each is reported there as
    ``(line number, reason)``."""
    out: list[Trajectory] = []
    for no, rec in scan_records(path):
        if isinstance(rec, str):
            reason = rec
        else:
            try:
                out.append(Trajectory.from_dict(rec))
                continue
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                reason = f"not a trajectory record ({type(e).__name__}: {e})"
        if errors is not None:
            errors.append((no, reason))
    return out

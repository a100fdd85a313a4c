"""The episode records of an evaluation run folder: ``episodes.jsonl``, appended as episodes
end (with their screenshots beside it), and read back once per id."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agentgym.trajectory import Trajectory, TrajectoryWriter, iter_records

__all__ = ["EPISODES_FILE", "EpisodeSink", "load_episodes", "task_type_of"]

EPISODES_FILE = "episodes.jsonl"


def task_type_of(record: Mapping[str, Any]) -> str | None:
    """The task type of an episode record: ``meta["task_type"]``, else the first ``task_type``
    found in a turn's info (envs such as ALFWorld report it), else ``None``."""
    meta = record.get("meta") or {}
    if meta.get("task_type"):
        return str(meta["task_type"])
    for t in record.get("turns") or []:
        tt = (t.get("info") or {}).get("task_type")
        if tt:
            return str(tt)
    return None


class EpisodeSink:
    """What rollout writes to: moves harness bookkeeping into ``meta``, saves images, appends."""

    def __init__(
        self, out_dir: Path, writer: TrajectoryWriter, images: dict[str, Any] | None = None
    ) -> None:
        self.out_dir = out_dir
        self.writer = writer
        self.images = images if images is not None else {}
        self.written = 0

    def write(self, traj: Trajectory) -> None:
        last = traj.turns[-1].info if traj.turns else {}
        images = self.images.pop(traj.id, None)
        reset_info = traj.meta.get("reset_info") or {}
        tt = reset_info.get("task_type") or next(
            (t.info["task_type"] for t in traj.turns if t.info.get("task_type")), None
        )
        if tt:
            traj.meta["task_type"] = str(tt)
        if last.get("timed_out"):
            traj.meta["timed_out"] = True
        if images:
            folder = self.out_dir / "screenshots" / traj.id
            folder.mkdir(parents=True, exist_ok=True)
            for k, img in enumerate(images):
                if img is None:
                    continue
                p = folder / f"turn-{k}.png"
                p.write_bytes(img)
                rel = p.relative_to(self.out_dir).as_posix()
                if k < len(traj.turns):
                    traj.turns[k].info["screenshot"] = rel
                else:
                    traj.meta["final_screenshot"] = rel
        self.writer.write(traj)
        self.written += 1


def load_episodes(out_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Episode records of a run folder, first occurrence of each id, in file order."""
    path = Path(out_dir) / EPISODES_FILE
    if not path.exists():
        return []
    seen: set[str] = set()
    out = []
    for rec in iter_records(path):
        rid = rec.get("id")
        if not isinstance(rid, str) or rid in seen:
            continue
        seen.add(rid)
        out.append(rec)
    return out

"""The learning-stability tools of :mod:`~agentgym.trainers.stability` as parts of the
``agentgym train`` loop: dynamic sampling (``--dynamic-sampling``) and the collapse guard
(``--guard``). Both are off by default; ``docs/stability.md`` ("In the training loop") says what
each logs and costs.

* :func:`collect_groups` plays one step's groups; with dynamic sampling it drops the groups whose
  shaped returns are all equal and refills with fresh tasks (:func:`stability.dynamic_sample`).
  Refill round ``k`` of a step draws its task seeds from a stream of its own
  (:func:`task_seed`), so no two rounds or steps share a task seed.
* :class:`WeightSnapshot` keeps a host-RAM copy of the last good step's weights and optimizer
  state, and :class:`LoopGuard` feeds :class:`stability.CollapseGuard` each step's entropy,
  invalid-format rate and success, restoring the snapshot when the guard says so.
"""

from __future__ import annotations

import copy
import dataclasses
import sys
from collections.abc import Callable, Sequence
from typing import Any

from agentgym.trainers.stability import CollapseGuard, DynamicSampleStats, dynamic_sample

__all__ = [
    "SEED_ROUND_STRIDE",
    "task_seed",
    "Collected",
    "collect_groups",
    "dynamic_record",
    "WeightSnapshot",
    "LoopGuard",
]

#: Task seeds of refill round ``k`` start ``k * SEED_ROUND_STRIDE`` above the first round's, so the
#: rounds never share a seed while ``steps * groups_per_step`` stays below it.
SEED_ROUND_STRIDE = 10_000_019


def task_seed(seed: int, step: int, groups_per_step: int, first_group: int, round_: int) -> int:
    """Task seed of group ``first_group`` (this rank's first) in collection round ``round_`` of
    RL ``step``; round 0 is the seed every run without dynamic sampling uses."""
    return (
        seed * 1_000_003 + round_ * SEED_ROUND_STRIDE + (step - 1) * groups_per_step + first_group
    )


@dataclasses.dataclass(frozen=True)
class Collected:
    """One step's episodes on this rank: ``mine`` (what the update uses, sorted by id),
    ``played`` (every episode played, dropped groups included) and the sampling ``stats``
    (``None`` without dynamic sampling)."""

    mine: list[Any]
    played: list[Any]
    stats: DynamicSampleStats | None


def _groups(trajs: Sequence[Any]) -> list[list[Any]]:
    """``trajs`` split by group, each group sorted by id, groups in id order."""
    by: dict[str, list[Any]] = {}
    for t in sorted(trajs, key=lambda t: t.id):
        by.setdefault(t.group, []).append(t)
    return list(by.values())


def collect_groups(
    play: Callable[[int, int, str], list[Any]],
    *,
    num_groups: int,
    run_id: str,
    dynamic: bool,
    max_rounds: int,
    penalty: float,
    writer: Any = None,
) -> Collected:
    """Play this rank's ``num_groups`` groups of one step.

    ``play(n, round, run_id)`` plays ``n`` groups with round ``round``'s task seeds and returns
    their episodes. Without ``dynamic`` this is one call. With it, groups whose returns after the
    invalid-format ``penalty`` (the returns the advantages see) are all equal are dropped and
    refill rounds (run ids ``{run_id}-d{k}``) play new tasks until ``num_groups`` informative groups
    are kept or ``max_rounds`` rounds are used. Every played episode is then written to ``writer``
    with ``meta["dynamic"]`` = ``"kept"`` or ``"dropped"``: the file records what was played, and
    a resumed run still replaces a step's episodes as a whole (ids start with ``s{step}-``).
    """
    from agentgym.trainers.learner import apply_penalty

    if not dynamic:
        mine = sorted(play(num_groups, 0, run_id), key=lambda t: t.id)
        return Collected(mine, mine, None)
    played: list[Any] = []

    def collect(n: int, round_: int) -> list[list[Any]]:
        trajs = play(n, round_, run_id if round_ == 0 else f"{run_id}-d{round_}")
        played.extend(trajs)
        return _groups(trajs)

    def returns(group: Sequence[Any]) -> list[float]:
        return [t.return_ for t in apply_penalty(group, penalty)]

    kept, stats = dynamic_sample(collect, returns, target=num_groups, max_rounds=max_rounds)
    mine = sorted((t for g in kept for t in g), key=lambda t: t.id)
    used = {t.id for t in mine}
    played.sort(key=lambda t: t.id)
    for t in played:
        t.meta["dynamic"] = "kept" if t.id in used else "dropped"
        if writer is not None:
            writer.write(t)
    return Collected(mine, played, stats)


def dynamic_record(ctx: Any, stats: DynamicSampleStats) -> dict[str, float]:
    """The ``dynamic/*`` metrics of one step, over every rank's groups."""
    t = ctx.sum_dict({"drawn": float(stats.drawn), "kept": float(stats.kept)})
    rounds = ctx.all_reduce([float(stats.rounds)], op="max")[0]
    return {
        "dynamic/drawn": int(t["drawn"]),
        "dynamic/kept": int(t["kept"]),
        "dynamic/kept_fraction": t["kept"] / t["drawn"] if t["drawn"] else 0.0,
        "dynamic/rounds": int(rounds),
    }


# -- collapse guard -------------------------------------------------------------------------------
def _local(t: Any) -> Any:
    """An FSDP2 ``DTensor``'s local shard (in place: it shares storage); other tensors as is."""
    return t.to_local() if hasattr(t, "to_local") else t


class WeightSnapshot:
    """A host-RAM copy of a model's weights and its optimizer's state at one step.

    It costs one copy of the weights plus one of the optimizer state (AdamW: two more copies of
    the trainable weights) in host memory; under FSDP2 each rank keeps its own shard. Buffers are
    allocated once and overwritten by each :meth:`take`. :meth:`restore` copies back in place,
    so the parameters the optimizer (and a DDP / FSDP wrapper) hold stay the same objects.
    """

    def __init__(self) -> None:
        self.step: int | None = None
        self._weights: list[Any] | None = None
        self._opt: dict[int, dict[str, Any]] = {}

    @staticmethod
    def _tensors(model: Any) -> list[Any]:
        return [*model.parameters(), *model.buffers()]

    @staticmethod
    def _params(optimizer: Any) -> list[Any]:
        return [p for g in optimizer.param_groups for p in g["params"]]

    def take(self, model: Any, optimizer: Any, step: int) -> None:
        import torch

        with torch.no_grad():
            tensors = [_local(t).detach() for t in self._tensors(model)]
            if self._weights is None:
                self._weights = [t.to("cpu", copy=True) for t in tensors]
            else:
                for buf, t in zip(self._weights, tensors):
                    buf.copy_(t)
            self._opt = {}
            for i, p in enumerate(self._params(optimizer)):
                st = optimizer.state.get(p)
                if st:
                    self._opt[i] = {
                        k: _local(v).detach().to("cpu", copy=True)
                        if torch.is_tensor(v)
                        else copy.deepcopy(v)
                        for k, v in st.items()
                    }
        self.step = step

    def restore(self, model: Any, optimizer: Any) -> None:
        """Weights and optimizer state back to those of :attr:`step` (learning rates untouched)."""
        import torch

        if self._weights is None:
            raise RuntimeError("WeightSnapshot.restore before any take")
        with torch.no_grad():
            for buf, t in zip(self._weights, self._tensors(model)):
                _local(t).copy_(buf)
            for i, p in enumerate(self._params(optimizer)):
                saved = self._opt.get(i)
                if saved is None:  # no state yet at the snapshot: the optimizer starts it afresh
                    optimizer.state.pop(p, None)
                    continue
                st = optimizer.state[p]
                for k in [k for k in st if k not in saved]:
                    del st[k]
                for k, v in saved.items():
                    cur = st.get(k)
                    if torch.is_tensor(v) and torch.is_tensor(cur) and cur.shape == v.shape:
                        _local(cur).copy_(v)
                    elif torch.is_tensor(v):
                        st[k] = v.to(p.device if v.ndim else "cpu", copy=True)
                    else:
                        st[k] = copy.deepcopy(v)


class LoopGuard:
    """:class:`stability.CollapseGuard` wired to a model and optimizer (``--guard``).

    :meth:`check` runs after each RL step's update and logging inputs are known: a good step's
    weights become the snapshot; a ``restore`` loads the snapshot and sets every optimizer group's
    learning rate to the guard's new one. The guard's counters (:meth:`state_dict`) go into the
    checkpoint; the snapshot does not (it would double the checkpoint), so after ``--resume`` the
    snapshot is the checkpoint's own weights.
    """

    def __init__(self, cfg: Any, model: Any, optimizer: Any, *, is_main: bool = True) -> None:
        self.guard = CollapseGuard(cfg.guard_config(), lr=cfg.lr)
        self.model = model
        self.optimizer = optimizer
        self.is_main = is_main
        self.snapshot = WeightSnapshot()

    def start(self, step: int, state: dict[str, Any] | None) -> None:
        """Before the first RL step (``step``: the steps done, 0 or the resumed checkpoint's)."""
        if state is not None:
            self.guard.load_state_dict(state)
        else:
            self.guard.last_good = step
        self.snapshot.take(self.model, self.optimizer, step)

    def check(
        self, step: int, *, entropy: float | None, invalid: float | None, success: float | None
    ) -> dict[str, Any]:
        """Feed step ``step``'s signals to the guard and act; returns the ``guard/*`` metrics."""
        d = self.guard.update(step, entropy=entropy, invalid=invalid, success=success)
        out: dict[str, Any] = {"guard/restore": 0, "guard/bad_streak": self.guard.bad_streak}
        if d.action == "ok":
            self.snapshot.take(self.model, self.optimizer, step)
        elif d.action == "wait":
            out["guard/reason"] = d.reason
        else:
            self.snapshot.restore(self.model, self.optimizer)
            for g in self.optimizer.param_groups:
                g["lr"] = d.new_lr
            reason = d.reason
            if self.snapshot.step != d.restore_step:
                reason += f" (the weights kept are step {self.snapshot.step}'s: resumed from it)"
            out.update({"guard/restore": 1, "guard/reason": reason})
            out["guard/restored_step"] = self.snapshot.step
            if self.is_main:
                print(f"guard: step {step}: {reason}", file=sys.stderr, flush=True)
        out["guard/lr"] = self.optimizer.param_groups[0]["lr"]
        out["guard/restores"] = self.guard.restores
        return out

    def state_dict(self) -> dict[str, Any]:
        return {**self.guard.state_dict(), "snapshot_step": self.snapshot.step}

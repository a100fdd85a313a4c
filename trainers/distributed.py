"""Multi-process training with ``torch.distributed``: DDP or FSDP2, launched by ``torchrun``.

``agentgym train`` started by ``torchrun`` (one process per device) runs data-parallel RL:

* **process group**: :func:`init_distributed` reads the variables ``torchrun`` sets (``RANK``,
  ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) and joins the group with
  ``nccl`` on CUDA, ``gloo`` on CPU. Without them (a plain ``agentgym train``) it returns a
  one-process :class:`DistContext` whose collectives are no-ops, so the trainer has one code path.
* **model**: :meth:`DistContext.wrap` puts the model in ``DistributedDataParallel`` (``ddp``: a
  full replica per rank, gradients all-reduced) or shards it with FSDP2
  (``fsdp``: :func:`torch.distributed.fsdp.fully_shard` on every decoder layer, then the root; each
  rank keeps ``1 / world_size`` of the weights, gradients and AdamW state).
* **rollouts**: :func:`shard_range` splits the step's task groups into contiguous blocks, one per
  rank. A GRPO/GiGPO group (all ``group_size`` episodes of one task) never spans ranks, so the
  advantages each rank computes on its own groups are exactly those of one process holding all.
* **loss**: :func:`agentgym.trainers.losses.ppo_update` with ``dist=ctx`` draws ONE permutation of
  the global sample list (same RNG on every rank), so minibatch ``k`` is the same set of samples as
  in one process; each rank backpropagates the part it holds, normalised by the token (or sequence)
  count of the whole minibatch across ranks and multiplied by ``world_size`` (DDP and FSDP2 average
  gradients over ranks; the factor turns that into the sum). Gradients are synchronised only on the
  last micro-batch (``no_sync`` / ``set_requires_gradient_sync(False)`` before it); ranks with
  fewer micro-batches run zero-weight ones so every rank joins each collective.
* **generation under FSDP2**: every forward of a sharded model is a collective, but ranks play
  different numbers of turns. :meth:`DistContext.generation` gathers the full weights once
  (``unshard``) and keeps them until the rollout ends, so generation needs no communication.
* **outputs**: metrics are reduced (:meth:`DistContext.all_reduce`), and only rank 0 writes
  ``metrics.jsonl``, checkpoints and the report; FSDP2 checkpoints gather the full state first
  (:meth:`DistContext.model_state_dict`, :meth:`DistContext.optimizer_state_dict`), so a checkpoint
  has the same format in every mode and resumes under any of them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "DIST_MODES",
    "DistContext",
    "NullLogger",
    "init_distributed",
    "shard_range",
    "unwrap",
]

DIST_MODES = ("ddp", "fsdp")


def shard_range(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """``[start, stop)`` of rank ``rank``'s contiguous block of ``n`` items (sizes differ by <= 1).

    The first ``n % world_size`` ranks take one item more; concatenating the blocks in rank order
    gives ``range(n)``.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside a world of {world_size} process(es)")
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def unwrap(model: Any) -> Any:
    """The model inside a ``DistributedDataParallel`` wrapper (FSDP2 modules are the model)."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def _is_fsdp(model: Any) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch without FSDP2
        return False
    return isinstance(model, FSDPModule)


@dataclass
class DistContext:
    """Where this process stands in the job, and the collectives the trainer needs.

    With ``world_size == 1`` every method is a cheap no-op (or the plain single-process call), so
    the trainer calls them unconditionally.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    #: the process group's backend (``None``: no process group).
    backend: str | None = None
    #: torch device of this rank (``cuda:<LOCAL_RANK>`` under torchrun on GPUs).
    device: str = "cpu"
    #: ``ddp`` or ``fsdp``: how :meth:`wrap` distributes the model.
    mode: str = "ddp"
    #: whether :func:`init_distributed` created the process group (then :meth:`close` ends it).
    owns_group: bool = False
    _no_sync: Any = field(default=None, repr=False, compare=False)

    # -- who am I -----------------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and logs."""
        return self.rank == 0

    def shard(self, n: int) -> tuple[int, int]:
        """This rank's ``[start, stop)`` block of ``n`` items (see :func:`shard_range`)."""
        return shard_range(n, self.rank, self.world_size)

    # -- collectives --------------------------------------------------------------------------
    def barrier(self) -> None:
        """Wait until every rank gets here."""
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Rank ``src``'s (picklable) ``obj`` on every rank."""
        if not self.enabled:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def all_gather_object(self, obj: Any) -> list[Any]:
        """``[obj of rank 0, obj of rank 1, ...]`` on every rank."""
        if not self.enabled:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def all_reduce(self, values: Sequence[float], op: str = "sum") -> list[float]:
        """Elementwise ``sum`` or ``max`` of ``values`` over ranks (float64, so counts stay exact)."""
        if op not in ("sum", "max"):
            raise ValueError(f"op={op!r}: use 'sum' or 'max'")
        if not self.enabled:
            return [float(v) for v in values]
        import torch
        import torch.distributed as dist

        # gloo reduces CPU tensors, nccl CUDA ones.
        dev = self.device if self.backend == "nccl" else "cpu"
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=dev)
        dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        return t.tolist()

    def sum_dict(self, values: dict[str, float]) -> dict[str, float]:
        """Sum each entry of a ``{name: number}`` dict over ranks (same keys on every rank)."""
        keys = sorted(values)
        return dict(zip(keys, self.all_reduce([values[k] for k in keys])))

    def sum_union(self, values: dict[str, float]) -> dict[str, float]:
        """Sum a ``{name: number}`` dict over ranks whose keys may differ between ranks (a name
        a rank lacks counts 0 there): every rank gets every name."""
        keys = sorted({k for ks in self.all_gather_object(sorted(values)) for k in ks})
        return self.sum_dict({k: values.get(k, 0.0) for k in keys}) if keys else {}

    def evaluate(
        self, fn: Any, pool: Any, policy: Any, *, episodes: int, seed: int, **kw: Any
    ) -> dict[str, float]:
        """``fn(pool, policy, episodes=..., seed=..., **kw)`` (the trainer's ``evaluate``) split
        over ranks: rank r plays its block ``[lo, hi)`` of the episodes (seeds ``seed + lo ..``),
        and the results (``summarize(...).to_dict()`` keys plus ``return``) are merged into those
        of all ``episodes``, as one process playing them all would report."""
        if not self.enabled:
            return fn(pool, policy, episodes=episodes, seed=seed, **kw)
        lo, hi = self.shard(episodes)
        r = fn(pool, policy, episodes=hi - lo, seed=seed + lo, **kw) if hi > lo else {}
        n = float(r.get("episodes", 0))
        turns = round(r.get("mean_turns", 0.0) * n)
        tot = self.sum_dict(
            {
                "episodes": n,
                "won": round(r.get("success_rate", 0.0) * n),
                "turns": turns,
                "invalid": round(r.get("invalid_action_rate", 0.0) * turns),
                "crashed": r.get("crashed", 0),
                "return": r.get("return", 0.0) * n,
            }
        )
        seconds = self.all_reduce([r.get("seconds", 0.0)], op="max")[0]
        eps, turns_all = max(tot["episodes"], 1.0), tot["turns"]
        metrics = self.sum_union({k: v * n for k, v in (r.get("metrics") or {}).items()})
        # rank blocks are consecutive seed ranges: concatenated in rank order they are seed order
        outcomes = [o for part in self.all_gather_object(r.get("outcomes", [])) for o in part]
        return {
            "episodes": int(tot["episodes"]),
            "success_rate": tot["won"] / eps,
            "mean_turns": turns_all / eps,
            "invalid_action_rate": tot["invalid"] / turns_all if turns_all else 0.0,
            "crashed": int(tot["crashed"]),
            "seconds": seconds,
            "return": tot["return"] / eps,
            "metrics": {k: v / eps for k, v in metrics.items()},
            "outcomes": outcomes,
        }

    # -- the model ----------------------------------------------------------------------------
    def wrap(self, model: Any) -> Any:
        """The model to train: itself (one process), a DDP wrapper, or the model sharded in place
        with FSDP2. Rank 0's weights win, so every rank starts from the same model."""
        if not self.enabled:
            return model
        import torch
        import torch.distributed as dist

        if self.mode == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            ids = [torch.device(self.device).index] if self.backend == "nccl" else None
            return DistributedDataParallel(model, device_ids=ids)  # broadcasts rank 0's weights
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        with torch.no_grad():  # fully_shard keeps each rank's own values: align them first
            for t in [*model.parameters(), *model.buffers()]:
                dist.broadcast(t.data, src=0)
        mesh = init_device_mesh(torch.device(self.device).type, (self.world_size,))
        # One FSDP unit per transformer block (HF lists their classes in _no_split_modules), so
        # only one block's full weights exist at a time; the root holds embeddings and the head.
        blocks = set(getattr(unwrap(model), "_no_split_modules", None) or ())
        for m in model.modules():
            if type(m).__name__ in blocks:
                fully_shard(m, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model

    def set_grad_sync(self, model: Any, enabled: bool) -> None:
        """Whether the next forward+backward reduces gradients across ranks. With ``False`` they
        only accumulate locally (what DDP's ``no_sync()`` and FSDP2's
        ``set_requires_gradient_sync(False)`` do); the next synced backward reduces the sum of
        everything accumulated. Gradient accumulation sets it before every micro-batch."""
        if not self.enabled:
            return
        if _is_fsdp(model):
            model.set_requires_gradient_sync(enabled)
        elif hasattr(model, "no_sync"):  # DDP: hold its no_sync() context open until enabled
            if not enabled and self._no_sync is None:
                self._no_sync = model.no_sync()
                self._no_sync.__enter__()
            elif enabled and self._no_sync is not None:
                self._no_sync.__exit__(None, None, None)
                self._no_sync = None

    def clip_grad_norm_(self, params: Sequence[Any], max_norm: float) -> float:
        """Clip by the global gradient norm; returns that norm (the same on every rank).

        DDP gradients are already identical on all ranks; FSDP2 gradients are shards
        (``DTensor``), whose norm is reduced over ranks before clipping.
        """
        import torch

        grads = [p.grad for p in params if p.grad is not None]
        total = torch.nn.utils.get_total_norm(grads, 2.0)
        full = getattr(total, "full_tensor", None)
        if full is not None:  # DTensor: a partial norm per shard
            total = full()
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
        return float(total)

    @contextlib.contextmanager
    def generation(self, model: Any) -> Iterator[None]:
        """Keep an FSDP2 model's full weights gathered inside (rollouts, evaluation), so ranks
        that generate different numbers of tokens issue no collectives; no-op otherwise."""
        if not (self.enabled and _is_fsdp(model)):
            yield
            return
        from torch.distributed.fsdp import FSDPModule

        units = [m for m in model.modules() if isinstance(m, FSDPModule)]
        model.set_reshard_after_forward(False)  # all units: forwards inside keep the weights
        for m in units:  # unshard() is per unit; the same order on every rank
            m.unshard()
        try:
            yield
        finally:
            for m in units:
                m.reshard()
                # torch's training default: blocks reshard after forward, the root does not
                # (its weights are needed again right away by the backward).
                m.set_reshard_after_forward(m is not model, recurse=False)

    # -- checkpoints --------------------------------------------------------------------------
    def model_state_dict(self, model: Any, *, dedupe_tied: bool = False) -> dict[str, Any] | None:
        """FSDP2: the full state dict gathered to CPU on rank 0 (a collective: call it on every
        rank; other ranks get ``{}``). ``None`` otherwise: the model's own weights are whole.

        ``dedupe_tied``: keep a tied weight (e.g. ``lm_head`` = ``embed_tokens``) under its first
        name only, as ``save_pretrained`` of an unsharded model writes it (gathered, the copies
        no longer share storage, so ``save_pretrained`` would write both).
        """
        if not (self.enabled and _is_fsdp(model)):
            return None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(
            model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        if not dedupe_tied:
            return full
        seen: set[int] = set()
        for name, p in unwrap(model).named_parameters(remove_duplicate=False):
            if id(p) in seen:
                full.pop(name, None)
            seen.add(id(p))
        return full

    def save_pretrained(self, model: Any, tokenizer: Any, path: str | os.PathLike[str]) -> None:
        """``save_pretrained`` of the whole model and tokenizer by rank 0 (call on every rank)."""
        state = self.model_state_dict(model, dedupe_tied=True)
        if self.is_main:
            kw = {} if state is None else {"state_dict": state}
            unwrap(model).save_pretrained(Path(path), **kw)
            tokenizer.save_pretrained(Path(path))
        self.barrier()

    def optimizer_state_dict(self, model: Any, optimizer: Any) -> dict[str, Any]:
        """The optimizer state in ``torch.optim.Optimizer.state_dict()`` form (parameter index
        keys, full tensors), whatever the mode: checkpoints resume under any mode.

        A collective under FSDP2 (call it on every rank; rank 0's copy is the one to save).
        """
        if not (self.enabled and _is_fsdp(model)):
            return optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
        )

        full = get_optimizer_state_dict(
            model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        if not self.is_main:
            return {}
        # FQN keys -> the indices optimizer.state_dict() uses (order of param_groups' params).
        names = _param_names(model, optimizer)
        index = {n: i for i, n in enumerate(names)}
        groups, start = [], 0
        for g, full_g in zip(optimizer.param_groups, full["param_groups"]):
            n = len(g["params"])
            groups.append({**full_g, "params": list(range(start, start + n))})
            start += n
        return {"state": {index[k]: v for k, v in full["state"].items()}, "param_groups": groups}

    def load_optimizer_state_dict(self, model: Any, optimizer: Any, state: dict[str, Any]) -> None:
        """Load a state saved by :meth:`optimizer_state_dict` (or ``optimizer.state_dict()``);
        under FSDP2 each rank keeps its shard of the full tensors."""
        if not (self.enabled and _is_fsdp(model)):
            optimizer.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        names = _param_names(model, optimizer)
        groups, start = [], 0
        for g in state["param_groups"]:
            n = len(g["params"])
            groups.append({**g, "params": names[start : start + n]})
            start += n
        full = {"state": {names[int(i)]: v for i, v in state["state"].items()}}
        full["param_groups"] = groups
        set_optimizer_state_dict(
            model, optimizer, full, options=StateDictOptions(full_state_dict=True)
        )

    # -- teardown -----------------------------------------------------------------------------
    def close(self) -> None:
        """Leave the process group (only if :func:`init_distributed` created it)."""
        if self.owns_group:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self.owns_group = False


class NullLogger:
    """Stands in for the trainer's metrics logger on ranks other than 0 (rank 0 writes)."""

    def log(self, record: dict[str, Any]) -> None:
        """Drop the record."""

    def history(self) -> list[dict[str, Any]]:
        """Nothing was logged here."""
        return []

    def close(self) -> None:
        """Nothing to close."""


def _param_names(model: Any, optimizer: Any) -> list[str]:
    """Names of the optimizer's parameters in ``state_dict()`` index order."""
    name_of = {id(p): n for n, p in unwrap(model).named_parameters()}
    return [name_of[id(p)] for g in optimizer.param_groups for p in g["params"]]


def init_distributed(mode: str = "ddp", device: str | None = None) -> DistContext:
    """Join the ``torchrun`` job this process belongs to, or describe a single process.

    Reads ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (``MASTER_ADDR``/``MASTER_PORT`` are read by
    the ``env://`` rendezvous). ``device=None`` or ``"cuda"`` under torchrun picks
    ``cuda:<LOCAL_RANK>`` when CUDA is available; the backend is ``nccl`` for CUDA, else ``gloo``.
    An already initialised default group is reused (and not destroyed by :meth:`close`).
    """
    if mode not in DIST_MODES:
        raise ValueError(f"dist={mode!r}: use one of {', '.join(DIST_MODES)}")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(device=device or "cpu", mode=mode)
    for var in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        if var not in os.environ:
            raise RuntimeError(
                f"WORLD_SIZE={world} but {var} is not set: launch with torchrun "
                "(e.g. `torchrun --nproc-per-node 2 -m agentgym.cli train ...`)"
            )
    import torch
    import torch.distributed as dist

    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if (device is None or device == "cuda") and torch.cuda.is_available():
        device = f"cuda:{local_rank}"
    device = device or "cpu"
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    backend = "nccl" if device.startswith("cuda") else "gloo"
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend=backend, init_method="env://")
    else:
        backend = str(dist.get_backend())
    return DistContext(
        rank=rank,
        world_size=world,
        local_rank=local_rank,
        backend=backend,
        device=device,
        mode=mode,
        owns_group=owns,
    )

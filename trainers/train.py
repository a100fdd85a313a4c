"""``agentgym train``: SFT warm start, then RL with a PPO-style loss, as one recipe.

The run is assembled from small pieces, each in its own module:

* :mod:`~agentgym.trainers.config`: :class:`TrainConfig`, every setting, validated once;
* :mod:`~agentgym.trainers.credit`: advantage estimators (pure functions, one signature);
* :mod:`~agentgym.trainers.pieces`: stateful credit pieces (critic, progress estimator, EPO
  history) behind one ``Protocol``;
* :mod:`~agentgym.trainers.terms` / :mod:`~agentgym.trainers.losses`: the loss as a sum of terms
  and the minibatch update;
* :mod:`~agentgym.trainers.checkpoint`: checkpoints with manifests, resume bookkeeping;
* :mod:`~agentgym.trainers.metrics`: metrics, evaluation, logging, the curve.

:func:`train` reads top to bottom: setup -> model (resume, or init + SFT) -> rollout worker
(:mod:`~agentgym.trainers.rollout_worker`) -> per step: the worker's batch (collected after the
previous update, or with ``--async-staleness K`` ahead of it; with ``--dynamic-sampling``: drop
groups of equal returns, refill) -> batch -> pieces annotate ->
advantages -> samples -> update -> pieces update -> collapse guard (``--guard``) -> log ->
checkpoint -> weights to the worker -> final evaluation and report. It names no algorithm: what a combination needs is
built by the pieces' registry. The two stability steps live in
:mod:`~agentgym.trainers.stability_loop` (``docs/stability.md``).

Outputs in ``out``: ``config.json``, ``metrics.jsonl``, ``tb/`` (TensorBoard),
``trajectories.jsonl``, ``checkpoints/step_N/`` (model, tokenizer, ``state.pt``,
``manifest.json``), ``model/`` (final), ``report.json``, ``curve.png``, ``wall_time.json``.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agentgym.trainers.config import (
    ALGOS,
    TrainConfig,
    config_markdown,
    field_type,
    load_config_file,
)
from agentgym.trainers.metrics import evaluate, write_report

__all__ = [
    "TrainConfig",
    "train",
    "evaluate",
    "load_config_file",
    "config_markdown",
    "field_type",
    "ALGOS",
]


@dataclasses.dataclass
class _Run:
    """The open resources and bookkeeping of one run (closed by :meth:`close`)."""

    cfg: TrainConfig
    ctx: Any
    out: Path
    checkpoint: Path | None
    logger: Any
    writer: Any
    clock: Any
    train_pool: Any
    eval_pool: Any
    eval_seed: int
    lora: dict[str, Any] | None
    rollouts: Any = None  # the RolloutWorker, once started

    def evaluate(self, policy: Any) -> dict[str, Any]:
        """Greedy held-out evaluation; under torchrun each rank plays a block of episodes."""
        with self.ctx.generation(policy.model):
            return self.ctx.evaluate(
                evaluate,
                self.eval_pool,
                policy,
                episodes=self.cfg.eval_episodes,
                seed=self.eval_seed,
                history_len=self.cfg.history_len,
                temperature=self.cfg.eval_temperature,
            )

    def close(self) -> None:
        if self.rollouts is not None:  # first: it plays in the train pool
            self.rollouts.close()
        for closer in (self.train_pool, self.eval_pool, self.writer, self.logger):
            if closer is not None:
                closer.close()
        self.ctx.close()


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run SFT + RL as configured; return the report (also written to ``out/report.json``)."""
    from tqdm import tqdm

    from agentgym.trainers.checkpoint import rng_state
    from agentgym.trainers.learner import apply_penalty
    from agentgym.trainers.metrics import eval_record, train_metrics
    from agentgym.trainers.rollout_worker import staleness
    from agentgym.trainers.stability_loop import dynamic_record

    run = _open_run(cfg)
    ctx = run.ctx
    guard = None
    try:
        model, tok, state, last_eval = _model(run)
        policy = _make_policy(cfg, model, tok)
        train_model = ctx.wrap(model)  # DDP wrapper, or `model` sharded in place by FSDP2
        learner = _learner(run, train_model, policy, state)
        start_step = state.get("step", 0)
        guard = _guard(run, learner, state, start_step)
        rollouts = _rollouts(run, policy, model, tok, state, start_step)
        bar = tqdm(total=cfg.steps, initial=start_step, desc=cfg.algo, disable=_quiet(run))
        t_last = time.perf_counter()  # the previous step's log: time/step_s is the loop's wall
        for step in range(start_step + 1, cfg.steps + 1):
            # -- collect: the rollout worker plays this rank's block [g0, g1) of whole groups
            # (seeds as in one process); with --async-staleness K it played them already, with
            # weights at most K updates old, while the previous steps trained
            with ctx.generation(model):  # one block: FSDP2 gathers the weights once per step
                batch, wait_s = rollouts.get(step)
            got = batch.got
            mine = got.mine  # sorted by id: finish order varies; credit and batches must not
            # -- batch -> pieces annotate -> advantages -> samples -> update -> pieces update
            t1 = time.perf_counter()
            dyn = dynamic_record(ctx, got.stats) if got.stats is not None else {}
            learned = None
            lr = cfg.step_lr(step, guard.guard.lr if guard is not None else None)
            for group in learner.optimizer.param_groups:
                group["lr"] = lr
            if not dyn or dyn["dynamic/kept"]:
                learned = learner.learn(step, mine)
            elif ctx.is_main:  # every rank skips: the kept count is summed over ranks
                print(
                    f"dynamic sampling: step {step}: no group with unequal returns in "
                    f"{dyn['dynamic/drawn']} drawn ({dyn['dynamic/rounds']} rounds); no update",
                    file=sys.stderr,
                    flush=True,
                )
            model.eval()
            # -- log ---------------------------------------------------------------------------
            times = ctx.all_reduce(  # the slowest rank
                [batch.seconds, time.perf_counter() - t1, wait_s], op="max"
            )
            stats = learned.stats if learned is not None else {}
            samples = learned.samples if learned is not None else []
            shaped = apply_penalty(got.played, cfg.invalid_penalty)  # all played, dropped too
            record: dict[str, Any] = {
                "step": step,
                **train_metrics(ctx, got.played, shaped, samples),
                **{f"loss/{k}": v for k, v in stats.items()},
                **({} if learned is None else _extra_record(learned.extra)),
                **dyn,
                **({"dynamic/skipped": int(learned is None)} if dyn else {}),
                "train/lr": lr,
                "time/rollout_s": times[0],
                "time/update_s": times[1],
                "time/wait_s": times[2],
                "time/step_s": time.perf_counter() - t_last,
                "async/staleness": staleness(got.played, step, batch.version),
            }
            if guard is not None:
                record.update(
                    guard.check(
                        step,
                        entropy=stats.get("entropy"),
                        invalid=1.0 - record["train/format_ok"],
                        success=record["train/success"],
                    )
                )
            if cfg.eval_every and step % cfg.eval_every == 0 and step != cfg.steps:
                record.update(eval_record(run.evaluate(policy)))
            run.logger.log(record)
            t_last = time.perf_counter()
            if ctx.is_main:
                run.clock.tick()
            bar.update(1)
            bar.set_postfix(
                success=f"{record['train/success']:.2f}",
                loss=f"{stats.get('loss', 0):.3f}",
                **({"eval": f"{record['eval/success']:.2f}"} if "eval/success" in record else {}),
            )
            # -- checkpoint ----------------------------------------------------------------------
            if (cfg.save_every and step % cfg.save_every == 0) or step == cfg.steps:
                state_out = {k: v for k, v in state.items() if k not in ("optimizer", "rng")}
                state_out.update(step=step, rng=rng_state(policy, learner.shuffle_rng))
                if guard is not None:
                    state_out["guard"] = guard.state_dict()
                _save(run, step, model, learner, tok, state_out)
            if step < cfg.steps:  # the weights after `step` updates, for the rollouts to come
                rollouts.publish(model, step)
        bar.close()
        # -- final evaluation ------------------------------------------------------------------
        # With no RL step the model is the one just evaluated (greedy: the same episodes again).
        final = last_eval if cfg.steps == 0 and last_eval is not None else run.evaluate(policy)
        run.logger.log({"step": cfg.steps, **eval_record(final), "final": True})
        ctx.save_pretrained(model, tok, run.out / "model")  # rank 0 writes
    finally:
        run.close()
    return write_report(run, state, final, guard)


# ------------------------------------------------------------------------------------------------
# setup
# ------------------------------------------------------------------------------------------------
def _open_run(cfg: TrainConfig) -> _Run:
    """Output folder, seeds, the checkpoint to resume from, logs and the env pools."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    from agentgym.pool import EnvPool
    from agentgym.trainers.checkpoint import (
        WallClock,
        checkpoint_step,
        latest_intact,
        list_checkpoints,
        seed_everything,
        truncate_trajectories,
    )
    from agentgym.trainers.distributed import NullLogger, init_distributed
    from agentgym.trainers.metrics import MetricsLogger
    from agentgym.trajectory import TrajectoryWriter
    from agentgym.utils import atomic_write_json

    # Under torchrun: join the process group (see agentgym.trainers.distributed); else a no-op.
    ctx = init_distributed(cfg.dist, device=cfg.device)
    out = Path(ctx.broadcast_object(str(cfg.out or Path("runs") / time.strftime("%Y%m%d-%H%M%S"))))
    out.mkdir(parents=True, exist_ok=True)
    cfg.out = str(out)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    _import_env_modules(cfg.env_modules)
    seed_everything(cfg.seed)
    ck = None
    if cfg.resume:
        ck = ctx.broadcast_object(latest_intact(out) if ctx.is_main else None)
        if ck is None:
            found = "no intact checkpoint" if list_checkpoints(out) else "no checkpoint"
            raise FileNotFoundError(
                f"--resume: {found} in {out / 'checkpoints'}; start without --resume"
            )
    if ctx.enabled and cfg.compile:
        raise ValueError("compile: runs in one process only; drop --compile under torchrun")
    if ctx.enabled and (cfg.async_staleness or cfg.rollout_engine != "hf"):
        raise ValueError(
            f"async_staleness={cfg.async_staleness}, rollout_engine={cfg.rollout_engine!r}: "
            "under torchrun rollouts run synchronously on the HF engine; use "
            "--async-staleness 0 --rollout-engine hf, or one process"
        )
    if ctx.enabled:
        if cfg.groups_per_step < ctx.world_size:
            raise ValueError(
                f"groups_per_step={cfg.groups_per_step} < {ctx.world_size} processes: each rank "
                f"rolls out whole groups, so use --groups-per-step {ctx.world_size} or more"
            )
        cfg.device = ctx.device  # cuda:<LOCAL_RANK> on GPUs
    done = checkpoint_step(ck) if ck is not None else None
    logger: Any = NullLogger()  # only rank 0 writes metrics
    if ctx.is_main:
        atomic_write_json(out / "config.json", cfg.to_dict())
        logger = MetricsLogger(out, cfg.tensorboard, done, max_new_tokens=cfg.max_new_tokens)
        if done is not None:  # the resumed steps play their episodes again: keep them once
            truncate_trajectories(out / "trajectories.jsonl", done)
    ctx.barrier()
    writer = TrajectoryWriter(out / "trajectories.jsonl") if cfg.write_trajectories else None
    train_pool = eval_pool = None
    try:
        from agentgym.registration import check_kwargs

        check_kwargs(cfg.env, _env_kwargs(cfg, "train"))  # a bad name: one line, not a crash
        timeout = cfg.step_timeout
        train_pool = EnvPool(
            cfg.env,
            cfg.num_envs,
            backend=cfg.backend,
            env_kwargs=_env_kwargs(cfg, "train"),
            step_timeout=timeout,
        )
        # All held-out episodes in one batch: evaluation is one policy call per turn.
        eval_pool = EnvPool(
            cfg.env,
            max(1, min(cfg.eval_episodes, 2 * cfg.num_envs)),
            num_workers=min(cfg.num_envs, os.cpu_count() or 1),
            backend=cfg.backend,
            env_kwargs=_env_kwargs(cfg, "test"),
            step_timeout=timeout,
        )
    except BaseException:
        for p in (train_pool, writer, logger):
            if p is not None:
                p.close()
        ctx.close()
        raise
    return _Run(
        cfg=cfg,
        ctx=ctx,
        out=out,
        checkpoint=ck,
        logger=logger,
        writer=writer,
        clock=WallClock(out, resume=ck is not None),
        train_pool=train_pool,
        eval_pool=eval_pool,
        eval_seed=10_000 + cfg.seed,
        lora={"r": cfg.lora_r, "lora_alpha": 2 * cfg.lora_r} if cfg.lora_r else None,
    )


def _quiet(run: _Run) -> bool:
    return not run.cfg.progress or not run.ctx.is_main


def _model(run: _Run) -> tuple[Any, Any, dict[str, Any], dict[str, Any] | None]:
    """``(model, tokenizer, run state, last evaluation)``: the checkpoint's model when resuming,
    else the given (or a freshly built tiny) model, evaluated, then SFT-warm-started."""
    import torch

    from agentgym.trainers.hf_policy import load_model

    cfg, ctx = run.cfg, run.ctx
    if run.checkpoint is not None:
        state = torch.load(run.checkpoint / "state.pt", weights_only=False)
        if run.lora:
            from peft import PeftModel

            base, tok = load_model(state["base_model"], device=cfg.device, dtype=cfg.dtype)
            from agentgym.lora import fuse_lora

            model = PeftModel.from_pretrained(base, run.checkpoint, is_trainable=True)
            fuse_lora(model)
        else:
            model, tok = load_model(run.checkpoint, device=cfg.device, dtype=cfg.dtype)
        return model, tok, state, None
    state: dict[str, Any] = {"step": 0}
    base_path = cfg.model
    if base_path is None and ctx.is_main:  # under torchrun rank 0 builds it
        base_path = _tiny_model(cfg, run.out)
    state["base_model"] = base_path = ctx.broadcast_object(base_path)
    model, tok = load_model(base_path, device=cfg.device, dtype=cfg.dtype, lora=run.lora)
    policy0 = _make_policy(cfg, model, tok)
    ev0 = last_eval = run.evaluate(policy0)
    state["success_initial"] = ev0["success_rate"]
    state["outcomes_initial"] = ev0.get("outcomes")
    state["eval_initial"] = _eval_record(ev0)
    state["success_sft"] = state["expert_success"] = None
    if cfg.sft_episodes > 0 and cfg.sft_epochs > 0:
        last_eval = _sft(run, model, tok, policy0, state)
    else:
        run.logger.log({"step": 0, **state["eval_initial"]})
    return model, tok, state, last_eval


def _eval_record(ev: dict[str, Any]) -> dict[str, float]:
    from agentgym.trainers.metrics import eval_record

    return eval_record(ev)


def _tiny_model(cfg: TrainConfig, out: Path) -> str:
    from agentgym.trainers.tiny_model import collect_env_texts, init_model

    texts = collect_env_texts(
        [cfg.env],
        episodes=cfg.corpus_episodes,
        seed=cfg.seed,
        env_kwargs=_env_kwargs(cfg, "train"),
        history_len=cfg.history_len,
        backend=cfg.backend,
    )
    return str(
        init_model(
            out / "init_model",
            texts,
            vocab_size=cfg.tiny_vocab_size,
            hidden_size=cfg.tiny_hidden_size,
            num_layers=cfg.tiny_layers,
            seed=cfg.seed,
        )
    )


def _sft(run: _Run, model: Any, tok: Any, policy0: Any, state: dict[str, Any]) -> dict[str, Any]:
    """SFT warm start on expert turns; evaluates and saves ``sft_model/``. Returns the evaluation."""
    from tqdm import tqdm

    from agentgym.trainers.sft import collect_expert_pairs, encode_example, sft_train

    cfg, ctx = run.cfg, run.ctx
    pairs, expert_won = collect_expert_pairs(
        cfg.env,
        episodes=cfg.sft_episodes,
        seed=cfg.seed + 50_000,
        env_kwargs=_env_kwargs(cfg, "train"),
        history_len=cfg.history_len,
        num_envs=cfg.num_envs,
        backend=cfg.backend,
        explore=cfg.sft_explore,
        context=cfg.context,
    )
    examples = [
        encode_example(tok, m, a, max_prompt_tokens=cfg.max_prompt_tokens) for m, a in pairs
    ]
    bar = tqdm(
        total=cfg.sft_epochs * -(-len(examples) // cfg.sft_batch_size),
        desc="sft",
        disable=_quiet(run),
    )
    losses = sft_train(
        model,
        examples,
        pad_id=tok.pad_token_id,
        epochs=cfg.sft_epochs,
        lr=cfg.sft_lr,
        batch_size=cfg.sft_batch_size,
        micro_batch_size=cfg.micro_batch_size,
        seed=cfg.seed,
        on_step=lambda s, v: (bar.update(1), bar.set_postfix(loss=f"{v:.3f}")),
    )
    bar.close()
    ev_sft = run.evaluate(policy0)
    state["success_sft"] = ev_sft["success_rate"]
    state["outcomes_sft"] = ev_sft.get("outcomes")
    state["expert_success"] = expert_won
    run.logger.log(
        {"step": 0, "sft/examples": len(examples), "sft/loss": losses[-1], **_eval_record(ev_sft)}
    )
    # Every rank ran the same SFT; rank 0's weights are the ones the wrap keeps.
    if ctx.is_main:
        model.save_pretrained(run.out / "sft_model")
        tok.save_pretrained(run.out / "sft_model")
    ctx.barrier()
    return ev_sft


def _learner(run: _Run, train_model: Any, policy: Any, state: dict[str, Any]) -> Any:
    """The update side: optimizer, KL reference (if any), credit pieces, minibatch shuffler;
    restored from the checkpoint when resuming."""
    from agentgym.trainers.checkpoint import set_rng_state
    from agentgym.trainers.hf_policy import load_model
    from agentgym.trainers.learner import Learner
    from agentgym.trainers.losses import make_optimizer
    from agentgym.trainers.pieces import PieceContext, build_pieces

    cfg, ctx = run.cfg, run.ctx
    if ctx.rank:  # each rank samples its own random stream
        policy.generator.manual_seed(cfg.seed + 1_000_003 * ctx.rank)
    # The scorers start from the SFT model (with LoRA: the base model); the KL reference is the
    # SFT policy either way (with LoRA: the base with the SFT adapters merged in).
    sft_dir = run.out / "sft_model"
    start_from = sft_dir if sft_dir.exists() and not run.lora else state["base_model"]
    ref_model = None
    if "kl" in cfg.loss_terms():
        ref_model, _ = load_model(start_from, device=cfg.device, dtype=cfg.dtype)
        if (sft_dir / "adapter_config.json").exists():
            from peft import PeftModel

            ref_model = PeftModel.from_pretrained(ref_model, sft_dir).merge_and_unload()
        ref_model.eval().requires_grad_(False)
    pad_id = policy.tokenizer.pad_token_id
    learner = Learner(
        cfg,
        ctx,
        train_model,
        make_optimizer(train_model, lr=cfg.lr, weight_decay=cfg.weight_decay),
        build_pieces(PieceContext(cfg, start_from, pad_id, policy.device)),
        pad_id,
        ref_model,
        random.Random(cfg.seed),
    )
    if cfg.compile:
        from agentgym.compiled import CompiledLayers

        learner.compiled = CompiledLayers(train_model)
    if run.checkpoint is not None:
        ctx.load_optimizer_state_dict(train_model, learner.optimizer, state["optimizer"])
        rngs = state.get("rng_by_rank") or []  # torchrun checkpoints keep every rank's RNG
        same_world = len(rngs) == ctx.world_size
        set_rng_state(rngs[ctx.rank] if same_world else state["rng"], policy, learner.shuffle_rng)
        if ctx.rank and not same_world:
            policy.generator.manual_seed(cfg.seed + 1_000_003 * ctx.rank + state["step"])
        for piece in learner.pieces:
            if piece.name in state:
                piece.load_state_dict(state[piece.name])
    return learner


def _rollouts(
    run: _Run, policy: Any, model: Any, tok: Any, state: dict[str, Any], start_step: int
) -> Any:
    """The started rollout worker of steps ``start_step + 1 .. steps``
    (:func:`~agentgym.trainers.rollout_worker.start_worker`)."""
    from agentgym.trainers.rollout_worker import start_worker

    run.rollouts = start_worker(
        run.cfg,
        lambda p, pool, step: _collect(run, p, pool, step),
        run.train_pool,
        policy=policy,
        model=model,
        tok=tok,
        make_policy=lambda m, t, seed: _make_policy(run.cfg, m, t, seed=seed),
        base_model=state["base_model"],
        start_step=start_step,
    )
    return run.rollouts


def _collect(run: _Run, policy: Any, pool: Any, step: int) -> Any:
    """This rank's episodes of RL ``step``: its block of whole groups, refilled with fresh tasks
    under ``--dynamic-sampling`` (:func:`~agentgym.trainers.stability_loop.collect_groups`).
    Runs in the rollout worker's thread, with its (watched) policy and pool."""
    from agentgym.rollout import rollout
    from agentgym.trainers.rollout_worker import VersionObserver
    from agentgym.trainers.stability_loop import collect_groups, task_seed

    cfg, ctx = run.cfg, run.ctx
    g0, g1 = ctx.shard(cfg.groups_per_step)
    # Without dynamic sampling episodes are written as they end; with it, once kept or dropped.
    live_writer = None if cfg.dynamic_sampling else run.writer

    def play(n: int, round_: int, run_id: str) -> list[Any]:
        return rollout(
            pool,
            policy,
            num_groups=n,
            group_size=cfg.group_size,
            seed=task_seed(cfg.seed, step, cfg.groups_per_step, g0, round_),
            history_len=cfg.history_len,
            writer=live_writer,
            run_id=run_id,
            observer=VersionObserver(policy),
        )

    return collect_groups(
        play,
        num_groups=g1 - g0,
        run_id=f"s{step}-r{ctx.rank}" if ctx.enabled else f"s{step}",
        dynamic=cfg.dynamic_sampling,
        max_rounds=cfg.dynamic_max_rounds,
        penalty=cfg.invalid_penalty,
        writer=run.writer,
    )


def _extra_record(extra: dict[str, float]) -> dict[str, float]:
    """The credit pieces' metrics, under ``credit/`` unless they name their own prefix."""
    return {(k if "/" in k else f"credit/{k}"): v for k, v in extra.items()}


def _guard(run: _Run, learner: Any, state: dict[str, Any], start_step: int) -> Any:
    """The collapse guard of ``--guard`` (``None`` when off), its counters restored on resume
    and its first snapshot taken of the weights the RL steps start from."""
    from agentgym.trainers.stability_loop import LoopGuard

    if not run.cfg.guard:
        return None
    guard = LoopGuard(run.cfg, learner.model, learner.optimizer, is_main=run.ctx.is_main)
    guard.start(start_step, state.get("guard"))
    return guard


def _save(run: _Run, step: int, model: Any, learner: Any, tok: Any, state: dict[str, Any]) -> None:
    """Checkpoint ``step``: weights, optimizer, RNGs and every piece's state (rank 0 writes;
    under torchrun every rank's RNG, FSDP2's full weights and AdamW state are gathered)."""
    from agentgym.trainers.checkpoint import save_checkpoint
    from agentgym.trainers.distributed import unwrap

    ctx = run.ctx
    state = {**state, "config": run.cfg.to_dict()}
    state.update({p.name: p.state_dict() for p in learner.pieces})
    if ctx.enabled:
        state["rng_by_rank"] = ctx.all_gather_object(state["rng"])
    model_state = ctx.model_state_dict(learner.model, dedupe_tied=True)
    opt_state = ctx.optimizer_state_dict(learner.model, learner.optimizer)
    if ctx.is_main:
        save_checkpoint(
            run.out,
            step,
            unwrap(model),
            tok,
            opt_state,
            state,
            run.cfg.keep_checkpoints,
            model_state=model_state,
        )
    ctx.barrier()


# ------------------------------------------------------------------------------------------------
# records -> samples
# ------------------------------------------------------------------------------------------------
def _env_kwargs(cfg: TrainConfig, split: str) -> dict[str, Any]:
    kw = dict(cfg.env_kwargs)
    if cfg.split_kwarg:
        kw[cfg.split_kwarg] = split
    if cfg.max_turns is not None:
        kw["max_turns"] = cfg.max_turns
    return kw


def _import_env_modules(names: Sequence[str]) -> None:
    import agentgym

    agentgym.load_plugins()
    for name in names:
        importlib.import_module(name)


def _make_policy(cfg: TrainConfig, model: Any, tok: Any, *, seed: int | None = None) -> Any:
    from agentgym.trainers.hf_policy import HFPolicy

    return HFPolicy(
        model,
        tok,
        seed=cfg.seed if seed is None else seed,
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        history_len=cfg.history_len,
        max_prompt_tokens=cfg.max_prompt_tokens,
        name="train",
        context=cfg.context,
        drift_check=cfg.drift_check,
    )

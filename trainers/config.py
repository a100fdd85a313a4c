"""The settings of ``agentgym train``: one :class:`TrainConfig`, validated once, up front.

Every field carries its help text; the CLI flags (``agentgym.trainers.cli``), the ``--config``
file keys and the settings table of ``docs/training.md`` are generated from it. ``__post_init__``
is the only place settings are checked: types first (``steps: "two"`` in a file), then ranges and
cross-field rules, then the estimator / transform / loss-term combination
(:func:`agentgym.trainers.compose.validate_combination`). Each error is one line naming the
value and the fix, raised before any model is built.

The settings the other pieces need are derived here, not re-validated elsewhere:
:meth:`TrainConfig.loss_config` (the loss terms), :meth:`TrainConfig.credit_config` (the
estimators) and :meth:`TrainConfig.composition` (which credit pieces the run needs).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "TrainConfig",
    "ALGOS",
    "load_config_file",
    "config_markdown",
    "field_type",
    "ConfigError",
]

ALGOS = ("gigpo", "grpo", "rloo", "ppo", "spa")


class ConfigError(ValueError):
    """A setting that cannot work; the message names the value and the fix."""


def _f(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with its help text (the CLI and the docs table read it)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    """Every setting of ``agentgym train``. Defaults are the built-in CPU run."""

    # -- run ----------------------------------------------------------------------------------
    out: str | None = _f(None, "output folder (default: runs/<timestamp>)")
    seed: int = _f(0, "seeds model init, sampling, task order and shuffling")
    resume: bool = _f(False, "continue from the last checkpoint in `out`")
    device: str | None = _f(None, "torch device (default: cuda if available, else cpu)")
    threads: int = _f(
        1, "torch CPU threads (0: torch's choice); 1 is fastest for tiny models on busy CPUs"
    )
    # -- environment --------------------------------------------------------------------------
    env: str = _f("frozenlake/FrozenLake4x4Local-v0", "env id to train on")
    env_kwargs: dict = _f({}, "extra env kwargs (JSON on the command line)")
    split_kwarg: str | None = _f(
        "split", "env kwarg selecting train/test tasks (None: the env has no splits)"
    )
    env_modules: list = _f([], "modules to import first (they register custom envs)")
    max_turns: int | None = _f(None, "turn limit override (default: the env spec's)")
    num_envs: int = _f(32, "parallel env copies in the pools")
    backend: str = _f(
        "auto",
        "EnvPool backend: auto (in-process for envs registered fast=True, else process) | "
        "process | sync | ray",
        choices=("auto", "process", "sync", "ray"),
    )
    step_timeout: float | None = _f(
        600.0,
        "seconds an env step or reset may take; then its worker is replaced and the episode "
        "ends as crashed; an in-process (sync) pool cannot be interrupted, so there the run "
        "stops with an error naming the call (None: no limit)",
    )
    # -- model --------------------------------------------------------------------------------
    model: str | None = _f(None, "local HF causal LM folder or built-in name (default: tiny model)")
    tiny_hidden_size: int = _f(128, "tiny model width")
    tiny_layers: int = _f(2, "tiny model decoder layers")
    tiny_vocab_size: int = _f(1024, "tiny model BPE vocabulary size")
    corpus_episodes: int = _f(32, "episodes (expert + random) whose text trains the tokenizer")
    lora_r: int = _f(0, "LoRA rank (0: train all weights)")
    dtype: str = _f("float32", "weights dtype: float32 | bfloat16")
    # -- SFT warm start -----------------------------------------------------------------------
    sft_episodes: int = _f(32, "expert episodes for the SFT warm start (0: no SFT)")
    sft_epochs: int = _f(10, "passes over the SFT data")
    sft_lr: float = _f(2e-3, "SFT learning rate (AdamW, warmup + linear decay)")
    sft_batch_size: int = _f(16, "SFT turns per optimizer step")
    sft_explore: float = _f(
        0.3, "SFT data: chance of a random move instead of the expert's (labels stay expert's)"
    )
    # -- rollouts -----------------------------------------------------------------------------
    algo: str = _f("gigpo", "advantage estimator: gigpo | grpo | rloo | ppo | spa", choices=ALGOS)
    steps: int = _f(40, "RL iterations (collect + update)")
    groups_per_step: int = _f(8, "task groups per iteration (distinct seeds)")
    group_size: int = _f(8, "episodes per group (same task and start state)")
    max_new_tokens: int = _f(16, "reply budget per turn (tokens)")
    temperature: float = _f(1.0, "sampling temperature during training")
    history_len: int = _f(
        0, "(observation, action) pairs of history in each prompt (text games want 1-2)"
    )
    max_prompt_tokens: int = _f(
        1024,
        "longer prompts keep their last tokens (conversation: the oldest whole turns leave the "
        "window first)",
    )
    context: str = _f(
        "stepwise",
        "stepwise (each turn prompted anew: task, last history_len turns, observation) | "
        "conversation (the episode is one token sequence in the chat template; docs/conversation.md)",
        choices=("stepwise", "conversation"),
    )
    drift_check: str = _f(
        "error",
        "conversation: when the kept tokens differ from a fresh rendering of the chat template, "
        "error | log | off",
        choices=("error", "log", "off"),
    )
    invalid_penalty: float = _f(1.0, "subtracted from a turn's reward when the reply has no action")
    async_staleness: int = _f(
        0,
        "asynchronous rollouts: a worker collects the next steps' groups while the current step "
        "trains, with weights at most this many updates older than the learner's (0: "
        "synchronous, collect then train; docs/training.md, 'Asynchronous rollouts')",
    )
    rollout_engine: str = _f(
        "hf",
        "what generates the rollouts: hf (the trainer's model, or a copy of it when "
        "async_staleness > 0) | vllm (a vLLM engine, weights synced after every update; needs "
        "vllm: make test-vllm builds .venv-vllm on a CPU)",
        choices=("hf", "vllm"),
    )
    generate_timeout: float | None = _f(
        600.0,
        "seconds one batched generation (a turn of every active episode) may take before the "
        "run stops with an error naming it (None: no limit)",
    )
    sync_timeout: float | None = _f(
        300.0,
        "seconds a weight sync to the rollout engine may take before the run stops with an "
        "error naming it (None: no limit)",
    )
    # -- credit assignment --------------------------------------------------------------------
    gamma: float = _f(0.95, "discount of per-turn returns (GiGPO step groups)")
    omega: float = _f(1.0, "weight of GiGPO's step advantage")
    adv_norm: str = _f("std", "group normalisation: std | mean")
    turn_weight: str = _f(
        "episode",
        "weight of a turn in the policy loss: turn (every turn once, so long episodes weigh "
        "more) | episode (an episode's turns share one episode's weight: advantages are scaled "
        "by mean turns per episode / the episode's turns)",
    )
    transform: list = _f([], "reward transforms before the estimator: gated | direct (repeatable)")
    gate_channels: list = _f(["won", "reward"], "channels of gated/direct, highest priority first")
    gate_thresholds: list = _f([1.0], "gated: one pass threshold per channel except the last")
    lam: float = _f(0.95, "GAE lambda of turn-level PPO (algo ppo)")
    value_lr: float = _f(1e-3, "critic learning rate (algo ppo)")
    value_epochs: int = _f(2, "critic passes over each iteration's turns (algo ppo)")
    value_clip: float | None = _f(0.2, "critic value clip (None: plain MSE) (algo ppo)")
    spa_beta: float = _f(1.0, "SPA weight of the grounding (valid action) signal (algo spa)")
    progress_lr: float = _f(1e-3, "progress estimator learning rate (algo spa)")
    progress_epochs: int = _f(1, "progress estimator passes per iteration (algo spa)")
    progress_replay: int = _f(256, "earlier episodes the progress estimator refits on (algo spa)")
    progress_target: str = _f("won", "what contributions sum to: won | return (algo spa)")
    # -- EPO entropy control ------------------------------------------------------------------
    epo: bool = _f(False, "EPO: trajectory entropy bonus + entropy smoothing + phase weights")
    epo_entropy_coef: float = _f(0.01, "EPO trajectory-level entropy bonus weight")
    epo_smooth_coef: float = _f(0.1, "EPO entropy smoothing penalty weight")
    epo_k_low: float = _f(0.2, "EPO band below the historical entropy (fraction)")
    epo_k_high: float = _f(0.2, "EPO band above the historical entropy (fraction)")
    # -- PPO update ---------------------------------------------------------------------------
    lr: float = _f(5e-4, "RL learning rate (AdamW)")
    lr_schedule: str = _f(
        "constant",
        "RL learning rate over the steps: constant | linear (from lr at step 1 down to "
        "lr/steps at the last step, as PPO anneals it)",
        choices=("constant", "linear"),
    )
    weight_decay: float = _f(0.0, "AdamW weight decay (not on biases and norms)")
    ppo_epochs: int = _f(1, "passes over each iteration's turns")
    minibatch_size: int = _f(64, "turns per optimizer step")
    micro_batch_size: int = _f(16, "turns per forward/backward at most (gradient accumulation)")
    micro_batch_tokens: int = _f(
        8192,
        "padded tokens per forward/backward at most: a minibatch's turns are ordered by length "
        "or by content, whichever computes less, and cut into micro-batches of at most "
        "micro_batch_size turns and this many padded tokens (0: no token bound)",
    )
    clip_eps: float = _f(0.2, "PPO ratio clip")
    clip_eps_high: float | None = _f(
        None, "upper ratio clip, clip-higher (DAPO: 0.28); None: clip_eps (symmetric)"
    )
    dual_clip: float | None = _f(3.0, "dual-clip bound c for negative advantages (None: off)")
    kl_coef: float = _f(0.0, "k3 KL penalty to the SFT model (0: off, no reference model)")
    entropy_coef: float = _f(0.0, "entropy bonus")
    loss_agg: str = _f("token-mean", "loss aggregation: token-mean | seq-mean-token-mean")
    max_grad_norm: float = _f(1.0, "gradient clipping norm")
    tis_cap: float | None = _f(
        None,
        "train/inference mismatch correction: the PPO ratio uses the trainer's own log-probs of "
        "the rollout and each token's loss is weighed by min(exp(trainer - behaviour logp), "
        "tis_cap), e.g. 2.0 for a vLLM rollout (None: off)",
    )
    tis_mask: float | None = _f(
        None,
        "mismatch correction: drop tokens whose trainer/behaviour probability ratio is outside "
        "[1/tis_mask, tis_mask], e.g. 5.0 (None: off)",
    )
    mismatch_every: int = _f(
        10,
        "measure the train/inference log-prob mismatch (loss/mismatch_abs) every N steps, one "
        "extra forward pass each time (0: never; always on when tis_cap or tis_mask is set)",
    )
    bf16: bool = _f(True, "bf16 autocast (GPU only; ignored on CPU)")
    compile: bool = _f(
        False,
        "torch.compile the decoder layers for the update's passes (decoding stays eager): "
        "fuses their element-wise work after a one-off compile; one process only; on a CPU it "
        "needs a C++ compiler (g++)",
    )
    dist: str = _f(
        "ddp",
        "under torchrun: ddp (a full replica per rank) | fsdp (FSDP2: weights, gradients and "
        "optimizer state sharded over ranks); ignored in a single process",
        choices=("ddp", "fsdp"),
    )
    # -- learning stability (docs/stability.md) ------------------------------------------------
    dynamic_sampling: bool = _f(
        False,
        "DAPO dynamic sampling: drop groups whose shaped returns are all equal and refill with "
        "new tasks until groups_per_step informative groups are in hand",
    )
    dynamic_max_rounds: int = _f(
        3, "dynamic sampling: collection rounds per step at most (the first included)"
    )
    guard: bool = _f(
        False,
        "collapse guard: on a run of bad steps restore the last good weights and optimizer "
        "state (a copy kept in host RAM) and lower the learning rate",
    )
    guard_entropy_min: float | None = _f(
        0.05, "guard: mean token entropy of the update below this is bad (None: unwatched)"
    )
    guard_entropy_max: float | None = _f(
        None, "guard: mean token entropy of the update above this is bad (None: unwatched)"
    )
    guard_invalid_max: float | None = _f(
        0.5,
        "guard: share of replies with no parsable action (1 - train/format_ok) above this is bad",
    )
    guard_success_drop: float | None = _f(
        0.25, "guard: train success this far below its best so far is bad (None: unwatched)"
    )
    guard_patience: int = _f(3, "guard: consecutive bad steps before a restore")
    guard_lr_factor: float = _f(0.5, "guard: the learning rate is multiplied by this on a restore")
    guard_min_lr: float = _f(1e-7, "guard: the learning rate is never lowered below this")
    # -- evaluation, logging, checkpoints -----------------------------------------------------
    eval_every: int = _f(10, "greedy held-out evaluation every N steps (0: only before/after)")
    eval_episodes: int = _f(256, "held-out episodes per evaluation")
    eval_temperature: float = _f(
        0.0,
        "evaluation sampling temperature (0: greedy); above 0 every evaluation draws from its "
        "own generator seeded from the evaluation seed, so evaluations pair up",
    )
    save_every: int = _f(5, "checkpoint every N steps (0: only at the end)")
    keep_checkpoints: int = _f(2, "checkpoints kept on disk")
    tensorboard: bool = _f(True, "write TensorBoard logs to out/tb")
    write_trajectories: bool = _f(True, "append every training episode to trajectories.jsonl")
    progress: bool = _f(True, "show a progress bar")

    def __post_init__(self) -> None:
        self._check_types()
        if self.algo not in ALGOS:
            raise ConfigError(f"algo={self.algo!r} is unknown: use one of {', '.join(ALGOS)}")
        if self.micro_batch_size > self.minibatch_size:
            raise ConfigError(
                f"micro_batch_size={self.micro_batch_size} exceeds minibatch_size="
                f"{self.minibatch_size}: lower --micro-batch-size or raise --minibatch-size"
            )
        if self.micro_batch_tokens < 0:
            raise ConfigError(
                f"micro_batch_tokens={self.micro_batch_tokens}: use 0 (no token bound) or a "
                "token budget such as --micro-batch-tokens 8192"
            )
        if self.temperature <= 0:
            raise ConfigError(
                f"temperature={self.temperature}: RL needs sampling, use a value > 0 (e.g. 1.0); "
                "evaluation is greedy anyway"
            )
        if self.context not in ("stepwise", "conversation"):
            raise ConfigError(
                f"context={self.context!r}: use --context stepwise or --context conversation"
            )
        if self.drift_check not in ("error", "log", "off"):
            raise ConfigError(
                f"drift_check={self.drift_check!r}: use --drift-check error, --drift-check log "
                "or --drift-check off"
            )
        if self.adv_norm not in ("std", "mean"):
            raise ConfigError(f"adv_norm={self.adv_norm!r}: use 'std' or 'mean'")
        if self.lr_schedule not in ("constant", "linear"):
            raise ConfigError(
                f"lr_schedule={self.lr_schedule!r}: use --lr-schedule constant or "
                "--lr-schedule linear"
            )
        if self.turn_weight not in ("turn", "episode"):
            raise ConfigError(
                f"turn_weight={self.turn_weight!r}: use --turn-weight turn or --turn-weight episode"
            )
        if self.loss_agg not in ("token-mean", "seq-mean-token-mean"):
            raise ConfigError(
                f"loss_agg={self.loss_agg!r}: use 'token-mean' or 'seq-mean-token-mean'"
            )
        if self.clip_eps_high is not None and self.clip_eps_high < self.clip_eps:
            raise ConfigError(
                f"clip_eps_high={self.clip_eps_high} is below clip_eps={self.clip_eps}: "
                "clip-higher widens the upper clip (e.g. 0.28 with clip_eps 0.2), or pass None"
            )
        if self.dual_clip is not None and self.dual_clip <= 1.0:
            raise ConfigError(f"dual_clip={self.dual_clip} must be > 1 (e.g. 3.0) or None")
        if self.tis_cap is not None and self.tis_cap < 1.0:
            raise ConfigError(
                f"tis_cap={self.tis_cap} must be >= 1 (a cap on the importance weight): pass "
                "e.g. --tis-cap 2.0, or none to switch the correction off"
            )
        if self.eval_temperature < 0:
            raise ConfigError(
                f"eval_temperature={self.eval_temperature} must be >= 0: pass 0 for greedy "
                "evaluation or e.g. --eval-temperature 1.0 to sample"
            )
        if self.mismatch_every < 0:
            raise ConfigError(
                f"mismatch_every={self.mismatch_every} must be >= 0: pass e.g. "
                "--mismatch-every 10, or 0 to never measure it"
            )
        if self.tis_mask is not None and self.tis_mask <= 1.0:
            raise ConfigError(
                f"tis_mask={self.tis_mask} must be > 1 (the band is [1/tis_mask, tis_mask]): "
                "pass e.g. --tis-mask 5.0, or none to switch masking off"
            )
        if self.dist not in ("ddp", "fsdp"):
            raise ConfigError(f"dist={self.dist!r}: use 'ddp' or 'fsdp'")
        if self.steps < 0 or self.groups_per_step < 1 or self.max_new_tokens < 1:
            raise ConfigError("steps must be >= 0, groups_per_step and max_new_tokens >= 1")
        for name in ("lr", "sft_lr", "value_lr", "progress_lr"):
            value = getattr(self, name)
            if not value > 0:
                flag = "--" + name.replace("_", "-")
                raise ConfigError(
                    f"{name}={value!r} must be > 0 (a learning rate): pass e.g. {flag} "
                    f"{_default(name)!r}"
                )
        for name in ("num_envs", "minibatch_size", "micro_batch_size", "ppo_epochs"):
            if getattr(self, name) < 1:
                flag = "--" + name.replace("_", "-")
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 1: pass e.g. {flag} 1")
        for name in (
            "eval_episodes",
            "sft_episodes",
            "eval_every",
            "save_every",
            "progress_replay",
        ):
            if getattr(self, name) < 0:
                flag = "--" + name.replace("_", "-")
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 0: pass e.g. {flag} 0")
        if self.model is None and self.dtype != "float32":
            raise ConfigError("the tiny model trains in float32: drop --dtype or pass --model")
        if self.kl_coef < 0 or self.entropy_coef < 0 or self.invalid_penalty < 0:
            raise ConfigError("kl_coef, entropy_coef and invalid_penalty must be >= 0")
        self._check_stability()
        self._check_rollouts()
        self.gate_thresholds = [float(x) for x in self.gate_thresholds]
        self.composition()  # the estimator / transform / loss-term rules

    def _check_types(self) -> None:
        """Each field holds its declared type (a config file can say ``steps: "two"``)."""
        for f in dataclasses.fields(self):
            base, optional = field_type(f)
            value = getattr(self, f.name)
            if value is None and optional:
                continue
            if base is float and isinstance(value, int) and not isinstance(value, bool):
                setattr(self, f.name, float(value))
                continue
            ok = isinstance(value, base) and not (base is int and isinstance(value, bool))
            if not ok:
                want = {
                    int: "an integer",
                    float: "a number",
                    str: "a string",
                    bool: "true or false",
                    list: "a list",
                    dict: "a mapping",
                }.get(base, base.__name__)
                flag = "--" + f.name.replace("_", "-")
                raise ConfigError(
                    f"{f.name}={value!r} must be {want}{' or None' if optional else ''}: set "
                    f"{f.name} (or {flag}) to e.g. {_default(f.name)!r}"
                )

    def _check_stability(self) -> None:
        """Dynamic sampling and collapse guard settings (docs/stability.md)."""
        if self.dynamic_max_rounds < 1:
            raise ConfigError(
                f"dynamic_max_rounds={self.dynamic_max_rounds} must be >= 1 (the first round "
                "counts): pass e.g. --dynamic-max-rounds 3"
            )
        if self.dynamic_sampling and self.group_size < 2:
            raise ConfigError(
                f"dynamic_sampling compares the returns within a group, so it needs group_size "
                f">= 2 (got {self.group_size}): use --group-size 4 or --no-dynamic-sampling"
            )
        if self.guard_patience < 1:
            raise ConfigError(
                f"guard_patience={self.guard_patience} must be >= 1: pass e.g. --guard-patience 3"
            )
        if not 0 < self.guard_lr_factor <= 1:
            raise ConfigError(
                f"guard_lr_factor={self.guard_lr_factor} must be in (0, 1]: pass e.g. "
                "--guard-lr-factor 0.5"
            )
        if not self.guard_min_lr > 0:
            raise ConfigError(
                f"guard_min_lr={self.guard_min_lr} must be > 0: pass e.g. --guard-min-lr 1e-7"
            )
        lo, hi = self.guard_entropy_min, self.guard_entropy_max
        if lo is not None and hi is not None and lo >= hi:
            raise ConfigError(
                f"guard_entropy_min={lo} is not below guard_entropy_max={hi}: raise "
                "--guard-entropy-max or lower --guard-entropy-min (or pass none)"
            )
        if self.guard_success_drop is not None and self.guard_success_drop < 0:
            raise ConfigError(
                f"guard_success_drop={self.guard_success_drop} must be >= 0 (absolute success, "
                "e.g. 0.25) or none"
            )

    def _check_rollouts(self) -> None:
        """Asynchronous rollouts, the rollout engine and the watchdog's timeouts."""
        if self.async_staleness < 0:
            raise ConfigError(
                f"async_staleness={self.async_staleness} must be >= 0: pass 0 (synchronous) or "
                "e.g. --async-staleness 1"
            )
        if self.async_staleness and self.guard:
            raise ConfigError(
                f"guard restores weights that the in-flight rollouts (async_staleness="
                f"{self.async_staleness}) were not sampled from: use --async-staleness 0 with "
                "--guard, or drop --guard"
            )
        for name in ("generate_timeout", "sync_timeout", "step_timeout"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                flag = "--" + name.replace("_", "-")
                raise ConfigError(
                    f"{name}={value} must be > 0 seconds: pass e.g. {flag} {_default(name)}, "
                    "or none for no limit"
                )
        if self.rollout_engine not in ("hf", "vllm"):
            raise ConfigError(
                f"rollout_engine={self.rollout_engine!r}: use --rollout-engine hf or "
                "--rollout-engine vllm"
            )
        if self.rollout_engine == "vllm":
            from agentgym.trainers.vllm_policy import vllm_unavailable_reason

            reason = vllm_unavailable_reason()
            if reason is not None:
                raise ConfigError(
                    f"rollout_engine='vllm' cannot run here: {reason}; run under .venv-vllm "
                    "(make test-vllm builds it) or use --rollout-engine hf"
                )
            if self.context != "stepwise":
                raise ConfigError(
                    f"rollout_engine='vllm' renders stepwise prompts only (context="
                    f"{self.context!r}): use --context stepwise or --rollout-engine hf"
                )

    def guard_config(self) -> Any:
        """The :class:`~agentgym.trainers.stability.CollapseGuardConfig` of ``--guard``."""
        from agentgym.trainers.stability import CollapseGuardConfig

        return CollapseGuardConfig(
            entropy_min=self.guard_entropy_min,
            entropy_max=self.guard_entropy_max,
            invalid_max=self.guard_invalid_max,
            success_drop=self.guard_success_drop,
            patience=self.guard_patience,
            lr_factor=self.guard_lr_factor,
            min_lr=self.guard_min_lr,
        )

    # -- what the settings imply --------------------------------------------------------------
    def step_lr(self, step: int, base: float | None = None) -> float:
        """The RL learning rate of update ``step`` (1-based) under ``lr_schedule``, from ``base``
        (default ``lr``; the collapse guard passes the rate it lowered to)."""
        base = self.lr if base is None else base
        if self.lr_schedule == "linear":
            return base * max(self.steps - step + 1, 1) / max(self.steps, 1)
        return base

    def loss_terms(self) -> tuple[str, ...]:
        """The extra loss terms switched on (``kl``, ``entropy``, ``epo``)."""
        on = (("kl", self.kl_coef > 0), ("entropy", self.entropy_coef > 0), ("epo", self.epo))
        return tuple(name for name, enabled in on if enabled)

    def composition(self) -> Any:
        """The validated estimator + transforms + loss terms (what the run must build)."""
        from agentgym.trainers.compose import validate_combination

        try:
            return validate_combination(
                self.algo,
                self.transform,
                self.loss_terms(),
                group_size=self.group_size,
                gate_channels=tuple(self.gate_channels),
            )
        except ValueError as e:
            raise ConfigError(str(e)) from None

    @property
    def tis_on(self) -> bool:
        """Whether the train/inference mismatch correction is on (it scores every rollout)."""
        return self.tis_cap is not None or self.tis_mask is not None

    def loss_config(self) -> Any:
        """The :class:`~agentgym.trainers.losses.PPOConfig` of the policy update."""
        from agentgym.trainers.losses import PPOConfig

        return PPOConfig(
            clip_eps=self.clip_eps,
            dual_clip=self.dual_clip,
            clip_eps_high=self.clip_eps_high,
            kl_coef=self.kl_coef,
            entropy_coef=self.entropy_coef,
            agg=self.loss_agg,
            ppo_epochs=self.ppo_epochs,
            minibatch_size=self.minibatch_size,
            micro_batch_size=self.micro_batch_size,
            micro_batch_tokens=self.micro_batch_tokens,
            max_grad_norm=self.max_grad_norm,
            temperature=self.temperature,
            bf16=self.bf16,
            tis_cap=self.tis_cap,
            tis_mask=self.tis_mask,
        )

    def credit_config(self) -> Any:
        """The :class:`~agentgym.trainers.credit.CreditConfig` of the estimators."""
        from agentgym.trainers.credit import CreditConfig

        return CreditConfig(
            gamma=self.gamma,
            omega=self.omega,
            norm=self.adv_norm,
            lam=self.lam,
            spa_beta=self.spa_beta,
            gate_channels=tuple(self.gate_channels),
            gate_thresholds=tuple(self.gate_thresholds),
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(
                f"unknown config key(s) {unknown}: see `agentgym train --help` for the valid ones"
            )
        return cls(**d)


def config_markdown() -> str:
    """The settings table of ``docs/training.md``: every field, its flag, default and help."""
    rows = ["| field / flag | default | meaning |", "|---|---|---|"]
    for f in dataclasses.fields(TrainConfig):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
        flag = "--" + f.name.replace("_", "-")
        rows.append(f"| `{f.name}` / `{flag}` | `{default!r}` | {f.metadata['help']} |")
    return "\n".join(rows) + "\n"


def load_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a ``.yaml``/``.yml``/``.toml``/``.json`` file of TrainConfig fields (dashes allowed)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist: check the --config path")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        elif p.suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib  # type: ignore[no-redef]
            data = tomllib.loads(text)
        elif p.suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"config file {p} must end in .yaml, .yml, .toml or .json")
    except ConfigError:
        raise
    except Exception as e:  # yaml.YAMLError, tomllib.TOMLDecodeError, json.JSONDecodeError
        where = " ".join(str(e).split())  # the parser's own message names line and column
        raise ConfigError(
            f"config file {p} is not valid {p.suffix.lstrip('.').upper()}: {where}; fix that line"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {p} must hold a mapping of settings, got {type(data).__name__}"
        )
    return {k.replace("-", "_"): v for k, v in data.items()}


def _default(name: str) -> Any:
    f = {x.name: x for x in dataclasses.fields(TrainConfig)}[name]
    return f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]


@functools.cache
def _hints() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def field_type(f: dataclasses.Field) -> tuple[type, bool]:
    """``(base type, optional)`` of a TrainConfig field (``int | None`` -> ``(int, True)``)."""
    hints = _hints()
    t = hints[f.name]
    args = typing.get_args(t)
    if isinstance(t, types.UnionType) or typing.get_origin(t) is typing.Union:
        base = [a for a in args if a is not type(None)][0]
        return base, True
    return t, False

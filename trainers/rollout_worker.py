"""The rollout side of ``agentgym train``: a worker thread that collects each RL step's groups,
bounded staleness (``--async-staleness K``) and a watchdog on every blocking call.

Why a thread and not a process: generation and the update are torch ops, which release the GIL,
and the env steps of the built-in envs are microseconds (or run in the EnvPool's own worker
processes). A thread shares the trainer's memory, so a weight sync is a tensor copy, not a
serialisation, and the trajectory writer, the env pool and the seeds are the ones the synchronous
loop uses.

The loop and the worker meet in two places:

* :class:`WeightChannel` (learner -> worker): the trainer :meth:`~WeightChannel.publish`-es its
  weights with their version (the number of RL steps done) after each step; before collecting
  step ``s`` the worker waits until version ``s - 1 - K`` or newer is out and loads the newest
  one into its engine. So the weights behind every sample of step ``s`` are at most ``K``
  versions older than those the update of step ``s`` starts from. With ``K = 0`` the worker
  collects step ``s`` only after step ``s - 1``'s update, while the trainer waits: today's
  synchronous loop, and the engine shares the trainer's model (nothing is copied).
* the batch queue (worker -> learner): one :class:`Batch` per step, in step order, each with
  whole groups, so credit assignment runs on complete groups as in the synchronous loop.

:class:`Watchdog`: each blocking call of the worker (a generation, an env reset or step, a
weight sync) runs inside ``watchdog.call(name, limit)``. While the trainer waits for a batch it
checks the call in progress; one older than its limit becomes a :class:`RolloutTimeout` naming
the call, its limit and the setting that sets it. An exception inside the worker becomes a
:class:`RolloutError` naming the step and the call it was in. Both are raised in the trainer's
thread between checkpoints, so the last checkpoint is intact. A hung call cannot be interrupted
from Python: the worker is a daemon thread and is left behind when the run closes.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

__all__ = [
    "RolloutError",
    "RolloutTimeout",
    "Watchdog",
    "WatchedPolicy",
    "WatchedPool",
    "WeightChannel",
    "HFEngine",
    "VLLMEngine",
    "Batch",
    "RolloutWorker",
    "VersionObserver",
    "start_worker",
    "staleness",
]

#: Seconds between the trainer's checks of the worker while it waits for a batch.
POLL_S = 0.05


class RolloutError(RuntimeError):
    """The rollout worker raised; the message names the step and the call it was in."""


class RolloutTimeout(TimeoutError):
    """A blocking call of the rollout side ran past its limit; the message names the call."""


@dataclasses.dataclass(frozen=True)
class _Call:
    name: str
    limit: float | None
    setting: str
    started: float


class Watchdog:
    """The blocking call the worker is in (if any) and since when, for the trainer to check."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._call: _Call | None = None
        #: the call an exception left through (the worker's error names it)
        self.failed_in: str | None = None

    @contextlib.contextmanager
    def call(self, name: str, limit: float | None, setting: str) -> Iterator[None]:
        """Mark ``name`` as running with a limit of ``limit`` seconds (``None``: none), set by
        the config field ``setting``."""
        with self._lock:
            self._call = _Call(name, limit, setting, time.monotonic())
        try:
            yield
        except BaseException:
            self.failed_in = name
            raise
        finally:
            with self._lock:
                self._call = None

    def current(self) -> _Call | None:
        with self._lock:
            return self._call

    def check(self, step: int) -> None:
        """Raise :class:`RolloutTimeout` if the call in progress is past its limit."""
        c = self.current()
        if c is None or c.limit is None:
            return
        elapsed = time.monotonic() - c.started
        if elapsed > c.limit:
            flag = "--" + c.setting.replace("_", "-")
            raise RolloutTimeout(
                f"rollout worker stuck in {c.name} for {elapsed:.1f}s while collecting step "
                f"{step} (limit {c.limit:g}s, {c.setting}): find what hangs there, or raise "
                f"{flag} if the call is just slow; the last checkpoint is intact (--resume)"
            )


class WatchedPolicy:
    """A policy whose ``act`` (one batched generation) runs under the watchdog."""

    def __init__(self, policy: Any, watchdog: Watchdog, limit: float | None) -> None:
        self._policy, self._watchdog, self._limit = policy, watchdog, limit

    def act(self, contexts: Sequence[Any]) -> list[Any]:
        with self._watchdog.call("generation (policy.act)", self._limit, "generate_timeout"):
            return self._policy.act(contexts)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._policy, name)


class WatchedPool:
    """An :class:`~agentgym.pool.EnvPool` whose resets and steps run under the watchdog.

    ``limit`` is ``step_timeout``. A pool with worker processes (``process``, ``ray``) replaces a
    hung worker itself after ``step_timeout`` (the episode ends as crashed, the run goes on), and
    a reset is retried once; the watchdog then only fires on a hang of the pool itself, after
    ``2 * step_timeout + 30`` s. An in-process pool (``sync``) cannot stop a step: there the
    watchdog's limit is ``step_timeout``."""

    def __init__(self, pool: Any, watchdog: Watchdog, limit: float | None) -> None:
        self._pool, self._watchdog = pool, watchdog
        in_process = getattr(pool, "backend", "sync") == "sync"
        self._limit = limit if limit is None or in_process else 2 * limit + 30.0

    def _watched(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        with self._watchdog.call(f"env {what}", self._limit, "step_timeout"):
            return fn(*args)

    def reset_many(self, requests: Any) -> Any:
        return self._watched("reset (reset_many)", self._pool.reset_many, requests)

    def step_many(self, actions: Any) -> Any:
        return self._watched("step (step_many)", self._pool.step_many, actions)

    def call_many(self, method: str, indices: Any) -> Any:
        return self._watched(f"call {method!r} (call_many)", self._pool.call_many, method, indices)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)


# ------------------------------------------------------------------------------------------------
# engines and weight sync
# ------------------------------------------------------------------------------------------------
class HFEngine:
    """Rollouts with a Hugging Face model: the trainer's own (``K = 0``, shared) or a copy of it
    with its own tokenizer and sampling generator (``K >= 1``: it decodes while the trainer's
    model trains)."""

    def __init__(self, policy: Any, *, shared: bool) -> None:
        self.policy = policy
        self.shared = shared

    @classmethod
    def copy_of(cls, make_policy: Callable[[Any, Any], Any], model: Any, tok: Any) -> HFEngine:
        """An engine on a deep copy of ``model`` (no gradients, eval mode)."""
        rollout_model = copy.deepcopy(model).eval().requires_grad_(False)
        return cls(make_policy(rollout_model, copy.deepcopy(tok)), shared=False)

    @staticmethod
    @contextlib.contextmanager
    def export(model: Any) -> Iterator[list[tuple[str, Any]]]:
        """The weights a copy needs, under the model's own names (LoRA adapters included)."""
        yield [(k, v.detach()) for k, v in model.state_dict().items()]

    def load(self, weights: Sequence[tuple[str, Any]], timeout: float | None) -> None:
        import torch

        with torch.no_grad():
            self.policy.model.load_state_dict(dict(weights), strict=True)


class VLLMEngine:
    """Rollouts with a :class:`~agentgym.trainers.vllm_policy.VLLMPolicy`; its weights come
    from the trainer's model after every update (merged LoRA, checkpoint names)."""

    shared = False

    def __init__(self, policy: Any) -> None:
        self.policy = policy

    @staticmethod
    @contextlib.contextmanager
    def export(model: Any) -> Iterator[list[tuple[str, Any]]]:
        from agentgym.trainers.vllm_policy import merged_hf_weights

        with merged_hf_weights(model) as weights:
            yield weights

    def load(self, weights: Sequence[tuple[str, Any]], timeout: float | None) -> None:
        from agentgym.trainers.vllm_policy import load_weights_into

        load_weights_into(self.policy.llm, list(weights), timeout=timeout)
        self.policy.weight_version += 1


class WeightChannel:
    """The newest weights the trainer published, and their version.

    ``copy=False`` (``K = 0``): the channel keeps a reference to the live model; the worker reads
    it only while the trainer waits for its batch. ``copy=True``: :meth:`publish` copies the
    weights into a buffer (allocated once) under a lock the worker takes only to load them, so
    the trainer's next step can change its weights while the worker decodes."""

    def __init__(self, engine: Any, *, copy: bool, timeout: float | None) -> None:
        self.engine = engine
        self.copy = copy
        self.timeout = timeout
        self.version = -1
        self._model: Any = None
        self._buffer: list[tuple[str, Any]] | None = None
        self._lock = threading.Lock()
        self._changed = threading.Condition()

    def publish(self, model: Any, version: int) -> None:
        """Make ``model``'s weights version ``version`` (trainer thread)."""
        import torch

        if self.copy:
            if not self._lock.acquire(timeout=-1 if self.timeout is None else self.timeout):
                raise RolloutTimeout(
                    f"weight sync to the rollout worker: the buffer stayed locked for "
                    f"{self.timeout:g}s (sync_timeout) while the worker loaded an older version; "
                    "raise --sync-timeout if loading is just slow"
                )
            try:
                with torch.no_grad(), self.engine.export(model) as weights:
                    if self._buffer is None:
                        self._buffer = [(k, v.clone()) for k, v in weights]
                    else:
                        for (_, buf), (_, v) in zip(self._buffer, weights):
                            buf.copy_(v)
            finally:
                self._lock.release()
        else:
            self._model = model
        with self._changed:
            self.version = version
            self._changed.notify_all()

    def wait_for(self, version: int, stop: threading.Event) -> None:
        """Block until version ``version`` or newer is published (or ``stop`` is set)."""
        with self._changed:
            while self.version < version and not stop.is_set():
                self._changed.wait(POLL_S)

    @contextlib.contextmanager
    def weights(self) -> Iterator[tuple[int, list[tuple[str, Any]]]]:
        """``(version, weights)`` of the newest publication, held still inside the block."""
        if self.copy:
            with self._lock:
                assert self._buffer is not None
                yield self.version, self._buffer
        else:
            with self.engine.export(self._model) as w:
                yield self.version, w


# ------------------------------------------------------------------------------------------------
# the worker
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Batch:
    """One step's collected episodes (``got``: a
    :class:`~agentgym.trainers.stability_loop.Collected`), the weights version that played
    them and the seconds the collection took."""

    step: int
    got: Any
    version: int
    seconds: float


@dataclasses.dataclass(frozen=True)
class _Failure:
    step: int
    error: BaseException


class RolloutWorker:
    """Collects steps ``first .. last`` in a thread, each with weights at most ``staleness``
    versions older than the update that uses it.

    ``collect(policy, pool, step)`` plays one step's groups with the given (watched) policy and
    pool; the worker sets ``policy.version`` to the weights version it loaded before calling it.
    """

    def __init__(
        self,
        collect: Callable[[Any, Any, int], Any],
        engine: Any,
        pool: Any,
        *,
        first: int,
        last: int,
        staleness: int,
        generate_timeout: float | None,
        step_timeout: float | None,
        sync_timeout: float | None,
    ) -> None:
        self.collect = collect
        self.engine = engine
        self.staleness = staleness
        self.first, self.last = first, last
        self.sync_timeout = sync_timeout
        self.watchdog = Watchdog()
        self.policy = WatchedPolicy(engine.policy, self.watchdog, generate_timeout)
        self.pool = WatchedPool(pool, self.watchdog, step_timeout)
        # K = 0: the worker runs only while the trainer waits, so it may read the live weights
        self.channel = WeightChannel(engine, copy=staleness > 0, timeout=sync_timeout)
        self._loaded = -1
        self._step = first
        self._asked = first - 1  # the last step the trainer asked for
        self._ask = threading.Condition()
        self._out: queue.Queue[Batch | _Failure] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rollout-worker", daemon=True)

    def start(self, model: Any, version: int) -> RolloutWorker:
        """Publish the starting weights (``version``: the steps done) and start collecting."""
        self.channel.publish(model, version)
        self._thread.start()
        return self

    def publish(self, model: Any, version: int) -> None:
        """The trainer's weights after ``version`` steps (call once per step)."""
        self.channel.publish(model, version)

    def _sync(self) -> int:
        """Load the newest published weights into the engine (if newer); their version."""
        if self.channel.version == self._loaded or self.engine.shared:
            self._loaded = self.channel.version
            return self._loaded
        name = "weight sync to the rollout engine"
        with (
            self.watchdog.call(name, self.sync_timeout, "sync_timeout"),
            self.channel.weights() as (version, weights),
        ):
            self.engine.load(weights, self.sync_timeout)
        self._loaded = version
        return version

    def _run(self) -> None:
        step = self.first
        try:
            for step in range(self.first, self.last + 1):
                self._step = step
                if self.staleness == 0:  # only while the trainer waits (see _wait_for_ask)
                    self._wait_for_ask(step)
                self.channel.wait_for(step - 1 - self.staleness, self._stop)
                if self._stop.is_set():
                    return
                version = self._sync()
                self.engine.policy.version = version
                t0 = time.perf_counter()
                got = self.collect(self.policy, self.pool, step)
                if self._stop.is_set():
                    return
                self._out.put(Batch(step, got, version, time.perf_counter() - t0))
        except BaseException as e:  # handed to the trainer, which raises it with context
            if not self._stop.is_set():
                self._out.put(_Failure(step, e))

    def _wait_for_ask(self, step: int) -> None:
        """Block until the trainer asks for ``step``. With ``K = 0`` the worker plays on the
        trainer's own model, so it must run only inside the trainer's :meth:`get`: under FSDP2
        a forward outside the trainer's ``generation`` block would gather weights in collectives
        that the other ranks do not issue at that time."""
        with self._ask:
            while self._asked < step and not self._stop.is_set():
                self._ask.wait(POLL_S)

    def get(self, step: int) -> tuple[Batch, float]:
        """Step ``step``'s batch and the seconds the trainer waited for it; raises
        :class:`RolloutTimeout` / :class:`RolloutError` when the worker hangs or fails."""
        t0 = time.perf_counter()
        with self._ask:
            self._asked = step
            self._ask.notify_all()
        while True:
            try:
                item = self._out.get(timeout=POLL_S)
            except queue.Empty:
                self.watchdog.check(self._step)
                if not self._thread.is_alive() and self._out.empty():
                    raise RolloutError(
                        f"rollout worker exited without the batch of step {step}"
                    ) from None
                continue
            if isinstance(item, _Failure):
                where = self.watchdog.failed_in
                e = item.error
                raise RolloutError(
                    f"rollout worker failed while collecting step {item.step}"
                    f"{f' in {where}' if where else ''}: {type(e).__name__}: {e}"
                ) from e
            if item.step != step:  # the loop and the worker disagree: a bug, not a user error
                raise RolloutError(f"rollout worker delivered step {item.step}, expected {step}")
            return item, time.perf_counter() - t0

    def close(self, wait_s: float = 2.0) -> None:
        """Stop after the call in progress; a hung call is left behind (daemon thread)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(wait_s)


def staleness(trajs: Sequence[Any], step: int, fallback: int) -> float:
    """Mean over the turns with tokens of ``(step - 1) - policy_version``: how many updates
    behind the update of ``step`` the weights that sampled them were (``fallback``'s lag when no
    turn records a version)."""
    lags = [
        (step - 1) - u.tokens.policy_version
        for t in trajs
        for u in t.turns
        if u.tokens is not None and u.tokens.policy_version is not None
    ]
    return sum(lags) / len(lags) if lags else float((step - 1) - fallback)


class VersionObserver:
    """Writes the weights version that played an episode into its ``meta`` (a rollout observer:
    it runs before the episode is written to ``trajectories.jsonl``)."""

    def __init__(self, policy: Any) -> None:
        self.policy = policy

    def episode_done(self, index: int, traj: Any) -> None:
        traj.meta["policy_version"] = self.policy.version


def start_worker(
    cfg: Any,
    collect: Callable[[Any, Any, int], Any],
    pool: Any,
    *,
    policy: Any,
    model: Any,
    tok: Any,
    make_policy: Callable[[Any, Any, int], Any],
    base_model: str,
    start_step: int,
) -> RolloutWorker:
    """The started worker of a run (``cfg``: a TrainConfig) for steps ``start_step + 1 ..
    cfg.steps``: on the trainer's own ``policy`` (synchronous, HF), on a copy made with
    ``make_policy(model, tokenizer, seed)`` (``--async-staleness`` >= 1) or on a vLLM engine
    built from ``base_model``'s folder (``--rollout-engine vllm``).

    The engine's sampling seed comes from the run's seed and ``start_step``, so a resumed
    asynchronous run samples reproducibly from its resume point (not as the uninterrupted run
    did: its in-flight rollouts are discarded and collected again)."""
    seed = cfg.seed + 1_000_033 * (start_step + 1)
    if cfg.rollout_engine == "vllm":
        engine: Any = VLLMEngine(_vllm_policy(cfg, base_model, seed))
    elif cfg.async_staleness:
        engine = HFEngine.copy_of(lambda m, t: make_policy(m, t, seed), model, tok)
    else:
        engine = HFEngine(policy, shared=True)
    worker = RolloutWorker(
        collect,
        engine,
        pool,
        first=start_step + 1,
        last=cfg.steps,
        staleness=cfg.async_staleness,
        generate_timeout=cfg.generate_timeout,
        step_timeout=cfg.step_timeout,
        sync_timeout=cfg.sync_timeout,
    )
    return worker.start(model, start_step)


def _vllm_policy(cfg: Any, path: str, seed: int) -> Any:
    """The vLLM engine of ``--rollout-engine vllm`` (``path`` gives the architecture and the
    tokenizer; the weights are the trainer's after the first sync)."""
    from agentgym.trainers.vllm_policy import VLLMPolicy

    return VLLMPolicy(
        path,
        seed=seed,
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        history_len=cfg.history_len,
        max_prompt_tokens=cfg.max_prompt_tokens,
        dtype=cfg.dtype,
        name="train-vllm",
        max_model_len=cfg.max_prompt_tokens + cfg.max_new_tokens,
    )

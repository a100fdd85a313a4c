"""EnvPool: many copies of one environment, stepped in parallel.

Design:

* Envs live in **workers**; each worker hosts several envs and receives one batched command per
  step (``[(local_index, action), ...]``), so a pool of 64 envs on 2 cores needs 2 processes and
  one pipe round trip per worker per step, not 64.
* Backends implement :class:`WorkerHandle` (``send`` a batch, ``poll`` for the answer, ``alive``,
  ``kill``). ``"process"`` runs workers as spawned processes; ``"sync"`` runs them in-process
  (debugging, microsecond envs, and the sequential baseline of ``agentgym bench envs``); ``"ray"``
  runs them as Ray actors (:mod:`agentgym.ray_pool`); ``"auto"`` (the default) picks ``"sync"``
  for specs registered ``fast=True`` and ``"process"`` otherwise. The pool logic above the
  handles is shared.
* **Asynchronous mode**: ``send`` / ``recv`` run the same batches without waiting for the whole
  pool; each worker's envs proceed at their own pace (resets included), which is what makes a
  pool of slow, uneven envs (TextWorld resets take ~100x a step) scale with the workers.
  With ``queue_depth=2`` a worker may hold a second batch while it runs one, so it starts that
  batch the moment it answers instead of idling through the round trip to the caller (send
  each worker's envs as two halves, and a half's next actions while the other half runs).
* **Crash replacement**: a worker that dies (or an env that raises) is replaced; the episodes it
  was running come back as a :class:`~agentgym.core.StepResult` with ``truncated=True`` and
  ``info["crashed"] = True``, and the run goes on. Those envs must be reset before their next step.
* **Group resets**: ``reset_many({i: seed})`` resets chosen envs; envs reset with one seed play
  the same task from the same state, as GRPO/GiGPO groups need.
* **Shutdown**: ``close()`` (idempotent, also on ``with`` exit and at interpreter exit) stops every
  worker; workers also exit by themselves when the parent dies (pipe EOF and ``PR_SET_PDEATHSIG``),
  so a killed run leaves no orphan processes.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import multiprocessing as mp
import os
import queue
import signal
import sys
import threading
import time
import traceback
import weakref
from collections import deque
from collections.abc import Iterable, Mapping
from multiprocessing.connection import Connection, wait
from typing import Any, Protocol

from agentgym.core import Observation, StepResult
from agentgym.env_host import Answer, Batch, EnvHost, crash_result
from agentgym.registration import EnvSpec, spec

__all__ = ["EnvPool", "WorkerHandle", "crash_result"]


def _set_pdeathsig() -> None:
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _read_batches(conn: Connection, inbox: queue.SimpleQueue[Any]) -> None:
    """A queueing worker's reader thread: it takes batches off the pipe as they come, so the
    caller's ``send`` of a queued batch never waits for the worker to finish its current one
    (with both ends writing into full pipe buffers, a large batch and a large answer would
    otherwise block each other for ever). ``None`` ends the worker."""
    while True:
        try:
            batch = conn.recv()
        except (EOFError, OSError):
            batch = None  # the parent is gone
        inbox.put(batch)
        if batch is None:
            return


def _worker_main(
    conn: Connection, env_spec: EnvSpec, n: int, env_kwargs: dict[str, Any], queued: bool = False
) -> None:
    _set_pdeathsig()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    try:
        host = EnvHost(env_spec, n, env_kwargs)
    except Exception:
        conn.send(("init_error", traceback.format_exc()))
        return
    conn.send(("ready", os.getpid()))
    if queued:
        inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        threading.Thread(target=_read_batches, args=(conn, inbox), daemon=True).start()
        receive = inbox.get
    else:
        receive = conn.recv
    try:
        while True:
            try:
                batch = receive()
            except (EOFError, OSError):
                break  # the parent is gone
            if batch is None:
                break
            conn.send(host.run(batch))
    finally:
        host.close()


class WorkerHandle(Protocol):
    """One worker hosting ``n`` envs. Backends implement this."""

    def send(self, batch: Batch) -> None: ...
    def ready(self) -> bool: ...
    def result(self) -> Answer: ...
    def alive(self) -> bool: ...
    def wait_objects(self) -> list[Any]: ...
    def kill(self, graceful: bool = True) -> None: ...


class _ProcessWorker:
    def __init__(
        self,
        ctx: Any,
        env_spec: EnvSpec,
        n: int,
        env_kwargs: dict[str, Any],
        queued: bool = False,
    ) -> None:
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(
            target=_worker_main, args=(child, env_spec, n, env_kwargs, queued), daemon=True
        )
        self.proc.start()
        child.close()
        try:
            status, payload = self.conn.recv()
        except EOFError:
            self.proc.join(1)
            raise RuntimeError(
                f"env worker for {env_spec.id} died during start (exit {self.proc.exitcode})"
            ) from None
        if status != "ready":
            self.kill()
            raise RuntimeError(f"could not build {env_spec.id} in a worker:\n{payload}")
        self.pid = payload

    def send(self, batch: Batch) -> None:
        self.conn.send(batch)

    def ready(self) -> bool:
        return self.conn.poll()

    def result(self) -> Answer:
        return self.conn.recv()

    def alive(self) -> bool:
        return self.proc.is_alive()

    def wait_objects(self) -> list[Any]:
        return [self.conn, self.proc.sentinel]

    def kill(self, graceful: bool = True) -> None:
        if graceful:
            with contextlib.suppress(Exception):
                self.conn.send(None)
            self.proc.join(timeout=2)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(timeout=5)
        with contextlib.suppress(Exception):
            self.conn.close()


class _SyncWorker:
    """Runs the host in the calling process: same semantics, no parallelism."""

    def __init__(self, env_spec: EnvSpec, n: int, env_kwargs: dict[str, Any]) -> None:
        self.host = EnvHost(env_spec, n, env_kwargs)
        self._answers: deque[Answer] = deque()
        self.pid = os.getpid()

    def send(self, batch: Batch) -> None:
        self._answers.append(self.host.run(batch))

    def ready(self) -> bool:
        return bool(self._answers)

    def result(self) -> Answer:
        return self._answers.popleft()

    def alive(self) -> bool:
        return True

    def wait_objects(self) -> list[Any]:
        return []

    def kill(self, graceful: bool = True) -> None:
        self.host.close()


_live_pools: weakref.WeakSet[EnvPool] = weakref.WeakSet()


@atexit.register
def _close_live_pools() -> None:  # pragma: no cover - interpreter shutdown
    for pool in list(_live_pools):
        with contextlib.suppress(Exception):
            pool.close()


class EnvPool:
    """``num_envs`` copies of one environment in parallel workers.

    Args:
        env: an env id (``"textworld/Simple-v0"``) or an :class:`EnvSpec`.
        num_envs: number of env copies.
        num_workers: worker count (default: ``min(num_envs, os.cpu_count())``).
        backend: ``"auto"`` (default: ``"sync"`` for specs registered ``fast=True``, whose
            microsecond steps would cost less than any worker round trip, else ``"process"``),
            ``"process"``, ``"sync"`` (in-process) or ``"ray"``.
        env_kwargs: overrides for the spec's kwargs (as in :func:`agentgym.make`).
        step_timeout: seconds a worker may take for one batch before it is killed and replaced
            (its episodes are marked crashed). ``None``: wait forever.
        start_method: multiprocessing start method (``"spawn"`` is safe with threads and torch).
        queue_depth: batches a worker may hold at once in asynchronous use (:meth:`send`): 1
            (default) runs one at a time; 2 lets a worker take its next batch the moment it
            answers, hiding the round trip to the caller. A queued batch's ``step_timeout``
            starts when the batch ahead of it has answered.
    """

    def __init__(
        self,
        env: str | EnvSpec,
        num_envs: int,
        *,
        num_workers: int | None = None,
        backend: str = "auto",
        env_kwargs: Mapping[str, Any] | None = None,
        step_timeout: float | None = None,
        start_method: str = "spawn",
        ray_options: Mapping[str, Any] | None = None,
        queue_depth: int = 1,
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.spec = env if isinstance(env, EnvSpec) else spec(env)
        self.num_envs = num_envs
        if backend == "auto":
            backend = "sync" if self.spec.fast else "process"
        self.backend = backend
        if queue_depth < 1:
            raise ValueError(f"queue_depth must be >= 1, got {queue_depth}")
        self.queue_depth = queue_depth
        self.env_kwargs = dict(env_kwargs or {})
        self.step_timeout = step_timeout
        n_workers = min(num_envs, num_workers or os.cpu_count() or 1)
        # Contiguous slices: worker w hosts envs [starts[w], starts[w+1]).
        base, extra = divmod(num_envs, n_workers)
        sizes = [base + (1 if w < extra else 0) for w in range(n_workers)]
        self._sizes = sizes
        self.num_workers = n_workers
        self._where: list[tuple[int, int]] = [
            (w, j) for w, size in enumerate(sizes) for j in range(size)
        ]
        self._ctx = mp.get_context(start_method) if backend == "process" else None
        self._ray_options = dict(ray_options or {})
        self._closed = False
        self.crashes = 0
        self._workers: list[Any] = []
        # worker -> its batches in the order sent: (env indices in order, command); the first
        # is running, the rest are queued (queue_depth > 1)
        self._pending: dict[int, deque[tuple[list[int], str]]] = {}
        self._deadline: dict[int, float | None] = {}  # of each worker's running batch
        self._kinds: dict[int, str] = {}  # env -> "step" | "reset" sent through send()
        self._undelivered: dict[int, tuple[bool, Any]] = {}  # send() failures for recv()
        try:
            for size in sizes:
                self._workers.append(self._start_worker(size))
        except BaseException:
            self.close()
            raise
        _live_pools.add(self)

    # -- backends ---------------------------------------------------------------------------
    def _start_worker(self, n: int) -> Any:
        if self.backend == "process":
            return _ProcessWorker(
                self._ctx, self.spec, n, self.env_kwargs, queued=self.queue_depth > 1
            )
        if self.backend == "sync":
            return _SyncWorker(self.spec, n, self.env_kwargs)
        if self.backend == "ray":
            from agentgym.ray_pool import RayWorker

            return RayWorker(self.spec, n, self.env_kwargs, **self._ray_options)
        raise ValueError(
            f"unknown EnvPool backend {self.backend!r}: use auto, process, sync or ray"
        )

    @property
    def worker_pids(self) -> list[int]:
        return [getattr(w, "pid", -1) for w in self._workers]

    # -- the batched command engine ---------------------------------------------------------
    # Each worker holds at most ``queue_depth`` batches: one running, the rest queued behind it
    # (answers come back in the order sent). ``_submit`` sends batches without waiting;
    # ``_collect`` gathers the answers of finished batches (replacing dead or hung workers). The
    # blocking calls (``step_many`` ...) are submit + collect-all on idle workers; ``send`` /
    # ``recv`` expose the same engine asynchronously, so fast workers need not wait for slow ones.
    def _submit(
        self, cmd: str, items: Mapping[int, Any], *, depth: int = 1
    ) -> dict[int, tuple[bool, Any]]:
        """Send ``items`` (``{env_index: argument}``) to their workers, each of which may then
        hold at most ``depth`` batches; returns the results of batches that could not be sent
        (their worker was dead and has been replaced)."""
        if self._closed:
            raise RuntimeError("EnvPool is closed")
        per_worker: dict[int, list[tuple[int, Any]]] = {}
        order: dict[int, list[int]] = {}
        for i, arg in items.items():
            if not 0 <= i < self.num_envs:
                raise IndexError(f"env index {i} out of range for a pool of {self.num_envs}")
            w, j = self._where[i]
            per_worker.setdefault(w, []).append((j, arg))
            order.setdefault(w, []).append(i)
        running = {i for w in per_worker for envs, _ in self._pending.get(w, ()) for i in envs}
        again = sorted(i for envs in order.values() for i in envs if i in running)
        if again:
            raise RuntimeError(
                f"envs {again} have a command still running: recv() their results before "
                "sending them another"
            )
        full = sorted(
            i for w in per_worker if len(self._pending.get(w, ())) >= depth for i in order[w]
        )
        if full:
            holds = "a command still running" if depth == 1 else f"{depth} batches (queue_depth)"
            raise RuntimeError(
                f"envs {full} share a worker that holds {holds}: recv() a result before "
                "sending more to that worker"
            )
        failed: dict[int, tuple[bool, Any]] = {}
        for w, batch in per_worker.items():
            try:
                self._workers[w].send((cmd, batch))
            except (BrokenPipeError, OSError, EOFError):
                # the batches it still held are lost with it: their envs come back crashed too
                envs = self._queued_envs(w) + order[w]
                self._replace(w, failed, envs, "env worker died before the command was sent")
            else:
                if w not in self._pending:
                    self._pending[w] = deque()
                    self._deadline[w] = self._deadline_from_now()
                self._pending[w].append((order[w], cmd))
        return failed

    def _deadline_from_now(self) -> float | None:
        return None if self.step_timeout is None else time.monotonic() + self.step_timeout

    def _collect(
        self, workers: set[int] | None = None, timeout: float | None = None
    ) -> dict[int, tuple[bool, Any]]:
        """Wait until every worker in ``workers`` (default: any pending worker) has answered, or
        until ``timeout``; return the answers gathered, by env index."""
        out: dict[int, tuple[bool, Any]] = {}
        wanted = set(self._pending) if workers is None else set(workers) & set(self._pending)
        any_one = workers is None
        until = None if timeout is None else time.monotonic() + timeout
        while wanted:
            for w in list(wanted):
                handle, batches = self._workers[w], self._pending[w]
                while batches:  # every answer already there, oldest first
                    order, cmd = batches[0]
                    if handle.ready():
                        try:
                            answer = handle.result()
                        except (EOFError, OSError):
                            self._replace(w, out, self._queued_envs(w), "env worker process died")
                            break
                        batches.popleft()
                        out.update(zip(order, answer))
                        self._deadline[w] = self._deadline_from_now()  # the next batch's clock
                        continue
                    deadline = self._deadline[w]
                    if not handle.alive():
                        self._replace(w, out, self._queued_envs(w), "env worker process died")
                    elif deadline is not None and time.monotonic() >= deadline:
                        why = f"env worker timed out after {self.step_timeout}s on {cmd!r}"
                        self._replace(w, out, self._queued_envs(w), why)
                    break
                if not self._pending.get(w):  # all answered, or the worker was replaced
                    self._pending.pop(w, None)
                    self._deadline.pop(w, None)
                    wanted.discard(w)
            if not wanted or (any_one and out):
                break
            now = time.monotonic()
            limits = [d for w in wanted if (d := self._deadline[w]) is not None]
            if until is not None:
                if now >= until:
                    break
                limits.append(until)
            objs = [o for w in wanted for o in self._workers[w].wait_objects()]
            if objs:
                wait(objs, timeout=max(0.0, min(limits) - now) if limits else None)
        return out

    def _run(self, cmd: str, items: Mapping[int, Any]) -> dict[int, tuple[bool, Any]]:
        out = self._submit(cmd, items)
        workers = {self._where[i][0] for i in items}
        out.update(self._collect(workers))
        return out

    def _queued_envs(self, w: int) -> list[int]:
        return [i for envs, _ in self._pending.get(w, ()) for i in envs]

    def _replace(self, w: int, out: dict[int, tuple[bool, Any]], envs: list[int], why: str) -> None:
        """Kill worker ``w`` and start a new one; ``envs`` (every env of the batches it held)
        get ``why`` as their crash result."""
        self.crashes += 1
        self._pending.pop(w, None)
        self._deadline.pop(w, None)
        with contextlib.suppress(Exception):
            self._workers[w].kill(graceful=False)  # it is dead or hung: no goodbye
        for i in envs:
            out[i] = (False, why)
        self._workers[w] = self._start_worker(self._sizes[w])

    # -- public API -------------------------------------------------------------------------
    def reset_many(
        self, requests: Mapping[int, int | None | tuple[int | None, dict[str, Any] | None]]
    ) -> dict[int, tuple[Observation, dict[str, Any]]]:
        """Reset the envs named in ``requests`` (``{index: seed}`` or ``{index: (seed, options)}``).

        An env whose reset fails is rebuilt and reset once more; if that fails too, its result is
        a crash observation with ``info["crashed"] = True``.
        """
        args = {i: (r if isinstance(r, tuple) else (r, None)) for i, r in requests.items()}
        results = self._run("reset", args)
        failed = {i: args[i] for i, (ok, _) in results.items() if not ok}
        if failed:
            results.update(self._run("reset", failed))
        out = {}
        for i, (ok, value) in results.items():
            if ok:
                out[i] = value
            else:
                crash = crash_result(value)
                out[i] = (crash.observation, {**crash.info, "task_id": ""})
        return out

    def step_many(self, actions: Mapping[int, str]) -> dict[int, StepResult]:
        """Step the envs named in ``actions``; crashed envs return :func:`crash_result`."""
        results = self._run("step", actions)
        return {i: (v if ok else crash_result(v)) for i, (ok, v) in results.items()}

    def call_many(
        self, name: str, indices: Iterable[int], *args: Any, **kwargs: Any
    ) -> dict[int, Any]:
        """Call ``env.name(*args, **kwargs)`` on the given envs; a failure returns ``None``."""
        results = self._run("call", {i: (name, args, kwargs) for i in indices})
        return {i: (v if ok else None) for i, (ok, v) in results.items()}

    def reset(
        self, seeds: list[int | None] | None = None
    ) -> list[tuple[Observation, dict[str, Any]]]:
        """Reset every env (``seeds[i]`` for env ``i``); results in env order."""
        seeds = seeds if seeds is not None else [None] * self.num_envs
        if len(seeds) != self.num_envs:
            raise ValueError(f"got {len(seeds)} seeds for {self.num_envs} envs")
        res = self.reset_many(dict(enumerate(seeds)))
        return [res[i] for i in range(self.num_envs)]

    def step(self, actions: list[str]) -> list[StepResult]:
        """Step every env with ``actions[i]``; results in env order."""
        if len(actions) != self.num_envs:
            raise ValueError(f"got {len(actions)} actions for {self.num_envs} envs")
        res = self.step_many(dict(enumerate(actions)))
        return [res[i] for i in range(self.num_envs)]

    def worker_stats(self) -> list[dict[str, float]]:
        """Per worker: ``busy_s``, the seconds it spent running batches since it started, and
        ``batches``, how many it ran. ``busy_s`` over the wall time is a worker's utilisation;
        the rest went to waiting for the caller and to the round trips (a worker replaced after
        a crash starts from zero). Blocking; do not call while commands are pending."""
        firsts = {w: i for i, (w, j) in enumerate(self._where) if j == 0}
        raw = self._run("stats", dict.fromkeys(firsts.values()))
        out = []
        for w in range(self.num_workers):
            ok, value = raw[firsts[w]]
            out.append(value if ok else {"busy_s": 0.0, "batches": 0})
        return out

    # -- asynchronous use ----------------------------------------------------------------------
    def send(self, requests: Mapping[int, tuple[str, Any]]) -> None:
        """Start commands and return at once: ``{i: ("step", action)}`` or
        ``{i: ("reset", seed)}`` / ``{i: ("reset", (seed, options))}``, mixed freely.

        Envs of one worker travel as one batch; a worker holds at most ``queue_depth`` batches
        (running or queued), and an env takes its next command only after :meth:`recv` has
        returned its result. This is the envpool-style asynchronous mode: each worker's envs go
        on at their own pace instead of the whole pool waiting for its slowest worker every step.
        """
        items: dict[int, tuple[str, Any]] = {}
        for i, (cmd, arg) in requests.items():
            if cmd == "reset":
                items[i] = ("reset", arg if isinstance(arg, tuple) else (arg, None))
            elif cmd == "step":
                items[i] = ("step", arg)
            else:
                raise ValueError(f"unknown command {cmd!r} for env {i}: use 'step' or 'reset'")
        failed = self._submit("mixed", items, depth=self.queue_depth)
        self._kinds.update({i: cmd for i, (cmd, _) in items.items()})
        self._undelivered.update(failed)

    def recv(
        self, timeout: float | None = None
    ) -> dict[int, StepResult | tuple[Observation, dict[str, Any]]]:
        """Results of envs whose worker has finished its batch, by env index: a
        :class:`StepResult` for a step, ``(observation, info)`` for a reset (crashes as in the
        blocking calls). Blocks until at least one worker has answered or ``timeout`` passed;
        ``{}`` when nothing was pending."""
        raw, self._undelivered = self._undelivered, {}
        if not raw:
            raw = self._collect(None, timeout)
        out: dict[int, StepResult | tuple[Observation, dict[str, Any]]] = {}
        for i, (ok, value) in raw.items():
            if self._kinds.pop(i, "step") == "reset":
                if ok:
                    out[i] = value
                else:
                    crash = crash_result(value)
                    out[i] = (crash.observation, {**crash.info, "task_id": ""})
            else:
                out[i] = value if ok else crash_result(value)
        return out

    @property
    def pending(self) -> list[int]:
        """Env indices whose command was sent but whose result :meth:`recv` has not returned."""
        return sorted(self._kinds)

    def crash_worker_of(self, index: int) -> None:
        """Kill the worker process hosting env ``index`` (for tests of crash handling)."""
        w, j = self._where[index]
        handle = self._workers[w]
        if isinstance(handle, _ProcessWorker):
            os.kill(handle.pid, signal.SIGKILL)
            handle.proc.join(5)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for handle in self._workers:
            with contextlib.suppress(Exception):
                handle.kill()
        self._workers = []

    def __enter__(self) -> EnvPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return self.num_envs

    def __del__(self) -> None:  # pragma: no cover
        with contextlib.suppress(Exception):
            self.close()

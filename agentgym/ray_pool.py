"""The Ray backend of :class:`~agentgym.pool.EnvPool`: env workers as Ray actors.

``EnvPool(env, num_envs, backend="ray", ray_options={...})`` builds one :class:`RayWorker` per
worker slot. Each worker is a Ray actor that hosts several envs in one
:class:`~agentgym.env_host.EnvHost` (the same host the process backend runs), so the pool logic,
the batching (one actor call per worker per step) and the crash semantics are shared.

Design:

* **Connection.** :func:`ensure_ray` connects on demand. An existing connection (``ray.init``
  called by the program) is used as is; ``address=`` or the ``RAY_ADDRESS`` environment variable
  (``auto`` for a cluster started with ``ray start`` on this machine, ``HOST:6379`` for a remote
  head) connects to a running cluster; otherwise a private local instance is started with no
  dashboard, a small object store and no worker logs copied to the driver.
* **Resources.** An actor asks for ``num_cpus=0.01`` by default. Env steps are short and mostly
  wait on the policy, and actors holding whole CPUs deadlock the scheduler on small machines
  (a 2-core box cannot place a third 1-CPU actor). Actors are spread over nodes
  (``scheduling_strategy="SPREAD"``).
* **Waiting without polling.** Each command's ``ObjectRef`` gets a completion callback that writes
  one byte into a pipe; :meth:`RayWorker.wait_objects` returns the pipe's read end, so the pool's
  ``multiprocessing.connection.wait`` sleeps until an answer arrives, exactly as with processes.
* **Failures.** Actors are created with ``max_restarts=0``: a restarted actor would have lost its
  envs' state anyway. When an actor dies (its process is killed, its node goes away) its pending
  call fails; :meth:`RayWorker.result` raises :class:`ActorDied` (an ``EOFError``), ``alive()``
  turns False, and the pool replaces the worker and marks its episodes crashed.
* **Shutdown.** :meth:`RayWorker.kill` closes the envs (when the actor is idle) and ``ray.kill``\\s
  the actor, which ends its worker process. The Ray instance itself belongs to whoever started
  it: :func:`shutdown` (or ``ray.shutdown()``, which Ray also runs at interpreter exit) stops a
  local instance started here, with its raylet, GCS and idle workers. Actors are owned by the
  driver, so if the driver dies Ray kills them too.
* **Imports in actors.** The driver's ``sys.path`` entries that the actor lacks are appended in
  the actor (what ``spawn`` does for the process backend), so an env whose module sits next to
  the driver script (or in ``tests/``) imports on a local cluster. On other nodes the env's code
  must be installed, or shipped with ``runtime_env={"working_dir": ...}``.

``agentgym bench memory`` (:mod:`agentgym.benchmarks.memory`) compares the backends' memory.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections import deque
from collections.abc import Mapping
from typing import Any

try:
    import ray
except ImportError as e:  # pragma: no cover - depends on the install
    raise ImportError(
        "EnvPool(backend='ray') needs Ray: pip install 'agentgym[ray]' (or pip install ray)"
    ) from e

from agentgym.env_host import Answer, Batch, EnvHost
from agentgym.registration import EnvSpec

__all__ = ["RayWorker", "ActorDied", "ensure_ray", "shutdown", "DEFAULT_OBJECT_STORE_BYTES"]

#: Object store of a local instance started by :func:`ensure_ray`. Observations are small; large
#: ones (screenshots) still fit, and a small store keeps a laptop's shared memory free.
DEFAULT_OBJECT_STORE_BYTES = 128 * 1024**2

_started_here = False
_init_lock = threading.Lock()


class ActorDied(EOFError):
    """The actor hosting a worker's envs is gone; the pool replaces it (an ``EOFError``)."""


def ensure_ray(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    object_store_memory: int | None = DEFAULT_OBJECT_STORE_BYTES,
    log_to_driver: bool = False,
    init_kwargs: Mapping[str, Any] | None = None,
) -> bool:
    """Make sure this process is connected to Ray; return True if it started an instance here.

    Order: an existing connection wins (nothing is changed); then ``address`` or
    ``$RAY_ADDRESS`` (connect to a running cluster); otherwise a private local instance with
    ``num_cpus`` (default: all cores) and a small object store. ``init_kwargs`` go to
    ``ray.init`` as they are.
    """
    global _started_here
    with _init_lock:
        if ray.is_initialized():
            return False
        kwargs: dict[str, Any] = {
            "log_to_driver": log_to_driver,
            "logging_level": "WARNING",
            "include_dashboard": False,
        }
        address = address or os.environ.get("RAY_ADDRESS") or None
        if address:
            kwargs["address"] = address
        else:
            # "local" starts a fresh instance even when `ray start` runs on this machine: the
            # pool never joins a cluster it was not pointed at.
            kwargs["address"] = "local"
            kwargs["num_cpus"] = num_cpus if num_cpus is not None else (os.cpu_count() or 1)
            if object_store_memory is not None:
                kwargs["object_store_memory"] = int(object_store_memory)
        kwargs.update(init_kwargs or {})
        try:
            ray.init(**kwargs)
        except ConnectionError as e:
            if kwargs["address"] == "local":
                raise
            raise ConnectionError(
                f"could not connect to the Ray cluster at {kwargs['address']!r} ({e}). Check the "
                "address (`ray status` on the head prints it). A cluster with token "
                "authentication (Ray's default) also needs RAY_AUTH_MODE=token here and its "
                "token in ~/.ray/auth_token or $RAY_AUTH_TOKEN."
            ) from e
        _started_here = kwargs["address"] == "local"
        return _started_here


def shutdown() -> None:
    """Disconnect from Ray; a local instance started by :func:`ensure_ray` stops with it.

    Pools should be closed first (their actors are killed then; ``ray.shutdown`` would end them
    anyway, together with every other actor of this driver).
    """
    global _started_here
    with _init_lock:
        if ray.is_initialized():
            ray.shutdown()
        _started_here = False


class _EnvActor:
    """The actor body: an :class:`EnvHost` plus the calls the driver makes."""

    def __init__(
        self, env_spec: EnvSpec, n: int, env_kwargs: dict[str, Any], sys_path: list[str]
    ) -> None:
        for p in sys_path:
            if p not in sys.path and os.path.isdir(p):
                sys.path.append(p)
        self.host = EnvHost(env_spec, n, env_kwargs)

    def ready(self) -> tuple[int, str]:
        import socket

        return os.getpid(), socket.gethostname()

    def run(self, batch: Batch) -> Answer:
        return self.host.run(batch)

    def close(self) -> None:
        self.host.close()


_remote_actor: Any = None


def _actor_class() -> Any:
    global _remote_actor
    if _remote_actor is None:
        _remote_actor = ray.remote(max_restarts=0, max_task_retries=0)(_EnvActor)
    return _remote_actor


class RayWorker:
    """A :class:`~agentgym.pool.WorkerHandle` whose worker is a Ray actor hosting ``n`` envs.

    Built by ``EnvPool(..., backend="ray", ray_options=...)``; the keyword arguments below are
    the accepted ``ray_options``.

    Args:
        address: Ray cluster to connect to (default: ``$RAY_ADDRESS``, else a local instance).
        num_cpus: CPUs the actor reserves (fractional; default 0.01, see the module docstring).
        memory: bytes of memory to reserve per actor (Ray's ``memory`` resource), if any.
        resources: custom resources per actor, e.g. ``{"textworld": 1}`` to pin to tagged nodes.
        scheduling_strategy: Ray scheduling strategy (default ``"SPREAD"`` over nodes).
        runtime_env: Ray runtime env of the actor (ship code with ``{"working_dir": ...}``).
        start_timeout: seconds to wait for the actor to build its envs.
        propagate_sys_path: append the driver's missing ``sys.path`` entries in the actor.
        object_store_memory, log_to_driver, init_kwargs: for a local instance (:func:`ensure_ray`).
    """

    def __init__(
        self,
        env_spec: EnvSpec,
        n: int,
        env_kwargs: Mapping[str, Any],
        *,
        address: str | None = None,
        num_cpus: float = 0.01,
        memory: int | None = None,
        resources: Mapping[str, float] | None = None,
        scheduling_strategy: Any = "SPREAD",
        runtime_env: Mapping[str, Any] | None = None,
        start_timeout: float = 300.0,
        propagate_sys_path: bool = True,
        object_store_memory: int | None = DEFAULT_OBJECT_STORE_BYTES,
        log_to_driver: bool = False,
        init_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        if num_cpus < 0:
            raise ValueError(f"ray_options num_cpus must be >= 0, got {num_cpus}")
        ensure_ray(
            address,
            object_store_memory=object_store_memory,
            log_to_driver=log_to_driver,
            init_kwargs=init_kwargs,
        )
        self.spec = env_spec
        self.n = n
        opts: dict[str, Any] = {"num_cpus": num_cpus, "scheduling_strategy": scheduling_strategy}
        if memory is not None:
            opts["memory"] = int(memory)
        if resources:
            opts["resources"] = dict(resources)
        if runtime_env:
            opts["runtime_env"] = dict(runtime_env)
        sys_path = list(sys.path) if propagate_sys_path else []
        self.actor = _actor_class().options(**opts).remote(env_spec, n, dict(env_kwargs), sys_path)
        self._dead = False
        self._rfd, self._wfd = os.pipe()
        self._lock = threading.Lock()
        # calls in flight, oldest first: the actor runs them one at a time in that order
        self._futures: deque[Any] = deque()
        try:
            self.pid, self.node = ray.get(self.actor.ready.remote(), timeout=start_timeout)
        except ray.exceptions.GetTimeoutError:
            self.kill(graceful=False)
            raise RuntimeError(
                f"the Ray actor for {env_spec.id} did not start within {start_timeout}s: the "
                "cluster may lack resources for it (lower ray_options num_cpus/memory, or check "
                "`ray status`); raise ray_options start_timeout if env construction is slow"
            ) from None
        except ray.exceptions.RayError as e:
            self.kill(graceful=False)
            raise RuntimeError(f"could not build {env_spec.id} in a Ray actor:\n{e}") from None

    # -- WorkerHandle -----------------------------------------------------------------------
    def send(self, batch: Batch) -> None:
        if self._dead:
            raise ActorDied(f"the Ray actor hosting {self.spec.id} envs is dead")
        future = self.actor.run.remote(batch).future()
        with self._lock:
            self._futures.append(future)
        future.add_done_callback(self._notify)

    def _notify(self, future: Any) -> None:
        # Runs on a Ray thread when a call finishes (or fails): wake the pool's wait(). A call
        # whose result was already taken writes nothing, so no stale byte makes wait() spin.
        with self._lock:
            if self._wfd >= 0 and any(f is future for f in self._futures):
                with contextlib.suppress(OSError):
                    os.write(self._wfd, b"x")

    def ready(self) -> bool:
        return bool(self._futures) and self._futures[0].done()

    def result(self) -> Answer:
        with self._lock:
            if not self._futures:
                raise RuntimeError("RayWorker.result() called with no command in flight")
            future = self._futures.popleft()
            self._drain()  # a later call that is done already is seen by ready(), not wait()
        try:
            return future.result()
        except Exception as e:
            # RayActorError (process killed, node lost) or a call that could not even return
            # (unpicklable result): either way this worker's envs are in an unknown state.
            self._dead = True
            raise ActorDied(f"Ray actor hosting {self.spec.id} envs failed: {e}") from e

    def _drain(self) -> None:
        os.set_blocking(self._rfd, False)
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self._rfd, 64):
                pass

    def alive(self) -> bool:
        return not self._dead

    def wait_objects(self) -> list[Any]:
        return [self._rfd] if self._rfd >= 0 and self._futures else []

    def kill(self, graceful: bool = True) -> None:
        """End the actor; idempotent.

        ``graceful``: first close the envs, if the actor is idle. The pool passes ``False`` for
        a worker that died or hung, and then the actor's process is also killed directly when
        it runs on this host: ``ray.kill`` does not interrupt a call stuck in an env (a hung
        game), so the process would otherwise live on until that call returns.
        """
        actor, self.actor = getattr(self, "actor", None), None
        if actor is not None and ray.is_initialized():
            busy = any(not f.done() for f in self._futures)
            if graceful and not busy and not self._dead:
                with contextlib.suppress(Exception):
                    ray.get(actor.close.remote(), timeout=5)
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)
            if busy or not graceful:
                self._kill_local_process()
        self._dead = True
        with self._lock:
            for fd in (self._rfd, self._wfd):
                if fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            self._rfd = self._wfd = -1

    def _kill_local_process(self) -> None:
        import socket

        import psutil

        pid = getattr(self, "pid", -1)
        if pid <= 0 or getattr(self, "node", None) != socket.gethostname():
            return
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            # Only the actor's own worker (its title is "ray::_EnvActor..."), never a reused pid.
            if "_EnvActor" in " ".join(proc.cmdline()):
                proc.kill()

    def __del__(self) -> None:  # pragma: no cover - best effort
        with contextlib.suppress(Exception):
            self.kill()

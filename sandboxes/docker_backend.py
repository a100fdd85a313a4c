"""The Docker backend of :class:`~agentgym.sandboxes.base.Sandbox`.

Every container is started with the hardened settings of :class:`SandboxConfig`:

* no network (``network_mode="none"``: only loopback) unless ``network="bridge"`` is asked for;
* ``mem_limit`` with ``memswap_limit`` equal to it (no swap escape), a CPU quota (``nano_cpus``),
  ``pids_limit`` with ``init=True`` (an init reaps zombies, so they do not pin the limit);
* ``cap_drop=["ALL"]`` plus ``KILL``/``SETUID``/``SETGID`` for root's processes only,
  ``no-new-privileges``, a read-only root filesystem, tmpfs ``/workspace``, ``/tmp`` and a capped
  ``/dev/shm``; the container's own process runs as root and commands as uid 1000 with no
  capability at all, so a command can neither become root nor signal a root process;
* labels ``agentgym.sandbox=1``, ``agentgym.owner_pid``, ``agentgym.owner_host`` and
  ``agentgym.run_id``: :func:`gc` removes what a crashed process left behind.

Every command runs under a root wrapper inside the container
(:data:`~.docker_hardening.EXEC_WRAPPER`):
``timeout -s KILL`` starts ``setpriv``, which drops to the sandbox user and runs the command;
afterwards the wrapper kills every process of the sandbox user, whatever the command did (a
``setsid`` daemon, one that killed its parent, a fork bomb). A host-side watchdog does the same
kill if the output stream is still open shortly after the deadline. Output is streamed and capped
on the host (head and tail kept), so a command that prints gigabytes costs bounded memory.
File reads and writes go through the same wrapper, with a size cap and a timeout.

Out-of-memory kills: under cgroup v1 an exec'd process killed by the memory limit exits with 137
while Docker's ``OOMKilled`` stays False (that flag is about the container's init). We read the
``oom_kill`` counter of the container's memory cgroup (``memory.oom_control``, cgroup v2:
``memory.events``) after every exit 137 and report ``oom=True`` when it grew.

Files are moved with ``exec`` + stdin/stdout streams rather than Docker's archive API, because
the archive API reads and writes the layer *under* a tmpfs mount, not the tmpfs itself.

The parts live in modules of their own: :mod:`.docker_engine` (the client, labels, :func:`gc`),
:mod:`.docker_hardening` (the container settings and the root wrapper), :mod:`.docker_streams`
(output collection) and :mod:`.docker_files` (file scripts, tar streams); this module holds the
sandbox itself and re-exports the public names of the others.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import posixpath
import socket
import threading
import time
import weakref
from typing import Any

from agentgym.sandboxes.base import (
    ExecResult,
    FileTooLarge,
    Sandbox,
    SandboxConfig,
    SandboxError,
    parse_memory,
)
from agentgym.sandboxes.docker_engine import (
    LABEL,
    RUN_ID,
    docker_available,
    docker_client,
    gc,
    list_sandboxes,
    owner_labels,
)
from agentgym.sandboxes.docker_files import (
    DONE_LINE,
    READ_SCRIPT,
    RESET_SCRIPT,
    TREE_TIMEOUT_S,
    WRITE_SCRIPT,
    extract_tar,
    host_tar,
)
from agentgym.sandboxes.docker_hardening import EXEC_WRAPPER, REAP_ONLY, container_options
from agentgym.sandboxes.docker_streams import Bytes, Capped, read_frames
from agentgym.sandboxes.images import SEED_DIR
from agentgym.signals import on_interrupt

__all__ = [
    "DockerSandbox",
    "close_all",
    "docker_client",
    "docker_available",
    "gc",
    "list_sandboxes",
    "owner_labels",
    "LABEL",
    "RUN_ID",
]

log = logging.getLogger(__name__)

#: Seconds an exec's output may stay open past its timeout before the sandbox is declared
#: broken (the wrapper kills at the timeout and the host watchdog 3 s later).
_STUCK_GRACE_S = 60.0
_OOM_FILES = ("/sys/fs/cgroup/memory/memory.oom_control", "/sys/fs/cgroup/memory.events")

_live: weakref.WeakSet[DockerSandbox] = weakref.WeakSet()
#: Set by an interrupt (SIGINT/SIGTERM inside ``agentgym.signals.terminate_as_interrupt``):
#: from then on this process starts no sandbox.
_stopping = threading.Event()


@atexit.register
def _close_live() -> None:  # pragma: no cover - interpreter exit
    for sb in list(_live):
        with contextlib.suppress(Exception):
            sb.close()


@on_interrupt
def close_all() -> None:
    """Remove every sandbox of this process and refuse new ones.

    Runs on SIGINT/SIGTERM (see :mod:`agentgym.signals`): worker threads blocked in an exec
    then fail at once instead of finishing their episodes, and tasks still queued cannot start
    a container that nobody would remove.
    """
    _stopping.set()
    for sb in list(_live):
        with contextlib.suppress(Exception):
            sb.close()


class DockerSandbox(Sandbox):
    """A hardened Docker container (see the module docstring for every setting)."""

    workdir = "/workspace"

    def __init__(self, config: SandboxConfig | None = None, *, client: Any = None) -> None:
        self.config = config or SandboxConfig()
        self._client = client
        self.container: Any = None
        self.image: str | None = self.config.image
        self._closed = False
        self._has_seed = False
        self._snapshot: bytes | None = None
        self._oom_count = 0
        self._keep_pid = ""  # the container's `sleep` (a root process the reaper skips)
        self._lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = docker_client()
        return self._client

    @property
    def id(self) -> str:
        return self.container.id if self.container is not None else ""

    def start(self) -> DockerSandbox:
        if self._closed:
            raise SandboxError("this sandbox was closed; create a new DockerSandbox")
        if _stopping.is_set():
            raise SandboxError("this process was interrupted; it starts no new sandbox")
        if self.container is not None:
            return self
        if self.image is None:
            from agentgym.sandboxes.images import ensure_base_image

            self.image = ensure_base_image()
        options = container_options(self.config, self.workdir)
        try:
            self.container = self.client.containers.run(
                self.image, command=["sleep", "infinity"], **options
            )
        except Exception as e:
            raise SandboxError(f"could not start a sandbox from image {self.image!r}: {e}") from e
        _live.add(self)
        if _stopping.is_set():  # interrupted while the container was being created
            self.close()
            raise SandboxError("this process was interrupted; it starts no new sandbox")
        try:
            probe = self.exec(
                f"test -d {SEED_DIR} && cp -a {SEED_DIR}/. {self.workdir}/ && echo seed; "
                "echo keep $(cat /proc/1/task/1/children); "
                "cat /sys/fs/cgroup/memory/memory.oom_control /sys/fs/cgroup/memory.events "
                "2>/dev/null | grep -E '^oom_kill ' || true",
                timeout=120,
            )
            self._has_seed = "seed" in probe.stdout.split()
            self._oom_count = self._parse_oom(probe.stdout)
            for line in probe.stdout.splitlines():
                words = line.split()
                if len(words) == 2 and words[0] == "keep" and words[1].isdigit():
                    self._keep_pid = words[1]
        except Exception:
            self.close()
            raise
        return self

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        c, self.container = self.container, None
        if c is None:
            return
        import docker.errors

        try:
            c.remove(force=True)
        except docker.errors.NotFound:
            pass
        except Exception as e:  # the engine went away: gc will find it by its labels
            log.warning("could not remove sandbox %s: %s", c.name, e)
        _live.discard(self)

    @property
    def closed(self) -> bool:
        return self._closed

    def _require(self) -> Any:
        if self.container is None:
            if self._closed:
                raise SandboxError("this sandbox was closed; create a new one")
            self.start()
        return self.container

    # -- exec ------------------------------------------------------------------------------

    @staticmethod
    def _parse_oom(text: str) -> int:
        for line in text.splitlines():
            if line.startswith("oom_kill "):
                try:
                    return int(line.split()[1])
                except (IndexError, ValueError):
                    return -1
        return -1

    def _oom_grew(self) -> bool | None:
        """Whether the container's oom_kill counter grew since the last look (None: unknown)."""
        out = Bytes(65536)
        self._run(
            self._wrap(["/bin/cat", *_OOM_FILES], 10.0),
            on_out=out.add,
            on_err=lambda b: None,
            deadline=time.monotonic() + 30,
        )
        n = self._parse_oom(out.value().decode(errors="replace"))
        if n < 0:
            return None
        grew = n > self._oom_count
        self._oom_count = n
        return grew

    def _ids(self) -> tuple[str, str]:
        uid, _, gid = self.config.user.partition(":")
        return uid, gid or uid

    def _wrap(
        self, argv: list[str], timeout: float, env: dict[str, str] | None = None
    ) -> list[str]:
        """``argv`` under :data:`~.docker_hardening.EXEC_WRAPPER`, with per-exec variables set
        after the drop."""
        if env:
            bad = [k for k in env if not k or "=" in k or "\0" in k]
            if bad:
                raise ValueError(f"invalid environment variable names {bad}: use NAME=value pairs")
            argv = ["/usr/bin/env", "--", *(f"{k}={v}" for k, v in env.items()), *argv]
        uid, gid = self._ids()
        # timeout(1) reads "0" as "no timeout": never send less than a millisecond.
        secs = f"{max(timeout, 0.001):.3f}"
        keep = self._keep_pid or "-"
        return ["/bin/sh", "-c", EXEC_WRAPPER, "agentgym-exec", secs, uid, gid, keep, *argv]

    def _run(
        self,
        argv: list[str],
        *,
        on_out: Any,
        on_err: Any,
        deadline: float,
        stdin: bytes | None = None,
        workdir: str | None = None,
        succeeded: Any = None,
    ) -> int | None:
        """Run ``argv`` as root (always one of the wrappers of :mod:`.docker_hardening`) and
        stream its output into ``on_out`` / ``on_err``; return its exit status, or None when the
        output was still open at ``deadline`` (``time.monotonic``). ``succeeded``: a check of
        the output that proves exit status 0 (a script's own success line), so the engine need
        not be asked for it."""
        c = self._require()
        api = self.client.api
        try:
            eid = api.exec_create(
                c.id, argv, stdin=stdin is not None, user="0:0", workdir=workdir or self.workdir
            )["Id"]
            sock = api.exec_start(eid, socket=True)
            raw = getattr(sock, "_sock", sock)
            try:
                if stdin is not None:
                    raw.settimeout(max(0.1, deadline - time.monotonic()))
                    # A command that stops reading (it failed, or the timeout killed it) breaks
                    # the pipe; its exit status says why, so the send error itself is dropped.
                    with contextlib.suppress(OSError):
                        raw.sendall(stdin)
                    with contextlib.suppress(OSError):
                        raw.shutdown(socket.SHUT_WR)
                if not read_frames(raw, on_out, on_err, deadline):
                    return None
            finally:
                sock.close()
            if succeeded is not None and succeeded():
                return 0
            info = api.exec_inspect(eid)
            wait = 0.0005
            while info.get("Running"):  # the stream can end a moment before the exit is recorded
                time.sleep(wait)
                wait = min(wait * 2, 0.05)
                info = api.exec_inspect(eid)
        except SandboxError:
            raise
        except Exception as e:
            raise SandboxError(f"exec in sandbox {c.name} failed: {e}") from e
        code = info.get("ExitCode")
        return int(code) if code is not None else -1

    def _kill_user_processes(self) -> None:
        """Kill every process of the sandbox user (host-side watchdog)."""
        try:
            self._run(
                [
                    "/bin/sh",
                    "-c",
                    REAP_ONLY,
                    "agentgym-reap",
                    self._ids()[0],
                    self._keep_pid or "-",
                ],
                on_out=lambda b: None,
                on_err=lambda b: None,
                deadline=time.monotonic() + 60,
            )
        except Exception as e:
            log.debug("kill of user processes failed: %s", e)

    def exec(
        self,
        command: str | list[str],
        *,
        timeout: float | None = None,
        workdir: str | None = None,
        env: dict[str, str] | None = None,
    ) -> ExecResult:
        c = self._require()
        t = float(timeout if timeout is not None else self.config.default_timeout)
        if t <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        argv = ["bash", "-c", command] if isinstance(command, str) else list(command)
        full = self._wrap(argv, t, env)
        out, err = Capped(self.config.max_output), Capped(self.config.max_output)
        watchdog_fired = threading.Event()

        def watchdog() -> None:
            # The wrapper kills at the deadline; this only runs when its output is still open
            # 3 s later, i.e. when the engine lost track of it.
            watchdog_fired.set()
            self._kill_user_processes()

        timer = threading.Timer(t + 3.0, watchdog)
        timer.daemon = True
        t0 = time.perf_counter()
        timer.start()
        try:
            code = self._run(
                full,
                on_out=out.add,
                on_err=err.add,
                deadline=time.monotonic() + t + _STUCK_GRACE_S,
                workdir=workdir,
            )
        finally:
            timer.cancel()
        duration = time.perf_counter() - t0
        if code is None:
            raise SandboxError(
                f"exec in sandbox {c.name}: output still open {_STUCK_GRACE_S:g}s after the "
                f"{t:g}s timeout although every process was killed; the sandbox is unusable"
            )
        oom = False
        timed_out = watchdog_fired.is_set()
        if code == 137 and not timed_out:
            grew = self._oom_grew()
            if grew:
                oom = True
            elif duration >= t:
                timed_out = True
            elif grew is None:
                oom = True  # no counter to read: a SIGKILL before the deadline is the limit's
        return ExecResult(
            exit_code=code,
            stdout=out.text(),
            stderr=err.text(),
            timed_out=timed_out,
            oom=oom,
            duration_s=duration,
            truncated=out.truncated or err.truncated,
        )

    def _file_op(
        self,
        argv: list[str],
        *,
        what: str,
        timeout: float,
        max_out: int,
        stdin: bytes | None = None,
        done: bytes | None = None,
    ) -> tuple[int, Bytes, str]:
        """Run a file operation as the sandbox user; raise :class:`TimeoutError` when it
        outlives ``timeout`` (a FIFO, a device, a huge tree). ``done``: the whole stdout of a
        successful run (the script prints it last), which stands for exit status 0."""
        out, err = Bytes(max_out), Bytes(65536)
        t0 = time.monotonic()
        code = self._run(
            self._wrap(argv, timeout),
            on_out=out.add,
            on_err=err.add,
            deadline=t0 + timeout + _STUCK_GRACE_S,
            stdin=stdin,
            succeeded=None if done is None else (lambda: out.value() == done),
        )
        if code is None or (code == 137 and time.monotonic() - t0 >= timeout):
            raise TimeoutError(
                f"{what} took longer than {timeout:g}s and was stopped "
                "(a FIFO, a device or a very large file?)"
            )
        return code, out, err.value().decode(errors="replace").strip()

    # -- files -----------------------------------------------------------------------------

    def _abs(self, path: str) -> str:
        return path if path.startswith("/") else posixpath.join(self.workdir, path)

    def write_file(
        self, path: str, data: str | bytes, mode: int = 0o644, *, timeout: float | None = None
    ) -> None:
        """Create or overwrite the regular file ``path``.

        Raises :class:`FileTooLarge` above ``config.max_file_bytes``, :class:`TimeoutError`
        after ``timeout`` (default ``config.file_timeout``), ``OSError`` when ``path`` is a
        directory, FIFO or device, or cannot be written.
        """
        p = self._abs(path)
        payload = data.encode() if isinstance(data, str) else data
        cap = self.config.max_file_bytes
        if len(payload) > cap:
            raise FileTooLarge(
                f"cannot write {p}: {len(payload)} bytes is over the {cap}-byte limit "
                "of a sandbox file write"
            )
        code, _, msg = self._file_op(
            ["/bin/sh", "-c", WRITE_SCRIPT, "sh", p, f"{mode:o}"],
            what=f"writing {p}",
            timeout=timeout or self.config.file_timeout,
            max_out=65536,
            stdin=payload,
            done=DONE_LINE,
        )
        if code != 0:
            raise OSError(f"could not write {p} in the sandbox: {msg}")

    def read_file(
        self, path: str, *, max_bytes: int | None = None, timeout: float | None = None
    ) -> bytes:
        """The bytes of the regular file ``path``.

        Raises ``FileNotFoundError``, ``IsADirectoryError``, ``OSError`` for a FIFO, socket or
        device (those could block or never end), :class:`FileTooLarge` above ``max_bytes``
        (default ``config.max_file_bytes``) and :class:`TimeoutError` after ``timeout``
        (default ``config.file_timeout``).
        """
        p = self._abs(path)
        cap = self.config.max_file_bytes if max_bytes is None else max_bytes
        code, out, msg = self._file_op(
            ["/bin/sh", "-c", READ_SCRIPT, "sh", p, str(cap)],
            what=f"reading {p}",
            timeout=timeout or self.config.file_timeout,
            max_out=cap + 1,
        )
        if code == 2:
            raise FileNotFoundError(f"{p} does not exist in the sandbox")
        if code == 21:
            raise IsADirectoryError(f"{p} is a directory, not a file")
        if code == 22:
            raise OSError(f"{p} is not a regular file (a FIFO, socket or device); not read")
        if code == 27 or (code == 0 and out.overflow):
            size = msg if code == 27 and msg.isdigit() else f"more than {cap}"
            raise FileTooLarge(
                f"{p} is {size} bytes, over the {cap}-byte limit of a sandbox file read"
            )
        if code != 0:
            raise OSError(f"could not read {p} in the sandbox: {msg or f'exit {code}'}")
        return out.value()

    def copy_in(self, src: str, dest: str) -> None:
        self._untar(*host_tar(src, self._abs(dest)))

    def _untar(self, dest: str, data: bytes) -> None:
        script = 'mkdir -p "$1" && tar --no-same-owner -x -f - -C "$1"'
        code, _, msg = self._file_op(
            ["/bin/sh", "-c", script, "sh", dest],
            what=f"extracting into {dest}",
            timeout=TREE_TIMEOUT_S,
            max_out=65536,
            stdin=data,
        )
        if code != 0:
            raise OSError(f"could not extract into {dest}: {msg}")

    def _tar(self, src: str) -> bytes:
        parent, name = posixpath.split(src.rstrip("/") or "/")
        cap = parse_memory(self.config.workspace_size) + parse_memory(self.config.tmp_size)
        code, out, msg = self._file_op(
            ["tar", "-C", parent or "/", "-c", "-f", "-", name],
            what=f"archiving {src}",
            timeout=TREE_TIMEOUT_S,
            max_out=cap,
        )
        if code != 0:
            if "No such file" in msg:
                raise FileNotFoundError(f"{src} does not exist in the sandbox")
            raise OSError(f"could not archive {src} in the sandbox: {msg}")
        if out.overflow:
            raise FileTooLarge(f"{src} archives to more than {cap} bytes; not copied")
        return out.value()

    def copy_out(self, src: str, dest: str) -> None:
        extract_tar(self._tar(self._abs(src)), dest)

    # -- snapshot / reset ------------------------------------------------------------------

    def snapshot(self) -> None:
        try:
            self._snapshot = self._tar(self.workdir.rstrip("/") + "/.")
        except OSError as e:
            raise SandboxError(f"snapshot failed: {e}") from e

    def reset(self) -> float:
        """Kill the user's processes; wipe ``/workspace``, ``/tmp``, ``/dev/shm``, POSIX
        message queues and System V IPC objects; restore the workspace. One ``exec``.

        The workspace comes back from the last :meth:`snapshot` (streamed in on the same exec),
        else from the image's seed (which sits on the read-only root filesystem, so nothing
        inside can have altered it).
        """
        t0 = time.perf_counter()
        if self._snapshot is not None:
            how = "tar"
        else:
            how = "seed" if self._has_seed else "none"
        try:
            code, _, msg = self._file_op(
                ["/bin/sh", "-c", RESET_SCRIPT, "sh", self.workdir, how, SEED_DIR],
                what="reset",
                timeout=TREE_TIMEOUT_S,
                max_out=65536,
                stdin=self._snapshot if how == "tar" else None,
                done=DONE_LINE,
            )
        except TimeoutError as e:
            raise SandboxError(str(e)) from e
        if code != 0:
            raise SandboxError(f"reset failed (exit {code}): {msg}")
        return time.perf_counter() - t0

    def __repr__(self) -> str:
        name = self.container.name if self.container is not None else "not started"
        return f"DockerSandbox({name}, image={self.image!r})"

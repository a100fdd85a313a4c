"""The Docker backend of :class:`~agentgym.sandboxes.base.Sandbox`.

Every container is started with the hardened settings of :class:`SandboxConfig`:

* no network (``network_mode="none"``: only loopback) unless ``network="bridge"`` is asked for;
* ``mem_limit`` with ``memswap_limit`` equal to it (no swap escape), a CPU quota (``nano_cpus``),
  ``pids_limit`` with ``init=True`` (an init reaps zombies, so they do not pin the limit);
* ``cap_drop=["ALL"]``, ``no-new-privileges``, a read-only root filesystem, tmpfs ``/workspace``
  and ``/tmp``; the container's own process runs as ``nobody`` and commands as uid 1000, so a
  command can neither become root nor kill the process that keeps the container alive;
* labels ``agentgym.sandbox=1``, ``agentgym.owner_pid``, ``agentgym.owner_host`` and
  ``agentgym.run_id``: :func:`gc` removes what a crashed process left behind.

Per-exec timeouts are enforced inside the container (``timeout -s KILL``, which kills the whole
process group), backed by a host-side watchdog that kills every process of the sandbox user if
the output stream is still open shortly after the deadline (a command that detached with
``setsid``). Output is streamed and capped on the host (head and tail kept), so a command that
prints gigabytes costs bounded memory.

Out-of-memory kills: under cgroup v1 an exec'd process killed by the memory limit exits with 137
while Docker's ``OOMKilled`` stays False (that flag is about the container's init). We read the
``oom_kill`` counter of the container's memory cgroup (``memory.oom_control``, cgroup v2:
``memory.events``) after every exit 137 and report ``oom=True`` when it grew.

Files are moved with ``exec`` + stdin/stdout streams rather than Docker's archive API, because
the archive API reads and writes the layer *under* a tmpfs mount, not the tmpfs itself.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import io
import logging
import os
import posixpath
import shlex
import socket
import struct
import tarfile
import threading
import time
import uuid
import weakref
from typing import Any

from agentgym.sandboxes.base import ExecResult, Sandbox, SandboxConfig, SandboxError, parse_memory
from agentgym.sandboxes.images import SEED_DIR

__all__ = [
    "DockerSandbox",
    "docker_client",
    "docker_available",
    "gc",
    "list_sandboxes",
    "owner_labels",
    "LABEL",
    "RUN_ID",
]

log = logging.getLogger(__name__)

LABEL = "agentgym.sandbox"
#: Identifies this process's sandboxes across its lifetime (``agentgym.run_id`` label).
RUN_ID = os.environ.get("AGENTGYM_RUN_ID") or uuid.uuid4().hex[:12]
_HOST = socket.gethostname()
_CONTAINER_USER = "65534:65534"  # nobody: keeps the container alive, unreachable for uid 1000

_client_lock = threading.Lock()
_client: Any = None


def docker_client() -> Any:
    """A shared ``docker.DockerClient``; raises :class:`SandboxError` saying how to start one."""
    global _client
    with _client_lock:
        if _client is None:
            try:
                import docker
            except ImportError as e:
                raise ImportError(
                    "the Docker sandboxes need the docker SDK: pip install 'agentgym[swe]'"
                ) from e
            try:
                # Long commands stream no output for a while; the container enforces the
                # per-command timeout, so the HTTP read timeout only has to be generous.
                c = docker.from_env(timeout=3600)
                c.ping()
            except Exception as e:
                raise SandboxError(
                    f"no Docker engine reachable ({e}); start one with "
                    "`sudo bash scripts/setup_docker.sh` or set DOCKER_HOST"
                ) from e
            _client = c
        return _client


def docker_available() -> bool:
    try:
        docker_client()
        return True
    except (SandboxError, ImportError):
        return False


def owner_labels() -> dict[str, str]:
    """The labels that tie a container to this process (used by :func:`gc`)."""
    return {
        LABEL: "1",
        f"{LABEL}.owner_pid": str(os.getpid()),
        f"{LABEL}.owner_host": _HOST,
        f"{LABEL}.run_id": RUN_ID,
        f"{LABEL}.created": str(int(time.time())),
    }


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def list_sandboxes() -> list[Any]:
    """Every container (running or not) labelled ``agentgym.sandbox=1``."""
    return docker_client().containers.list(all=True, filters={"label": f"{LABEL}=1"})


def gc(*, all: bool = False, run_id: str | None = None) -> list[str]:
    """Remove labelled containers whose owner process is gone; return their names.

    ``all=True`` removes every labelled container, ``run_id`` only those of one run. A
    container owned by a live process on this host is kept (it is in use); one from another
    host is removed only with ``all`` or ``run_id``.
    """
    import docker.errors

    removed = []
    for c in list_sandboxes():
        lab = c.labels or {}
        if run_id is not None:
            dead = lab.get(f"{LABEL}.run_id") == run_id
        elif all:
            dead = True
        else:
            pid = lab.get(f"{LABEL}.owner_pid", "")
            same_host = lab.get(f"{LABEL}.owner_host") == _HOST
            dead = same_host and (not pid.isdigit() or not _pid_alive(int(pid)))
        if dead:
            try:
                c.remove(force=True)
                removed.append(c.name)
            except docker.errors.NotFound:
                pass
    return removed


class _Capped:
    """Keeps the first and last ``limit / 2`` bytes of a stream."""

    def __init__(self, limit: int) -> None:
        self.half = max(1, limit // 2)
        self.head = bytearray()
        self.tail: collections.deque[bytes] = collections.deque()
        self.tail_len = 0
        self.total = 0

    def add(self, b: bytes) -> None:
        self.total += len(b)
        room = self.half - len(self.head)
        if room > 0:
            self.head += b[:room]
            b = b[room:]
        if b:
            self.tail.append(b)
            self.tail_len += len(b)
            while self.tail and self.tail_len - len(self.tail[0]) >= self.half:
                self.tail_len -= len(self.tail.popleft())

    @property
    def truncated(self) -> bool:
        return self.total > len(self.head) + self.tail_len or self.tail_len > self.half

    def text(self) -> str:
        tail = b"".join(self.tail)
        if len(tail) > self.half:
            tail = tail[-self.half :]
        cut = self.total - len(self.head) - len(tail)
        if cut <= 0:
            return (bytes(self.head) + tail).decode(errors="replace")
        return (
            bytes(self.head).decode(errors="replace")
            + f"\n[... {cut} bytes truncated ...]\n"
            + tail.decode(errors="replace")
        )


_live: weakref.WeakSet[DockerSandbox] = weakref.WeakSet()


@atexit.register
def _close_live() -> None:  # pragma: no cover - interpreter exit
    for sb in list(_live):
        with contextlib.suppress(Exception):
            sb.close()


#: Runs one command under ``timeout -s KILL`` (which kills the command's process group at the
#: deadline), then kills whatever the command left behind (background jobs, a fork bomb, a
#: ``setsid`` daemon) before returning its exit status. ``kill -9 -1`` signals every process of
#: the sandbox user except the caller; it is a shell builtin, so it works with no pids left. It
#: runs three times because a fork bomb keeps forking while it is being killed. (It cannot be
#: looped "until it fails": kill(-1) also succeeds when it only met processes it may not signal.)
_KILL_ALL = "kill -9 -1 2>/dev/null; kill -9 -1 2>/dev/null; kill -9 -1 2>/dev/null"
_EXEC_WRAPPER = f't=$1; shift; timeout -s KILL "$t" "$@"; rc=$?; {_KILL_ALL}; exit $rc'


def _demux(raw: bytes) -> tuple[bytes, bytes]:
    """Split Docker's multiplexed stream (8-byte frame headers) into stdout and stderr."""
    out, err = bytearray(), bytearray()
    i = 0
    while i + 8 <= len(raw):
        kind, size = raw[i], struct.unpack(">I", raw[i + 4 : i + 8])[0]
        chunk = raw[i + 8 : i + 8 + size]
        (err if kind == 2 else out).extend(chunk)
        i += 8 + size
    return bytes(out), bytes(err)


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
        if self.container is not None:
            return self
        import docker.types

        cfg = self.config
        if self.image is None:
            from agentgym.sandboxes.images import ensure_base_image

            self.image = ensure_base_image()
        mem = parse_memory(cfg.memory)
        uid, _, gid = cfg.user.partition(":")
        gid = gid or uid
        tmpfs = {
            self.workdir: f"rw,exec,size={parse_memory(cfg.workspace_size)},"
            f"uid={uid},gid={gid},mode=0755",
            "/tmp": f"rw,exec,nosuid,size={parse_memory(cfg.tmp_size)},mode=1777",
        }
        try:
            self.container = self.client.containers.run(
                self.image,
                command=["sleep", "infinity"],
                detach=True,
                init=True,
                user=_CONTAINER_USER,
                hostname="sandbox",
                network_mode=cfg.network,
                mem_limit=mem,
                memswap_limit=mem,
                pids_limit=cfg.pids_limit,
                nano_cpus=int(cfg.cpus * 1e9),
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                read_only=True,
                tmpfs=tmpfs,
                working_dir=self.workdir,
                environment={"HOME": "/tmp", "PYTHONDONTWRITEBYTECODE": "1", **cfg.env},
                ulimits=[docker.types.Ulimit(name="nofile", soft=1024, hard=1024)],
                labels={**owner_labels(), **cfg.labels},
            )
        except Exception as e:
            raise SandboxError(f"could not start a sandbox from image {self.image!r}: {e}") from e
        _live.add(self)
        try:
            probe = self.exec(
                f"test -d {SEED_DIR} && cp -a {SEED_DIR}/. {self.workdir}/ && echo seed; "
                "cat /sys/fs/cgroup/memory/memory.oom_control /sys/fs/cgroup/memory.events "
                "2>/dev/null | grep -E '^oom_kill ' || true",
                timeout=120,
            )
            self._has_seed = "seed" in probe.stdout.split()
            self._oom_count = self._parse_oom(probe.stdout)
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
        r = self._raw_exec(
            [
                "sh",
                "-c",
                "cat /sys/fs/cgroup/memory/memory.oom_control /sys/fs/cgroup/memory.events "
                "2>/dev/null",
            ],
        )
        n = self._parse_oom(r[1].decode(errors="replace"))
        if n < 0:
            return None
        grew = n > self._oom_count
        self._oom_count = n
        return grew

    def _raw_exec(
        self, argv: list[str], user: str | None = None, workdir: str | None = None
    ) -> tuple[int, bytes, bytes]:
        c = self._require()
        rc, (out, err) = c.exec_run(
            argv, user=user or self.config.user, workdir=workdir or self.workdir, demux=True
        )
        return rc, out or b"", err or b""

    def _kill_user_processes(self) -> None:
        # kill(-1) reaches every process of the sandbox user but the caller; the container's
        # own process runs as another user and survives.
        try:
            self._raw_exec(["sh", "-c", f"{_KILL_ALL}; true"])
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
        full = ["sh", "-c", _EXEC_WRAPPER, "agentgym-exec", f"{t:g}", *argv]
        api = self.client.api
        out, err = _Capped(self.config.max_output), _Capped(self.config.max_output)
        watchdog_fired = threading.Event()

        def watchdog() -> None:
            watchdog_fired.set()
            self._kill_user_processes()

        timer = threading.Timer(t + 3.0, watchdog)
        timer.daemon = True
        t0 = time.perf_counter()
        try:
            eid = api.exec_create(
                c.id,
                full,
                user=self.config.user,
                workdir=workdir or self.workdir,
                environment=env or None,
            )["Id"]
            timer.start()
            for o, e in api.exec_start(eid, stream=True, demux=True):
                if o:
                    out.add(o)
                if e:
                    err.add(e)
            info = api.exec_inspect(eid)
            while info.get("Running"):
                time.sleep(0.01)
                info = api.exec_inspect(eid)
        except SandboxError:
            raise
        except Exception as e:
            raise SandboxError(f"exec in sandbox {c.name} failed: {e}") from e
        finally:
            timer.cancel()
        duration = time.perf_counter() - t0
        code = int(info.get("ExitCode") if info.get("ExitCode") is not None else -1)
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

    def _exec_stdin(self, argv: list[str], data: bytes) -> tuple[int, bytes, bytes]:
        """Run ``argv`` with ``data`` on its stdin; return (exit code, stdout, stderr)."""
        c = self._require()
        api = self.client.api
        eid = api.exec_create(c.id, argv, stdin=True, user=self.config.user, workdir=self.workdir)[
            "Id"
        ]
        sock = api.exec_start(eid, socket=True)
        raw = getattr(sock, "_sock", sock)
        try:
            raw.sendall(data)
            raw.shutdown(socket.SHUT_WR)
            chunks = []
            while True:
                b = raw.recv(65536)
                if not b:
                    break
                chunks.append(b)
        finally:
            sock.close()
        info = api.exec_inspect(eid)
        while info.get("Running"):
            time.sleep(0.01)
            info = api.exec_inspect(eid)
        out, err = _demux(b"".join(chunks))
        return int(info.get("ExitCode") or 0), out, err

    # -- files -----------------------------------------------------------------------------

    def _abs(self, path: str) -> str:
        return path if path.startswith("/") else posixpath.join(self.workdir, path)

    def write_file(self, path: str, data: str | bytes, mode: int = 0o644) -> None:
        p = self._abs(path)
        payload = data.encode() if isinstance(data, str) else data
        script = 'mkdir -p "$(dirname "$1")" && cat > "$1" && chmod "$2" "$1"'
        rc, _, err = self._exec_stdin(["sh", "-c", script, "sh", p, f"{mode:o}"], payload)
        if rc != 0:
            raise OSError(f"could not write {p} in the sandbox: {err.decode(errors='replace')}")

    def read_file(self, path: str) -> bytes:
        p = self._abs(path)
        rc, out, err = self._raw_exec(["cat", "--", p])
        if rc != 0:
            msg = err.decode(errors="replace").strip()
            if "No such file" in msg:
                raise FileNotFoundError(f"{p} does not exist in the sandbox")
            raise OSError(f"could not read {p} in the sandbox: {msg}")
        return out

    def copy_in(self, src: str, dest: str) -> None:
        d = self._abs(dest)
        if os.path.isfile(src):
            with open(src, "rb") as f:
                self.write_file(d, f.read(), mode=os.stat(src).st_mode & 0o777)
            return
        if not os.path.isdir(src):
            raise FileNotFoundError(f"copy_in: {src} is neither a file nor a folder on the host")
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tf:
            tf.add(src, arcname=".")
        self._untar(d, buf.getvalue())

    def _untar(self, dest: str, data: bytes) -> None:
        script = 'mkdir -p "$1" && tar --no-same-owner -x -f - -C "$1"'
        rc, _, err = self._exec_stdin(["sh", "-c", script, "sh", dest], data)
        if rc != 0:
            raise OSError(f"could not extract into {dest}: {err.decode(errors='replace')}")

    def _tar(self, src: str) -> bytes:
        parent, name = posixpath.split(src.rstrip("/") or "/")
        rc, out, err = self._raw_exec(["tar", "-C", parent or "/", "-c", "-f", "-", name])
        if rc != 0:
            msg = err.decode(errors="replace").strip()
            if "No such file" in msg:
                raise FileNotFoundError(f"{src} does not exist in the sandbox")
            raise OSError(f"could not archive {src} in the sandbox: {msg}")
        return out

    def copy_out(self, src: str, dest: str) -> None:
        data = self._tar(self._abs(src))
        os.makedirs(dest, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(data)) as tf:
            if hasattr(tarfile, "data_filter"):
                tf.extractall(dest, filter="data")
            else:  # pragma: no cover - Python < 3.12 without the filter backport
                tf.extractall(dest)

    # -- snapshot / reset ------------------------------------------------------------------

    def snapshot(self) -> None:
        rc, out, err = self._raw_exec(["tar", "-C", self.workdir, "-c", "-f", "-", "."])
        if rc != 0:
            raise SandboxError(f"snapshot failed: {err.decode(errors='replace')}")
        self._snapshot = out

    def reset(self) -> float:
        """Kill the user's processes, wipe ``/workspace`` and ``/tmp``, restore the workspace.

        The workspace comes back from the last :meth:`snapshot`, else from the image's seed
        (which sits on the read-only root filesystem, so nothing inside can have altered it).
        """
        t0 = time.perf_counter()
        ws = shlex.quote(self.workdir)
        restore = (
            f"cp -a {SEED_DIR}/. {ws}/" if self._has_seed and self._snapshot is None else "true"
        )
        script = (
            f"{_KILL_ALL}; "
            f"chmod -R u+rwx {ws} /tmp 2>/dev/null; "
            f"find {ws} /tmp -mindepth 1 -delete 2>/dev/null; "
            f'test -z "$(ls -A {ws})" || {{ echo "workspace not empty after wipe" >&2; exit 3; }}; '
            f"{restore}"
        )
        rc, _, err = self._raw_exec(["sh", "-c", script])
        if rc != 0:
            raise SandboxError(f"reset failed (exit {rc}): {err.decode(errors='replace')}")
        if self._snapshot is not None:
            self._untar(self.workdir, self._snapshot)
        return time.perf_counter() - t0

    def __repr__(self) -> str:
        name = self.container.name if self.container is not None else "not started"
        return f"DockerSandbox({name}, image={self.image!r})"

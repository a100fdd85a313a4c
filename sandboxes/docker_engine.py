"""The Docker engine behind the sandboxes: one shared client, and the labels that let :func:`gc`
remove what a crashed process left behind (``agentgym.sandbox=1``, ``agentgym.owner_pid``,
``agentgym.owner_host``, ``agentgym.run_id``)."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from typing import Any

from agentgym.sandboxes.base import SandboxError

__all__ = [
    "LABEL",
    "RUN_ID",
    "docker_available",
    "docker_client",
    "gc",
    "list_sandboxes",
    "owner_labels",
]

LABEL = "agentgym.sandbox"
#: Identifies this process's sandboxes across its lifetime (``agentgym.run_id`` label).
RUN_ID = os.environ.get("AGENTGYM_RUN_ID") or uuid.uuid4().hex[:12]
_HOST = socket.gethostname()

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

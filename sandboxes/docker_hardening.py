"""The hardened settings of a sandbox container and the root wrapper every command runs under.

See :mod:`agentgym.sandboxes.docker_backend` for the whole list and why each setting is there.
"""

from __future__ import annotations

from typing import Any

from agentgym.sandboxes.base import SandboxConfig, parse_memory
from agentgym.sandboxes.docker_engine import owner_labels

__all__ = ["CONTAINER_USER", "EXEC_WRAPPER", "REAP", "REAP_ONLY", "container_options"]

#: The container's own process (``sleep infinity``, which keeps it alive) and the exec wrappers
#: run as root, holding only CAP_KILL, CAP_SETUID and CAP_SETGID: Docker hands an exec the
#: capabilities of the container's process, so a non-root container user would leave the
#: wrappers without the two they need to drop to the sandbox user and kill what it left. The
#: sandbox user (uid 1000, no capabilities) can neither signal nor trace a root process.
CONTAINER_USER = "0:0"

#: Kills every process of uid ``$U`` (the sandbox user), whatever it did: a daemon that left the
#: exec's process group, one that killed its parent, a fork bomb. It runs as root inside the
#: container (which holds CAP_KILL for exactly this) in the exec's wrapper, a process the
#: sandbox user can neither signal nor ptrace. It uses shell builtins only, so it needs no free
#: pid when a fork bomb holds them all: it walks ``/proc`` and reads each ``status`` (zombies are
#: skipped, the container's init reaps them), and repeats until a round finds nothing, because
#: a fork bomb keeps forking while it is being killed. Root's own processes are skipped unread
#: (the container's init, its ``sleep`` as ``$M``, this shell), so with nothing left behind a
#: reap costs one directory listing. A process whose ``/proc`` entry root does not own belongs to
#: the sandbox user (every process here is root's or the user's) and is killed without reading
#: its status: one ``stat`` each, so a round outpaces a fork bomb. Only entries owned by root are
#: read, which covers a user process that made itself non-dumpable (its entry then shows root).
REAP = """reap() {
  n=0
  while [ $n -lt 300 ]; do
    n=$((n + 1)); found=
    for d in /proc/[0-9]*; do
      case ${d#/proc/} in 1 | "$$" | "$M") continue ;; esac
      if [ ! -O "$d" ]; then
        kill -9 "${d#/proc/}" 2>/dev/null && found=1
        continue
      fi
      s=; u=
      { while read -r k v rest; do
          case $k in State:) s=$v ;; Uid:) u=$v; break ;; esac
        done < "$d/status"; } 2>/dev/null
      if [ "$u" = "$U" ] && [ "$s" != Z ]; then kill -9 "${d#/proc/}" 2>/dev/null; found=1; fi
    done
    [ -z "$found" ] && return 0
  done
  return 1
}
"""

#: The wrapper of every command (``exec``, file reads and writes, reset), run as root:
#: ``timeout -s KILL`` (root, so the command cannot kill it) starts ``setpriv``, which drops to
#: the sandbox user (every capability gone: the uid change clears them, and no-new-privileges
#: keeps setuid binaries from bringing them back) and executes the command. When the command
#: returns, or the timeout kills its process group, :data:`REAP` kills whatever it left behind,
#: then the wrapper exits with the command's status. Arguments: seconds, uid, gid, the pid of
#: the container's ``sleep`` (or ``-``), argv...
#: Nothing of the caller's environment reaches this root shell (a ``PATH`` or ``LD_PRELOAD``
#: chosen by the command's author would run as root): per-exec variables are set by
#: ``/usr/bin/env`` after the drop, and every program is named by its absolute path.
EXEC_WRAPPER = (
    REAP
    + """t=$1; U=$2; G=$3; M=$4; shift 4
/usr/bin/timeout -s KILL "$t" /usr/bin/setpriv --reuid="$U" --regid="$G" --clear-groups \
  --inh-caps=-all -- "$@"
rc=$?
reap
exit $rc
"""
)
#: Kill the sandbox user's processes and nothing else (host watchdog, reset).
REAP_ONLY = REAP + "U=$1; reap; exit $?\n"


def container_options(cfg: SandboxConfig, workdir: str) -> dict[str, Any]:
    """The keyword arguments of ``containers.run`` for a sandbox of ``cfg`` (image and command
    aside): no network, memory, swap, CPU and process limits, every capability dropped but the
    wrapper's three, a read-only root filesystem with tmpfs ``workdir`` and ``/tmp``."""
    import docker.types

    mem = parse_memory(cfg.memory)
    uid, _, gid = cfg.user.partition(":")
    gid = gid or uid
    tmpfs = {
        workdir: f"rw,exec,size={parse_memory(cfg.workspace_size)},uid={uid},gid={gid},mode=0755",
        "/tmp": f"rw,exec,nosuid,size={parse_memory(cfg.tmp_size)},mode=1777",
    }
    return dict(
        detach=True,
        init=True,
        user=CONTAINER_USER,
        hostname="sandbox",
        network_mode=cfg.network,
        mem_limit=mem,
        memswap_limit=mem,
        pids_limit=cfg.pids_limit,
        nano_cpus=int(cfg.cpus * 1e9),
        cap_drop=["ALL"],
        # Only for the root exec wrapper: setpriv drops to the sandbox user (SETUID,
        # SETGID) and the reaper kills what the command left (KILL). The uid change
        # clears every capability of the command; no-new-privileges keeps them out.
        cap_add=["KILL", "SETUID", "SETGID"],
        security_opt=["no-new-privileges"],
        shm_size=parse_memory(cfg.shm_size),
        read_only=True,
        tmpfs=tmpfs,
        working_dir=workdir,
        environment={"HOME": "/tmp", "PYTHONDONTWRITEBYTECODE": "1", **cfg.env},
        ulimits=[docker.types.Ulimit(name="nofile", soft=1024, hard=1024)],
        labels={**owner_labels(), **cfg.labels},
    )

"""File transfer into and out of a sandbox: the scripts that read, write and reset files under
the exec wrapper, and the host side of the tar streams.

Files are moved with ``exec`` + stdin/stdout streams rather than Docker's archive API, because
the archive API reads and writes the layer *under* a tmpfs mount, not the tmpfs itself.
"""

from __future__ import annotations

import io
import os
import posixpath
import tarfile

__all__ = [
    "READ_SCRIPT",
    "DONE_LINE",
    "RESET_SCRIPT",
    "TREE_TIMEOUT_S",
    "WRITE_SCRIPT",
    "extract_tar",
    "host_tar",
]

#: Timeout of whole-tree operations (snapshot, reset, copy_in/copy_out).
TREE_TIMEOUT_S = 120.0

#: ``read_file``: only a regular file is read (a FIFO would block, ``/dev/zero`` never ends), and
#: only up to the cap (``head`` stops there even if the file grows). Exit codes name the error.
READ_SCRIPT = """p=$1; m=$2
if [ ! -e "$p" ]; then
  if [ -L "$p" ]; then echo "broken symbolic link" >&2; else echo "no such file" >&2; fi
  exit 2
fi
[ -d "$p" ] && exit 21
[ -f "$p" ] || exit 22
n=$(/usr/bin/stat -L -c %s -- "$p") || exit 1
[ "$n" -le "$m" ] || { echo "$n" >&2; exit 27; }
exec /usr/bin/head -c "$((m + 1))" -- "$p"
"""
#: ``write_file``: refuses to write into a FIFO or device (opening a FIFO blocks); prints
#: :data:`DONE_LINE` once written.
WRITE_SCRIPT = """p=$1
if [ -d "$p" ]; then echo "it is a directory" >&2; exit 21; fi
if [ -e "$p" ] && [ ! -f "$p" ]; then
  echo "it is not a regular file (a FIFO, socket or device)" >&2; exit 22
fi
d=${p%/*}
[ -d "${d:-/}" ] || mkdir -p -- "$d" || exit 1
cat > "$p" && chmod "$2" -- "$p" && echo agentgym-done
"""
#: ``reset``, run as the sandbox user between the wrapper's two reaps (so no process is left to
#: write behind it): empty the workspace, ``/tmp``, ``/dev/shm`` (POSIX shared memory and
#: semaphores) and ``/dev/mqueue`` (POSIX message queues), remove System V IPC objects (``ipcrm``
#: runs only when ``/proc/sysvipc`` lists one: a fork saved on every reset), then
#: restore the workspace from the snapshot on stdin or from the image's read-only seed. A
#: directory made unwritable (``chmod 0``) is opened up and the wipe retried. On success it prints
#: :data:`DONE_LINE`.
RESET_SCRIPT = """ws=$1; how=$2; seed=$3
set -- "$ws" /tmp
for d in /dev/shm /dev/mqueue; do [ -d "$d" ] && set -- "$@" "$d"; done
find "$@" -mindepth 1 -delete 2>/dev/null || {
  chmod -R u+rwx "$@" 2>/dev/null
  find "$@" -mindepth 1 -delete
} || { echo "could not empty $*" >&2; exit 3; }
ipc=
for f in /proc/sysvipc/shm /proc/sysvipc/msg /proc/sysvipc/sem; do
  { read -r h; read -r l; } < "$f" 2>/dev/null && [ -n "$l" ] && ipc=1
done
[ -n "$ipc" ] && [ -x /usr/bin/ipcrm ] && /usr/bin/ipcrm --all 2>/dev/null
case $how in
  seed) cp -a "$seed/." "$ws/" ;;
  tar) tar --no-same-owner -x -f - -C "$ws" ;;
esac || exit $?
echo agentgym-done
"""
#: What :data:`RESET_SCRIPT` and :data:`WRITE_SCRIPT` print, and all they print on stdout, once
#: every step succeeded. The
#: host takes it as the exit status and saves the engine round trip that would ask for one: only
#: the processes this exec starts hold its output (nothing left from an earlier command does), and
#: the script prints it after its last step returned 0.
DONE_LINE = b"agentgym-done\n"


def host_tar(src: str, dest: str) -> tuple[str, bytes]:
    """``(folder to extract into, tar bytes)`` that put the host file or folder ``src`` at
    ``dest`` in the sandbox."""
    if not os.path.isfile(src) and not os.path.isdir(src):
        raise FileNotFoundError(f"copy_in: {src} is neither a file nor a folder on the host")
    # Both go in as a tar: host files are trusted, so write_file's size cap does not apply.
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        if os.path.isfile(src):
            tf.add(src, arcname=posixpath.basename(dest))
            dest = posixpath.dirname(dest) or "/"
        else:
            tf.add(src, arcname=".")
    return dest, buf.getvalue()


def extract_tar(data: bytes, dest: str) -> None:
    """Unpack a tar from the sandbox into the host folder ``dest`` (no path leaves it)."""
    os.makedirs(dest, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        if hasattr(tarfile, "data_filter"):
            tf.extractall(dest, filter="data")
        else:  # pragma: no cover - Python < 3.12 without the filter backport
            tf.extractall(dest)

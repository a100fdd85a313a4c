#!/usr/bin/env bash
# Make a Docker engine available for the sandboxes and the SWE environment.
#
# Idempotent: installs docker.io and debootstrap only when missing, starts dockerd only when
# `docker info` fails, then waits until the engine answers. Exits non-zero with a clear message
# when the engine does not come up within $DOCKER_WAIT seconds (default 60).
#
# Environment:
#   DOCKER_WAIT      seconds to wait for the daemon (default 60)
#   DOCKERD_LOG      where dockerd writes its log (default /var/log/agentgym-dockerd.log)
set -euo pipefail

WAIT="${DOCKER_WAIT:-60}"
LOG="${DOCKERD_LOG:-/var/log/agentgym-dockerd.log}"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

need_pkgs=()
command -v dockerd >/dev/null 2>&1 || need_pkgs+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || need_pkgs+=(debootstrap)
if [ "${#need_pkgs[@]}" -gt 0 ]; then
    echo "setup_docker: installing ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Other jobs on the machine may hold the dpkg lock: wait for it instead of failing.
    APT=($SUDO apt-get -o DPkg::Lock::Timeout=600 -y --no-install-recommends)
    if ! "${APT[@]}" install "${need_pkgs[@]}"; then
        "${APT[@]}" update
        "${APT[@]}" install "${need_pkgs[@]}"
    fi
fi

if docker info >/dev/null 2>&1; then
    echo "setup_docker: engine already running ($(docker version --format '{{.Server.Version}}'))"
    exit 0
fi

echo "setup_docker: starting dockerd (log: $LOG)"
$SUDO mkdir -p "$(dirname "$LOG")"
# setsid + nohup: the daemon outlives this script and the shell that ran it.
$SUDO sh -c "setsid nohup dockerd >>'$LOG' 2>&1 </dev/null &"

for _ in $(seq 1 "$WAIT"); do
    if docker info >/dev/null 2>&1; then
        echo "setup_docker: engine ready ($(docker version --format '{{.Server.Version}}'))"
        exit 0
    fi
    sleep 1
done

echo "setup_docker: ERROR: dockerd did not answer within ${WAIT}s." >&2
echo "setup_docker: last lines of $LOG:" >&2
tail -n 30 "$LOG" >&2 || true
echo "setup_docker: fix: check the log above; run this script as root (dockerd needs it)," >&2
echo "setup_docker: or raise DOCKER_WAIT=<seconds> on a slow machine." >&2
exit 1

"""The Docker sandboxes against a real engine: isolation, limits, files, reset, pool, gc, CLI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from agentgym.sandboxes.base import ExecResult, SandboxConfig, parse_memory

pytestmark = pytest.mark.docker
REPO = Path(__file__).resolve().parents[2]


def _engine() -> str | None:
    """None when an engine answers (started with scripts/setup_docker.sh if need be)."""
    from agentgym.sandboxes.docker_backend import docker_available

    if docker_available():
        return None
    if shutil.which("dockerd") and os.geteuid() == 0:
        subprocess.run(
            ["bash", str(REPO / "scripts/setup_docker.sh")],
            capture_output=True,
            timeout=120,
            env={**os.environ, "DOCKER_WAIT": "60"},
        )
        import agentgym.sandboxes.docker_engine as engine

        engine._client = None
        if docker_available():
            return None
    return "no Docker engine could be reached or started (run scripts/setup_docker.sh as root)"


@pytest.fixture(scope="session")
def base_image() -> str:
    why = _engine()
    if why:
        pytest.skip(why)
    from agentgym.sandboxes.images import ensure_base_image

    return ensure_base_image()  # built once per machine (content-hash tag), ~4 min first time


@pytest.fixture(scope="module")
def sb(base_image: str):
    from agentgym.sandboxes.docker_backend import DockerSandbox

    with DockerSandbox(SandboxConfig(image=base_image, memory="256m", pids_limit=64)) as s:
        yield s


def test_config_validation() -> None:
    assert parse_memory("512m") == 512 << 20
    with pytest.raises(ValueError, match="root"):
        SandboxConfig(user="0:0")
    with pytest.raises(ValueError, match="network"):
        SandboxConfig(network="host")
    with pytest.raises(ValueError, match="memory size"):
        SandboxConfig(memory="lots")


def test_exec_basics_and_non_root(sb) -> None:
    r = sb.exec("id -u; pwd; python3 -c 'print(2 + 3)'; git --version", timeout=20)
    assert isinstance(r, ExecResult) and r.ok, r
    uid, cwd, five, git = r.stdout.splitlines()
    assert (uid, cwd, five) == ("1000", "/workspace", "5") and git.startswith("git version")
    assert sb.exec(["python3", "-m", "pytest", "--version"], timeout=20).ok
    r = sb.exec("echo out; echo err >&2; exit 3")
    assert (r.exit_code, r.stdout, r.stderr) == (3, "out\n", "err\n")
    # No way back to root: no capabilities, no-new-privileges, and su fails.
    r = sb.exec("grep -E '^(CapEff|NoNewPrivs)' /proc/self/status")
    assert "CapEff:\t0000000000000000" in r.stdout and "NoNewPrivs:\t1" in r.stdout


def test_read_only_root_and_writable_workspace(sb) -> None:
    for path in ("/usr/bin/evil", "/etc/passwd", "/opt/x"):
        r = sb.exec(f"echo x > {path}")
        assert r.exit_code != 0, f"{path} was writable"
    r = sb.exec("echo ok > /workspace/a && echo ok > /tmp/b && cat /workspace/a /tmp/b")
    assert r.stdout == "ok\nok\n"
    assert "ro" in sb.exec("grep ' / ' /proc/mounts").stdout.split()[3].split(",")


def test_network_is_blocked(sb) -> None:
    ifaces = sb.exec("tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '").stdout.split()
    assert ifaces == ["lo"]
    code = textwrap.dedent("""
        import socket
        s = socket.socket(); s.settimeout(3)
        try:
            s.connect(("1.1.1.1", 80)); print("CONNECTED")
        except OSError as e:
            print("BLOCKED", e)
    """)
    r = sb.exec(["python3", "-c", code], timeout=20)
    assert "BLOCKED" in r.stdout, r


def test_timeout_kills_the_process_tree(sb) -> None:
    t0 = time.perf_counter()
    r = sb.exec("sleep 300 & sleep 300; echo never", timeout=1)
    assert r.timed_out and r.exit_code == 137 and not r.oom
    assert "never" not in r.stdout
    assert time.perf_counter() - t0 < 10
    left = sb.exec("ps -u 1000 -o comm= | grep -c sleep || true").stdout.strip()
    assert left == "0"


def test_detached_process_is_killed_after_exec(sb) -> None:
    r = sb.exec("setsid sleep 300 > /dev/null 2>&1 < /dev/null & echo started", timeout=5)
    assert r.stdout == "started\n" and not r.timed_out
    assert sb.exec("ps -u 1000 -o comm= | grep -c sleep || true").stdout.strip() == "0"


def test_memory_hog_is_killed_and_reported_as_oom(sb) -> None:
    r = sb.exec(
        ["python3", "-c", "b = bytearray(600 * 1024 * 1024); print('survived')"], timeout=60
    )
    assert r.oom and not r.timed_out and r.exit_code == 137, r
    assert "survived" not in r.stdout
    assert sb.exec("echo alive").stdout == "alive\n"


def test_fork_bomb_is_contained(sb) -> None:
    t0 = time.perf_counter()
    # The shell waits while the bomb runs into pids_limit, then the exec cleanup kills it.
    r = sb.exec(":(){ :|:& };:; sleep 3", timeout=20)
    assert time.perf_counter() - t0 < 30
    assert "Resource temporarily unavailable" in r.stderr, r
    assert sb.exec("echo alive", timeout=10).stdout == "alive\n"
    n = int(sb.exec("ps -u 1000 -o pid= | wc -l").stdout)
    assert n <= 5  # this exec: sh wrapper, timeout, bash, ps, wc; no bomb left


def test_output_is_capped(base_image) -> None:
    from agentgym.sandboxes.docker_backend import DockerSandbox

    with DockerSandbox(SandboxConfig(image=base_image, max_output=1000)) as s:
        r = s.exec("seq 1 100000", timeout=20)
    assert r.truncated and len(r.stdout) < 1100
    assert r.stdout.startswith("1\n2\n") and r.stdout.endswith("99999\n100000\n")
    assert "bytes truncated" in r.stdout


def test_files_roundtrip(sb, tmp_path: Path) -> None:
    sb.write_file("d/e/f.txt", "hello\n")
    assert sb.read_file("d/e/f.txt") == b"hello\n"
    sb.write_file("/tmp/bin.dat", bytes(range(256)) * 10)
    assert sb.read_file("/tmp/bin.dat") == bytes(range(256)) * 10
    with pytest.raises(FileNotFoundError):
        sb.read_file("missing.txt")
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "m.py").write_text("X = 1\n")
    sb.copy_in(str(src), "/workspace/proj")
    assert sb.exec("cd proj && python3 -c 'import pkg.m; print(pkg.m.X)'").stdout == "1\n"
    (tmp_path / "one.sh").write_text("echo one\n")
    (tmp_path / "one.sh").chmod(0o755)
    sb.copy_in(str(tmp_path / "one.sh"), "bin/run.sh")
    assert sb.exec("./bin/run.sh").stdout == "one\n"
    sb.copy_out("/workspace/proj", str(tmp_path / "out"))
    assert (tmp_path / "out" / "proj" / "pkg" / "m.py").read_text() == "X = 1\n"


def test_snapshot_reset_restores_a_clean_state(sb) -> None:
    sb.exec("rm -rf /workspace/* /workspace/.[!.]*; mkdir src && echo v1 > src/a.txt")
    sb.snapshot()
    sb.exec(
        "echo v2 > src/a.txt; echo junk > b.txt; mkdir ro && chmod 0 ro; echo t > /tmp/t; "
        "nohup sleep 300 > /dev/null 2>&1 &"
    )
    sb.reset()
    assert sb.exec("find /workspace /tmp -mindepth 1 | sort").stdout.split() == [
        "/workspace/src",
        "/workspace/src/a.txt",
    ]
    assert sb.read_file("src/a.txt") == b"v1\n"
    assert sb.exec("ps -u 1000 -o comm= | grep -c sleep || true").stdout.strip() == "0"


def test_pool_reuses_and_resets_faster_than_fresh(base_image) -> None:
    from agentgym.sandboxes.docker_backend import DockerSandbox
    from agentgym.sandboxes.pool import SandboxPool

    cfg = SandboxConfig(image=base_image)
    with SandboxPool(max_idle=2) as pool:
        with pool.sandbox(cfg) as a:
            a.exec("echo dirty > x.txt; echo t > /tmp/t")
            first = a.id
        t0 = time.perf_counter()
        with pool.sandbox(cfg) as b:
            acquire_s = time.perf_counter() - t0
            assert b.id == first  # warm reuse
            assert b.exec("ls -A /workspace /tmp").stdout.split() == ["/tmp:", "/workspace:"]
        assert pool.stats == {"fresh": 1, "reused": 1, "discarded": 0}
    t0 = time.perf_counter()
    DockerSandbox(cfg).start().close()
    fresh_s = time.perf_counter() - t0
    with DockerSandbox(cfg) as s:
        reset_s = min(s.reset() for _ in range(3))
    assert reset_s < fresh_s, (reset_s, fresh_s, acquire_s)


def _labelled(run_id: str) -> list:
    from agentgym.sandboxes.docker_backend import LABEL, docker_client

    return docker_client().containers.list(all=True, filters={"label": f"{LABEL}.run_id={run_id}"})


def test_no_container_left_after_close_or_error(base_image) -> None:
    from agentgym.sandboxes.docker_backend import RUN_ID, DockerSandbox

    before = {c.id for c in _labelled(RUN_ID)}
    with (
        pytest.raises(RuntimeError, match="boom"),
        DockerSandbox(SandboxConfig(image=base_image)) as s,
    ):
        cid = s.id
        raise RuntimeError("boom")
    s.close()  # idempotent
    assert cid not in {c.id for c in _labelled(RUN_ID)}
    assert {c.id for c in _labelled(RUN_ID)} <= before


def test_gc_removes_sandboxes_of_a_killed_process(base_image, tmp_path: Path) -> None:
    from agentgym.sandboxes.docker_backend import gc

    run_id = f"gc-test-{os.getpid()}"
    ready = tmp_path / "ready"
    script = textwrap.dedent(f"""
        import time
        from agentgym.sandboxes.base import SandboxConfig
        from agentgym.sandboxes.docker_backend import DockerSandbox
        sb = DockerSandbox(SandboxConfig(image={base_image!r})).start()
        sb.exec("echo mid-episode > work.txt")
        open({str(ready)!r}, "w").write(sb.id)
        time.sleep(600)
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", script], env={**os.environ, "AGENTGYM_RUN_ID": run_id}
    )
    try:
        for _ in range(300):
            if ready.exists() or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert ready.exists(), "the child never started its sandbox"
        assert len(_labelled(run_id)) == 1
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert len(_labelled(run_id)) == 1  # SIGKILL: nothing cleaned up
    removed = gc()
    assert _labelled(run_id) == [], removed
    # The CLI agrees that nothing is left.
    out = subprocess.run(
        [sys.executable, "-m", "agentgym.cli", "sandbox", "gc", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout) == {"removed": []}


def test_cli_exec_prints_json(base_image) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "agentgym.cli",
            "sandbox",
            "exec",
            "--image",
            base_image,
            "--timeout",
            "5",
            "--memory",
            "256m",
            "--",
            "echo hi; id -u",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    d = json.loads(out.stdout)
    assert set(d) == {"exit_code", "stdout", "stderr", "timed_out", "oom", "duration_s"}
    assert d["exit_code"] == 0 and d["stdout"] == "hi\n1000\n"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "agentgym.cli",
            "sandbox",
            "exec",
            "--image",
            base_image,
            "--timeout",
            "1",
            "--",
            "sleep",
            "30",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    d = json.loads(out.stdout)
    assert d["timed_out"] and out.returncode == 1


def test_layer_image_is_cached_by_content(base_image, tmp_path: Path) -> None:
    from agentgym.sandboxes.docker_backend import DockerSandbox
    from agentgym.sandboxes.images import build_layer_image

    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "m.py").write_text("X = 41\n")
    tag = build_layer_image(repo, base=base_image, install="python3 -c 'print(1)' > built.txt")
    t0 = time.perf_counter()
    assert (
        build_layer_image(repo, base=base_image, install="python3 -c 'print(1)' > built.txt") == tag
    )
    assert time.perf_counter() - t0 < 2.0  # cached: no rebuild
    with DockerSandbox(SandboxConfig(image=tag)) as s:
        assert s.exec("cat built.txt; python3 -c 'import m; print(m.X + 1)'").stdout == "1\n42\n"
        s.exec("echo changed > m.py")
        s.reset()
        assert s.read_file("m.py") == b"X = 41\n"  # restored from the read-only seed
    (repo / "m.py").write_text("X = 1\n")
    assert (
        build_layer_image(repo, base=base_image, install="python3 -c 'print(1)' > built.txt") != tag
    )

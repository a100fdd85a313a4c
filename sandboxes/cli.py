"""``agentgym sandbox exec|gc|ls|build-base`` and ``agentgym bench sandbox``.

Nothing heavy is imported at module level; the handlers import the docker SDK.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

__all__ = ["add_cli", "run_bench"]


def _cmd_exec(args: argparse.Namespace) -> int:
    from agentgym.sandboxes.base import SandboxConfig
    from agentgym.sandboxes.docker_backend import DockerSandbox

    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise ValueError("no command given: agentgym sandbox exec [options] -- CMD ...")
    config = SandboxConfig(
        image=args.image,
        memory=args.memory,
        network=args.network,
        cpus=args.cpus,
        pids_limit=args.pids_limit,
        default_timeout=args.timeout,
    )
    with DockerSandbox(config) as sb:
        # One word is a shell command line ("ls | wc -l"); several are an argv.
        r = sb.exec(cmd[0] if len(cmd) == 1 else cmd, timeout=args.timeout)
    d = r.to_dict()
    d.pop("truncated")
    print(json.dumps(d))
    return 0 if r.exit_code == 0 else 1


def _cmd_gc(args: argparse.Namespace) -> int:
    from agentgym.sandboxes.docker_backend import gc

    removed = gc(all=args.all, run_id=args.run_id)
    if args.json:
        print(json.dumps({"removed": removed}))
    else:
        print(
            f"removed {len(removed)} sandbox container(s)" + (": " if removed else ""),
            " ".join(removed),
        )
    return 0


def _cmd_ls(args: argparse.Namespace) -> int:
    from agentgym.sandboxes.docker_backend import LABEL, list_sandboxes

    rows = []
    for c in list_sandboxes():
        lab = c.labels or {}
        rows.append(
            {
                "name": c.name,
                "status": c.status,
                "owner_pid": lab.get(f"{LABEL}.owner_pid", ""),
                "run_id": lab.get(f"{LABEL}.run_id", ""),
                "image": (c.image.tags or [c.image.short_id])[0] if c.image else "",
            }
        )
    print(json.dumps(rows, indent=2))
    return 0


def _cmd_build_base(args: argparse.Namespace) -> int:
    from agentgym.sandboxes.images import BASE_PACKAGES, build_base_image

    pkgs = list(BASE_PACKAGES) + [p for p in (args.include or "").split(",") if p]
    t0 = time.perf_counter()
    tag = build_base_image(packages=pkgs, suite=args.suite, mirror=args.mirror, force=args.force)
    print(json.dumps({"image": tag, "seconds": round(time.perf_counter() - t0, 1)}))
    return 0


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def run_bench(
    *, execs: int = 50, resets: int = 10, episodes: int = 8, parallel: int = 4
) -> dict[str, Any]:
    """Exec latency, pool reset vs a fresh container, and SWE episode throughput."""
    import concurrent.futures

    from agentgym.sandboxes.base import SandboxConfig
    from agentgym.sandboxes.docker_backend import DockerSandbox
    from agentgym.sandboxes.images import ensure_base_image

    image = ensure_base_image()
    cfg = SandboxConfig(image=image)
    out: dict[str, Any] = {"image": image}
    with DockerSandbox(cfg) as sb:
        sb.exec("true")
        lat = []
        for _ in range(execs):
            t0 = time.perf_counter()
            sb.exec("true")
            lat.append(time.perf_counter() - t0)
        out["exec_latency_ms"] = {
            "p50": 1000 * _pct(lat, 0.5),
            "p95": 1000 * _pct(lat, 0.95),
            "n": execs,
        }
        sb.write_file("seed.txt", "x" * 1000)
        sb.exec("mkdir -p pkg && for i in $(seq 50); do echo $i > pkg/f$i.py; done")
        sb.snapshot()
        reset_t = []
        for _ in range(resets):
            sb.exec("rm -rf pkg; echo junk > junk.txt; sleep 100 &", timeout=5)
            reset_t.append(sb.reset())
    fresh_t = []
    for _ in range(resets):
        t0 = time.perf_counter()
        DockerSandbox(cfg).start().close()
        fresh_t.append(time.perf_counter() - t0)
    out["reset_s"] = {"median": statistics.median(reset_t), "n": resets}
    out["fresh_container_s"] = {
        "median": statistics.median(fresh_t),
        "n": resets,
        "what": "create + start + remove",
    }
    out["fresh_over_reset_ratio"] = statistics.median(fresh_t) / statistics.median(reset_t)

    import agentgym

    def worker(idx: int) -> int:
        done = 0
        env = agentgym.make("swe/Builtin-v0")
        try:
            for k in range(idx, episodes, parallel):
                env.reset(seed=k)
                while True:
                    _, _, te, tr, info = env.step(env.expert_action() or "submit")
                    if te or tr:
                        done += int(info.get("won", False))
                        break
        finally:
            env.close()
        return done

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(parallel) as ex:
        won = sum(ex.map(worker, range(parallel)))
    dt = time.perf_counter() - t0
    out["episodes"] = {
        "n": episodes,
        "parallel": parallel,
        "seconds": dt,
        "episodes_per_min": 60 * episodes / dt,
        "resolved": won,
        "what": "expert SWE episodes (start sandbox, apply gold patch, grade)",
    }
    return out


def _cmd_bench(args: argparse.Namespace) -> int:
    res = run_bench(
        execs=args.execs, resets=args.resets, episodes=args.episodes, parallel=args.parallel
    )
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        e = res["exec_latency_ms"]
        print(f"exec latency: p50 {e['p50']:.1f} ms, p95 {e['p95']:.1f} ms (n={e['n']})")
        print(
            f"reset {res['reset_s']['median'] * 1000:.0f} ms vs fresh container "
            f"{res['fresh_container_s']['median'] * 1000:.0f} ms "
            f"(ratio {res['fresh_over_reset_ratio']:.1f}x)"
        )
        ep = res["episodes"]
        print(
            f"episodes: {ep['n']} in {ep['seconds']:.1f}s with {ep['parallel']} sandboxes "
            f"({ep['episodes_per_min']:.1f}/min, resolved {ep['resolved']})"
        )
    return 0


def add_cli(sub: argparse._SubParsersAction, groups: dict[str, Any]) -> None:
    from agentgym.cli import subgroup

    sg = subgroup(sub, groups, "sandbox", "hardened Docker sandboxes")
    e = sg.add_parser("exec", help="run one command in a fresh sandbox; prints JSON")
    e.add_argument("--image", help="image (default: the base image, built when missing)")
    e.add_argument("--timeout", type=float, default=60.0, help="seconds (default 60)")
    e.add_argument("--memory", default="1g", help="memory limit incl. swap (default 1g)")
    e.add_argument("--network", default="none", choices=["none", "bridge"])
    e.add_argument("--cpus", type=float, default=1.0)
    e.add_argument("--pids-limit", type=int, default=256)
    e.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD ...")
    e.set_defaults(func=_cmd_exec)

    g = sg.add_parser("gc", help="remove sandboxes left behind by dead processes")
    g.add_argument("--all", action="store_true", help="remove every agentgym sandbox")
    g.add_argument("--run-id", help="remove the sandboxes of this run id")
    g.add_argument("--json", action="store_true")
    g.set_defaults(func=_cmd_gc)

    ls = sg.add_parser("ls", help="list agentgym sandboxes (JSON)")
    ls.set_defaults(func=_cmd_ls)

    b = sg.add_parser("build-base", help="build the base image offline (debootstrap)")
    b.add_argument("--suite", default="bookworm")
    b.add_argument("--mirror", help="Debian mirror URL (default: debootstrap's)")
    b.add_argument("--include", help="extra Debian packages, comma-separated")
    b.add_argument("--force", action="store_true", help="rebuild even if the tag exists")
    b.set_defaults(func=_cmd_build_base)

    bench = subgroup(sub, groups, "bench", "benchmarks")
    bs = bench.add_parser("sandbox", help="exec latency, reset vs fresh, episode throughput")
    bs.add_argument("--execs", type=int, default=50)
    bs.add_argument("--resets", type=int, default=10)
    bs.add_argument("--episodes", type=int, default=8)
    bs.add_argument("--parallel", type=int, default=4)
    bs.add_argument("--json", action="store_true")
    bs.set_defaults(func=_cmd_bench)


if __name__ == "__main__":  # pragma: no cover
    from agentgym.cli import main

    sys.exit(main(["sandbox", *sys.argv[1:]]))

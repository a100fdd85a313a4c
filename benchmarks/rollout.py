"""``agentgym bench rollout``: rollout throughput of each policy backend on the same episodes.

Every backend plays the same seeded episodes (same env, seeds, number of parallel envs) through
:func:`agentgym.rollout.rollout`, which asks the policy for all active envs' actions in ONE call
per turn. Backends:

* ``random``: no model; the env pool's own ceiling on env steps/s.
* ``hf-unbatched``: :class:`~agentgym.trainers.hf_policy.HFPolicy` called once per env per turn
  (one ``generate`` call per env): the baseline that batching is measured against.
* ``hf``: the same HFPolicy, one batched ``generate`` over all active envs per turn.
* ``vllm``: :class:`~agentgym.trainers.vllm_policy.VLLMPolicy` (one ``LLM.generate`` call per
  turn); listed with the reason when it cannot run here (not installed, no CUDA).

Machines are noisy, so the figure that matters is ``batched_speedup_vs_per_env``: ``hf`` over
``hf-unbatched`` env steps/s, measured back to back in one run with the same model. The default
temperature is 0 (greedy): batched and per-env decoding then produce the same replies, the two
backends play identical episodes (``same_episodes``) and the ratio compares equal work.

Without ``--model`` a tiny model (byte-level BPE on the env's text + a small random Qwen2) is
built in a temporary directory, as ``agentgym train`` does by default.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["BACKENDS", "PerEnvPolicy", "bench_rollout", "add_cli"]

#: Backends in the order they run (the per-env baseline right before the batched run).
BACKENDS = ("random", "hf-unbatched", "hf", "vllm")
DEFAULT_ENV = "textworld/Custom-w2-o3-q4-v0"


class PerEnvPolicy:
    """Wraps a policy so that every env gets its own ``act`` call (one generate call each)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = f"{inner.name}-per-env"
        self.needs_expert = inner.needs_expert
        self.calls = 0

    def act(self, contexts: Sequence[Any]) -> list[Any]:
        out = []
        for ctx in contexts:
            self.calls += 1
            out.extend(self.inner.act([ctx]))
        return out


class _Counting:
    """Counts a policy's ``act`` calls (= generate calls for the model backends)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.needs_expert = inner.needs_expert
        self.calls = 0

    def act(self, contexts: Sequence[Any]) -> list[Any]:
        self.calls += 1
        return self.inner.act(contexts)


def _common_prefix_len(seqs: Sequence[Sequence[int]]) -> int:
    if not seqs:
        return 0
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for k in range(n):
        t = first[k]
        if any(s[k] != t for s in seqs):
            return k
    return n


def _measure(
    pool: Any, policy: Any, *, episodes: int, seed: int, history_len: int
) -> dict[str, Any]:
    """Play ``episodes`` seeded episodes with ``policy``; return throughput figures."""
    from agentgym.rollout import rollout, summarize

    t0 = time.perf_counter()
    trajs = rollout(
        pool, policy, num_groups=episodes, seed=seed, history_len=history_len, run_id="bench"
    )
    seconds = time.perf_counter() - t0
    trajs.sort(key=lambda t: t.id)
    turns = [u for t in trajs for u in t.turns]
    tokens = [u.tokens for u in turns if u.tokens is not None]
    gen_tokens = sum(len(x.response_ids) for x in tokens)
    prompts = [list(x.prompt_ids) for x in tokens]
    policy_s = sum(u.policy_s or 0.0 for u in turns)
    digest = hashlib.sha1(
        json.dumps([[u.action for u in t.turns] for t in trajs]).encode()
    ).hexdigest()[:12]
    s = summarize(trajs)
    out: dict[str, Any] = {
        "available": True,
        "episodes": s.episodes,
        "env_steps": s.turns,
        "seconds": round(seconds, 3),
        "env_steps_per_s": round(s.turns / seconds, 2),
        "generated_tokens": gen_tokens,
        "generated_tokens_per_s": round(gen_tokens / seconds, 1),
        "policy_seconds": round(policy_s, 3),
        "policy_share": round(policy_s / seconds, 3),
        "success_rate": round(s.success_rate, 3),
        "episodes_digest": digest,
    }
    if prompts:
        out["prompt_tokens"] = sum(len(p) for p in prompts)
        out["mean_prompt_tokens"] = round(out["prompt_tokens"] / len(prompts), 1)
        # The prefix every prompt of the run shares (system prompt, ...): what a prefix cache
        # (vLLM's enable_prefix_caching) prefills once instead of once per prompt.
        out["shared_prefix_tokens"] = _common_prefix_len(prompts)
    calls = getattr(policy, "calls", None)
    if calls is not None:
        out["generate_calls"] = calls
    return out


def _model_info(model: Any) -> dict[str, Any]:
    cfg = model.config
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "hidden_size": cfg.hidden_size,
        "layers": cfg.num_hidden_layers,
        "vocab_size": cfg.vocab_size,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
    }


def bench_rollout(
    env_id: str = DEFAULT_ENV,
    *,
    backends: Sequence[str] = BACKENDS,
    episodes: int = 16,
    num_envs: int = 8,
    model: str | None = None,
    max_new_tokens: int = 16,
    temperature: float = 0.0,
    seed: int = 0,
    history_len: int = 2,
    pool_backend: str = "process",
    num_workers: int | None = None,
    device: str | None = None,
    dtype: str = "float32",
    env_kwargs: dict[str, Any] | None = None,
    tiny: dict[str, int] | None = None,
    work_dir: str | None = None,
    repeats: int = 1,
) -> dict[str, Any]:
    """Run every backend in ``backends`` on the same episodes; return the report (a dict).

    Args:
        model: a local HF model directory; ``None`` builds a tiny model (``tiny``: ``hidden``,
            ``layers``, ``vocab`` overrides) in ``work_dir`` (default: a temporary directory).
        pool_backend: the :class:`~agentgym.pool.EnvPool` backend shared by all policies.
        repeats: timed runs per backend, interleaved; each backend reports its median run.
    """
    import agentgym
    from agentgym.policies import RandomPolicy, TurnContext
    from agentgym.pool import EnvPool
    from agentgym.rollout import rollout
    from agentgym.trainers.vllm_policy import vllm_unavailable_reason

    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise ValueError(f"unknown backends {unknown}: choose from {', '.join(BACKENDS)}")
    if episodes < 1 or num_envs < 1 or repeats < 1:
        raise ValueError("episodes, num_envs and repeats must be >= 1")
    agentgym.load_plugins()
    env_kwargs = dict(env_kwargs or {})
    order = [b for b in BACKENDS if b in backends]
    report: dict[str, Any] = {
        "env": env_id,
        "episodes": episodes,
        "num_envs": num_envs,
        "pool_backend": pool_backend,
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "seed": seed,
        "repeats": repeats,
        "backends": {},
    }
    vllm_reason = vllm_unavailable_reason() if "vllm" in order else None
    needs_model = any(b.startswith("hf") for b in order) or ("vllm" in order and not vllm_reason)
    with tempfile.TemporaryDirectory(prefix="agentgym-bench-") as tmp:
        model_path = model
        if needs_model and model_path is None:
            from agentgym.trainers.tiny_model import collect_env_texts, init_model

            t = {"hidden": 64, "layers": 2, "vocab": 1024, **(tiny or {})}
            texts = collect_env_texts(
                [env_id], episodes=4, seed=seed, env_kwargs=env_kwargs, backend=pool_backend
            )
            model_path = str(
                init_model(
                    Path(work_dir or tmp) / "tiny_model",
                    texts,
                    vocab_size=t["vocab"],
                    hidden_size=t["hidden"],
                    num_layers=t["layers"],
                    seed=seed,
                )
            )
            report["model_source"] = "tiny (built for this run)"
        elif model_path is not None:
            report["model_source"] = model_path
        hf_model = tok = None
        if any(b.startswith("hf") for b in order):
            import torch

            from agentgym.trainers.hf_policy import load_model

            hf_model, tok = load_model(model_path, device=device, dtype=dtype)
            hf_model.eval()
            report["model"] = _model_info(hf_model)
            report["device"] = str(next(hf_model.parameters()).device)
            report["torch_threads"] = torch.get_num_threads()

        with EnvPool(
            env_id,
            num_envs=min(num_envs, episodes),
            backend=pool_backend,
            num_workers=num_workers,
            env_kwargs=env_kwargs,
        ) as pool:
            # One untimed pass over the same episodes first: workers load and cache their games
            # here, so the first timed backend does not pay for it.
            t0 = time.perf_counter()
            rollout(pool, RandomPolicy(seed), num_groups=episodes, seed=seed, run_id="warmup")
            report["pool_warmup_s"] = round(time.perf_counter() - t0, 3)
            obs, _ = pool.reset_many({0: (seed, None)})[0]
            warm_ctx = TurnContext(env_id=pool.spec.id, observation=obs)

            def make(name: str) -> Any:
                from agentgym.trainers.hf_policy import HFPolicy

                if name == "random":
                    return _Counting(RandomPolicy(seed))
                if name in ("hf", "hf-unbatched"):
                    hf = HFPolicy(
                        hf_model,
                        tok,
                        seed=seed,
                        max_new_tokens=max_new_tokens,
                        temperature=temperature,
                        history_len=history_len,
                        name=name,
                    )
                    return _Counting(hf) if name == "hf" else PerEnvPolicy(hf)
                from agentgym.trainers.vllm_policy import VLLMPolicy

                return _Counting(
                    VLLMPolicy(
                        model_path,
                        seed=seed,
                        max_new_tokens=max_new_tokens,
                        temperature=temperature,
                        history_len=history_len,
                        dtype=dtype,
                        gpu_memory_utilization=0.3,
                    )
                )

            runs: dict[str, list[dict[str, Any]]] = {}
            policies: dict[str, Any] = {}
            for name in order:
                if name == "vllm" and vllm_reason:
                    report["backends"][name] = {"available": False, "reason": vllm_reason}
                    continue
                policies[name] = make(name)
                policies[name].act([warm_ctx])  # first-call costs (allocation, ...) untimed
                runs[name] = []
            # Repeats interleave the backends so slow phases of a shared machine hit all of them.
            for _ in range(repeats):
                for name, policy in policies.items():
                    inner = policy.inner  # the same sampling stream in every repeat:
                    if hasattr(inner, "generator"):
                        inner.generator.manual_seed(seed)
                    elif hasattr(inner, "rng"):
                        inner.rng.seed(seed)
                    policy.calls = 0
                    runs[name].append(
                        _measure(
                            pool, policy, episodes=episodes, seed=seed, history_len=history_len
                        )
                    )
            for name, rs in runs.items():
                rs.sort(key=lambda r: r["seconds"])
                median = dict(rs[len(rs) // 2])
                if name == "random":
                    median.pop("generate_calls", None)
                if repeats > 1:
                    median["seconds_all"] = [r["seconds"] for r in rs]
                report["backends"][name] = median
    report["backends"] = {n: report["backends"][n] for n in order}
    b = report["backends"]
    if b.get("hf", {}).get("available") and b.get("hf-unbatched", {}).get("available"):
        hf, per_env = b["hf"], b["hf-unbatched"]
        report["batched_speedup_vs_per_env"] = round(
            hf["env_steps_per_s"] / per_env["env_steps_per_s"], 3
        )
        report["same_episodes"] = hf["episodes_digest"] == per_env["episodes_digest"]
    if b.get("vllm", {}).get("available") and b.get("hf", {}).get("available"):
        report["vllm_speedup_vs_hf"] = round(
            b["vllm"]["generated_tokens_per_s"] / b["hf"]["generated_tokens_per_s"], 3
        )
    return report


def _print_report(r: dict[str, Any]) -> None:
    head = {k: v for k, v in r.items() if k != "backends"}
    for k, v in head.items():
        print(f"{k:28s} {v}")
    cols = ["env_steps_per_s", "generated_tokens_per_s", "generate_calls", "policy_share"]
    print()
    print(f"{'BACKEND':14s} " + " ".join(f"{c.upper():>24s}" for c in cols))
    for name, row in r["backends"].items():
        if not row.get("available"):
            print(f"{name:14s} unavailable: {row['reason']}")
            continue
        print(f"{name:14s} " + " ".join(f"{row.get(c, ''):>24}" for c in cols))


def cmd_bench_rollout(args: argparse.Namespace) -> int:
    from agentgym.benchmarks.cli import print_report
    from agentgym.cli import parse_kv

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    report = bench_rollout(
        args.env,
        backends=[b.strip() for b in args.backends.split(",") if b.strip()],
        episodes=args.episodes,
        num_envs=args.num_envs,
        model=args.model,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        seed=args.seed,
        history_len=args.history_len,
        pool_backend=args.pool_backend,
        num_workers=args.num_workers,
        device=args.device,
        dtype=args.dtype,
        env_kwargs=parse_kv(args.env_kwarg),
        tiny={"hidden": args.tiny_hidden, "layers": args.tiny_layers, "vocab": args.tiny_vocab},
        repeats=args.repeats,
    )
    return print_report(report, args.json, _print_report)


def add_cli(sub: Any, groups: dict[str, Any]) -> None:
    from agentgym.benchmarks.cli import bench_parsers

    bench = bench_parsers(sub, groups)
    p = bench.add_parser(
        "rollout",
        help="rollout env steps/s and generated tokens/s per policy backend, same episodes",
    )
    p.add_argument("--env", default=DEFAULT_ENV, help=f"env id (default {DEFAULT_ENV})")
    p.add_argument("--episodes", type=int, default=16, help="episodes per backend")
    p.add_argument("--num-envs", type=int, default=8, help="parallel envs (policy batch size)")
    p.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        help=f"comma-separated, from {','.join(BACKENDS)} (default: all)",
    )
    p.add_argument("--model", help="local HF model directory (default: build a tiny model)")
    p.add_argument("--max-new-tokens", type=int, default=16, help="reply budget per turn")
    p.add_argument(
        "--temperature", type=float, default=0.0, help="0 (default): greedy, identical episodes"
    )
    p.add_argument("--repeats", type=int, default=1, help="timed runs per backend (median kept)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--history-len", type=int, default=2)
    p.add_argument("--pool-backend", default="process", choices=["process", "sync", "ray"])
    p.add_argument("--num-workers", type=int, default=None, help="env workers (default: CPUs)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--tiny-hidden", type=int, default=64, help="tiny model width")
    p.add_argument("--tiny-layers", type=int, default=2, help="tiny model layers")
    p.add_argument("--tiny-vocab", type=int, default=1024, help="tiny model vocabulary")
    p.add_argument("--env-kwarg", action="append", default=[], metavar="K=V")
    p.add_argument("--json", action="store_true", help="print the report as one JSON line")
    p.set_defaults(func=cmd_bench_rollout)

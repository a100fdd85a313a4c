"""Distributed training on CPU: 2 processes (gloo) started by torchrun, checked against 1 process.

* The PPO update: ranks holding complementary parts of a fixed batch of samples (split at a
  trajectory boundary, unequal sizes) end with the parameters, loss terms and AdamW state that one
  process holding the whole batch reaches, under DDP and under FSDP2, for both loss aggregations,
  with micro-batch accumulation, several minibatches and epochs, KL, entropy and EPO terms. The
  checkpointed state (gathered under FSDP2) reloads into fresh wrapped models, and a second update
  again matches the single process's second update.
* ``agentgym train`` under torchrun: rollouts split by group across ranks, rank 0 writes the
  metrics, checkpoints and report once.

The worker half of the first test is this file run as a script by ``torch.distributed.run``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import random
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

HERE = Path(__file__).resolve().parent
TOL = 1e-5
#: (name, PPOConfig overrides, seeded EPO history or None)
CASES: list[tuple[str, dict[str, Any], dict[int, float] | None]] = [
    (
        "token-mean",
        dict(
            agg="token-mean",
            ppo_epochs=2,
            minibatch_size=6,
            micro_batch_size=2,
            kl_coef=0.05,
            entropy_coef=0.01,
        ),
        None,
    ),
    (
        "seq-mean-epo",
        dict(
            agg="seq-mean-token-mean",
            ppo_epochs=1,
            minibatch_size=8,
            micro_batch_size=3,
            max_grad_norm=0.05,
            epo_entropy_coef=0.02,
            epo_smooth_coef=0.5,
        ),
        {0: 2.0, 1: 3.0, 2: 9.0},
    ),
]
#: turns of each trajectory; rank 0 holds the first three trajectories, rank 1 the rest.
TURNS = (3, 1, 4, 2, 2, 3)
SPLIT = sum(TURNS[:3])


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }


def _torchrun(args: list[str], *, cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    return subprocess.run(
        [*cmd, *args], env=_env(), cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


# ------------------------------------------------------------------------------------------------
# shared by the test process and the workers
# ------------------------------------------------------------------------------------------------
def _ppo_cfg(over: dict[str, Any]) -> Any:
    from agentgym.trainers.losses import PPOConfig

    return PPOConfig(**{"bf16": False, "max_grad_norm": 1.0, **over})


def _history(seed: dict[int, float] | None) -> Any:
    if seed is None:
        return None
    from agentgym.trainers.epo import EntropyHistory

    h = EntropyHistory()
    h.update(seed)
    return h


def _state(model: Any) -> dict[str, Any]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _load(model_dir: str) -> tuple[Any, Any]:
    from agentgym.trainers.hf_policy import load_model

    return load_model(model_dir, device="cpu")


# ------------------------------------------------------------------------------------------------
# the worker (run by torch.distributed.run)
# ------------------------------------------------------------------------------------------------
def _worker(data_path: str, out_dir: str) -> None:
    from agentgym.trainers.distributed import init_distributed, unwrap
    from agentgym.trainers.losses import make_optimizer, ppo_update

    torch.set_num_threads(1)
    data = torch.load(data_path, weights_only=False)
    base = init_distributed("ddp")
    assert base.enabled and base.backend == "gloo", base
    local = data["samples"][:SPLIT] if base.rank == 0 else data["samples"][SPLIT:]
    results: dict[str, Any] = {}
    for mode in ("ddp", "fsdp"):
        ctx = dataclasses.replace(base, mode=mode, owns_group=False)
        for name, over, hist_seed in CASES:
            cfg = _ppo_cfg(over)
            ref = _load(data["model"])[0].eval() if cfg.kl_coef else None
            hist = _history(hist_seed)
            rng = random.Random(1)
            model, tok = _load(data["model"])
            wrapped = ctx.wrap(model)
            opt = make_optimizer(wrapped, lr=data["lr"])
            kw = dict(pad_id=tok.pad_token_id, ref_model=ref, rng=rng, entropy_history=hist)
            s1 = ppo_update(wrapped, opt, local, cfg, dist=ctx, **kw)
            # checkpoint as the trainer does: full weights + index-keyed AdamW state on rank 0
            m1 = ctx.model_state_dict(wrapped)
            m1 = _state(unwrap(wrapped)) if m1 is None else m1
            o1 = ctx.optimizer_state_dict(wrapped, opt)
            ck = Path(out_dir) / f"ck-{mode}-{name}.pt"
            if ctx.is_main:
                torch.save({"model": m1, "optimizer": o1}, ck)
            ctx.barrier()
            saved = torch.load(ck, weights_only=False)
            # resume: fresh model from the checkpoint, wrapped, optimizer state loaded
            model2, _ = _load(data["model"])
            model2.load_state_dict(saved["model"])
            wrapped2 = ctx.wrap(model2)
            opt2 = make_optimizer(wrapped2, lr=data["lr"])
            ctx.load_optimizer_state_dict(wrapped2, opt2, saved["optimizer"])
            s2 = ppo_update(wrapped2, opt2, local, cfg, dist=ctx, **kw)
            m2 = ctx.model_state_dict(wrapped2)
            m2 = _state(unwrap(wrapped2)) if m2 is None else m2
            results[f"{mode}/{name}"] = {
                "stats1": s1,
                "stats2": s2,
                "params1": m1,
                "optimizer1": o1,
                "params2": m2,
                "history": dict(hist.mean) if hist is not None else None,
            }
    if base.is_main:
        torch.save(results, Path(out_dir) / "results.pt")
    base.close()


# ------------------------------------------------------------------------------------------------
# 1-process reference vs 2 processes
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    from agentgym.trainers.tiny_model import init_model

    colors = ("red", "blue", "green")
    texts = [
        f"You are in room {k}. A sign says: take the {c} door. <action>open {c} door</action>"
        for k in range(3)
        for c in colors
    ] * 4
    out = tmp_path_factory.mktemp("tiny")
    return str(init_model(out, texts, vocab_size=400, hidden_size=32, num_layers=2, seed=0))


def _samples(model_dir: str) -> list[Any]:
    """Fixed synthetic turns: random prompts/replies, behaviour log-probs = the model's own plus
    noise (ratios near 1, some clipped), random advantages; 6 trajectories of 1-4 turns."""
    from agentgym.trainers.losses import Sample, collate, token_logprobs

    model, tok = _load(model_dir)
    rnd = random.Random(0)
    vocab = model.config.vocab_size
    out = []
    for t, n in enumerate(TURNS):
        for k in range(n):
            p = [rnd.randrange(5, vocab) for _ in range(rnd.randint(3, 9))]
            r = [rnd.randrange(5, vocab) for _ in range(rnd.randint(1, 6))]
            probe = Sample(tuple(p), tuple(r), (0.0,) * len(r), 0.0)
            b = collate([probe], tok.pad_token_id)
            with torch.no_grad():
                lp, _ = token_logprobs(model, b["input_ids"], b["attention_mask"], b["targets"])
            own = lp[0][b["mask"][0].bool()].tolist()
            old = [x + rnd.gauss(0.0, 0.3) for x in own]
            out.append(Sample(tuple(p), tuple(r), tuple(old), rnd.gauss(0.0, 1.0), f"t{t}", k))
    return out


@pytest.fixture(scope="module")
def runs(tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The single-process reference of every case, and the 2-process results (one torchrun)."""
    from agentgym.trainers.losses import make_optimizer, ppo_update

    torch.set_num_threads(1)
    work = tmp_path_factory.mktemp("dist")
    samples = _samples(tiny_model)
    lr = 1e-3
    torch.save({"samples": samples, "model": tiny_model, "lr": lr}, work / "data.pt")
    t0 = time.perf_counter()
    res = _torchrun([str(Path(__file__)), str(work / "data.pt"), str(work)], cwd=work, timeout=300)
    wall = time.perf_counter() - t0
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-5000:])
    two = torch.load(work / "results.pt", weights_only=False)
    one: dict[str, Any] = {}
    for name, over, hist_seed in CASES:
        cfg = _ppo_cfg(over)
        ref = _load(tiny_model)[0].eval() if cfg.kl_coef else None
        hist = _history(hist_seed)
        model, tok = _load(tiny_model)
        opt = make_optimizer(model, lr=lr)
        kw = dict(
            pad_id=tok.pad_token_id, ref_model=ref, rng=random.Random(1), entropy_history=hist
        )
        s1 = ppo_update(model, opt, samples, cfg, **kw)
        p1, o1 = _state(model), copy.deepcopy(opt.state_dict())
        s2 = ppo_update(model, opt, samples, cfg, **kw)
        one[name] = {
            "stats1": s1,
            "stats2": s2,
            "params1": p1,
            "optimizer1": o1,
            "params2": _state(model),
            "history": dict(hist.mean) if hist is not None else None,
            "initial": _state(_load(tiny_model)[0]),
        }
    return {"one": one, "two": two, "wall_s": wall}


def _max_diff(a: dict[str, Any], b: dict[str, Any]) -> float:
    assert set(a) <= set(b), sorted(set(a) - set(b))
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
@pytest.mark.parametrize("case", [c[0] for c in CASES])
def test_two_ranks_update_like_one_process(runs: dict[str, Any], mode: str, case: str) -> None:
    one, two = runs["one"][case], runs["two"][f"{mode}/{case}"]
    # the update moved the weights (a no-op update would match trivially)
    assert _max_diff(one["initial"], one["params1"]) > 100 * TOL
    for step in ("1", "2"):
        d = _max_diff(one[f"params{step}"], two[f"params{step}"])
        print(f"{mode} {case} update {step}: max |param diff| = {d:.2e}")
        assert d < TOL, (step, d)
        for key, v in one[f"stats{step}"].items():
            assert two[f"stats{step}"][key] == pytest.approx(v, abs=TOL), (step, key)
    s = one["stats1"]
    print(f"{mode} {case}: loss 1 proc {s['loss']:.8f}, 2 procs {two['stats1']['loss']:.8f}")
    assert s["optimizer_steps"] == two["stats1"]["optimizer_steps"] >= 2
    if case == "seq-mean-epo":  # clipping was active and EPO's history got every rank's turns
        assert s["grad_norm"] > 0.05 and s["epo_smooth_penalty"] > 0
        assert one["history"].keys() == two["history"].keys()
        for k, v in one["history"].items():
            assert two["history"][k] == pytest.approx(v, abs=TOL)
    else:
        assert s["kl"] > 0 and s["clipfrac"] > 0
    # the checkpointed AdamW state (gathered from shards under FSDP2) is the single process's
    o1, o2 = one["optimizer1"], two["optimizer1"]
    assert sorted(o1["state"]) == sorted(o2["state"])
    for i, st in o1["state"].items():
        for name, t in st.items():
            assert float((t.float() - o2["state"][i][name].float()).abs().max()) < TOL, (i, name)
    assert [len(g["params"]) for g in o1["param_groups"]] == [
        len(g["params"]) for g in o2["param_groups"]
    ]


def test_shard_range_covers_each_item_once() -> None:
    from agentgym.trainers.distributed import init_distributed, shard_range

    for n in range(0, 9):
        for world in range(1, 5):
            blocks = [shard_range(n, r, world) for r in range(world)]
            assert [i for a, b in blocks for i in range(a, b)] == list(range(n))
            assert max(b - a for a, b in blocks) - min(b - a for a, b in blocks) <= 1
    with pytest.raises(ValueError, match="outside a world"):
        shard_range(4, 2, 2)
    with pytest.raises(ValueError, match="use one of ddp, fsdp"):
        init_distributed("zero3")
    ctx = init_distributed("fsdp")  # no torchrun variables: one process, no-op collectives
    assert not ctx.enabled and ctx.all_reduce([1.0, 2.0]) == [1.0, 2.0]


# ------------------------------------------------------------------------------------------------
# agentgym train under torchrun
# ------------------------------------------------------------------------------------------------
def _train_cli(out: Path, *extra: str) -> float:
    flags = shlex.split(
        "--env test/Signs-v0 --env-modules test_train --num-envs 1 --backend sync "
        "--tiny-hidden-size 32 --tiny-vocab-size 320 --corpus-episodes 4 --sft-episodes 4 "
        "--sft-epochs 2 --steps 2 --groups-per-step 3 --group-size 2 --max-new-tokens 6 "
        "--eval-episodes 3 --eval-every 1 --save-every 1 --minibatch-size 8 --micro-batch-size 2 "
        "--algo grpo --entropy-coef 0.01 --kl-coef 0.05 --lr 0.001 --json --no-progress "
        "--no-tensorboard"
    )
    args = ["-m", "agentgym.cli", "train", "--out", str(out), *flags, *extra]
    args += ["--env-kwargs", '{"rooms": 1}']
    t0 = time.perf_counter()
    res = _torchrun(args, cwd=out.parent, timeout=300)
    wall = time.perf_counter() - t0
    assert res.returncode == 0, res.stderr[-5000:]
    return wall


def _records(out: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_agentgym_train_under_torchrun_then_resume_with_fsdp(tmp_path: Path) -> None:
    import shutil

    from safetensors.torch import load_file

    import agentgym

    out = tmp_path / "run"
    wall = _train_cli(out, "--dist", "ddp")
    print(f"agentgym train --dist ddp, torchrun 2 processes (gloo), 2 steps: {wall:.1f} s")
    report = json.loads((out / "report.json").read_text())
    assert report["algo"] == "grpo" and report["steps"] == 2
    # rank 0 wrote each metrics line once: one train record per step, one final evaluation
    recs = _records(out)
    train = [r for r in recs if "train/success" in r]
    assert [r["step"] for r in train] == [1, 2]
    assert sum(1 for r in recs if r.get("final")) == 1
    assert len({json.dumps(r, sort_keys=True) for r in recs}) == len(recs)
    for r in train:  # the record covers both ranks' episodes
        assert r["train/episodes"] == 3 * 2 and r["train/samples"] >= 6
        assert r["loss/optimizer_steps"] >= 1 and r["loss/loss"] != 0.0
        assert "eval/success" in r or r["step"] == 2
    assert train[1]["loss/kl"] > 0  # the policy moved away from the SFT model
    # each group was played whole by one rank: rank 0 groups 0-1, rank 1 group 2
    trajs = agentgym.read_trajectories(out / "trajectories.jsonl")
    assert len(trajs) == 2 * 3 * 2 and len({t.id for t in trajs}) == len(trajs)
    for step in (1, 2):
        base = (step - 1) * 3  # seed 0: group g of step s has seed (s - 1) * 3 + g
        by_rank = {
            r: sorted(t.seed for t in trajs if t.id.startswith(f"s{step}-r{r}-")) for r in (0, 1)
        }
        assert by_rank == {0: [base, base, base + 1, base + 1], 1: [base + 2, base + 2]}
    ck = torch.load(out / "checkpoints" / "step_2" / "state.pt", weights_only=False)
    assert ck["step"] == 2 and len(ck["rng_by_rank"]) == 2 and ck["optimizer"]["state"]
    for name in ("model/model.safetensors", "sft_model/config.json", "config.json", "curve.png"):
        assert (out / name).exists(), name

    # interrupted after step 1, resumed under FSDP2: step 2 is the uninterrupted run's step 2
    part = tmp_path / "part"
    shutil.copytree(out, part)
    for name in ("checkpoints/step_2", "model"):
        shutil.rmtree(part / name)
    wall = _train_cli(part, "--dist", "fsdp", "--resume")
    print(f"agentgym train --dist fsdp --resume from step 1, torchrun 2 processes: {wall:.1f} s")
    resumed = json.loads((part / "report.json").read_text())
    assert resumed["resumed_from"] == 1 and resumed["config"]["dist"] == "fsdp"
    a = [r for r in _records(out) if r.get("step") == 2 and "loss/loss" in r]
    b = [r for r in _records(part) if r.get("step") == 2 and "loss/loss" in r]
    assert len(a) == len(b) == 1
    for key in ("loss/loss", "loss/kl", "loss/entropy", "train/reply_tokens", "train/return"):
        print(f"step 2 {key}: ddp {a[0][key]!r}, fsdp resumed {b[0][key]!r}")
        assert b[0][key] == pytest.approx(a[0][key], rel=1e-5, abs=1e-8), key
    wa = load_file(out / "model" / "model.safetensors")
    wb = load_file(part / "model" / "model.safetensors")
    diff = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    print(f"final weights, ddp vs fsdp-resumed: max |diff| = {diff:.2e}")
    assert wa.keys() == wb.keys() and diff < 1e-4


if __name__ == "__main__":  # the worker of test_two_ranks_update_like_one_process
    _worker(sys.argv[1], sys.argv[2])

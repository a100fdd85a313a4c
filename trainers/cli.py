"""CLI of the trainers: ``agentgym train``, ``agentgym sft``, ``agentgym replay`` and
``agentgym model init|list|prepare``.

The flags of ``train`` and ``sft`` are generated from the fields of
:class:`agentgym.trainers.train.TrainConfig` (``seed`` -> ``--seed``, ``group_size`` ->
``--group-size``, booleans get ``--x/--no-x``). Precedence: field defaults < ``--config FILE``
(YAML/TOML/JSON) < command-line flags. With ``--resume``, the run's saved ``config.json`` takes the
place of the defaults. Heavy imports (torch, transformers) happen inside the handlers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

__all__ = ["add_cli", "add_config_flags", "config_from_args"]


def _optional(base: type) -> Any:
    def parse(text: str) -> Any:
        if text.lower() in ("none", "null", ""):
            return None
        return base(text)

    parse.__name__ = base.__name__
    return parse


def add_config_flags(parser: argparse.ArgumentParser, *, skip: tuple[str, ...] = ()) -> None:
    """One flag per TrainConfig field; defaults are SUPPRESSed so only given flags appear."""
    from agentgym.trainers.train import TrainConfig, field_type

    parser.add_argument("--config", help="YAML/TOML/JSON file of settings (flags override it)")
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        base, optional = field_type(f)
        help_text = f"{f.metadata.get('help', '')} (default: {getattr(defaults, f.name)!r})"
        kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        if base is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif base is dict:
            parser.add_argument(flag, type=json.loads, metavar="JSON", **kw)
        elif base is list:
            parser.add_argument(flag, action="append", metavar="VALUE", **kw)
        else:
            parser.add_argument(
                flag, type=_optional(base) if optional else base, metavar=f.name.upper(), **kw
            )


def config_from_args(args: argparse.Namespace, **forced: Any) -> Any:
    """Build the TrainConfig: defaults (or a resumed run's config) < --config file < flags."""
    from agentgym.trainers.train import TrainConfig, load_config_file

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    given = {k: v for k, v in vars(args).items() if k in names}
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        values.update(load_config_file(args.config))
    values.update(given)
    if values.get("resume") and values.get("out"):
        saved = Path(values["out"]) / "config.json"
        if saved.exists():
            values = {**json.loads(saved.read_text()), **values}
    values.update(forced)
    return TrainConfig.from_dict(values)


def _summary(report: dict[str, Any]) -> str:
    def pct(x: Any) -> str:
        return "n/a" if x is None else f"{x:.1%}"

    return (
        f"{report['env']} | {report['algo']} | held-out success: initial "
        f"{pct(report['success_initial'])}, after SFT {pct(report['success_sft'])}, final "
        f"{pct(report['success_final'])} | {report['wall_time_s']:.0f}s | "
        f"{report['config']['out']}"
    )


def _print_report(report: dict[str, Any], as_json: bool) -> None:
    # Under torchrun every rank returns the report; one line is enough.
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(report) if as_json else _summary(report))


def cmd_train(args: argparse.Namespace) -> int:
    from agentgym.trainers.train import train

    report = train(config_from_args(args))
    _print_report(report, args.json)
    return 0


def cmd_sft(args: argparse.Namespace) -> int:
    from agentgym.trainers.train import train

    report = train(config_from_args(args, steps=0))
    _print_report(report, args.json)
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from agentgym.trainers.replay import format_table, replay

    result = replay(args.run, args.step, rtol=args.rtol, atol=args.atol, device=args.device)
    print(format_table(result))
    return 0 if result.ok else 1


def cmd_model_init(args: argparse.Namespace) -> int:
    import agentgym
    from agentgym.trainers.tiny_model import collect_env_texts, init_model

    agentgym.load_plugins()
    envs = args.env or ["textworld/Custom-w1-o3-q2-v0"]
    texts = collect_env_texts(envs, episodes=args.episodes, seed=args.seed)
    path = init_model(
        args.out,
        texts,
        vocab_size=args.vocab_size,
        hidden_size=args.hidden_size,
        num_layers=args.layers,
        seed=args.seed,
    )
    print(f"tiny model ({len(texts)} corpus texts from {', '.join(envs)}) written to {path}")
    return 0


def cmd_model_list(args: argparse.Namespace) -> int:
    from agentgym.models import model_rows

    rows = model_rows()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        if r["ready"]:
            state = "ready"
        elif r["installed"]:
            state = "converted on first use"
        else:
            state = f"not installed: {r['install']}"
        print(f"{r['name']:<24} {state:<24} {r['path']}")
        print(f"{'':<24} {r['description']}")
    return 0


def cmd_model_prepare(args: argparse.Namespace) -> int:
    from agentgym.models import BUILTIN_MODELS, builtin_model, convert_builtin

    model = builtin_model(args.name)
    if model is None:
        raise ValueError(
            f"{args.name!r} is not a built-in model: choose one of {', '.join(BUILTIN_MODELS)}"
        )
    print(convert_builtin(model, force=args.force))
    return 0


def add_cli(sub: argparse._SubParsersAction, groups: dict[str, Any]) -> None:
    from agentgym.cli import subgroup

    t = sub.add_parser(
        "train",
        help="SFT warm start + RL (GiGPO/GRPO/RLOO) on an env; writes a run folder",
        description="Train an LLM agent. With no arguments: a tiny model built from TextWorld "
        "text, SFT on expert games, then GiGPO on the train games, evaluated on held-out games.",
    )
    add_config_flags(t)
    t.add_argument("--json", action="store_true", help="print the report as JSON")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("sft", help="supervised fine-tuning on expert trajectories only")
    add_config_flags(s, skip=("steps",))
    s.add_argument("--json", action="store_true", help="print the report as JSON")
    s.set_defaults(func=cmd_sft)

    r = sub.add_parser(
        "replay",
        help="recompute one RL step's loss and gradient norm from a run's records and compare "
        "with the logged values (needs --save-every 1)",
        description="Recompute step N of a training run from trajectories.jsonl and the checkpoint "
        "saved after step N-1, and compare its loss/* statistics with metrics.jsonl. Exit 0 when "
        "every one matches within tolerance, 1 otherwise.",
    )
    r.add_argument("run", help="the run folder (`agentgym train --out`)")
    r.add_argument("--step", type=int, required=True, help="the RL step to replay (>= 2)")
    r.add_argument("--rtol", type=float, default=1e-5, help="relative tolerance (default: 1e-5)")
    r.add_argument("--atol", type=float, default=1e-7, help="absolute tolerance (default: 1e-7)")
    r.add_argument("--device", help="torch device (default: the run's)")
    r.set_defaults(func=cmd_replay)

    model = subgroup(sub, groups, "model", "build and inspect models")
    m = model.add_parser("init", help="build a tiny HF causal LM + tokenizer from env text")
    m.add_argument("--out", required=True, help="model directory to write")
    m.add_argument("--env", action="append", help="env id(s) whose text trains the tokenizer")
    m.add_argument("--episodes", type=int, default=16, help="episodes per policy per env")
    m.add_argument("--vocab-size", type=int, default=1024)
    m.add_argument("--hidden-size", type=int, default=128)
    m.add_argument("--layers", type=int, default=2)
    m.add_argument("--seed", type=int, default=0)
    m.set_defaults(func=cmd_model_init)

    ls = model.add_parser(
        "list", help="built-in pretrained models: where they live, whether they are ready"
    )
    ls.add_argument("--json", action="store_true", help="print the rows as JSON")
    ls.set_defaults(func=cmd_model_list)
    pr = model.add_parser(
        "prepare",
        help="convert a built-in model into its cached HF folder now (else: on first use)",
    )
    pr.add_argument("name", help="a built-in model name (see `agentgym model list`)")
    pr.add_argument("--force", action="store_true", help="convert again even if ready")
    pr.set_defaults(func=cmd_model_prepare)

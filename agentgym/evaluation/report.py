"""``agentgym report DIR``: one self-contained HTML page for an eval or training run folder.

The page needs no server and fetches nothing (no CDN, no fonts): CSS, JavaScript, plots (PNG,
base64) and screenshots are inlined. It shows

* the summary table with 95 % confidence intervals (and the per-task-type table when known);
* plots: success rate by task type with Wilson error bars, the histogram of episode lengths
  (won vs. not won), and training curves when ``DIR/metrics.jsonl`` exists;
* every trajectory, browsable turn by turn: the observation, the model's reply (reasoning and
  action), reward, validity, the credit assigned to the turn when known (an ``agentgym credit``
  file ``{"id", "advantages"}`` in DIR, or ``info["advantage"]``), and screenshots of GUI envs.

Trajectories are embedded as JSON and a turn list is built only when its episode is opened, so a
report of thousands of episodes stays quick to load.

Inputs found in DIR: ``episodes.jsonl`` (from ``agentgym eval``) or ``trajectories.jsonl`` (from
training) or any other trajectory JSONL; ``config.json``; ``metrics.jsonl``; advantage files.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agentgym.evaluation.harness import (
    CONFIG_FILE,
    EPISODES_FILE,
    EvalConfig,
    load_episodes,
    summarize,
    task_type_of,
)
from agentgym.trajectory import iter_records

__all__ = ["render_report", "find_trajectory_file", "load_advantages"]

_TRAJ_CANDIDATES = (EPISODES_FILE, "trajectories.jsonl")
_SKIP = {"metrics.jsonl"}


def _first_record(path: Path) -> dict[str, Any] | None:
    try:
        return next(iter_records(path), None)
    except (OSError, UnicodeDecodeError):
        return None


def find_trajectory_file(run_dir: Path) -> Path | None:
    """``episodes.jsonl``, else ``trajectories.jsonl``, else the first JSONL of trajectory records."""
    for name in _TRAJ_CANDIDATES:
        if (run_dir / name).exists():
            return run_dir / name
    for p in sorted(run_dir.glob("*.jsonl")):
        if p.name in _SKIP:
            continue
        rec = _first_record(p)
        if rec and "turns" in rec and "id" in rec:
            return p
    return None


def load_advantages(run_dir: Path) -> dict[str, list[float]]:
    """Per-turn advantages by episode id from every ``{"id", "advantages"}`` JSONL in ``run_dir``."""
    out: dict[str, list[float]] = {}
    for p in sorted(run_dir.glob("*.jsonl")):
        if p.name in _SKIP:
            continue
        rec = _first_record(p)
        if not rec or "advantages" not in rec or "turns" in rec:
            continue
        for r in iter_records(p):
            if isinstance(r.get("id"), str) and isinstance(r.get("advantages"), list):
                out[r["id"]] = [float(x) for x in r["advantages"]]
    return out


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _plots(
    summary: Mapping[str, Any], records: Sequence[Mapping[str, Any]], metrics: list[dict[str, Any]]
) -> list[tuple[str, str]]:
    """``[(title, data_uri)]``; empty when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    plots = []
    by_type = summary.get("by_task_type") or {}
    if by_type:
        names = list(by_type)
        vals = [by_type[k]["success_rate"]["value"] for k in names]
        lows = [v - (by_type[k]["success_rate"]["low"] or v) for k, v in zip(names, vals)]
        highs = [(by_type[k]["success_rate"]["high"] or v) - v for k, v in zip(names, vals)]
        fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(names) + 2), 3.2))
        ax.bar(names, vals, yerr=[lows, highs], capsize=4, color="#4c78a8")
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("success rate")
        ax.set_title("Success by task type (95% Wilson CI)")
        ax.tick_params(axis="x", rotation=30)
        plots.append(("Success by task type", _png(fig)))
    if records:
        won = [len(r.get("turns") or []) for r in records if r.get("won")]
        lost = [len(r.get("turns") or []) for r in records if not r.get("won")]
        top = max(won + lost + [1])
        bins = [x - 0.5 for x in range(0, top + 2)]
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.hist(
            [won, lost],
            bins=bins,
            stacked=True,
            label=["won", "not won"],
            color=["#59a14f", "#e15759"],
        )
        ax.set_xlabel("turns")
        ax.set_ylabel("episodes")
        ax.set_title("Episode length")
        ax.legend()
        plots.append(("Turns histogram", _png(fig)))
    keys: list[str] = []
    for m in metrics:
        for k, v in m.items():
            if k in keys or k == "step" or isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            if any(w in k.lower() for w in ("reward", "success", "return", "loss")):
                keys.append(k)
    if keys:
        keys = keys[:6]
        cols = min(3, len(keys))
        rows = -(-len(keys) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
        for ax, k in zip(axes.flat, keys):
            pts = [
                (m.get("step", i), m[k])
                for i, m in enumerate(metrics)
                if isinstance(m.get(k), (int, float)) and not isinstance(m.get(k), bool)
            ]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="." if len(pts) < 50 else None)
            ax.set_title(k, fontsize=10)
            ax.set_xlabel("step")
        for ax in list(axes.flat)[len(keys) :]:
            ax.axis("off")
        fig.tight_layout()
        plots.append(("Training curves", _png(fig)))
    return plots


def _fmt_est(d: Mapping[str, Any] | None, percent: bool) -> tuple[str, str]:
    if not d or not d.get("n"):
        return "n/a", ""
    v, lo, hi = d["value"], d.get("low"), d.get("high")
    if percent:
        val = f"{100 * v:.1f}%"
        ci = f"[{100 * lo:.1f}%, {100 * hi:.1f}%]" if lo is not None and hi is not None else ""
    else:
        val = f"{v:.3f}"
        ci = f"[{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else ""
    return val, ci


def _summary_html(s: Mapping[str, Any]) -> str:
    e = html.escape
    rows = [
        ("Success rate", s.get("success_rate"), True),
        ("Mean reward (return)", s.get("mean_reward"), False),
        ("Mean turns", s.get("mean_turns"), False),
        ("Invalid-action rate (per turn)", s.get("invalid_action_rate"), True),
        ("Timeout rate", s.get("timeout_rate"), True),
    ]
    if s.get("reply_cut_rate"):  # summaries written before it have none
        rows.append(("Replies cut by the token budget (per turn)", s["reply_cut_rate"], True))
    rows += [(f"{k} (per group)", v, True) for k, v in s.items() if k.startswith("pass@")]
    rows += [(f"{k} (env metric)", v, False) for k, v in (s.get("env_metrics") or {}).items()]
    out = [
        '<table class="summary"><thead><tr><th>metric</th><th>value</th><th>95% CI</th>'
        "<th>n</th></tr></thead><tbody>"
    ]
    for name, d, pct in rows:
        val, ci = _fmt_est(d, pct)
        n = d.get("n", 0) if d else 0
        out.append(f"<tr><td>{e(name)}</td><td>{val}</td><td>{ci}</td><td>{n}</td></tr>")
    out.append("</tbody></table>")
    by_type = s.get("by_task_type") or {}
    if by_type:
        out.append(
            '<h3>By task type</h3><table class="summary"><thead><tr><th>task type</th>'
            "<th>episodes</th><th>success [95% CI]</th><th>mean reward</th>"
            "<th>mean turns</th><th>invalid</th></tr></thead><tbody>"
        )
        for tt, m in by_type.items():
            sv, sc = _fmt_est(m["success_rate"], True)
            rv, _ = _fmt_est(m["mean_reward"], False)
            tv, _ = _fmt_est(m["mean_turns"], False)
            iv, _ = _fmt_est(m["invalid_action_rate"], True)
            out.append(
                f"<tr><td>{e(tt)}</td><td>{m['episodes']}</td><td>{sv} {sc}</td>"
                f"<td>{rv}</td><td>{tv}</td><td>{iv}</td></tr>"
            )
        out.append("</tbody></table>")
    out.append(
        f'<p class="note">{e(str((s.get("intervals") or {}).get("note", "")))}. '
        "Rates: Wilson score interval; means: Student-t interval.</p>"
    )
    return "".join(out)


def _status(r: Mapping[str, Any]) -> str:
    meta = r.get("meta") or {}
    if meta.get("timed_out"):
        return "timeout"
    if r.get("crashed"):
        return "crashed"
    if r.get("won"):
        return "won"
    return "truncated" if r.get("truncated") else "lost"


def _order_key(r: Mapping[str, Any]) -> tuple[Any, ...]:
    # "run-g12-m3" sorts by (run, 12, 3) so groups appear in order, members together.
    rid = str(r.get("id", ""))
    head, _, tail = rid.rpartition("-g")
    g, _, m = tail.partition("-m")
    if head and g.isdigit() and m.isdigit():
        return (head, int(g), int(m), rid)
    return (rid, 0, 0, rid)


def _image_uri(run_dir: Path, rel: Any) -> str | None:
    if not isinstance(rel, str):
        return None
    p = (run_dir / rel).resolve()
    if run_dir.resolve() not in p.parents or not p.is_file():
        return None
    return "data:image/png;base64," + base64.b64encode(p.read_bytes()).decode()


def _episode_json(
    r: Mapping[str, Any], run_dir: Path, advantages: Mapping[str, list[float]]
) -> dict[str, Any]:
    adv = advantages.get(str(r.get("id")))
    turns = []
    for k, t in enumerate(r.get("turns") or []):
        info = t.get("info") or {}
        a = info.get("advantage")
        if adv is not None and k < len(adv):
            a = adv[k]
        turns.append(
            {
                "o": t.get("observation", ""),
                "a": t.get("action", ""),
                "r": t.get("reward", 0.0),
                "v": bool(t.get("valid", True)),
                "resp": info.get("response"),
                "fmt": info.get("format_ok", True),
                "adv": a if isinstance(a, (int, float)) else None,
                "img": _image_uri(run_dir, info.get("screenshot")),
                "to": bool(info.get("timed_out")),
            }
        )
    meta = r.get("meta") or {}
    return {
        "id": r.get("id"),
        "task": r.get("task", ""),
        "type": task_type_of(r) or "",
        "text": meta.get("task_text", ""),
        "status": _status(r),
        "ret": r.get("return", sum(t["r"] for t in turns)),
        "n": len(turns),
        "final": meta.get("final_observation", ""),
        "final_img": _image_uri(run_dir, meta.get("final_screenshot")),
        "secs": meta.get("seconds"),
        "turns": turns,
    }


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#222;
background:#fafafa}
header{background:#263238;color:#fff;padding:14px 24px}
header h1{margin:0;font-size:20px} header p{margin:4px 0 0;color:#cfd8dc;font-size:13px}
main{padding:16px 24px;max-width:1200px}
section{background:#fff;border:1px solid #e0e0e0;border-radius:6px;padding:12px 16px;margin:0 0 16px}
h2{font-size:17px;margin:4px 0 10px} h3{font-size:15px}
table.summary{border-collapse:collapse;font-size:14px}
table.summary td,table.summary th{border:1px solid #ddd;padding:4px 10px;text-align:left}
table.summary th{background:#f0f0f0}
.note{color:#666;font-size:12px}
.plots img{max-width:100%;margin:6px 12px 6px 0;border:1px solid #eee}
.controls{margin-bottom:10px;display:flex;gap:10px;align-items:center;font-size:14px}
.controls input{padding:4px 8px;width:260px}
details.episode{border:1px solid #ddd;border-radius:4px;margin:4px 0;background:#fff}
details.episode>summary{cursor:pointer;padding:6px 10px;font-size:14px;list-style:none}
details.episode>summary::before{content:'\\25B6';display:inline-block;margin-right:6px;
font-size:10px;transition:transform .1s}
details.episode[open]>summary::before{transform:rotate(90deg)}
.badge{display:inline-block;border-radius:3px;padding:0 6px;font-size:12px;color:#fff;margin-right:6px}
.won{background:#2e7d32}.lost{background:#c62828}.timeout{background:#ef6c00}
.crashed{background:#6a1b9a}.truncated{background:#757575}
.eid{font-family:monospace;margin-right:8px}.muted{color:#777;font-size:12px}
ol.turns{margin:0;padding:6px 12px 10px 36px}
li.turn{margin:8px 0;padding:6px 8px;border-left:3px solid #90a4ae;background:#fcfcfc}
li.turn.invalid{border-left-color:#e53935}
pre{white-space:pre-wrap;word-break:break-word;margin:4px 0;font-size:12.5px;
font-family:ui-monospace,Menlo,Consolas,monospace}
.obs{background:#f5f5f5;padding:6px}.resp{background:#fffde7;padding:6px}
.act{font-family:monospace;font-weight:600;color:#1565c0}
.tmeta{font-size:12px;color:#555}
.shot{max-width:480px;border:1px solid #ccc;display:block;margin:4px 0}
.taskline{padding:4px 12px;font-size:13px;color:#333}
"""

_JS = r"""
(function(){
  var data = JSON.parse(document.getElementById('episode-data').textContent);
  var list = document.getElementById('episodes');
  function el(tag, cls, text){var e=document.createElement(tag); if(cls){e.className=cls;}
    if(text!==undefined && text!==null){e.textContent=String(text);} return e;}
  function fmt(x){return (typeof x==='number')?(Math.round(x*1000)/1000).toString():'';}
  function renderTurns(ep, box){
    if(ep.text){box.appendChild(el('div','taskline','Task: '+ep.text));}
    var ol=el('ol','turns');
    ep.turns.forEach(function(t,k){
      var li=el('li','turn'+(t.v?'':' invalid'));
      var m='turn '+(k+1)+' \u00b7 reward '+fmt(t.r)+(t.v?'':' \u00b7 INVALID')+
        (t.fmt===false?' \u00b7 no <action> tag':'')+(t.adv!==null?' \u00b7 advantage '+fmt(t.adv):'')+
        (t.to?' \u00b7 timed out (not executed)':'');
      li.appendChild(el('div','tmeta',m));
      if(t.img){var im=el('img','shot'); im.src=t.img; im.alt='screenshot before turn '+(k+1);
        li.appendChild(im);}
      li.appendChild(el('div','muted','observation'));
      li.appendChild(el('pre','obs',t.o));
      if(t.resp){li.appendChild(el('div','muted','model reply (reasoning + action)'));
        li.appendChild(el('pre','resp',t.resp));}
      var a=el('div','act'); a.textContent='> '+t.a; li.appendChild(a);
      ol.appendChild(li);
    });
    box.appendChild(ol);
    if(ep.final || ep.final_img){
      box.appendChild(el('div','taskline','Final observation:'));
      if(ep.final_img){var fi=el('img','shot'); fi.src=ep.final_img; fi.alt='final screenshot';
        box.appendChild(fi);}
      if(ep.final){box.appendChild(el('pre','obs',ep.final));}
    }
  }
  data.forEach(function(ep, idx){
    var d=el('details','episode'); d.dataset.status=ep.status;
    d.dataset.search=(ep.id+' '+ep.task+' '+ep.type+' '+ep.text).toLowerCase();
    d.id='ep-'+idx;
    var s=el('summary');
    s.appendChild(el('span','badge '+ep.status, ep.status));
    s.appendChild(el('span','eid', ep.id));
    s.appendChild(el('span',null, (ep.type?'['+ep.type+'] ':'')+ep.task));
    s.appendChild(el('span','muted', ' \u00b7 '+ep.n+' turns \u00b7 return '+fmt(ep.ret)+
      (typeof ep.secs==='number'?' \u00b7 '+fmt(ep.secs)+' s':'')));
    d.appendChild(s);
    var box=el('div','body'); d.appendChild(box);
    d.addEventListener('toggle', function(){
      if(d.open && !box.dataset.done){renderTurns(ep, box); box.dataset.done='1';}
    });
    list.appendChild(d);
  });
  var q=document.getElementById('filter'), st=document.getElementById('status'),
      cnt=document.getElementById('shown');
  function apply(){
    var text=q.value.toLowerCase(), want=st.value, n=0;
    Array.prototype.forEach.call(list.children, function(d){
      var ok=(!want||d.dataset.status===want)&&(!text||d.dataset.search.indexOf(text)>=0);
      d.style.display=ok?'':'none'; if(ok){n++;}
    });
    cnt.textContent=n+' of '+data.length+' episodes';
  }
  q.addEventListener('input', apply); st.addEventListener('change', apply); apply();
})();
"""


def _script_json(obj: Any) -> str:
    # Inside <script>, "</" could close the element: escape it (and U+2028/9 for old parsers).
    s = json.dumps(obj, ensure_ascii=False)
    return s.replace("</", "<\\/").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def render_report(
    run_dir: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    max_episodes: int = 2000,
    title: str | None = None,
) -> Path:
    """Write the HTML report of ``run_dir`` (default ``run_dir/report.html``); return its path."""
    d = Path(run_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"{d} is not a folder; pass an eval or training run folder")
    config: dict[str, Any] = {}
    if (d / CONFIG_FILE).exists():
        try:
            config = json.loads((d / CONFIG_FILE).read_text())
        except json.JSONDecodeError:
            config = {}
    traj_file = find_trajectory_file(d)
    records: list[dict[str, Any]] = []
    if traj_file is not None and traj_file.name == EPISODES_FILE:
        records = load_episodes(d)
        if config.get("run_id") and config.get("env"):
            try:
                planned = set(EvalConfig.from_dict(config).episode_ids())
                records = [r for r in records if r["id"] in planned]
            except (TypeError, ValueError):
                pass
    elif traj_file is not None:
        records = list(iter_records(traj_file))
    metrics: list[dict[str, Any]] = []
    if (d / "metrics.jsonl").exists():
        metrics = [m for m in iter_records(d / "metrics.jsonl") if isinstance(m, dict)]
    if not records and not metrics:
        raise FileNotFoundError(
            f"{d} has no trajectories (episodes.jsonl / trajectories.jsonl) and no metrics.jsonl; "
            "run `agentgym eval --out DIR` first"
        )
    eval_config = config if "episodes" in config and "run_id" in config else {}
    summary = summarize(records, config=eval_config) if records else {}
    advantages = load_advantages(d)
    plots = _plots(summary, records, metrics)
    shown = sorted(records, key=_order_key)[:max_episodes]
    episodes = [_episode_json(r, d, advantages) for r in shown]

    e = html.escape
    env = summary.get("env") or config.get("env") or ""
    policy = summary.get("policy") or config.get("policy") or ""
    head = title or f"agentgym report: {env or d.name}"
    sub = " \u00b7 ".join(
        x
        for x in [
            f"policy {policy}" if policy else "",
            f"run {config['run_id']}" if config.get("run_id") else "",
            f"{len(records)} episodes" if records else "",
            f"source {traj_file.name}" if traj_file else "",
        ]
        if x
    )
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{e(head)}</title><style>{_CSS}</style></head><body>",
        f"<header><h1>{e(head)}</h1><p>{e(sub)}</p></header><main>",
    ]
    if summary:
        parts.append(f"<section id='summary'><h2>Summary</h2>{_summary_html(summary)}</section>")
    if plots:
        parts.append("<section id='plots' class='plots'><h2>Plots</h2>")
        for name, uri in plots:
            parts.append(f"<img src='{uri}' alt='{e(name)}' title='{e(name)}'>")
        parts.append("</section>")
    if records:
        more = (
            f" (the first {len(shown)} of {len(records)}; raise --max-episodes to see all)"
            if len(shown) < len(records)
            else ""
        )
        parts.append(
            "<section id='trajectories'><h2>Trajectories" + e(more) + "</h2>"
            "<div class='controls'><input id='filter' type='search' "
            "placeholder='filter by id, task, type'>"
            "<select id='status'><option value=''>all</option><option>won</option>"
            "<option>lost</option><option>truncated</option><option>timeout</option>"
            "<option>crashed</option></select><span id='shown' class='muted'></span></div>"
            "<div id='episodes'></div></section>"
            f"<script id='episode-data' type='application/json'>{_script_json(episodes)}</script>"
            f"<script>{_JS}</script>"
        )
    parts.append("</main></body></html>")
    path = Path(out) if out else d / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    from agentgym.utils import atomic_write

    with atomic_write(path) as f:
        f.write("".join(parts))
    path.chmod(0o644)  # a report is meant to be shared (the temporary file was 0600)
    return path

"""Tests of ``agentgym report``: a self-contained HTML page, checked in a real headless Chromium."""

from __future__ import annotations

import json
import re
from pathlib import Path

import eval_toy_env
import pytest

from agentgym.cli import main
from agentgym.environments.webshop.gui import launch_chromium
from agentgym.evaluation.harness import EvalConfig, load_episodes, run_eval
from agentgym.evaluation.report import render_report

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("report") / "run"
    run_eval(
        EvalConfig(
            env=eval_toy_env.ENV_ID,
            policy="random",
            episodes=6,
            group_size=2,
            parallel=3,
            env_kwargs={"images": True},
        ),
        d,
        progress=False,
    )
    recs = load_episodes(d)
    # an `agentgym credit` file: one advantage per turn, recognisable values
    with open(d / "adv.jsonl", "w") as f:
        for k, r in enumerate(recs):
            adv = [round(0.125 * (k + 1) + j, 3) for j in range(len(r["turns"]))]
            f.write(json.dumps({"id": r["id"], "advantages": adv}) + "\n")
    with open(d / "metrics.jsonl", "w") as f:
        for step in range(5):
            f.write(
                json.dumps({"step": step, "rollout/reward": step / 4, "loss": 1 - step / 5}) + "\n"
            )
    return d


def test_report_is_self_contained(run_dir: Path, capsys) -> None:
    assert main(["report", str(run_dir)]) == 0
    path = Path(capsys.readouterr().out.strip())
    html = path.read_text()
    assert path == run_dir / "report.html"
    # nothing is fetched: no external src/href, images are data URIs
    assert not re.search(r"""(src|href)\s*=\s*['"]?(https?:)?//""", html)
    assert "<link" not in html
    assert html.count("data:image/png;base64,") >= 3  # plots + screenshots
    assert "Success rate" in html and "By task type" in html
    for r in load_episodes(run_dir):
        assert r["id"] in html


def test_report_without_eval_config(tmp_path: Path) -> None:
    # a training-run folder: trajectories.jsonl + metrics.jsonl, no config.json
    src = tmp_path / "src"
    run_eval(
        EvalConfig(env=eval_toy_env.ENV_ID, policy="expert", episodes=2, parallel=2),
        src,
        progress=False,
    )
    d = tmp_path / "train"
    d.mkdir()
    (d / "trajectories.jsonl").write_text((src / "episodes.jsonl").read_text())
    (d / "metrics.jsonl").write_text(json.dumps({"step": 1, "reward": 0.5}) + "\n")
    html = render_report(d).read_text()
    assert "Training curves" in html and "100.0%" in html
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="agentgym eval"):
        render_report(tmp_path / "empty")


@pytest.mark.browser
def test_report_in_headless_chromium(run_dir: Path, tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip("no /usr/bin/chromium (run scripts/install_browser.sh)")
    sync_api = pytest.importorskip("playwright.sync_api")
    path = render_report(run_dir, tmp_path / "r.html")
    recs = sorted(
        load_episodes(run_dir), key=lambda r: (int(r["id"].split("-g")[1].split("-m")[0]), r["id"])
    )
    first = recs[0]
    errors: list[str] = []
    requests: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = launch_chromium(p, CHROMIUM)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(path.as_uri())
            assert page.locator("details.episode").count() == len(recs)
            assert page.inner_text("#shown") == f"{len(recs)} of {len(recs)} episodes"
            assert page.locator("li.turn").count() == 0  # turns are built when opened
            page.locator("details.episode summary").first.click()
            turns = page.locator("details.episode").first.locator("li.turn")
            turns.first.wait_for(state="visible", timeout=5000)  # "toggle" fires asynchronously
            assert turns.count() == len(first["turns"])
            assert turns.first.is_visible()
            text = page.locator("details.episode").first.inner_text()
            assert first["turns"][0]["observation"] in text
            assert f"> {first['turns'][0]['action']}" in text
            assert "advantage" in text
            assert page.locator("details.episode").first.locator("img.shot").count() >= 1
            # filtering by status hides the others
            status = "won" if not first["won"] else "lost"
            page.select_option("#status", status)
            n = sum(
                1
                for r in recs
                if (r["won"] and status == "won")
                or (not r["won"] and not r["truncated"] and status == "lost")
            )
            assert page.inner_text("#shown") == f"{n} of {len(recs)} episodes"
            page.select_option("#status", "")
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert errors == []
    assert all(u.startswith(("file:", "data:")) for u in requests), requests
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000

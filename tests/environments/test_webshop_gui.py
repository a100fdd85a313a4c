"""WebShop GUI: the real site in headless Chromium (playwright), screenshots, a11y text, leaks."""

from __future__ import annotations

import contextlib
import gc
import html
import os
import struct
import threading
import urllib.request

import pytest

pytest.importorskip("tantivy")
pytest.importorskip("playwright")
psutil = pytest.importorskip("psutil")

import agentgym  # noqa: E402

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not os.path.exists("/usr/bin/chromium"),
        reason="needs /usr/bin/chromium (scripts/install_browser.sh)",
    ),
]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory):
    with pytest.MonkeyPatch.context() as mp_:
        mp_.setenv("AGENTGYM_CACHE", str(tmp_path_factory.mktemp("agentgym-cache")))
        mp_.delenv("WEBSHOP_DATA", raising=False)
        yield


@pytest.fixture(scope="module")
def gui():
    env = agentgym.make("webshop/GUITest-v0", viewport=(800, 600))
    yield env
    env.close()


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_search_click_buy_in_a_real_browser(gui) -> None:
    obs, info = gui.reset(seed=0)
    assert _png_size(obs.image) == (800, 600)
    assert obs.task in obs.text  # the instruction banner is in the accessibility tree
    assert 'textbox "Search"' in obs.text and "/url:" not in obs.text
    assert obs.admissible_actions == ("search[<your query>]",)
    goal = gui.unwrapped.goal
    target = gui.unwrapped.shop.product(goal.asin)
    seen_title = False
    for _ in range(15):
        obs, r, term, trunc, info = gui.step(gui.expert_action())
        assert info["valid"]
        assert _png_size(obs.image) == (800, 600) and len(obs.image) > 2000
        seen_title |= target.title in obs.text
        if term or trunc:
            break
    assert term and info["won"] and r == pytest.approx(1.0)
    assert seen_title  # the item page's title reached the accessibility rendering
    assert "Thank you for shopping with us!" in obs.text
    assert info["reward_info"]["n_attributes"] == len(goal.attributes)


def test_gui_matches_text_env_anchors_and_actions(gui) -> None:
    text = agentgym.make("webshop/TextTest-v0")
    og, _ = gui.reset(seed=5)
    ot, _ = text.reset(seed=5)
    assert og.anchor == ot.anchor and og.task == ot.task
    for _ in range(3):
        a = text.expert_action()
        og, *_ = gui.step(a)
        ot, *_ = text.step(a)
        assert og.anchor == ot.anchor
        assert set(og.admissible_actions) == set(ot.admissible_actions)
    text.close()


def test_invalid_actions_and_coordinate_clicks(gui) -> None:
    obs, _ = gui.reset(seed=1)
    for bad in ("click[buy now]", "hello", "search[  ]", "click[5000,10]"):
        o, r, term, _, info = gui.step(bad)
        assert not info["valid"] and not term and o.anchor == obs.anchor
        assert o.text.split("\n")[0]  # the reason comes first
    o, *_ = gui.step("search[yoga mat]")
    assert "|results|" in o.anchor
    o2, _, _, _, info = gui.step("search[dog bed]")
    assert not info["valid"] and "back to search" in o2.text
    # click the first product link by its pixel position
    page = gui.unwrapped._page
    box = page.locator(".product-link").first.bounding_box()
    name = page.locator(".product-link").first.inner_text()
    o3, _, _, _, info = gui.step(f"click[{box['x'] + 5:.0f},{box['y'] + box['height'] / 2:.0f}]")
    assert info["valid"] and f"item={name}" in o3.anchor
    # a click on empty space is valid and changes nothing
    o4, _, _, _, info = gui.step("click[790,590]")
    assert info["valid"] and o4.anchor == o3.anchor


def test_server_serves_pages_for_people(gui) -> None:
    base = gui.unwrapped.server.base_url
    with urllib.request.urlopen(base + "/?task=2") as resp:
        page = resp.read().decode()
        assert resp.url.startswith(base + "/s/")
    assert 'id="search_input"' in page
    assert html.escape(gui.unwrapped.tasks[2].instruction_text) in page
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(base + "/s/nosuchsession/")


def test_check_env_gui() -> None:
    agentgym.check_env(agentgym.make("webshop/GUITest-v0", screenshot=False))


def _children() -> set[int]:
    return {k.pid for k in psutil.Process().children(recursive=True)}


def _footprint() -> tuple[int, float]:
    me = psutil.Process()
    kids = me.children(recursive=True)
    rss = me.memory_info().rss
    for k in kids:
        with contextlib.suppress(psutil.Error):
            rss += k.memory_info().rss
    return len(kids), rss / 2**20


def _soak(n: int, recycle_every: int) -> dict[str, float]:
    gc.collect()
    kids0, rss0 = _footprint()
    before = _children()
    env = agentgym.make("webshop/GUITest-v0", viewport=(800, 600), recycle_every=recycle_every)
    env.reset(seed=0)
    launched = _footprint()[0]
    ours = _children() - before  # the driver and browser this env started
    assert launched > kids0, "the soak env should start its own browser"
    won = 0
    samples = []
    for ep in range(n):
        env.reset(seed=ep)
        while True:
            _, _, term, trunc, info = env.step(env.expert_action())
            if term or trunc:
                break
        won += info["won"]
        if ep in (0, n // 2, n - 1):
            samples.append(_footprint())
    sessions = env.unwrapped.app.n_sessions()
    env.close()
    env.close()
    gc.collect()
    kids1, rss1 = _footprint()
    # Processes other tests left behind may exit meanwhile; only this env's own must be gone.
    survivors = sorted(ours & _children())
    stats = {
        "episodes": n,
        "won": won,
        "children_launched": launched,
        "children_before": kids0,
        "children_after_close": kids1,
        "children_during": [k for k, _ in samples],
        "rss_mb_during": [round(r) for _, r in samples],
        "rss_mb_before": round(rss0),
        "rss_mb_after_close": round(rss1),
        "live_sessions": sessions,
        "own_survivors": survivors,
    }
    print("webshop GUI soak:", stats)
    assert won >= 0.95 * n
    assert ours, "the soak env should start its own browser"
    assert not survivors, f"browser or driver processes {survivors} outlived close()"
    assert kids1 <= kids0
    # a replaced context's renderer may exit a moment late: allow a little slack
    assert max(stats["children_during"]) <= launched + 2, "process count grew across episodes"
    assert sessions <= 1  # each finished episode's session is dropped
    first, last = samples[0][1], samples[-1][1]
    assert last - first < 150 + 0.5 * n, f"memory grew from {first:.0f} MB to {last:.0f} MB"
    return stats


def _soak_in_own_thread(n: int, recycle_every: int) -> dict[str, float]:
    # A fresh thread gets its own playwright driver and browser (the module's `gui` env holds
    # this thread's), so the soak sees the whole lifecycle: launch, n episodes, shutdown.
    out: dict[str, object] = {}

    def run() -> None:
        try:
            out["stats"] = _soak(n, recycle_every)
        except BaseException as e:  # re-raised in the test thread
            out["error"] = e

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]  # type: ignore[misc]
    return out["stats"]  # type: ignore[return-value]


def test_soak_20_episodes_no_leaks() -> None:
    _soak_in_own_thread(20, recycle_every=5)  # exercises context replacement too


@pytest.mark.slow
def test_soak_200_episodes_no_leaks() -> None:
    _soak_in_own_thread(200, recycle_every=50)  # the env's default

"""``WebShopGUIEnv``: the shop as a real website, driven in headless Chromium (``webshop/GUI-v0``).

The env owns a :class:`~.server.ShopServer` (WSGI app on ``127.0.0.1``, a random port, in a
thread) and holds a reference to the thread's playwright driver and Chromium browser (the
system ``/usr/bin/chromium``; ``playwright install`` is never needed). Playwright's sync API
allows one driver per thread, so GUI envs of one thread share that browser; the last one to
close shuts it down. An env holds one browser context and page at a time: a reset navigates
to a new server session (page state lives in the URL and the session, so nothing carries
over), and every ``recycle_every`` episodes the context is replaced to bound renderer memory.
``close()`` releases everything and is idempotent.

Observation:

* ``image``: a PNG screenshot of the viewport;
* ``text``: the page's accessibility tree (playwright's ARIA snapshot, link URLs removed);
* ``admissible_actions``: ``search[<your query>]`` on the search page, else ``click[<name>]``
  for every element of the page that has a ``data-click`` name, read from the DOM;
* ``anchor``: the same key as the text env, decoded from the page URL.

Actions: ``search[query]`` types into the search box and submits; ``click[name]`` clicks the
element named ``name``; ``click[x,y]`` clicks the viewport at pixel ``(x, y)`` (whatever is
there; a click on nothing is valid and changes nothing). Buying ends the episode with the
reward the server computed for the purchase.
"""

from __future__ import annotations

import contextlib
import re
import threading
from typing import Any

from agentgym.core import Env, Observation
from agentgym.environments.webshop.data import Goal
from agentgym.environments.webshop.env import GoalPicker, open_shop
from agentgym.environments.webshop.shop import SEARCH_TEMPLATE, ShopState, parse_action

__all__ = ["WebShopGUIEnv", "CHROMIUM_ARGS", "launch_chromium", "aria_text"]

CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)
_XY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*,\s*(\d+(?:\.\d+)?)\s*$")
_URL_LINE = re.compile(r"^\s*- /url: .*$\n?", re.MULTILINE)


def launch_chromium(playwright: Any, executable_path: str = "/usr/bin/chromium") -> Any:
    """Launch the system Chromium with the flags this platform needs."""
    import os

    if not os.path.exists(executable_path):
        raise FileNotFoundError(
            f"Chromium not found at {executable_path!r}: run scripts/install_browser.sh "
            "(apt-get install chromium) or pass executable_path= to the env"
        )
    return playwright.chromium.launch(
        executable_path=executable_path, headless=True, args=list(CHROMIUM_ARGS)
    )


class _BrowserHost:
    """One playwright driver and Chromium per thread, shared by the GUI envs of that thread.

    Playwright's sync API allows one driver per thread (it runs an event loop there), so env
    copies in one thread share the browser and each holds its own context. Reference counted:
    the last :meth:`release` closes the browser and stops the driver.
    """

    _hosts: dict[tuple[int, str], _BrowserHost] = {}
    _lock = threading.Lock()

    def __init__(self, key: tuple[int, str]) -> None:
        self.key = key
        self.refs = 0
        self.pw: Any = None
        self.browser: Any = None

    @classmethod
    def acquire(cls, executable_path: str) -> _BrowserHost:
        key = (threading.get_ident(), executable_path)
        with cls._lock:
            host = cls._hosts.get(key)
            if host is None:
                host = cls._hosts[key] = _BrowserHost(key)
            host.refs += 1
            return host

    def get_browser(self) -> Any:
        if self.browser is not None and self.browser.is_connected():
            return self.browser
        self._shutdown()
        from playwright.sync_api import sync_playwright

        self.pw = sync_playwright().start()
        try:
            self.browser = launch_chromium(self.pw, self.key[1])
        except BaseException:
            self._shutdown()
            raise
        return self.browser

    def _shutdown(self) -> None:
        browser, self.browser = self.browser, None
        pw, self.pw = self.pw, None
        if browser is not None:
            with contextlib.suppress(Exception):  # already gone
                browser.close()
        if pw is not None:
            with contextlib.suppress(Exception):
                pw.stop()

    def release(self) -> None:
        with self._lock:
            self.refs -= 1
            last = self.refs <= 0
            if last:
                self._hosts.pop(self.key, None)
        if last:
            self._shutdown()


class WebShopGUIEnv(Env):
    """WebShop in a real browser. See the module docstring.

    Args:
        split, data_dir, catalog_seed, num_products, human_goals: as :class:`.env.WebShopTextEnv`.
        viewport: browser viewport ``(width, height)`` in pixels.
        screenshot: attach a PNG screenshot to every observation.
        executable_path: the Chromium binary.
        timeout_ms: playwright's time limit per browser operation.
        nav_wait_ms: how long a ``click[x,y]`` waits for a page load it may have started.
        recycle_every: episodes per browser context. Between them a reset only navigates to a
            new session (the whole page state lives in the URL and the server session, so no
            state carries over); a fresh context every N episodes bounds renderer memory.
            ``1`` gives every episode a fresh context.
    """

    metadata = {"render_modes": ["rgb_png", "text"]}

    def __init__(
        self,
        split: str = "train",
        data_dir: str | None = None,
        catalog_seed: int = 0,
        num_products: int | None = None,
        human_goals: bool = True,
        viewport: tuple[int, int] = (1024, 768),
        screenshot: bool = True,
        executable_path: str = "/usr/bin/chromium",
        timeout_ms: int = 15_000,
        nav_wait_ms: int = 1_000,
        recycle_every: int = 50,
    ) -> None:
        from agentgym.environments.webshop.server import ShopApp, ShopServer

        self.shop = open_shop(
            data_dir, seed=catalog_seed, num_products=num_products, human_goals=human_goals
        )
        self.picker = GoalPicker(self.shop.catalog, split)
        self.viewport = (int(viewport[0]), int(viewport[1]))
        self.screenshot = screenshot
        self.executable_path = executable_path
        self.timeout_ms = timeout_ms
        self.nav_wait_ms = nav_wait_ms
        if recycle_every < 1:
            raise ValueError(f"recycle_every must be >= 1, got {recycle_every}")
        self.recycle_every = recycle_every
        self._episodes_in_context = 0
        self.goal: Goal | None = None
        self.state = ShopState()
        self._sid: str | None = None
        self._closed = False
        self._host: _BrowserHost | None = None
        self._context: Any = None
        self._page: Any = None
        self.app = ShopApp(self.shop, self.picker.goals)
        self.server = ShopServer(self.app)

    @property
    def tasks(self) -> tuple[Goal, ...]:
        return self.picker.goals

    # -- browser lifecycle -----------------------------------------------------------------
    def _ensure_browser(self) -> Any:
        if self._host is None:
            self._host = _BrowserHost.acquire(self.executable_path)
        return self._host.get_browser()

    def _close_context(self) -> None:
        ctx, self._context, self._page = self._context, None, None
        if ctx is not None:
            with contextlib.suppress(Exception):  # the browser may already be gone
                ctx.close()
        if self._sid is not None:
            self.app.end_session(self._sid)
            self._sid = None

    def _close_browser(self) -> None:
        self._close_context()
        host, self._host = self._host, None
        if host is not None:
            host.release()

    # -- observations ----------------------------------------------------------------------
    def _page_state(self) -> ShopState:
        import urllib.parse

        u = urllib.parse.urlsplit(self._page.url)
        parsed = self.app.parse_path(u.path, u.query)
        return parsed[1] if parsed is not None else self.state

    def _clickables(self) -> list[str]:
        names = self._page.eval_on_selector_all(
            "[data-click]", "els => els.map(e => e.dataset.click)"
        )
        return [n for n in names if n != "search"]

    def _obs(self, prefix: str = "") -> Observation:
        assert self.goal is not None
        page = self._page
        text = aria_text(page.locator("body").aria_snapshot())
        has_search = page.locator("#search_input").count() > 0
        actions = (
            (SEARCH_TEMPLATE,) if has_search else tuple(f"click[{c}]" for c in self._clickables())
        )
        image = page.screenshot(type="png") if self.screenshot else None
        return Observation(
            text=f"{prefix}\n\n{text}" if prefix else text,
            task=self.goal.instruction_text,
            admissible_actions=actions,
            anchor=self.state.anchor(self.goal.goal_id),
            image=image,
        )

    # -- API -------------------------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Observation, dict[str, Any]]:
        if self._closed:
            raise RuntimeError("this WebShopGUIEnv is closed; make a new one")
        i, self.goal = self.picker.pick(seed, options)
        browser = self._ensure_browser()
        if self._sid is not None:
            self.app.end_session(self._sid)
            self._sid = None
        if self._context is None or self._episodes_in_context >= self.recycle_every:
            self._close_context()
            self._context = browser.new_context(
                viewport={"width": self.viewport[0], "height": self.viewport[1]},
                device_scale_factor=1,
            )
            self._context.set_default_timeout(self.timeout_ms)
            self._page = self._context.new_page()
            self._episodes_in_context = 0
        else:
            self._context.clear_cookies()  # the shop sets none; cheap insurance
        self._episodes_in_context += 1
        self._sid = self.app.new_session(self.goal)
        self._page.goto(f"{self.server.base_url}/s/{self._sid}/", wait_until="load")
        self.state = ShopState()
        task_id = self.picker.task_id(i, self.goal)
        return self._obs(), {
            "task_id": task_id,
            "goal_id": self.goal.goal_id,
            "url": self._page.url,
        }

    def _navigate(self, do: Any) -> None:
        with self._page.expect_navigation(wait_until="load"):
            do()

    def step(self, action: str) -> tuple[Observation, float, bool, bool, dict[str, Any]]:
        if self.goal is None or self._page is None:
            raise RuntimeError("call reset() before step()")
        info: dict[str, Any] = {"won": False, "score": 0.0, "valid": True}
        parsed = parse_action(action)
        page = self._page
        error = None
        if parsed is None:
            error = f"Invalid action {action!r}: actions are search[query], click[element] or click[x,y]."
        elif parsed[0] == "search":
            query = parsed[1]
            if page.locator("#search_input").count() == 0:
                error = "There is no search box on this page: click[back to search] first."
            elif query.strip().lower() == "<your query>":
                error = (
                    "<your query> is a placeholder: write the words to search for, "
                    "e.g. search[red running shoes]."
                )
            elif not self.shop.index.normalize(query):
                error = "Empty search: write a query with words, e.g. search[red shoes]."
            else:
                page.fill("#search_input", query)
                self._navigate(lambda: page.press("#search_input", "Enter"))
        else:
            arg = parsed[1]
            xy = _XY.match(arg)
            if xy is not None:
                x, y = float(xy.group(1)), float(xy.group(2))
                if not (0 <= x < self.viewport[0] and 0 <= y < self.viewport[1]):
                    error = f"Point ({x:g}, {y:g}) is outside the {self.viewport[0]}x{self.viewport[1]} viewport."
                else:
                    from playwright.sync_api import TimeoutError as PlaywrightTimeout

                    # A click may or may not navigate: wait a moment for a navigation to start.
                    try:
                        with page.expect_navigation(wait_until="load", timeout=self.nav_wait_ms):
                            page.mouse.click(x, y)
                    except PlaywrightTimeout:
                        pass
            else:
                label = arg.lower()
                names = self._clickables()
                if label not in names:
                    shown = ", ".join(names) if names else "nothing (use search[query])"
                    error = f"Cannot click {arg!r} on this page. Clickable: {shown}."
                else:
                    loc = page.locator(f"[data-click={_css_string(label)}]").first
                    self._navigate(loc.click)
        if error is not None:
            info["valid"] = False
            return self._obs(error), 0.0, False, False, info
        self.state = self._page_state()
        if self.state.page == "done":
            result = self.app.result(self._sid) if self._sid else None
            r = result.reward if result is not None else 0.0
            info.update(
                won=r >= 1.0 - 1e-9,
                score=r,
                reward_info=result.to_dict() if result is not None else None,
            )
            return self._obs(), r, True, False, info
        return self._obs(), 0.0, False, False, info

    def expert_action(self) -> str | None:
        if self.goal is None:
            return None
        return self.shop.expert_action(self.state, self.goal)

    def render(self) -> bytes | None:
        """A PNG screenshot of the current page (``None`` before the first reset)."""
        return self._page.screenshot(type="png") if self._page is not None else None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.goal = None
        try:
            self._close_browser()
        finally:
            self.server.close()


def aria_text(snapshot: str) -> str:
    """An ARIA snapshot without link URLs (they carry the session id) and their dangling colons."""
    lines = _URL_LINE.sub("", snapshot).rstrip("\n").split("\n")
    out = []
    for i, line in enumerate(lines):
        if line.endswith(":"):
            nxt = lines[i + 1] if i + 1 < len(lines) else ""
            indent = len(line) - len(line.lstrip())
            if len(nxt) - len(nxt.lstrip()) <= indent:
                line = line[:-1]
        out.append(line)
    return "\n".join(out).strip()


def _css_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'

"""The shop as a real website: a small WSGI app on ``127.0.0.1`` served from a thread.

Pages are rendered from the same engine as the text mode (:class:`.shop.Shop`), so the site and
the text env cannot drift apart. The whole page state lives in the URL; a session id in the
path selects the shopper's goal (instruction):

* ``/s/<sid>/`` search page (form ``#search_input`` -> ``/s/<sid>/results?q=...``)
* ``/s/<sid>/results?q=<query>&page=<n>``
* ``/s/<sid>/item/<asin>?q=..&page=..&opt.<name>=<value>`` and ``/s/<sid>/item/<asin>/<sub>?..``
* ``/s/<sid>/done/<asin>?..`` the purchase: computes and records the reward of the session.

Every clickable is a link or button with ``data-click="<name>"`` (the ``click[<name>]`` of the
text mode) and an ``href`` to the page it leads to. ``/`` starts a new session on a random goal
(``/?task=<i>`` on goal ``i``), which is what ``agentgym webshop serve`` opens for people.
"""

from __future__ import annotations

import collections
import html
import random
import secrets
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from agentgym.environments.webshop.data import Goal
from agentgym.environments.webshop.reward import RewardInfo, compute_reward
from agentgym.environments.webshop.shop import SUB_PAGES, Shop, ShopState

__all__ = ["ShopApp", "ShopServer"]

STATIC_DIR = Path(__file__).parent / "static"
_MAX_SESSIONS = 4096


class _Session:
    __slots__ = ("goal", "result")

    def __init__(self, goal: Goal) -> None:
        self.goal = goal
        self.result: RewardInfo | None = None


class ShopApp:
    """The WSGI application. Thread-safe: sessions are guarded by a lock."""

    def __init__(self, shop: Shop, goals: Sequence[Goal] | None = None) -> None:
        self.shop = shop
        self.goals = tuple(goals) if goals is not None else shop.catalog.goals
        self._sessions: collections.OrderedDict[str, _Session] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._css = (STATIC_DIR / "style.css").read_bytes()

    # -- sessions --------------------------------------------------------------------------
    def new_session(self, goal: Goal) -> str:
        sid = secrets.token_hex(8)
        with self._lock:
            self._sessions[sid] = _Session(goal)
            while len(self._sessions) > _MAX_SESSIONS:  # bounded over long runs
                self._sessions.popitem(last=False)
        return sid

    def end_session(self, sid: str) -> None:
        with self._lock:
            self._sessions.pop(sid, None)

    def result(self, sid: str) -> RewardInfo | None:
        with self._lock:
            s = self._sessions.get(sid)
            return s.result if s else None

    def n_sessions(self) -> int:
        with self._lock:
            return len(self._sessions)

    # -- URLs <-> states -------------------------------------------------------------------
    @staticmethod
    def state_path(sid: str, state: ShopState) -> str:
        if state.page == "search":
            return f"/s/{sid}/"
        q: list[tuple[str, str]] = [("q", state.keywords), ("page", str(state.page_num))]
        if state.page == "results":
            return f"/s/{sid}/results?" + urllib.parse.urlencode(q)
        q += [(f"opt.{k}", v) for k, v in state.options]
        base = (
            f"/s/{sid}/done/{state.asin}" if state.page == "done" else f"/s/{sid}/item/{state.asin}"
        )
        if state.page in SUB_PAGES:
            base += f"/{state.page}"
        return base + "?" + urllib.parse.urlencode(q)

    def parse_path(self, path: str, query: str) -> tuple[str, ShopState] | None:
        """``(sid, state)`` of a page URL, ``None`` when it names no valid page."""
        parts = [p for p in path.split("/") if p]
        if len(parts) < 2 or parts[0] != "s":
            return None
        sid, rest = parts[1], parts[2:]
        params = urllib.parse.parse_qs(query, keep_blank_values=True)

        def one(name: str, default: str = "") -> str:
            return params.get(name, [default])[0]

        if not rest:
            return sid, ShopState()
        keywords = " ".join(one("q").lower().split())
        try:
            page_num = int(one("page", "1"))
        except ValueError:
            return None
        if not keywords or page_num < 1:
            return None
        if rest == ["results"]:
            if page_num > self.shop.n_pages(keywords):
                return None
            return sid, ShopState(page="results", keywords=keywords, page_num=page_num)
        if rest[0] not in ("item", "done") or len(rest) < 2:
            return None
        asin = rest[1]
        if asin not in self.shop.catalog.by_asin:
            return None
        product = self.shop.product(asin)
        opts = {}
        for k, v in params.items():
            if k.startswith("opt."):
                name = k[4:]
                if name not in product.options or v[0] not in product.options[name]:
                    return None
                opts[name] = v[0]
        page = "item"
        if rest[0] == "done":
            if len(rest) != 2:
                return None
            page = "done"
        elif len(rest) == 3 and rest[2] in SUB_PAGES:
            page = rest[2]
        elif len(rest) != 2:
            return None
        return sid, ShopState(
            page=page,
            keywords=keywords,
            page_num=page_num,
            asin=asin,  # type: ignore[arg-type]
            options=tuple(sorted(opts.items())),
        )

    # -- WSGI ------------------------------------------------------------------------------
    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        query = environ.get("QUERY_STRING", "")
        if path == "/static/style.css":
            return self._send(start_response, "200 OK", self._css, "text/css")
        if path == "/favicon.ico":
            return self._send(start_response, "204 No Content", b"", "image/x-icon")
        if path == "/":
            params = urllib.parse.parse_qs(query)
            try:
                i = (
                    int(params["task"][0])
                    if "task" in params
                    else random.randrange(len(self.goals))
                )
                goal = self.goals[i]
            except (ValueError, IndexError):
                return self._send(start_response, "404 Not Found", b"no such task", "text/plain")
            sid = self.new_session(goal)
            start_response("302 Found", [("Location", f"/s/{sid}/"), ("Content-Length", "0")])
            return [b""]
        parsed = self.parse_path(path, query)
        if parsed is None:
            return self._send(start_response, "404 Not Found", b"page not found", "text/plain")
        sid, state = parsed
        with self._lock:
            session = self._sessions.get(sid)
        if session is None:
            return self._send(
                start_response, "404 Not Found", b"unknown session: start one at /", "text/plain"
            )
        result = None
        if state.page == "done":
            assert state.asin is not None
            result = compute_reward(self.shop.product(state.asin), session.goal, state.options_dict)
            with self._lock:
                if session.result is None:  # the first purchase counts
                    session.result = result
        body = self.render(sid, state, session.goal, result).encode()
        return self._send(start_response, "200 OK", body, "text/html; charset=utf-8")

    @staticmethod
    def _send(
        start_response: Callable[..., Any], status: str, body: bytes, ctype: str
    ) -> list[bytes]:
        start_response(
            status,
            [
                ("Content-Type", ctype),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store"),
            ],
        )
        return [body]

    # -- HTML ------------------------------------------------------------------------------
    def render(self, sid: str, state: ShopState, goal: Goal, result: RewardInfo | None) -> str:
        esc = html.escape
        body: list[str] = []
        elements = self.shop.elements(state, result.to_dict() if result else None)
        in_group: str | None = None
        for e in elements:
            if in_group is not None and e.kind != "option":
                body.append("</div></div>")
                in_group = None
            if e.kind == "search_box":
                body.append(
                    f'<form class="search" role="search" method="get" '
                    f'action="/s/{sid}/results">'
                    f'<input id="search_input" name="q" type="text" aria-label="Search" '
                    f'placeholder="Search products" autocomplete="off" autofocus>'
                    f'<button type="submit" class="btn btn-primary" data-click="search">'
                    f"Search</button></form>"
                )
            elif e.kind == "heading":
                body.append(f"<h2>{esc(e.text)}</h2>")
            elif e.kind == "text":
                body.append(f"<p>{esc(e.text)}</p>")
            elif e.kind == "option_name":
                body.append(
                    f'<div class="option-group" role="radiogroup" aria-label="{esc(e.text)}">'
                    f'<h4>{esc(e.text)}</h4><div class="option-values">'
                )
                in_group = e.text
            else:
                assert e.label is not None
                nxt, _ = self.shop.apply(state, f"click[{e.label}]")
                href = esc(self.state_path(sid, nxt))
                label = esc(e.label)
                if e.kind == "product":
                    body.append(
                        f'<a class="product-link" data-click="{label}" href="{href}">'
                        f"{esc(e.text)}</a>"
                    )
                elif e.kind == "option":
                    sel = " selected" if e.selected else ""
                    body.append(
                        f'<a class="option{sel}" role="radio" '
                        f'aria-checked="{str(e.selected).lower()}" data-click="{label}" '
                        f'href="{href}">{esc(e.text)}</a>'
                    )
                else:
                    cls = "btn btn-buy" if e.label == "buy now" else "btn"
                    body.append(
                        f'<a class="{cls}" role="button" data-click="{label}" '
                        f'href="{href}">{esc(e.text)}</a>'
                    )
        if in_group is not None:
            body.append("</div></div>")
        data_reward = f' data-reward="{result.reward:.6f}"' if result else ""
        return (
            '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<title>WebShop</title><link rel="stylesheet" href="/static/style.css"></head>'
            f'<body data-page="{state.page}"{data_reward}>'
            f'<header id="instruction-text"><span class="label">Instruction:</span> '
            f"<span>{esc(goal.instruction_text)}</span></header>"
            f'<main class="page page-{state.page}">' + "".join(body) + "</main></body></html>"
        )


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


class ShopServer:
    """Serves a :class:`ShopApp` on ``host:port`` (port 0: a free one) from a daemon thread.

    Owns its socket and thread; ``close()`` stops both and is idempotent.
    """

    def __init__(self, app: ShopApp, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = app
        self._httpd = make_server(
            host, port, app, server_class=_ThreadingServer, handler_class=_QuietHandler
        )
        self.host, self.port = self._httpd.server_address[:2]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.2},
            name=f"webshop-server-{self.port}",
            daemon=True,
        )
        self._thread.start()
        self._closed = False

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> ShopServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

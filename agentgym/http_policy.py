"""A policy that asks an OpenAI-compatible chat server for each action.

Works with ``agentgym serve`` (:mod:`agentgym.serving`), vLLM's ``vllm serve``, SGLang, llama.cpp's
server and hosted OpenAI-compatible APIs: anything that answers ``POST {url}/chat/completions``.
Only the standard library is used (``urllib``), so no ``openai`` package is needed.

* A batch of contexts becomes concurrent requests (a thread pool of ``concurrency`` workers), so a
  batching server sees them together.
* Transient failures (connection refused/reset, timeouts, HTTP 429 and 5xx) are retried with
  exponential backoff and jitter, honouring ``Retry-After``; after ``max_retries`` the call raises
  :class:`PolicyServerError` with ``transient = True``, so an evaluation can stop cleanly and be
  resumed later.
* Other 4xx answers are the caller's mistake (unknown model name, prompt too long): they raise at
  once with the server's message and the fix.
* Tool calls: the env's declared tools (:attr:`~agentgym.policies.TurnContext.turn_tools`: the
  spec's, or an observation's own), else the policy's ``tools``, are sent as the request's
  ``tools``, and a reply's ``tool_calls`` becomes the action ``{"tool": name, **arguments}`` as
  JSON (:func:`agentgym.tools.tool_call_action`). A server that does not parse calls returns the
  Hermes ``<tool_call>`` text as content; that is read too (:func:`agentgym.tools.reply_action`).
  A call that is not usable (arguments that are not a JSON object, several calls where one
  action is taken) makes an invalid turn whose ``extras["tool_call_error"]`` says what was wrong,
  never an exception; the rollout opens the next observation with it.

``make_policy("openai:http://127.0.0.1:8000/v1#my-model")`` builds one.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from agentgym.policies import SYSTEM_PROMPT, PolicyOutput, TurnContext, build_messages
from agentgym.tools import reply_action, tool_call_action

__all__ = ["OpenAIPolicy", "PolicyServerError", "chat_completion", "tool_call_action"]


#: HTTP statuses that reject one request's content (too long, malformed for this model) rather
#: than the client's set-up; such a turn is recorded as an invalid action instead of ending the run.
REJECTED_TURN_STATUSES = (400, 413, 422)


class PolicyServerError(RuntimeError):
    """A model server did not answer usefully.

    ``transient`` is True for failures worth retrying later (server down, overloaded, 5xx) and
    False for requests the server rejects (4xx other than 408/429).
    """

    def __init__(self, message: str, *, status: int | None = None, transient: bool) -> None:
        super().__init__(message)
        self.status = status
        self.transient = transient


def _post_json(url: str, body: dict[str, Any], headers: dict[str, str], timeout: float) -> Any:
    data = json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST")
    req.add_header("Content-Type", "application/json")
    for k, v in headers.items():
        req.add_header(k, v)
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read().decode("utf-8"))


def _error_text(err: urllib.error.HTTPError) -> str:
    try:
        raw = err.read().decode("utf-8", "replace")
    except Exception:
        return err.reason if isinstance(err.reason, str) else ""
    try:
        msg = json.loads(raw).get("error", {})
        return str(msg.get("message", raw)) if isinstance(msg, dict) else str(msg)
    except (json.JSONDecodeError, AttributeError):
        return raw[:500]


def chat_completion(
    url: str,
    body: dict[str, Any],
    *,
    api_key: str | None = None,
    timeout_s: float = 120.0,
    max_retries: int = 5,
    backoff_s: float = 0.5,
    max_backoff_s: float = 30.0,
    rng: random.Random | None = None,
) -> tuple[dict[str, Any], int]:
    """POST ``body`` to ``{url}/chat/completions``; return ``(response_json, retries_used)``.

    Retries connection errors, timeouts, 408, 429 and 5xx up to ``max_retries`` times, sleeping
    ``backoff_s * 2**k`` (capped at ``max_backoff_s``, with +-25 % jitter, or the server's
    ``Retry-After``) between attempts.
    """
    endpoint = url.rstrip("/") + "/chat/completions"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    rng = rng or random.Random()
    attempt = 0
    while True:
        retry_after: float | None = None
        try:
            return _post_json(endpoint, body, headers, timeout_s), attempt
        except urllib.error.HTTPError as e:
            text = _error_text(e)
            if e.code not in (408, 429) and e.code < 500:
                hint = ""
                if e.code == 404:
                    hint = (
                        " Check the URL (it should end in /v1) and the model name after '#' in "
                        "openai:URL#model (GET /v1/models lists the served names)."
                    )
                raise PolicyServerError(
                    f"{endpoint} rejected the request with HTTP {e.code}: {text}.{hint}",
                    status=e.code,
                    transient=False,
                ) from None
            last = f"HTTP {e.code}: {text}"
            status: int | None = e.code
            ra = e.headers.get("Retry-After") if e.headers else None
            if ra:
                try:
                    retry_after = float(ra)
                except ValueError:
                    retry_after = None
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
            reason = getattr(e, "reason", e)
            last = f"{type(reason).__name__}: {reason}"
            status = None
        except json.JSONDecodeError as e:
            last = f"the answer is not JSON ({e})"
            status = None
        if attempt >= max_retries:
            raise PolicyServerError(
                f"{endpoint} failed after {attempt + 1} attempts; last error: {last}. "
                "Is the server running and reachable? (an interrupted eval continues with --resume)",
                status=status,
                transient=True,
            )
        delay = min(max_backoff_s, backoff_s * (2**attempt)) * rng.uniform(0.75, 1.25)
        if retry_after is not None:
            delay = min(max_backoff_s, max(delay, retry_after))
        time.sleep(delay)
        attempt += 1


class OpenAIPolicy:
    """Chooses actions by calling an OpenAI-compatible ``/chat/completions`` endpoint.

    Args:
        url: the API base, e.g. ``http://127.0.0.1:8000/v1``.
        model: the served model name.
        seed: base of the per-request sampling seeds (request ``k`` of the run gets a seed derived
            from ``(seed, k)``, so a rerun in the same order samples the same replies).
        max_tokens: the reply budget per turn.
        temperature: sampling temperature (0 = greedy).
        top_p: nucleus sampling mass.
        concurrency: requests in flight at once for one batch of contexts.
        timeout_s: seconds one HTTP request may take.
        max_retries / backoff_s: retry policy for transient failures (see :func:`chat_completion`).
        history_len / system_prompt: passed to :func:`~agentgym.policies.build_messages`.
        api_key: sent as a bearer token; default ``$OPENAI_API_KEY`` if set.
        send_seed: include ``seed`` in requests (some hosted APIs reject it).
        tools: OpenAI function tools sent with every request to an env that declares none
            (an env's own tools win); replies' ``tool_calls`` become actions.
    """

    needs_expert = False

    def __init__(
        self,
        url: str,
        *,
        model: str = "default",
        seed: int = 0,
        max_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        concurrency: int = 8,
        timeout_s: float = 120.0,
        max_retries: int = 5,
        backoff_s: float = 0.5,
        history_len: int = 2,
        system_prompt: str = SYSTEM_PROMPT,
        api_key: str | None = None,
        send_seed: bool = True,
        tools: Sequence[dict[str, Any]] | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"OpenAIPolicy url must start with http:// or https://, got {url!r}")
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        self.url = url.rstrip("/")
        self.model = model
        self.name = f"openai:{self.url}#{model}"
        self.seed = int(seed)
        self.max_tokens = int(max_tokens)
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.concurrency = int(concurrency)
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.backoff_s = float(backoff_s)
        self.history_len = int(history_len)
        self.system_prompt = system_prompt
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.send_seed = send_seed
        self.tools = list(tools) if tools else None
        self._requests = 0
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    def _request_seed(self, k: int) -> int:
        return zlib.crc32(f"{self.seed}:{k}".encode()) & 0x7FFFFFFF

    def _one(self, ctx: TurnContext, k: int) -> PolicyOutput:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": build_messages(
                ctx, history_len=self.history_len, system_prompt=self.system_prompt
            ),
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "n": 1,
        }
        if self.send_seed:
            body["seed"] = self._request_seed(k)
        declared = ctx.observation.tools is not None or ctx.tools is not None
        tools = ctx.turn_tools if declared else self.tools
        if tools:
            body["tools"] = list(tools)
        t0 = time.perf_counter()
        try:
            resp, retries = chat_completion(
                self.url,
                body,
                api_key=self.api_key,
                timeout_s=self.timeout_s,
                max_retries=self.max_retries,
                backoff_s=self.backoff_s,
                rng=random.Random(self._request_seed(k)),
            )
        except PolicyServerError as e:
            if e.status not in REJECTED_TURN_STATUSES:
                raise  # down, or misconfigured (wrong URL, model, key): the run must stop
            # The server refused this one prompt (e.g. longer than the model's context): the
            # turn becomes an invalid action that says why, and the episode goes on.
            return PolicyOutput(
                action="",
                response="",
                format_ok=False,
                extras={"rejected": str(e), "status": e.status},
            )
        try:
            choice = resp["choices"][0]
            message = choice["message"]
            content = message.get("content") or ""
        except (KeyError, IndexError, TypeError, AttributeError):
            raise PolicyServerError(
                f"{self.url}/chat/completions answered without choices[0].message: "
                f"{json.dumps(resp)[:300]}",
                transient=True,
            ) from None
        if not isinstance(content, str):
            content = str(content)
        extras: dict[str, Any] = {
            "latency_s": round(time.perf_counter() - t0, 4),
            "finish_reason": choice.get("finish_reason"),
        }
        calls = message.get("tool_calls")
        if calls:
            extras["tool_calls"] = calls
            action, problem = tool_call_action(calls)
            ok = not problem
            if problem:
                # An unusable call is the model's mistake: an invalid turn that records why.
                extras["tool_call_error"] = problem
                content = (content + "\n" if content else "") + f"[invalid tool call: {problem}]"
        else:
            action, ok, problem = reply_action(content)
            if problem:
                extras["tool_call_error"] = problem
        if retries:
            extras["retries"] = retries
        if isinstance(resp.get("usage"), dict):
            extras["usage"] = resp["usage"]
        return PolicyOutput(action=action, response=content, format_ok=ok, extras=extras)

    def act(self, contexts: Sequence[TurnContext]) -> list[PolicyOutput]:
        if not contexts:
            return []
        with self._lock:
            start = self._requests
            self._requests += len(contexts)
        if len(contexts) == 1 or self.concurrency == 1:
            return [self._one(c, start + j) for j, c in enumerate(contexts)]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="openai-policy")
        futures = [self._pool.submit(self._one, c, start + j) for j, c in enumerate(contexts)]
        return [f.result() for f in futures]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def __del__(self) -> None:  # pragma: no cover
        with contextlib.suppress(Exception):
            self.close()

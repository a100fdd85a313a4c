"""The request side of ``agentgym serve``: OpenAI error objects, validated requests, usage.

:func:`parse_chat_request` checks every field of a chat-completions body before the request is
queued, so nothing a client sends can make a batch fail later; each refusal is a
:class:`RequestError` that names the field (``param``) and the fix.
"""

from __future__ import annotations

import json
import math
import queue
import threading
from dataclasses import dataclass, field
from typing import Any

from agentgym.decoding import SamplingParams

__all__ = [
    "GenerationRequest",
    "RequestError",
    "SamplingParams",
    "parse_chat_request",
]

#: Largest ``n`` and ``top_logprobs`` accepted (OpenAI's own limits are 128 and 20).
MAX_N = 16
MAX_TOP_LOGPROBS = 20
MAX_STOP = 16
#: Temperatures in (0, MIN_TEMPERATURE) are refused: dividing logits by them overflows to inf.
MIN_TEMPERATURE = 1e-2
SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed accepts


class RequestError(ValueError):
    """A request the server rejects: the HTTP ``status`` and OpenAI's error fields."""

    def __init__(
        self,
        message: str,
        status: int = 400,
        *,
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or _default_code(status)
        self.param = param

    def to_json(self) -> dict[str, Any]:
        kind = {
            401: "authentication_error",
            404: "invalid_request_error",
            429: "rate_limit_error",
        }.get(self.status, "invalid_request_error" if self.status < 500 else "server_error")
        return {
            "error": {"message": str(self), "type": kind, "param": self.param, "code": self.code}
        }


def _default_code(status: int) -> str:
    return {
        400: "invalid_value",
        404: "not_found",
        413: "request_too_large",
        429: "rate_limit_exceeded",
        500: "internal_error",
        503: "server_overloaded",
        504: "timeout",
    }.get(status, "error")


# ------------------------------------------------------------------------------- requests
@dataclass
class Choice:
    """One sequence being generated: ``n`` of them per request."""

    index: int
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    tops: list[list[tuple[int, float]]] = field(default_factory=list)
    finish: str | None = None


@dataclass
class GenerationRequest:
    """One validated chat completion request; ``prompt_ids`` is filled before it is queued."""

    messages: list[dict[str, Any]]
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    n: int = 1
    logprobs: bool = False
    top_logprobs: int = 0
    stream: bool = False
    include_usage: bool = False
    tools: list[dict[str, Any]] | None = None  # presented to the model and parsed in replies
    prompt_ids: list[int] = field(default_factory=list)
    # filled by the engine
    choices: list[Choice] = field(default_factory=list)
    events: queue.SimpleQueue[tuple[int, int] | None] = field(default_factory=queue.SimpleQueue)
    done: threading.Event = field(default_factory=threading.Event)
    cancelled: bool = False
    error: Exception | None = None

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.choices = [Choice(i) for i in range(self.n)]

    def sampling(self, i: int) -> SamplingParams:
        seed = None if self.seed is None else (self.seed + i) % 2**64
        return SamplingParams(
            self.max_tokens, self.temperature, self.top_p, seed, self.top_logprobs
        )

    def fail(self, e: Exception) -> None:
        self.error = e
        self.done.set()
        self.events.put(None)


# ------------------------------------------------------------------------------- validation
def _number(body: dict[str, Any], key: str, default: float) -> float:
    v = body.get(key, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise RequestError(f"{key} must be a finite number, got {v!r}", param=key)
    return float(v)


def _integer(body: dict[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    v = body.get(key, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int):
        raise RequestError(f"{key} must be an integer, got {v!r:.60}", param=key)
    if not lo <= v <= hi:
        raise RequestError(f"{key} must be in [{lo}, {hi}], got {v}", param=key)
    return v


def _text_content(content: Any, where: str, *, allow_none: bool = False) -> str | None:
    if content is None and allow_none:
        return None
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: only text is understood
        parts = []
        for j, p in enumerate(content):
            if (
                not isinstance(p, dict)
                or p.get("type") != "text"
                or not isinstance(p.get("text"), str)
            ):
                raise RequestError(
                    f"{where}[{j}] must be a text part {{type: text, text: ...}}; this server "
                    "reads text only",
                    param=where,
                )
            parts.append(p["text"])
        return "".join(parts)
    raise RequestError(
        f"{where} must be a string or a list of text parts, got {type(content).__name__}",
        param=where,
    )


def _parse_message(k: int, m: Any) -> dict[str, Any]:
    where = f"messages[{k}]"
    roles = ("system", "developer", "user", "assistant", "tool")
    if not isinstance(m, dict) or m.get("role") not in roles:
        raise RequestError(
            f"{where} needs a role of {', '.join(roles)}, got {m!r:.100}", param=f"{where}.role"
        )
    role = m["role"]
    # "developer" is the newer name of "system" (OpenAI's o-series); chat templates know "system".
    out: dict[str, Any] = {"role": "system" if role == "developer" else role}
    content = _text_content(m.get("content"), f"{where}.content", allow_none=role == "assistant")
    calls = m.get("tool_calls") if role == "assistant" else None
    if calls is not None:
        if not isinstance(calls, list):
            raise RequestError(f"{where}.tool_calls must be a list", param=f"{where}.tool_calls")
        parsed = []
        for j, c in enumerate(calls):
            cw = f"{where}.tool_calls[{j}]"
            fn = c.get("function") if isinstance(c, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                raise RequestError(
                    f"{cw} must be {{type: function, function: {{name, arguments}}}}", param=cw
                )
            args = fn.get("arguments", "{}")
            if isinstance(args, str):
                try:
                    args = json.loads(args or "{}")
                except json.JSONDecodeError as e:
                    raise RequestError(
                        f"{cw}.function.arguments is not valid JSON: {e}",
                        param=f"{cw}.function.arguments",
                    ) from None
            # chat templates (Qwen2.5, Llama 3.1, Hermes) expect the arguments as a mapping
            parsed.append(
                {
                    "id": str(c.get("id") or ""),
                    "type": "function",
                    "function": {"name": fn["name"], "arguments": args},
                }
            )
        out["tool_calls"] = parsed
    elif content is None:
        raise RequestError(
            f"{where}.content may be null only for an assistant message with tool_calls",
            param=f"{where}.content",
        )
    out["content"] = content if content is not None else ""
    if role == "tool":
        tcid = m.get("tool_call_id")
        if tcid is not None and not isinstance(tcid, str):
            raise RequestError(f"{where}.tool_call_id must be a string", param=where)
        if tcid:
            out["tool_call_id"] = tcid
    if isinstance(m.get("name"), str):
        out["name"] = m["name"]
    return out


def _parse_tools(body: dict[str, Any]) -> list[dict[str, Any]] | None:
    tools = body.get("tools")
    choice = body.get("tool_choice", "auto" if tools else "none")
    if tools is None:
        if choice not in (None, "none", "auto"):
            raise RequestError("tool_choice is set but no tools are given", param="tool_choice")
        return None
    if not isinstance(tools, list):
        raise RequestError("tools must be a list of function tools", param="tools")
    out = []
    for k, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, dict) and t.get("type") == "function" else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise RequestError(
                f"tools[{k}] must be {{type: function, function: {{name, description, "
                "parameters}}}}",
                param=f"tools[{k}]",
            )
        params = fn.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, dict):
            raise RequestError(
                f"tools[{k}].function.parameters must be a JSON schema object",
                param=f"tools[{k}].function.parameters",
            )
        out.append({"type": "function", "function": {**fn, "parameters": params}})
    if choice == "none":
        return None  # the model is not told about tools and nothing is parsed as a call
    if choice != "auto":
        # Forcing a call needs constrained decoding, which this server does not do; failing
        # loudly beats silently answering without the call the client relies on.
        raise RequestError(
            f"tool_choice={choice!r:.80} is not supported: this server lets the model decide "
            "(send tool_choice 'auto' or 'none')",
            param="tool_choice",
        )
    return out or None


def parse_chat_request(body: Any, served_name: str, max_tokens_limit: int) -> GenerationRequest:
    """Validate an OpenAI chat-completions body; raise :class:`RequestError` naming the problem.

    Every field is checked here, before the request is queued, so nothing a client sends can make
    a batch fail later.
    """
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    model = body.get("model")
    if model is not None and model != served_name:
        raise RequestError(
            f"model {model!r:.100} is not served here; this server serves {served_name!r} "
            "(GET /v1/models lists it)",
            status=404,
            code="model_not_found",
            param="model",
        )
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise RequestError(
            "'messages' must be a non-empty list of {role, content} objects", param="messages"
        )
    messages = [_parse_message(k, m) for k, m in enumerate(msgs)]
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise RequestError(f"stream must be true or false, got {stream!r:.40}", param="stream")
    opts = body.get("stream_options")
    include_usage = False
    if opts is not None:
        if not stream:
            raise RequestError("stream_options needs stream=true", param="stream_options")
        if not isinstance(opts, dict):
            raise RequestError("stream_options must be an object", param="stream_options")
        include_usage = bool(opts.get("include_usage", False))
    n = _integer(body, "n", 1, 1, MAX_N)
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _integer(body, key, min(256, max_tokens_limit), 1, max_tokens_limit)
    temperature = _number(body, "temperature", 1.0)
    if not (temperature == 0.0 or MIN_TEMPERATURE <= temperature <= 2.0):
        raise RequestError(
            f"temperature must be 0 (greedy) or in [{MIN_TEMPERATURE}, 2], got {temperature!r}",
            param="temperature",
        )
    top_p = _number(body, "top_p", 1.0)
    if not 0.0 < top_p <= 1.0:
        raise RequestError(f"top_p must be in (0, 1], got {top_p!r}", param="top_p")
    seed = body.get("seed")
    if seed is not None:
        seed = _integer(body, "seed", 0, *SEED_RANGE)
    stop = body.get("stop") or []
    if isinstance(stop, str):
        stop = [stop]
    if (
        not isinstance(stop, list)
        or len(stop) > MAX_STOP
        or not all(isinstance(s, str) and s for s in stop)
    ):
        raise RequestError(
            f"stop must be a string or a list of at most {MAX_STOP} non-empty strings, "
            f"got {stop!r:.100}",
            param="stop",
        )
    logprobs = body.get("logprobs") or False
    if not isinstance(logprobs, bool):
        raise RequestError(
            f"logprobs must be true or false, got {logprobs!r:.40}", param="logprobs"
        )
    top_logprobs = _integer(body, "top_logprobs", 0, 0, MAX_TOP_LOGPROBS)
    if top_logprobs and not logprobs:
        raise RequestError("top_logprobs needs logprobs=true", param="top_logprobs")
    for k in ("presence_penalty", "frequency_penalty"):
        if _number(body, k, 0.0) != 0.0:
            raise RequestError(f"{k} is not supported by this server; leave it at 0", param=k)
    if body.get("logit_bias"):
        raise RequestError("logit_bias is not supported by this server", param="logit_bias")
    fmt = body.get("response_format")
    if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type") != "text"):
        raise RequestError(
            "response_format other than {type: text} is not supported by this server",
            param="response_format",
        )
    return GenerationRequest(
        messages=messages,
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        stop=stop,
        n=n,
        logprobs=logprobs,
        top_logprobs=top_logprobs,
        stream=stream,
        include_usage=include_usage,
        tools=_parse_tools(body),
    )


def usage_counts(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }

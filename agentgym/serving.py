"""An OpenAI-compatible chat server for a local Hugging Face model (``agentgym serve``).

Endpoints: ``POST /v1/chat/completions`` (``messages``, ``max_tokens``, ``temperature``, ``top_p``,
``seed``, ``stop``, ``logprobs``; ``n`` must be 1, no streaming), ``GET /v1/models`` and
``GET /health``. It is what :class:`~agentgym.http_policy.OpenAIPolicy` talks to, so the same eval
command works against this server, vLLM or a hosted API.

Design:

* Standard library HTTP (:class:`http.server.ThreadingHTTPServer`): one thread per connection
  parses and validates the request and puts it on a bounded queue.
* One **batching worker** owns the model. It takes the first queued request, waits up to
  ``batch_wait_ms`` for more (up to ``max_batch_size``) and generates for all of them together:
  left-padded prefill, then one forward pass per new token with the KV cache. Rows finish
  independently (own ``max_tokens``, eos, stop strings).
* **Per-row sampling**: each request samples with its own ``torch.Generator`` seeded from its
  ``seed``, and temperature/top-p apply per row, so a seeded request gives the same reply whether
  it was batched with others or not (up to float rounding of padded batches); ``temperature=0`` is
  greedy.
* Overload is answered with HTTP 503 + ``Retry-After`` (clients retry), bad requests with 400/404
  and a message that says what to change.

Only ``transformers`` and ``torch`` are needed; nothing is downloaded (``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

__all__ = ["ChatEngine", "ModelServer", "GenerationRequest", "RequestError"]

log = logging.getLogger(__name__)


class RequestError(ValueError):
    """A request the server rejects; ``status`` is the HTTP code to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class GenerationRequest:
    """One chat completion to generate (already validated)."""

    messages: list[dict[str, str]]
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    logprobs: bool = False
    # filled by the engine
    done: threading.Event = field(default_factory=threading.Event)
    result: dict[str, Any] | None = None
    error: Exception | None = None


class ChatEngine:
    """A causal LM + chat tokenizer that generates replies for batches of requests."""

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        *,
        device: str | None = None,
        dtype: str | None = None,
    ) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(model_dir)
        if not (path / "config.json").exists():
            raise FileNotFoundError(
                f"{path} is not a Hugging Face model directory (no config.json); "
                "pass the folder written by save_pretrained"
            )
        self.torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if dtype is None:
            torch_dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        else:
            torch_dtype = getattr(torch, dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if self.tokenizer.chat_template is None:
            raise ValueError(
                f"the tokenizer in {path} has no chat_template; set tokenizer.chat_template "
                "(e.g. ChatML) and save it again"
            )
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
        self.model.to(self.device).eval()
        cfg = self.model.config
        self.max_context = int(getattr(cfg, "max_position_embeddings", 0) or 1 << 30)
        eos: set[int] = set()
        for src in (self.model.generation_config.eos_token_id, self.tokenizer.eos_token_id):
            if isinstance(src, int):
                eos.add(src)
            elif isinstance(src, (list, tuple)):
                eos.update(int(x) for x in src)
        im_end = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        if isinstance(im_end, int) and im_end != self.tokenizer.unk_token_id and im_end >= 0:
            eos.add(im_end)
        self.eos_ids = eos
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else next(iter(eos), 0))

    def encode(self, req: GenerationRequest) -> list[int]:
        text = self.tokenizer.apply_chat_template(
            req.messages, add_generation_prompt=True, tokenize=False
        )
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) + req.max_tokens > self.max_context:
            raise RequestError(
                f"the prompt has {len(ids)} tokens and max_tokens is {req.max_tokens}, more than "
                f"the model's context of {self.max_context} tokens; lower max_tokens or send a "
                "shorter prompt (e.g. a smaller history_len)"
            )
        return ids

    def generate(self, reqs: Sequence[GenerationRequest]) -> None:
        """Generate for every request; fills ``result`` or ``error`` and sets ``done``."""
        live: list[tuple[GenerationRequest, list[int]]] = []
        for r in reqs:
            try:
                live.append((r, self.encode(r)))
            except Exception as e:  # a bad request must not fail its batch-mates
                r.error = e
                r.done.set()
        if not live:
            return
        try:
            self._generate(live)
        except Exception as e:
            log.exception("generation failed")
            for r, _ in live:
                r.error = e
        finally:
            for r, _ in live:
                r.done.set()

    def _generate(self, live: list[tuple[GenerationRequest, list[int]]]) -> None:
        torch = self.torch
        b = len(live)
        width = max(len(ids) for _, ids in live)
        input_ids = torch.full((b, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((b, width), dtype=torch.long)
        for i, (_, ids) in enumerate(live):
            input_ids[i, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            mask[i, width - len(ids) :] = 1
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        gens = []
        for r, _ in live:
            g = torch.Generator(device="cpu")
            g.manual_seed(r.seed if r.seed is not None else int.from_bytes(os.urandom(4), "little"))
            gens.append(g)
        out_tokens: list[list[int]] = [[] for _ in live]
        out_logprobs: list[list[float]] = [[] for _ in live]
        finish: list[str | None] = [None] * b
        steps = max(r.max_tokens for r, _ in live)
        with torch.inference_mode():
            out = self.model(
                input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True
            )
            past = out.past_key_values
            logits = out.logits[:, -1, :].float().cpu()
            last_pos = positions[:, -1]
            for _ in range(steps):
                next_ids = []
                logp_all = torch.log_softmax(logits, dim=-1)
                for i, (r, _) in enumerate(live):
                    if finish[i] is not None:
                        next_ids.append(self.pad_id)
                        continue
                    tok = self._sample(logits[i], r, gens[i])
                    next_ids.append(tok)
                    if tok in self.eos_ids:
                        finish[i] = "stop"
                        continue
                    out_tokens[i].append(tok)
                    out_logprobs[i].append(float(logp_all[i, tok]))
                    if r.stop and self._hit_stop(out_tokens[i], r.stop):
                        finish[i] = "stop"
                    elif len(out_tokens[i]) >= r.max_tokens:
                        finish[i] = "length"
                if all(f is not None for f in finish):
                    break
                step_ids = torch.tensor(next_ids, dtype=torch.long, device=self.device)[:, None]
                mask = torch.cat(
                    [mask, torch.ones((b, 1), dtype=mask.dtype, device=self.device)], 1
                )
                last_pos = last_pos + 1
                out = self.model(
                    input_ids=step_ids,
                    attention_mask=mask,
                    position_ids=last_pos[:, None],
                    past_key_values=past,
                    use_cache=True,
                )
                past = out.past_key_values
                logits = out.logits[:, -1, :].float().cpu()
        for i, (r, ids) in enumerate(live):
            text = self.tokenizer.decode(out_tokens[i], skip_special_tokens=True)
            reason = finish[i] or "length"
            for s in r.stop:
                k = text.find(s)
                if k >= 0:
                    text, reason = text[:k], "stop"
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": reason,
            }
            if r.logprobs:
                choice["logprobs"] = {
                    "content": [
                        {"token": self.tokenizer.decode([t]), "logprob": lp}
                        for t, lp in zip(out_tokens[i], out_logprobs[i])
                    ]
                }
            r.result = {
                "choices": [choice],
                "usage": {
                    "prompt_tokens": len(ids),
                    "completion_tokens": len(out_tokens[i]),
                    "total_tokens": len(ids) + len(out_tokens[i]),
                },
            }

    def _sample(self, logits: Any, r: GenerationRequest, gen: Any) -> int:
        torch = self.torch
        if r.temperature <= 0.0:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits / r.temperature, dim=-1)
        if r.top_p < 1.0:
            sorted_p, order = torch.sort(probs, descending=True)
            keep = torch.cumsum(sorted_p, 0) - sorted_p < r.top_p
            keep[0] = True
            filtered = torch.zeros_like(probs)
            filtered[order[keep]] = sorted_p[keep]
            probs = filtered / filtered.sum()
        return int(torch.multinomial(probs, 1, generator=gen))

    def _hit_stop(self, tokens: list[int], stops: list[str]) -> bool:
        tail = self.tokenizer.decode(tokens[-16:], skip_special_tokens=True)
        return any(s in tail for s in stops)


def parse_chat_request(body: Any, served_name: str, max_tokens_limit: int) -> GenerationRequest:
    """Validate an OpenAI chat-completions body; raise :class:`RequestError` naming the problem."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    model = body.get("model")
    if model is not None and model != served_name:
        raise RequestError(
            f"model {model!r} is not served here; this server serves {served_name!r} "
            "(GET /v1/models lists it)",
            status=404,
        )
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise RequestError("'messages' must be a non-empty list of {role, content} objects")
    messages = []
    for k, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "tool"):
            raise RequestError(
                f"messages[{k}] needs a role of system, user, assistant or tool, got {m!r:.100}"
            )
        content = m.get("content")
        if isinstance(content, list):  # content parts: keep the text ones
            content = "".join(
                p.get("text", "")
                for p in content
                if isinstance(p, dict) and p.get("type") == "text"
            )
        if not isinstance(content, str):
            raise RequestError(
                f"messages[{k}].content must be a string, got {type(content).__name__}"
            )
        messages.append({"role": m["role"], "content": content})
    if body.get("stream"):
        raise RequestError("streaming is not supported by this server; send stream=false")
    n = body.get("n", 1)
    if n != 1:
        raise RequestError(f"n={n} is not supported; send n=1 and repeat the request")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens", 256))
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise RequestError(f"max_tokens must be a positive integer, got {max_tokens!r}")
    if max_tokens > max_tokens_limit:
        raise RequestError(
            f"max_tokens={max_tokens} exceeds this server's limit {max_tokens_limit}"
        )
    temperature = body.get("temperature", 1.0)
    top_p = body.get("top_p", 1.0)
    if not isinstance(temperature, (int, float)) or not 0.0 <= temperature <= 2.0:
        raise RequestError(f"temperature must be a number in [0, 2], got {temperature!r}")
    if not isinstance(top_p, (int, float)) or not 0.0 < top_p <= 1.0:
        raise RequestError(f"top_p must be a number in (0, 1], got {top_p!r}")
    seed = body.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise RequestError(f"seed must be an integer, got {seed!r}")
    stop = body.get("stop") or []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise RequestError(f"stop must be a string or a list of non-empty strings, got {stop!r}")
    return GenerationRequest(
        messages=messages,
        max_tokens=max_tokens,
        temperature=float(temperature),
        top_p=float(top_p),
        seed=seed,
        stop=stop,
        logprobs=bool(body.get("logprobs", False)),
    )


class ModelServer:
    """Serves one :class:`ChatEngine` over HTTP with a batching worker.

    ``ModelServer(model_dir, port=0).start()`` runs in background threads (tests, notebooks);
    ``serve_forever()`` blocks (the CLI). ``url`` is the API base (``http://host:port/v1``).
    """

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        *,
        host: str = "127.0.0.1",
        port: int = 8000,
        served_name: str | None = None,
        max_batch_size: int = 16,
        batch_wait_ms: float = 5.0,
        max_queue: int = 256,
        max_tokens_limit: int = 4096,
        device: str | None = None,
        dtype: str | None = None,
        engine: ChatEngine | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.engine = engine or ChatEngine(model_dir, device=device, dtype=dtype)
        self.served_name = served_name or Path(model_dir).resolve().name
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_ms / 1000.0
        self.max_tokens_limit = max_tokens_limit
        self.queue: queue.Queue[GenerationRequest | None] = queue.Queue(maxsize=max_queue)
        self.batches: list[int] = []  # sizes of the batches generated (for stats and tests)
        self.created = int(time.time())
        self.httpd = ThreadingHTTPServer((host, port), _make_handler(self))
        self.httpd.daemon_threads = True
        self._threads: list[threading.Thread] = []
        self._stopped = False

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def url(self) -> str:
        host = self.httpd.server_address[0]
        return f"http://{host}:{self.port}/v1"

    def _worker(self) -> None:
        while True:
            first = self.queue.get()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + self.batch_wait_s
            while len(batch) < self.max_batch_size:
                left = deadline - time.monotonic()
                try:
                    nxt = (
                        self.queue.get(timeout=max(left, 0.0))
                        if left > 0
                        else self.queue.get_nowait()
                    )
                except queue.Empty:
                    break
                if nxt is None:
                    self.queue.put(None)  # stop after this batch
                    break
                batch.append(nxt)
            self.batches.append(len(batch))
            self.engine.generate(batch)

    def submit(self, req: GenerationRequest, timeout_s: float = 600.0) -> dict[str, Any]:
        try:
            self.queue.put_nowait(req)
        except queue.Full:
            raise RequestError(
                "the server is overloaded (request queue full); retry later", 503
            ) from None
        if not req.done.wait(timeout_s):
            raise RequestError(f"generation took longer than {timeout_s}s", 503)
        if req.error is not None:
            if isinstance(req.error, RequestError):
                raise req.error
            raise RequestError(f"generation failed: {type(req.error).__name__}: {req.error}", 500)
        assert req.result is not None
        return {
            "id": "chatcmpl-" + uuid.uuid4().hex[:24],
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.served_name,
            **req.result,
        }

    def start(self) -> ModelServer:
        """Serve in background threads; return self."""
        w = threading.Thread(target=self._worker, name="agentgym-serve-batcher", daemon=True)
        h = threading.Thread(
            target=self.httpd.serve_forever, name="agentgym-serve-http", daemon=True
        )
        w.start()
        h.start()
        self._threads = [w, h]
        return self

    def serve_forever(self) -> None:
        w = threading.Thread(target=self._worker, name="agentgym-serve-batcher", daemon=True)
        w.start()
        self._threads = [w]
        try:
            self.httpd.serve_forever()
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if any(t.name == "agentgym-serve-http" for t in self._threads):
            self.httpd.shutdown()
        self.httpd.server_close()
        self.queue.put(None)

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def _make_handler(server: ModelServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "agentgym-serve"

        def log_message(self, fmt: str, *args: Any) -> None:
            log.debug("%s " + fmt, self.address_string(), *args)

        def _send(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, message: str) -> None:
            kind = "invalid_request_error" if status < 500 else "server_error"
            headers = {"Retry-After": "1"} if status == 503 else None
            self._send(
                status, {"error": {"message": message, "type": kind, "code": status}}, headers
            )

        def do_GET(self) -> None:  # noqa: N802 - http.server API
            path = self.path.split("?", 1)[0].rstrip("/")
            if path in ("/v1/models", "/models"):
                self._send(
                    200,
                    {
                        "object": "list",
                        "data": [
                            {
                                "id": server.served_name,
                                "object": "model",
                                "created": server.created,
                                "owned_by": "agentgym",
                            }
                        ],
                    },
                )
            elif path in ("/health", "/v1/health"):
                self._send(200, {"status": "ok", "queued": server.queue.qsize()})
            else:
                self._error(404, f"no route GET {path}; use /v1/models or /health")

        def do_POST(self) -> None:  # noqa: N802 - http.server API
            path = self.path.split("?", 1)[0].rstrip("/")
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            if path not in ("/v1/chat/completions", "/chat/completions"):
                self._error(404, f"no route POST {path}; use /v1/chat/completions")
                return
            try:
                body = json.loads(raw.decode("utf-8") or "null")
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                self._error(400, f"the body is not valid JSON: {e}")
                return
            try:
                req = parse_chat_request(body, server.served_name, server.max_tokens_limit)
                self._send(200, server.submit(req))
            except RequestError as e:
                self._error(e.status, str(e))
            except Exception as e:  # pragma: no cover - last resort, keep the server up
                log.exception("request failed")
                self._error(500, f"{type(e).__name__}: {e}")

    return Handler

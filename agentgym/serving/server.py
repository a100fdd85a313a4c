"""The server of ``agentgym serve``: :class:`ModelServer` owns the engine, the request queue, the
batching worker and the HTTP listener (whose request handler is in
:mod:`agentgym.serving.handler`).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from agentgym.serving.engine import ChatEngine, ReplyText, StopCheck
from agentgym.serving.handler import make_handler
from agentgym.serving.protocol import GenerationRequest, RequestError, usage_counts

__all__ = ["ModelServer"]

log = logging.getLogger(__name__)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], handler: type, backlog: int) -> None:
        self.request_queue_size = backlog  # listen() backlog: queued, not reset, under bursts
        super().__init__(addr, handler)


class ModelServer:
    """Serves one :class:`ChatEngine` over HTTP with a batching worker.

    ``ModelServer(model_dir, port=0).start()`` runs in background threads (tests, notebooks);
    ``serve_forever()`` blocks (the CLI). ``url`` is the API base (``http://host:port/v1``).

    Limits (each answered with an OpenAI-shaped error, see docs/serving.md):
    ``max_request_bytes`` (413), ``max_queue`` queued requests and ``max_connections`` open
    connections (503 + ``Retry-After``), ``max_tokens_limit`` per request (400),
    ``request_timeout_s`` per generation (504), ``socket_timeout_s`` per read or write.
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
        max_request_bytes: int = 4 << 20,
        max_connections: int = 512,
        listen_backlog: int = 1024,
        socket_timeout_s: float = 60.0,
        request_timeout_s: float = 600.0,
        device: str | None = None,
        dtype: str | None = None,
        engine: ChatEngine | None = None,
    ) -> None:
        for name, v in (
            ("max_batch_size", max_batch_size),
            ("max_queue", max_queue),
            ("max_request_bytes", max_request_bytes),
            ("max_connections", max_connections),
            ("listen_backlog", listen_backlog),
        ):
            if v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        self.engine = engine or ChatEngine(model_dir, device=device, dtype=dtype)
        self.served_name = served_name or Path(model_dir).resolve().name
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_ms / 1000.0
        self.max_tokens_limit = max_tokens_limit
        self.max_request_bytes = max_request_bytes
        self.socket_timeout_s = socket_timeout_s
        self.request_timeout_s = request_timeout_s
        self.queue: queue.Queue[GenerationRequest | None] = queue.Queue(maxsize=max_queue)
        self.connections = threading.BoundedSemaphore(max_connections)
        self.batches: list[int] = []  # sequences per generated batch (for stats and tests)
        self.created = int(time.time())
        self.httpd = _HTTPServer((host, port), make_handler(self), listen_backlog)
        self._threads: list[threading.Thread] = []
        self._stopped = False

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def url(self) -> str:
        host = self.httpd.server_address[0]
        return f"http://{host}:{self.port}/v1"

    def model_card(self) -> dict[str, Any]:
        return {
            "id": self.served_name,
            "object": "model",
            "created": self.created,
            "owned_by": "agentgym",
            "max_model_len": self.engine.max_context,
        }

    # -- the batching worker
    def _worker(self) -> None:
        while True:
            first = self.queue.get()
            if first is None:
                return
            batch = [first]
            rows = first.n
            deadline = time.monotonic() + self.batch_wait_s
            while rows < self.max_batch_size:
                left = deadline - time.monotonic()
                try:
                    nxt = self.queue.get(timeout=left) if left > 0 else self.queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self.queue.put(None)  # stop after this batch
                    break
                batch.append(nxt)
                rows += nxt.n
            self._run(batch)

    def _run(self, batch: list[GenerationRequest]) -> None:
        batch = [r for r in batch if not r.cancelled]
        if not batch:
            return
        try:
            self._generate(batch)
        except Exception as e:
            if len(batch) == 1:
                log.exception("generation failed")
                batch[0].fail(e)
                return
            # Find the culprit instead of failing everyone: each request again, alone. A
            # streamed request that already sent tokens cannot start over, so it fails.
            log.warning("a batch of %d requests failed (%s); retrying each alone", len(batch), e)
            for r in batch:
                if r.stream and any(c.tokens for c in r.choices):
                    r.fail(e)
                else:
                    r.reset()
                    self._run([r])

    def _generate(self, batch: list[GenerationRequest]) -> None:
        rows = [(r, c) for r in batch for c in r.choices]
        self.batches.append(len(rows))
        stop_checks = [StopCheck(self.engine, r.stop) for r, _ in rows]

        def on_token(i: int, tok: int, lp: float, top: list[tuple[int, float]]) -> bool:
            r, c = rows[i]
            c.tokens.append(tok)
            c.logprobs.append(lp)
            c.tops.append(top)
            if r.stream:
                r.events.put((c.index, len(c.tokens)))
            return r.cancelled or stop_checks[i].hit(c.tokens)

        finish = self.engine.decode(
            [r.prompt_ids for r, _ in rows], [r.sampling(c.index) for r, c in rows], on_token
        )
        for (_, c), f in zip(rows, finish):
            c.finish = f
        for r in batch:
            r.done.set()
            r.events.put(None)

    # -- called from connection threads
    def submit(self, req: GenerationRequest) -> None:
        """Tokenise ``req`` (in the caller's thread) and queue it; raise when that fails."""
        req.prompt_ids = self.engine.encode(req)
        try:
            self.queue.put_nowait(req)
        except queue.Full:
            raise RequestError(
                f"the server is overloaded ({self.queue.maxsize} requests queued); retry later",
                503,
            ) from None

    def wait(self, req: GenerationRequest) -> None:
        if not req.done.wait(self.request_timeout_s):
            req.cancelled = True
            raise RequestError(
                f"generation took longer than {self.request_timeout_s}s", 504, code="timeout"
            )
        if req.error is not None:
            raise RequestError(
                f"generation failed: {type(req.error).__name__}: {req.error}", 500
            ) from None

    def completion(self, req: GenerationRequest, rid: str) -> dict[str, Any]:
        """The ``chat.completion`` object of a finished request."""
        reply = ReplyText(self.engine, req)
        choices = []
        completion_tokens = 0
        for c in req.choices:
            content, calls, reason, kept = reply.final(c)
            completion_tokens += len(c.tokens)
            message: dict[str, Any] = {"role": "assistant", "content": content}
            if calls:
                message["tool_calls"] = calls
            choice: dict[str, Any] = {
                "index": c.index,
                "message": message,
                "finish_reason": reason,
                "logprobs": None,
            }
            if req.logprobs:
                choice["logprobs"] = {"content": reply.logprob_items(c, 0, kept)}
            choices.append(choice)
        return {
            "id": rid,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.served_name,
            "choices": choices,
            "usage": usage_counts(len(req.prompt_ids), completion_tokens),
        }

    # -- life cycle
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

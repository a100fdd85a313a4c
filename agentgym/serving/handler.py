"""The HTTP side of ``agentgym serve``: reading request bodies (``Content-Length`` or chunked,
with the size limit checked before a byte is read), routing, JSON replies and server-sent-event
streams. :func:`make_handler` binds a handler class to one :class:`ModelServer`.
"""

from __future__ import annotations

import json
import logging
import queue
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any

from agentgym.serving.engine import ReplyText
from agentgym.serving.protocol import (
    GenerationRequest,
    RequestError,
    parse_chat_request,
    usage_counts,
)

if TYPE_CHECKING:
    from agentgym.serving.server import ModelServer

__all__ = ["make_handler"]

log = logging.getLogger(__name__)


class _BodyError(Exception):
    """The request framing is unusable: answer ``error`` and close the connection."""

    def __init__(self, error: RequestError, drain: int = 0) -> None:
        super().__init__(str(error))
        self.error = error
        self.drain = drain


def make_handler(server: ModelServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "agentgym-serve"
        timeout = server.socket_timeout_s  # every read and write on the socket

        def log_message(self, fmt: str, *args: Any) -> None:
            log.debug("%s " + fmt, self.address_string(), *args)

        def handle(self) -> None:
            if not server.connections.acquire(blocking=False):
                # Over max_connections: answer at once rather than holding a thread per socket.
                try:
                    self.raw_requestline = self.rfile.readline(65537)
                    if self.parse_request():
                        self._error(
                            RequestError("too many open connections; retry later", 503),
                            close=True,
                        )
                except OSError:
                    pass
                return
            try:
                super().handle()
            finally:
                server.connections.release()

        # -- responses
        def _send(
            self, status: int, obj: Any, headers: dict[str, str] | None = None, close=False
        ) -> None:
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            if close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(data)

        def _error(self, e: RequestError, close: bool = False) -> None:
            headers = {"Retry-After": "1"} if e.status in (429, 503) else None
            self._send(e.status, e.to_json(), headers, close=close)

        # -- request bodies
        def handle_expect_100(self) -> bool:
            try:
                self._declared_length()
            except _BodyError as e:
                self._error(e.error, close=True)
                return False
            return super().handle_expect_100()

        def _declared_length(self) -> int | None:
            """The checked ``Content-Length`` (None for a chunked body)."""
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                return None
            raw = self.headers.get_all("Content-Length") or []
            if not raw:
                return 0
            if len(set(raw)) > 1 or not (raw[0].strip().isascii() and raw[0].strip().isdigit()):
                raise _BodyError(
                    RequestError(
                        f"Content-Length must be one non-negative integer, got {', '.join(raw)!r:.80}",
                        code="invalid_content_length",
                    )
                )
            n = int(raw[0])
            if n > server.max_request_bytes:
                raise _BodyError(self._too_large(n), drain=n)
            return n

        def _too_large(self, n: int | None = None) -> RequestError:
            size = f"{n} bytes" if n is not None else "the body"
            return RequestError(
                f"{size} is over this server's limit of {server.max_request_bytes} bytes per "
                "request; send a shorter conversation (or start the server with a larger "
                "max_request_bytes)",
                413,
            )

        def _read_body(self) -> bytes:
            n = self._declared_length()
            if n is not None:
                return self.rfile.read(n) if n else b""
            chunks, total = [], 0
            while True:
                line = self.rfile.readline(1026)
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise _BodyError(
                        RequestError(
                            f"bad chunk size line {line[:40]!r} in a chunked body",
                            code="invalid_chunked_body",
                        )
                    ) from None
                if size < 0:
                    raise _BodyError(RequestError("negative chunk size"))
                if total + size > server.max_request_bytes:
                    raise _BodyError(self._too_large(), drain=size)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                data = self.rfile.read(size)
                if len(data) < size:
                    raise _BodyError(RequestError("the chunked body ended early"))
                chunks.append(data)
                total += size
                self.rfile.readline(3)  # the CRLF after each chunk

        def _drain(self, n: int) -> None:
            """Discard up to ``n`` unread body bytes for a short while, so that the client reads
            our error instead of a connection reset; the bytes are never kept."""
            deadline = time.monotonic() + 2.0
            left = min(n, 64 << 20)
            try:
                self.connection.settimeout(0.5)
                while left > 0 and time.monotonic() < deadline:
                    got = self.rfile.read1(min(left, 1 << 16))
                    if not got:
                        break
                    left -= len(got)
            except OSError:
                pass

        # -- routes
        def do_GET(self) -> None:  # noqa: N802 - http.server API
            path = self.path.split("?", 1)[0].rstrip("/")
            if path in ("/v1/models", "/models"):
                self._send(200, {"object": "list", "data": [server.model_card()]})
            elif path.startswith(("/v1/models/", "/models/")):
                name = path.split("/models/", 1)[1]
                if name == server.served_name:
                    self._send(200, server.model_card())
                else:
                    self._error(
                        RequestError(
                            f"the model {name!r:.100} does not exist here; this server serves "
                            f"{server.served_name!r}",
                            404,
                            code="model_not_found",
                            param="model",
                        )
                    )
            elif path in ("/health", "/v1/health"):
                self._send(200, {"status": "ok", "queued": server.queue.qsize()})
            else:
                self._error(
                    RequestError(
                        f"no route GET {path:.100}; use /v1/models or /health",
                        404,
                        code="unknown_url",
                    )
                )

        def do_POST(self) -> None:  # noqa: N802 - http.server API
            path = self.path.split("?", 1)[0].rstrip("/")
            try:
                raw = self._read_body()
            except _BodyError as e:
                self._error(e.error, close=True)
                if e.drain:
                    self._drain(e.drain)
                return
            if path not in ("/v1/chat/completions", "/chat/completions"):
                self._error(
                    RequestError(
                        f"no route POST {path:.100}; use /v1/chat/completions",
                        404,
                        code="unknown_url",
                    )
                )
                return
            try:
                body = json.loads(raw.decode("utf-8") or "null")
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                self._error(RequestError(f"the body is not valid JSON: {e}", code="invalid_json"))
                return
            try:
                req = parse_chat_request(body, server.served_name, server.max_tokens_limit)
                server.submit(req)
            except RequestError as e:
                self._error(e)
                return
            except Exception as e:  # pragma: no cover - last resort, keep the server up
                log.exception("request failed before generation")
                self._error(RequestError(f"{type(e).__name__}: {e}", 500))
                return
            rid = "chatcmpl-" + uuid.uuid4().hex[:24]
            if req.stream:
                self._stream(req, rid)
                return
            try:
                server.wait(req)
                self._send(200, server.completion(req, rid))
            except RequestError as e:
                self._error(e)
            except (BrokenPipeError, ConnectionResetError):
                req.cancelled = True

        # -- streaming (server-sent events over a chunked response)
        def _chunk(self, data: bytes) -> None:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

        def _event(self, obj: Any) -> None:
            self._chunk(b"data: " + json.dumps(obj).encode() + b"\n\n")

        def _stream(self, req: GenerationRequest, rid: str) -> None:
            try:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                self._stream_events(req, rid)
                self._chunk(b"data: [DONE]\n\n")
                self._chunk(b"")
            except (TimeoutError, BrokenPipeError, ConnectionResetError):
                req.cancelled = True  # the client left: stop generating for it
                self.close_connection = True
            except Exception:  # pragma: no cover - a bug here must not leave the rows running
                log.exception("streaming failed")
                req.cancelled = True
                self.close_connection = True

        def _stream_delta(
            self,
            req: GenerationRequest,
            reply: ReplyText,
            i: int,
            k: int,
            sent: list[str],
            logged: list[int],
            chunk: Callable[..., dict[str, Any]],
        ) -> None:
            """Send choice ``i``'s new text (and logprobs) now that it has ``k`` tokens."""
            c = req.choices[i]
            text = reply.visible(c.tokens[:k])
            delta = text[len(sent[i]) :] if text.startswith(sent[i]) else ""
            lp = None
            if req.logprobs and k > logged[i]:
                lp = {"content": reply.logprob_items(c, logged[i], k)}
                logged[i] = k
            if delta or lp:
                sent[i] += delta
                self._event(chunk(i, {"content": delta}, None, lp))

        def _stream_events(self, req: GenerationRequest, rid: str) -> None:
            created = int(time.time())

            def chunk(
                index: int | None,
                delta: dict[str, Any] | None = None,
                finish: str | None = None,
                logprobs: dict[str, Any] | None = None,
                **extra: Any,
            ) -> dict[str, Any]:
                """A ``chat.completion.chunk`` for one choice (none when ``index`` is None)."""
                choices = []
                if index is not None:
                    choices.append(
                        {
                            "index": index,
                            "delta": delta,
                            "logprobs": logprobs,
                            "finish_reason": finish,
                        }
                    )
                return {
                    "id": rid,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": server.served_name,
                    "choices": choices,
                    **extra,
                }

            reply = ReplyText(server.engine, req)
            sent = ["" for _ in req.choices]  # content streamed so far, per choice
            logged = [0] * req.n  # tokens whose logprobs were streamed
            for c in req.choices:
                self._event(chunk(c.index, {"role": "assistant", "content": ""}))
            deadline = time.monotonic() + server.request_timeout_s
            while True:
                try:
                    ev = req.events.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    req.cancelled = True
                    err = RequestError(
                        f"generation took longer than {server.request_timeout_s}s", 504
                    )
                    self._event(err.to_json())
                    return
                # Take every event already queued and render each choice once: decoding the
                # whole reply per token would be quadratic when the client reads slowly.
                latest: dict[int, int] = {}
                finished = False
                while ev is not None:
                    latest[ev[0]] = ev[1]
                    try:
                        ev = req.events.get_nowait()
                    except queue.Empty:
                        break
                else:
                    finished = True
                for i, k in sorted(latest.items()):
                    self._stream_delta(req, reply, i, k, sent, logged, chunk)
                if finished:
                    break
            if req.error is not None:
                err = RequestError(
                    f"generation failed: {type(req.error).__name__}: {req.error}", 500
                )
                self._event(err.to_json())
                return
            total = 0
            for c in req.choices:
                content, calls, reason, kept = reply.final(c)
                total += len(c.tokens)
                delta: dict[str, Any] = {}
                rest = (content or "")[len(sent[c.index]) :]
                if rest and (content or "").startswith(sent[c.index]):
                    delta["content"] = rest
                if calls:
                    delta["tool_calls"] = [{"index": j, **call} for j, call in enumerate(calls)]
                self._event(chunk(c.index, delta, reason))
            if req.include_usage:
                self._event(chunk(None, usage=usage_counts(len(req.prompt_ids), total)))

    return Handler

"""An OpenAI-compatible chat server for a local Hugging Face model (``agentgym serve``).

Endpoints: ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /v1/models/{id}`` and
``GET /health``. It is what :class:`~agentgym.http_policy.OpenAIPolicy` talks to, so the same eval
command works against this server, vLLM or a hosted API. docs/serving.md lists the supported
request fields and the limits.

Design:

* Standard library HTTP, one thread per connection (:class:`ThreadingHTTPServer`) with a listen
  backlog of ``listen_backlog``, so a burst of connections queues in the kernel instead of being
  reset. The connection thread reads the body (``Content-Length`` or chunked; bodies over
  ``max_request_bytes`` get 413 before they are read), **validates every field** and **tokenises
  the prompt**; only a request that can no longer fail for its content reaches the batcher.
* One **batching worker** owns the model. It takes the first queued request, waits up to
  ``batch_wait_ms`` for more (up to ``max_batch_size`` sequences; ``n`` choices count as ``n``) and
  decodes them together through :meth:`ChatEngine.decode`, which runs the model with
  :func:`agentgym.decoding.decode`, the decoding loop the trainer's policy uses too.
  If a batch fails anyway, each of its requests is retried alone, so one request's failure is never
  its neighbours' failure.
* Bounded everywhere: the request queue holds ``max_queue`` requests (503 + ``Retry-After`` when
  full), at most ``max_connections`` connections are served at once (503 beyond), sockets time
  out after ``socket_timeout_s``, and a client that disconnects from a stream stops its rows.
* **Per-row sampling**: each choice samples with its own ``torch.Generator`` seeded from ``seed``
  (choice ``i`` of ``n`` uses ``seed + i``), so a seeded request gives the same reply whether it was
  batched with others or not (up to float rounding of padded batches); ``temperature=0`` is greedy.
* **Tool calls**: ``tools`` are presented through the chat template's ``tools`` support (or, for a
  template without it, a Hermes-style system block), and replies holding
  ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` are answered as ``tool_calls``. A
  malformed call stays plain ``content``.

Only ``transformers`` and ``torch`` are needed; nothing is downloaded (``HF_HUB_OFFLINE=1``).

Modules: :mod:`~agentgym.serving.protocol` (request validation, error objects),
:mod:`~agentgym.serving.tools` (Hermes tool calls), :mod:`~agentgym.serving.engine` (the model:
prompts, decoding, reply text), :mod:`~agentgym.serving.server` (:class:`ModelServer`, the
batching worker) and :mod:`~agentgym.serving.handler` (HTTP bodies, routes, streaming).
"""

from __future__ import annotations

from agentgym.serving.engine import ChatEngine
from agentgym.serving.protocol import (
    GenerationRequest,
    RequestError,
    SamplingParams,
    parse_chat_request,
)
from agentgym.serving.server import ModelServer
from agentgym.serving.tools import _hermes_messages, parse_tool_calls

__all__ = [
    "ChatEngine",
    "GenerationRequest",
    "ModelServer",
    "RequestError",
    "SamplingParams",
    "_hermes_messages",
    "parse_chat_request",
    "parse_tool_calls",
]

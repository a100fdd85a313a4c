"""Host-side collection of an exec's output: Docker's multiplexed stream read frame by frame
into buffers whose memory is bounded whatever the command prints."""

from __future__ import annotations

import collections
import struct
import time
from typing import Any

__all__ = ["Bytes", "Capped", "read_frames"]


class Capped:
    """Keeps the first and last ``limit / 2`` bytes of a stream."""

    def __init__(self, limit: int) -> None:
        self.half = max(1, limit // 2)
        self.head = bytearray()
        self.tail: collections.deque[bytes] = collections.deque()
        self.tail_len = 0
        self.total = 0

    def add(self, b: bytes) -> None:
        self.total += len(b)
        room = self.half - len(self.head)
        if room > 0:
            self.head += b[:room]
            b = b[room:]
        if b:
            self.tail.append(b)
            self.tail_len += len(b)
            while self.tail and self.tail_len - len(self.tail[0]) >= self.half:
                self.tail_len -= len(self.tail.popleft())

    @property
    def truncated(self) -> bool:
        return self.total > len(self.head) + self.tail_len or self.tail_len > self.half

    def text(self) -> str:
        tail = b"".join(self.tail)
        if len(tail) > self.half:
            tail = tail[-self.half :]
        cut = self.total - len(self.head) - len(tail)
        if cut <= 0:
            return (bytes(self.head) + tail).decode(errors="replace")
        return (
            bytes(self.head).decode(errors="replace")
            + f"\n[... {cut} bytes truncated ...]\n"
            + tail.decode(errors="replace")
        )


class Bytes:
    """Collects a stream up to ``limit`` bytes (chunks joined once: linear time); counts the rest."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.chunks: list[bytes] = []
        self.kept = 0
        self.total = 0

    def add(self, b: bytes) -> None:
        self.total += len(b)
        room = self.limit - self.kept
        if room > 0:
            b = b[:room]
            self.chunks.append(b)
            self.kept += len(b)

    @property
    def overflow(self) -> bool:
        return self.total > self.kept

    def value(self) -> bytes:
        return b"".join(self.chunks)


def read_frames(sock: Any, on_out: Any, on_err: Any, deadline: float) -> bool:
    """Read Docker's multiplexed stream (8-byte frame headers) from ``sock`` until EOF; return
    False when ``deadline`` (``time.monotonic``) passed first."""
    buf = bytearray()
    need = 8
    header: tuple[int, int] | None = None
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        sock.settimeout(min(left, 3600.0))
        try:
            b = sock.recv(1 << 20)
        except TimeoutError:
            return False
        if not b:
            return True
        buf += b
        while len(buf) >= need:
            if header is None:
                header = (buf[0], struct.unpack(">I", bytes(buf[4:8]))[0])
                del buf[:8]
                need = header[1]
                if need:
                    continue
            chunk = bytes(buf[:need])
            del buf[:need]
            (on_err if header[0] == 2 else on_out)(chunk)
            header, need = None, 8

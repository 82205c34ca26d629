"""What the parent and a sandbox worker exchange: length-prefixed JSON frames over pipes.

A frame is `<u32 json length>` then a UTF-8 JSON object. The parent never unpickles anything a worker sends:
JSON only, sizes checked, and it reads worker pipes without blocking (`FrameBuffer`), so a worker that stalls
mid-frame cannot hang the parent past its deadline.
"""

from __future__ import annotations

import os
import select
import struct
import time
from typing import Any

import orjson

HEADER = struct.Struct("<I")
MAX_FRAME_FROM_WORKER = 16 << 20
"""A worker frame larger than this is a protocol error (a tick of 30 episodes' calls is a few KB)."""


OPS = ("probe_new", "probe_more", "read", "branch", "extend", "probe", "prune", "probe_new_many", "probe_more_many",
       "extend_many", "read_many")
"""Question calls a worker sends, by op code (`read` is get_new_branch_final_answer, `read_many` its batch form)."""
OP_CODES = {name: code for code, name in enumerate(OPS)}


class ProtocolError(Exception):
    """The other side sent something malformed, or closed the pipe."""


def encode(obj: Any) -> bytes:
    data = orjson.dumps(obj)
    return HEADER.pack(len(data)) + data


def write_all(fd: int, data: bytes, deadline: float | None = None) -> None:
    """Write everything; on a non-blocking fd wait for room until `deadline` (monotonic), then TimeoutError."""
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            if wait == 0.0 or not select.select([], [fd], [], wait)[1]:
                raise TimeoutError("the worker stopped reading") from None
            continue
        view = view[n:]


def write_frame(fd: int, obj: Any) -> None:
    write_all(fd, encode(obj))


class FrameReader:
    """Blocking reads of frames (the worker side: its parent is trusted)."""

    def __init__(self, fd: int):
        self.fd, self.buf = fd, bytearray()

    def _fill(self, n: int) -> None:
        while len(self.buf) < n:
            chunk = os.read(self.fd, max(65536, n - len(self.buf)))
            if not chunk:
                raise EOFError("pipe closed")
            self.buf += chunk

    def read(self) -> Any:
        self._fill(HEADER.size)
        (n,) = HEADER.unpack_from(self.buf)
        self._fill(HEADER.size + n)
        obj = orjson.loads(memoryview(self.buf)[HEADER.size: HEADER.size + n])
        del self.buf[: HEADER.size + n]
        return obj


class FrameBuffer:
    """Non-blocking frame decoding of what a worker sent (the parent side): feed bytes, take whole frames."""

    def __init__(self, limit: int = MAX_FRAME_FROM_WORKER):
        self.limit, self.buf = limit, bytearray()

    def feed(self, data: bytes) -> None:
        self.buf += data

    def frames(self) -> list[dict[str, Any]]:
        out = []
        while len(self.buf) >= HEADER.size:
            (n,) = HEADER.unpack_from(self.buf)
            if n > self.limit:
                raise ProtocolError(f"frame of {n} bytes exceeds the limit of {self.limit}")
            if len(self.buf) < HEADER.size + n:
                break
            raw = bytes(memoryview(self.buf)[HEADER.size: HEADER.size + n])
            del self.buf[: HEADER.size + n]
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError as e:
                raise ProtocolError(f"malformed frame: {e}") from None
            if not isinstance(obj, dict):
                raise ProtocolError("malformed frame: not a JSON object")
            out.append(obj)
        return out


"""What the parent and a sandbox worker exchange: length-prefixed frames over pipes.

A frame is `<u32 length>` then its body: a UTF-8 JSON object (the body starts with `{`) for the handshake and
errors, or for the hot path a binary body that skips JSON's per-number cost:
* a *tick* (worker → parent): `T`, 3 zero bytes, `<u32 n>`, n little-endian int64 (8-aligned: the flat calls,
  see `broker`), then a JSON list of the episodes that finished, `[[slot, answer], ...]`;
* *replies* (parent → worker): `R`, 3 zero bytes, `<u32 n>`, n int64 (the flat replies), then JSON
  `[errors, strings]`.
The parent never unpickles anything a worker sends: JSON and int64 arrays only, sizes checked, and it reads
worker pipes without blocking (`FrameBuffer`), so a worker that stalls mid-frame cannot hang the parent past its
deadline.
"""

from __future__ import annotations

import os
import select
import struct
import sys
import time
from array import array
from typing import Any

import numpy as np
import orjson

HEADER = struct.Struct("<I")
KIND = struct.Struct("<B3xI")
"""A binary body's head: its kind and its number of int64 (which then start 8-aligned)."""
TICK, REPLIES = b"T"[0], b"R"[0]
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


class Tick:
    """A decoded tick: the flat calls (int64) and the finished episodes."""

    __slots__ = ("calls", "done")

    def __init__(self, calls: np.ndarray, done: Any):
        self.calls, self.done = calls, done


_NOTHING_NEW = orjson.dumps([[], []])


def _ints_frame(kind: int, ints: bytes, tail: Any) -> bytes:
    body = orjson.dumps(tail) if tail != [[], []] else _NOTHING_NEW
    n = len(ints) // 8
    return HEADER.pack(KIND.size + len(ints) + len(body)) + KIND.pack(kind, n) + ints + body


def encode_tick(calls: array, done: list[list[Any]]) -> bytes:
    """A worker's tick frame: `calls` an `array('q')` of the flat calls."""
    return _ints_frame(TICK, calls.tobytes(), done)


def encode_replies(replies: np.ndarray, errors: list[list[Any]], strings: list[list[Any]]) -> bytes:
    return _ints_frame(REPLIES, np.ascontiguousarray(replies, dtype="<i8").tobytes(), [errors, strings])


def _split_ints(raw: bytes | bytearray | memoryview) -> tuple[int, Any]:
    """(offset just past the ints, the JSON tail) of a binary body; ProtocolError when the sizes disagree."""
    if len(raw) < KIND.size:
        raise ProtocolError("malformed frame: truncated binary body")
    _, n = KIND.unpack_from(raw)
    end = KIND.size + 8 * n
    if end > len(raw):
        raise ProtocolError("malformed frame: its count exceeds its length")
    try:
        tail = orjson.loads(raw[end:])
    except orjson.JSONDecodeError as e:
        raise ProtocolError(f"malformed frame: {e}") from None
    return end, tail


def _decode_tick(raw: bytearray) -> Tick:
    """A tick body (writable, so that every tick reaches the broker's kernel with one array signature)."""
    end, done = _split_ints(raw)
    return Tick(np.frombuffer(raw, dtype="<i8", count=(end - KIND.size) // 8, offset=KIND.size), done)


def decode_replies(raw: bytes | memoryview) -> tuple[array, Any, Any]:
    """The worker side of a replies frame: (flat replies as `array('q')`, errors, strings)."""
    end, tail = _split_ints(raw)
    ints = array("q")
    ints.frombytes(raw[KIND.size: end])
    if sys.byteorder != "little":
        ints.byteswap()
    errors, strings = tail
    return ints, errors, strings


def write_all(fd: int, data: bytes | memoryview, deadline: float | None = None) -> None:
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
        body = memoryview(self.buf)[HEADER.size: HEADER.size + n]
        try:
            obj = decode_replies(body) if n and body[0] == REPLIES else orjson.loads(body)
        finally:
            body.release()
        del self.buf[: HEADER.size + n]
        return obj


class FrameBuffer:
    """Non-blocking frame decoding of what a worker sent (the parent side): feed bytes, take whole frames."""

    def __init__(self, limit: int = MAX_FRAME_FROM_WORKER):
        self.limit, self.buf = limit, bytearray()

    def feed(self, data: bytes) -> None:
        self.buf += data

    def take(self, data: bytes) -> list[dict[str, Any] | Tick]:
        """`feed(data)` then `frames()`; the common case of one whole tick frame and nothing buffered is decoded
        without going through the buffer."""
        if not self.buf and len(data) >= HEADER.size + KIND.size and data[HEADER.size] == TICK:
            (n,) = HEADER.unpack_from(data)
            if len(data) == HEADER.size + n and n <= self.limit:
                return [_decode_tick(bytearray(data[HEADER.size:]))]
        self.buf += data
        return self.frames()

    def frames(self) -> list[dict[str, Any] | Tick]:
        out: list[dict[str, Any] | Tick] = []
        while len(self.buf) >= HEADER.size:
            (n,) = HEADER.unpack_from(self.buf)
            if n > self.limit:
                raise ProtocolError(f"frame of {n} bytes exceeds the limit of {self.limit}")
            if len(self.buf) < HEADER.size + n:
                break
            raw = bytearray(memoryview(self.buf)[HEADER.size: HEADER.size + n])
            del self.buf[: HEADER.size + n]
            if n and raw[0] == TICK:
                out.append(_decode_tick(raw))
                continue
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError as e:
                raise ProtocolError(f"malformed frame: {e}") from None
            if not isinstance(obj, dict):
                raise ProtocolError("malformed frame: not a JSON object")
            out.append(obj)
        return out


"""What the parent and a sandbox worker exchange: length-prefixed frames over pipes, and the replay data.

A frame is `<u32 json length><u32 blob length>`, a UTF-8 JSON object, then raw bytes (numpy arrays). The parent
never unpickles anything a worker sends: JSON and fixed-dtype arrays only, with sizes checked.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from array import array
from typing import Any

import numpy as np

from core.environment import ReplayEnvironment

HEADER = struct.Struct("<II")
MAX_FRAME_FROM_WORKER = 64 << 20
"""A worker frame larger than this is a protocol error (a result frame for 100 seeds × 30 questions is ~100 KB)."""


class ProtocolError(Exception):
    """The other side sent something malformed, or closed the pipe."""


def write_frame(fd: int, obj: dict[str, Any], blob: bytes = b"") -> None:
    data = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
    buf = memoryview(HEADER.pack(len(data), len(blob)) + data + blob)
    while buf:
        n = os.write(fd, buf)
        buf = buf[n:]


class FrameReader:
    """Reads frames from a pipe with as few system calls as possible (one per frame when it arrived whole)."""

    def __init__(self, fd: int, limit: int | None = None):
        self.fd, self.limit, self.buf = fd, limit, bytearray()

    def _fill(self, n: int) -> None:
        while len(self.buf) < n:
            chunk = os.read(self.fd, max(4096, n - len(self.buf)))
            if not chunk:
                raise EOFError("pipe closed")
            self.buf += chunk

    def read(self) -> tuple[dict[str, Any], bytes]:
        """One frame; EOFError when the pipe closes, ProtocolError when the frame is malformed or too big."""
        self._fill(HEADER.size)
        n_json, n_blob = HEADER.unpack_from(self.buf)
        if self.limit is not None and n_json + n_blob > self.limit:
            raise ProtocolError(f"frame of {n_json + n_blob} bytes exceeds the limit of {self.limit}")
        end = HEADER.size + n_json + n_blob
        self._fill(end)
        raw = bytes(self.buf[HEADER.size: HEADER.size + n_json])
        blob = bytes(self.buf[HEADER.size + n_json: end]) if n_blob else b""
        del self.buf[:end]
        try:
            obj = json.loads(raw)
        except (ValueError, RecursionError) as e:
            raise ProtocolError(f"malformed frame: {e}") from None
        if not isinstance(obj, dict):
            raise ProtocolError("malformed frame: not a JSON object")
        return obj, blob


# ----- replay data without gold -------------------------------------------------------------------------------
_ARRAYS = (("branch_offsets", "<i8"), ("interval", "<i8"), ("branch_tokens", "<i8"), ("branch_final", "<i4"),
           ("probe_offsets", "<i8"), ("probe_answers", "<i4"))


def encode_env(env: ReplayEnvironment) -> tuple[dict[str, Any], bytes]:
    """The tables a controller's question objects need, from a copy without gold answers or question texts."""
    safe = env.without_gold()
    parts: list[bytes] = []
    layout = []
    for name, dtype in _ARRAYS:
        arr = np.ascontiguousarray(getattr(safe, name), dtype=dtype)
        layout.append([name, dtype, int(arr.shape[0])])
        parts.append(arr.tobytes())
    header = {"name": safe.name, "vocab": [list(v) for v in safe.answer_vocab], "arrays": layout}
    return header, b"".join(parts)


def decode_env(header: dict[str, Any], blob: bytes) -> ReplayEnvironment:
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for name, dtype, n in header["arrays"]:
        size = np.dtype(dtype).itemsize * n
        arrays[name] = np.frombuffer(blob, dtype=dtype, count=n, offset=offset).astype(dtype.lstrip("<"))
        offset += size
    vocab = tuple(tuple(v) for v in header["vocab"])
    n_q = len(vocab)
    return ReplayEnvironment(
        name=header["name"], metadata={}, questions=("",) * n_q, gold_answers=None, answer_vocab=vocab,
        gold_ids=np.full(n_q, -1, dtype=np.int32), **arrays,
    )


# ----- per-episode fingerprint ------------------------------------------------------------------------------------
def fingerprint(question: Any) -> int:
    """CRC-32 of the per-branch state an episode's actions leave (depth, pruned, read in full); −1 if unreadable."""
    try:
        return zlib.crc32(array("q", question._depth).tobytes())
    except Exception:
        return -1


def options_label(options: dict[str, Any]) -> str:
    """`beta=0.5,max_rounds=100`: the key of a setting in CandidateRun.results."""
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return format(v, "g") if v == v and abs(v) < 1e15 else repr(v)
        return str(v)

    return ",".join(f"{k}={fmt(v)}" for k, v in options.items())

"""Running candidate code: loading the module, solving one episode, captured output, and error reports.

Used inside a sandbox worker (`_child.py`) and, for `level="off"`, in the calling process. Everything that
reaches the parent is plain data; every failure becomes a `CandidateFailure` with a short message and the
traceback lines that point into the candidate's code.
"""

from __future__ import annotations

import linecache
import sys
import time
import traceback
import types
from collections.abc import Callable
from typing import Any

from core.controller_files import find_controller_class, instantiate
from core.errors import ControllerSpecError
from core.sandbox._guard import ForbiddenImport, candidate_builtins
from core.specs import format_options

FILENAME = "<candidate>"
MODULE_NAME = "autotts_candidate"
MAX_ANSWER_CHARS = 10_000
MAX_MESSAGE_CHARS = 400
MAX_TRACEBACK_CHARS = 4_000


class CandidateFailure(Exception):
    """The candidate failed; `kind` is syntax, import, load, options, run, memory or protocol."""

    def __init__(self, kind: str, message: str, traceback_text: str | None = None, **where: Any):
        super().__init__(message)
        self.kind, self.message, self.traceback_text, self.where = kind, message, traceback_text, where

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "error": self.message, "traceback": self.traceback_text, **self.where}


def _short(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    text = str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def candidate_traceback(exc: BaseException) -> str | None:
    """The frames of `exc` that lie in the candidate's code (source lines included) and the exception line."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == FILENAME]
    lines = traceback.StackSummary.from_list(frames).format() if frames else []
    if len(lines) > 12:
        lines = lines[:4] + [f"  ... {len(lines) - 8} more frames ...\n"] + lines[-4:]
    tail = traceback.format_exception_only(type(exc), exc)
    text = ("Traceback (candidate frames):\n" + "".join(lines) if lines else "") + "".join(tail)
    if len(text) > MAX_TRACEBACK_CHARS:
        text = text[:1500] + "\n  ...\n" + text[-(MAX_TRACEBACK_CHARS - 1520):]
    return text


def _describe(exc: BaseException) -> str:
    msg = str(exc)
    return f"{type(exc).__name__}: {_short(msg)}" if msg else type(exc).__name__


# ----- loading -------------------------------------------------------------------------------------------------
def compile_candidate(source: str) -> types.CodeType:
    """The candidate module's code object (compiling runs none of it); CandidateFailure for a bad source."""
    try:
        return compile(source, FILENAME, "exec", dont_inherit=True)
    except SyntaxError as e:
        tb = "".join(traceback.format_exception_only(type(e), e))
        where = f" at line {e.lineno}" if e.lineno else ""
        raise CandidateFailure("syntax", f"{type(e).__name__}{where}: {e.msg}", tb, line=e.lineno) from None
    except ValueError as e:
        if "null bytes" in str(e):  # a SyntaxError from Python 3.11.4 on, a ValueError before
            raise CandidateFailure("syntax", f"SyntaxError: {e}") from None
        raise CandidateFailure("syntax", f"the source could not be compiled: {_describe(e)}") from None
    except (MemoryError, RecursionError) as e:
        raise CandidateFailure("syntax", f"the source could not be compiled: {_describe(e)}") from None


def load_candidate(source: str, memory_mb: int | None = None, code: types.CodeType | None = None) -> Any:
    """Execute the candidate module (`code`, else `source` compiled here) with guarded builtins; return its
    controller class (or module)."""
    lines = source.splitlines(True)
    linecache.cache[FILENAME] = (len(source), None, lines, FILENAME)
    if code is None:
        code = compile_candidate(source)
    module = types.ModuleType(MODULE_NAME)
    module.__file__ = FILENAME
    module.__dict__["__builtins__"] = candidate_builtins()
    sys.modules[MODULE_NAME] = module  # dataclasses and typing look the module up by name
    try:
        exec(code, module.__dict__)
    except ForbiddenImport as e:
        raise CandidateFailure("import", str(e), candidate_traceback(e)) from None
    except MemoryError as e:
        raise CandidateFailure("memory", _memory_message(memory_mb, "while loading the module"),
                               candidate_traceback(e)) from None
    except BaseException as e:  # noqa: BLE001 - any failure of untrusted code is reported, never propagated
        raise CandidateFailure("load", f"loading the controller module raised {_describe(e)}",
                               candidate_traceback(e)) from None
    try:
        return find_controller_class(module)
    except ControllerSpecError as e:
        raise CandidateFailure("load", str(e)) from None


def _memory_message(memory_mb: int | None, where: str) -> str:
    limit = f" ({memory_mb} MB)" if memory_mb else ""
    return f"memory limit{limit} exceeded {where}"


def build_controller(target: Any, options: dict[str, Any], memory_mb: int | None = None) -> Any:
    label = format_options(options) or "default options"
    try:
        return instantiate(target, dict(options))
    except ControllerSpecError as e:
        raise CandidateFailure("options", f"options {label}: {e}") from None
    except MemoryError as e:
        raise CandidateFailure("memory", _memory_message(memory_mb, f"while constructing the controller ({label})"),
                               candidate_traceback(e)) from None
    except BaseException as e:  # noqa: BLE001
        raise CandidateFailure("options", f"constructing the controller with {label} raised {_describe(e)}",
                               candidate_traceback(e)) from None


# ----- one episode ---------------------------------------------------------------------------------------------
def solve_episode(target: Any, options: dict[str, Any], question: Any, where: str,
                  memory_mb: int | None = None) -> str | None:
    """A fresh controller solves one question; any failure becomes a CandidateFailure that says `where`."""
    controller = build_controller(target, options, memory_mb)
    try:
        answer = controller.solve(question)
    except MemoryError as e:
        raise CandidateFailure("memory", _memory_message(memory_mb, f"({where})"), candidate_traceback(e)) from None
    except ForbiddenImport as e:
        raise CandidateFailure("import", f"{e} (in solve(), {where})", candidate_traceback(e)) from None
    except BaseException as e:  # noqa: BLE001 - SystemExit and friends are reported too
        raise CandidateFailure("run", f"solve() raised {_describe(e)} ({where})", candidate_traceback(e)) from None
    if answer is not None and not isinstance(answer, str):
        raise CandidateFailure("run", f"solve() returned {type(answer).__name__} {answer!r:.60} ({where}); "
                               "return the answer string (or None for no answer)")
    if answer is not None and len(answer) > MAX_ANSWER_CHARS:
        raise CandidateFailure("run", f"solve() returned a string of {len(answer)} characters ({where}); the "
                               f"limit is {MAX_ANSWER_CHARS}")
    return answer


# ----- captured output -----------------------------------------------------------------------------------------
class CappedText:
    """A text stream that keeps the last `limit` characters written (and counts the rest); `sink` gets flushes."""

    encoding = "utf-8"
    errors = "replace"

    def __init__(self, limit: int, sink: Callable[[str], None] | None = None, every_s: float = 0.25):
        self.limit = max(1024, int(limit))
        self.sink = sink
        self.every_s = every_s
        self.parts: list[str] = []
        self.size = 0
        self.dropped = 0
        self.last_flush = time.monotonic()

    def write(self, s: Any) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        n = len(s)
        if n >= self.limit:
            self.dropped += self.size + n - self.limit
            self.parts, self.size = [s[-self.limit:]], self.limit
        else:
            self.parts.append(s)
            self.size += n
            if self.size > 2 * self.limit:
                self._trim()
        if self.sink is not None and time.monotonic() - self.last_flush > self.every_s:
            self.flush()
        return n

    def _trim(self) -> None:
        text = "".join(self.parts)
        keep = text[-self.limit:]
        self.dropped += len(text) - len(keep)
        self.parts, self.size = [keep], len(keep)

    def take(self) -> str:
        """Everything kept since the last take, with a marker for what was dropped."""
        if self.size > self.limit:
            self._trim()
        text = "".join(self.parts)
        if self.dropped:
            text = f"[... {self.dropped} characters of output dropped ...]\n" + text
        self.parts, self.size, self.dropped = [], 0, 0
        return text

    def flush(self) -> None:
        self.last_flush = time.monotonic()
        if self.sink is not None and (self.parts or self.dropped):
            self.sink(self.take())

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        raise OSError("captured output has no file descriptor")

"""Running candidate code: loading the module, evaluation units, audit episodes, and error reports.

Used inside a sandbox worker (`_worker.py`) and, for `level="off"`, in the calling process. Everything that
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

import numpy as np

from core.controller_files import find_controller_class, instantiate
from core.environment import ReplayEnvironment, ReplayQuestion
from core.errors import ControllerSpecError
from core.evaluate import ControllerRunError, run_episodes
from core.sandbox._guard import ForbiddenImport, candidate_builtins
from core.sandbox._protocol import fingerprint, options_label

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


class CandidateExit(Exception):
    """A BaseException (SystemExit, KeyboardInterrupt, …) raised by candidate code, made catchable."""


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


def _is_memory(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError)


# ----- loading -------------------------------------------------------------------------------------------------
def load_candidate(source: str, memory_mb: int | None = None) -> Any:
    """Compile and execute the candidate module with guarded builtins; return its controller class (or module)."""
    lines = source.splitlines(True)
    linecache.cache[FILENAME] = (len(source), None, lines, FILENAME)
    try:
        code = compile(source, FILENAME, "exec", dont_inherit=True)
    except SyntaxError as e:
        tb = "".join(traceback.format_exception_only(type(e), e))
        where = f" at line {e.lineno}" if e.lineno else ""
        raise CandidateFailure("syntax", f"{type(e).__name__}{where}: {e.msg}", tb, line=e.lineno) from None
    except (ValueError, MemoryError, RecursionError) as e:
        raise CandidateFailure("syntax", f"the source could not be compiled: {_describe(e)}") from None
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
    label = options_label(options) or "default options"
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


# ----- the fast run: one (environment, options) unit -----------------------------------------------------------
class _Recorder:
    """Wraps the candidate for run_episodes: records branches opened and the final branch state per episode."""

    __slots__ = ("_solve", "opened", "fp", "k")

    def __init__(self, solve: Callable[[Any], Any], n: int):
        self._solve = solve
        self.opened = np.zeros(n, dtype=np.int32)
        self.fp = np.zeros(n, dtype=np.int64)
        self.k = 0

    def solve(self, question: Any) -> Any:
        try:
            answer = self._solve(question)
        except Exception:
            raise
        except BaseException as e:  # SystemExit and friends: report them with the seed and question
            raise CandidateExit(_describe(e)) from e
        k = self.k
        if k < len(self.opened):
            self.opened[k] = question._next
            self.fp[k] = fingerprint(question)
        self.k = k + 1
        if isinstance(answer, str) and len(answer) > MAX_ANSWER_CHARS:
            raise ValueError(f"solve() returned a string of {len(answer)} characters (the limit is {MAX_ANSWER_CHARS})")
        return answer


def _run_failure(e: ControllerRunError, env_name: str, label: str, memory_mb: int | None) -> CandidateFailure:
    where = f"env {env_name}, {label or 'default options'}, seed {e.seed}, question {e.question}"
    cause = e.__cause__
    if cause is None:  # a bad return value: the message already says what came back
        msg = str(e).rsplit(" (seed ", 1)
        text = msg[0] + f" ({where})" + (msg[1].split(")", 1)[1] if len(msg) > 1 else "")
        return CandidateFailure("run", _short(text, 600), None, seed=e.seed, question=e.question)
    if isinstance(cause, CandidateExit):
        cause = cause.__cause__ or cause
    if _is_memory(cause):
        return CandidateFailure("memory", _memory_message(memory_mb, f"({where})"), candidate_traceback(cause),
                                seed=e.seed, question=e.question)
    if isinstance(cause, ForbiddenImport):
        return CandidateFailure("import", f"{cause} (in solve(), {where})", candidate_traceback(cause),
                                seed=e.seed, question=e.question)
    return CandidateFailure("run", f"solve() raised {_describe(cause)} ({where})", candidate_traceback(cause),
                            seed=e.seed, question=e.question)


def run_unit(env: ReplayEnvironment, target: Any, options: dict[str, Any], seeds: list[int],
             memory_mb: int | None = None) -> dict[str, Any]:
    """Run every (seed, question) of one setting: answers, tokens, branches opened and fingerprints."""
    controller = build_controller(target, options, memory_mb)
    n_s, n_q = len(seeds), env.n_questions
    recorder = _Recorder(controller.solve, n_s * n_q)
    label = options_label(options)
    start = time.perf_counter()
    try:
        episodes = run_episodes(env, recorder, seeds, fast=False)
    except ControllerRunError as e:
        failure = _run_failure(e, env.name, label, memory_mb)
        e.__cause__ = e.__context__ = None
        raise failure from None
    except MemoryError as e:
        raise CandidateFailure("memory", _memory_message(memory_mb, f"(env {env.name}, {label})"),
                               candidate_traceback(e)) from None
    return {
        "answers": episodes.answers,
        "tokens": episodes.tokens.astype(np.int64),
        "opened": recorder.opened.reshape(n_s, n_q),
        "fp": recorder.fp.reshape(n_s, n_q),
        "seconds": time.perf_counter() - start,
    }


# ----- the audit: one episode against a question that holds no data ----------------------------------------------
def _index(i: Any) -> int:
    if isinstance(i, bool | int | np.integer):
        return int(i)
    raise ValueError(f"branch index must be an int, got {type(i).__name__}")


class RemoteQuestion(ReplayQuestion):
    """The question API with no replay data in this process: every call is answered by the parent, which holds
    the real tables, charges the costs and records the actions. Private fields of ReplayQuestion stay unset."""

    __slots__ = ("_call",)

    def __init__(self, call: Callable[..., Any], interval: int):  # noqa: D107 - no super().__init__: no tables here
        self._call = call
        self.probe_freq = interval

    def probe_new(self) -> tuple[str, int, bool]:
        a, i, fin = self._call("probe_new")
        return a, i, fin

    def probe_more(self, i: int) -> tuple[str, bool]:
        a, fin = self._call("probe_more", _index(i))
        return a, fin

    def get_new_branch_final_answer(self) -> str:
        return self._call("get_new_branch_final_answer")

    def get_seq_and_total_tokens(self) -> tuple[int, int]:
        a, b = self._call("get_seq_and_total_tokens")
        return a, b

    def branch(self) -> int:
        return self._call("branch")

    def extend(self, i: int) -> bool:
        return self._call("extend", _index(i))

    def probe(self, i: int) -> str:
        return self._call("probe", _index(i))

    def prune(self, i: int) -> None:
        self._call("prune", _index(i))

    def is_finished(self, i: int) -> bool:
        return self._call("is_finished", _index(i))

    def depth(self, i: int) -> int:
        return self._call("depth", _index(i))

    @property
    def fresh_branches_left(self) -> int:
        return self._call("fresh_branches_left")

    @property
    def num_opened(self) -> int:
        return self._call("num_opened")

    def __repr__(self) -> str:
        return "<ReplayQuestion (audit)>"


REMOTE_METHODS = {"probe_new": 0, "probe_more": 1, "get_new_branch_final_answer": 0, "get_seq_and_total_tokens": 0,
                  "branch": 0, "extend": 1, "probe": 1, "prune": 1, "is_finished": 1, "depth": 1}
REMOTE_PROPERTIES = ("fresh_branches_left", "num_opened")
REMOTE_ERRORS: dict[str, type[Exception]] = {"ValueError": ValueError, "IndexError": IndexError,
                                             "TypeError": TypeError}


def answer_call(question: ReplayQuestion, op: Any, args: Any) -> tuple[bool, Any]:
    """Parent side: perform one call of a remote question on the real one; (ok, result) or (False, [type, msg])."""
    if op in REMOTE_PROPERTIES and not args:
        return True, getattr(question, op)
    n = REMOTE_METHODS.get(op) if isinstance(op, str) else None
    if n is None or not isinstance(args, list) or len(args) != n or any(type(a) is not int for a in args):
        return False, ["TypeError", f"bad question call {str(op)[:40]!r}"]
    try:
        return True, getattr(question, op)(*args)
    except (ValueError, IndexError, TypeError) as e:
        return False, [type(e).__name__, str(e)]


def raise_remote(err: list[Any]) -> None:
    cls = REMOTE_ERRORS.get(err[0], RuntimeError)
    raise cls(err[1])


def run_audit_episode(target: Any, options: dict[str, Any], call: Callable[..., Any], interval: int,
                      memory_mb: int | None = None) -> str | None:
    """Solve one question through a RemoteQuestion with a fresh controller; returns the answer."""
    controller = build_controller(target, options, memory_mb)
    question = RemoteQuestion(call, interval)
    try:
        answer = controller.solve(question)
    except MemoryError as e:
        raise CandidateFailure("memory", _memory_message(memory_mb, "(audit re-run)"), candidate_traceback(e)) from None
    except BaseException as e:  # noqa: BLE001
        if isinstance(e, ForbiddenImport):
            raise CandidateFailure("import", str(e), candidate_traceback(e)) from None
        raise CandidateFailure("run", f"solve() raised {_describe(e)}", candidate_traceback(e)) from None
    if answer is not None and not isinstance(answer, str):
        raise CandidateFailure("run", f"solve() returned {type(answer).__name__} {answer!r:.60}")
    if answer is not None and len(answer) > MAX_ANSWER_CHARS:
        raise CandidateFailure("run", f"solve() returned a string of {len(answer)} characters")
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

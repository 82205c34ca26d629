"""The controller protocol, the registry of built-ins, and controller specs (`cmc:beta=0.5`)."""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from core.errors import ControllerSpecError
from core.specs import format_spec, parse_options, split_spec

if TYPE_CHECKING:
    import numpy as np

    from core.environment import ReplayEnvironment


@runtime_checkable
class Controller(Protocol):
    """Anything with `solve(question) -> answer`; `question` offers the API of `core.environment.ReplayQuestion`."""

    def solve(self, question: Any) -> str | None: ...


class BuiltinController:
    """Base of the built-in controllers: frozen dataclasses whose fields are their documented options.

    `solve` is the readable reference implementation, driven through the question API (it runs on live
    models too). `run_replay` is the compiled fast path over a whole replay environment; the test suite
    checks that both give identical answers and costs.
    """

    name: ClassVar[str]
    summary: ClassVar[str]

    def solve(self, question: Any) -> str | None:  # pragma: no cover - overridden
        raise NotImplementedError

    def run_replay(self, env: ReplayEnvironment, seeds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Answer ids (int32[S, Q], −1 for no answer) and costs (int64[S, Q]) for every seed and question."""
        raise NotImplementedError

    @property
    def spec(self) -> ControllerSpec:
        defaults = {f.name: f.default for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        args = tuple((k, v) for k, v in dataclasses.asdict(self).items() if v != defaults[k])  # type: ignore[call-overload]
        return ControllerSpec(self.name, args)


# ----- batch helpers: one call per round, so that a live question decodes the round's branches together -----------
def open_branches(question: Any, n: int) -> list[tuple[str, int, bool]]:
    """`probe_new` up to n times, stopping when the pool runs out: [(answer, index, finished), ...].

    Uses the question's `probe_new_many` when it has one (replay and live questions do), else single calls."""
    many = getattr(question, "probe_new_many", None)
    if many is not None:
        return many(n)
    out = []
    for _ in range(n):
        try:
            out.append(question.probe_new())
        except (ValueError, IndexError):
            break
    return out


def step_branches(question: Any, indices: list[int]) -> list[tuple[str, bool]]:
    """`probe_more` on each index, in order: [(answer, finished), ...] (`probe_more_many` when available)."""
    many = getattr(question, "probe_more_many", None)
    if many is not None:
        return many(indices)
    return [question.probe_more(i) for i in indices]


def read_branches(question: Any, n: int) -> list[str]:
    """Up to n full reads, stopping when the pool runs out (`get_new_branch_final_answers` when available)."""
    many = getattr(question, "get_new_branch_final_answers", None)
    if many is not None:
        return many(n)
    out = []
    for _ in range(n):
        try:
            out.append(question.get_new_branch_final_answer())
        except IndexError:
            break
    return out


@dataclass(frozen=True)
class ControllerSpec:
    """A controller by name and arguments; its string form (`cmc:beta=0.5`) regenerates it exactly."""

    name: str
    args: tuple[tuple[str, Any], ...] = ()

    def __str__(self) -> str:
        return format_spec(self.name, self.args)

    def build(self) -> Any:
        if self.name.endswith(".py"):
            from core.controller_files import load_controller_file

            return load_controller_file(self.name, dict(self.args))
        cls = BUILTINS.get(self.name)
        if cls is None:
            raise ControllerSpecError(_unknown_name(self.name))
        return cls(**dict(self.args))


BUILTINS: dict[str, type[BuiltinController]] = {}


def register(cls: type[BuiltinController]) -> type[BuiltinController]:
    BUILTINS[cls.name] = cls
    return cls


def _unknown_name(name: str) -> str:
    known = ", ".join(sorted(BUILTINS))
    return f"unknown controller '{name}': use one of {known}, or a controller file path/to/file.py"


def _coerce(cls: type[BuiltinController], key: str, raw: str, spec_text: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]  # the built-ins are dataclasses
    if key not in fields:
        options = ", ".join(fields) or "(none)"
        raise ControllerSpecError(f"'{spec_text}': {cls.name} has no option '{key}'; its options are {options}")
    kind: type = type(fields[key].default)
    try:
        if kind is bool:
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return raw.lower() in ("true", "1")
        if kind is int:
            value = float(raw)
            if value != int(value):
                raise ValueError
            return int(value)
        return kind(raw)
    except ValueError:
        raise ControllerSpecError(
            f"'{spec_text}': option '{key}' of {cls.name} needs a {kind.__name__}, got '{raw}'"
        ) from None


def parse_spec(text: str) -> list[ControllerSpec]:
    """Parse `NAME` or `NAME:key=value,key=value`; a value list (`beta=0,0.5,1`) expands to a sweep.

    `NAME` may be a controller file (`path/to/file.py:beta=0.5`), whose options are passed to it unchecked.
    """
    text = text.strip()
    name, rest = split_spec(text)
    if not name:
        raise ControllerSpecError(f"'{text}': empty controller name; write e.g. cmc:beta=0.5")
    is_file = name.endswith(".py")
    if not is_file:
        name = name.lower().replace("_", "-")
        if name not in BUILTINS:
            raise ControllerSpecError(f"'{text}': {_unknown_name(name)}")
    values = parse_options(rest, text)
    keys = list(values)
    if is_file:
        typed = {k: [_guess_type(v) for v in vs] for k, vs in values.items()}
    else:
        cls = BUILTINS[name]
        typed = {k: [_coerce(cls, k, v, text) for v in vs] for k, vs in values.items()}
    combos = itertools.product(*(typed[k] for k in keys)) if keys else [()]
    specs = [ControllerSpec(name, tuple(zip(keys, combo, strict=True))) for combo in combos]
    if not is_file:
        for spec in specs:  # a value the controller rejects (sc:n=-3) is a spec error, said before anything runs
            try:
                spec.build()
            except ValueError as e:
                raise ControllerSpecError(f"'{text}': {e}") from None
    return specs


def _guess_type(raw: str) -> Any:
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(raw.lower(), raw)

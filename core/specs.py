"""Controller spec strings, formatted and parsed in one place.

A spec is `NAME` or `NAME:OPTIONS` (`cmc:beta=0.5`, `path/to/file.py:beta=0.5`); OPTIONS is `key=value,key=value`
(`beta=0.5,max_rounds=100`), which alone also labels a setting (a β row in a run store, a sandbox result key). A
value list (`beta=0,0.5,1`) is a sweep: `core.controllers.parse_spec` types the values against the controller and
expands it. Formatting a parsed spec gives the string back, so a spec round-trips exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from core.errors import ControllerSpecError


def format_value(v: Any) -> str:
    """An option value as a spec writes it: floats in the shortest form that reads back the same (`0.5`, `1`)."""
    if isinstance(v, float):
        return format(v, "g") if v == v and abs(v) < 1e15 else repr(v)
    return str(v)


def format_options(options: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> str:
    """`beta=0.5,max_rounds=100`, in the order given."""
    items = options.items() if isinstance(options, Mapping) else options
    return ",".join(f"{k}={format_value(v)}" for k, v in items)


def format_spec(name: str, options: Mapping[str, Any] | Iterable[tuple[str, Any]] = ()) -> str:
    """`cmc:beta=0.5`, or just the name when there are no options."""
    text = format_options(options)
    return f"{name}:{text}" if text else name


def beta_label(beta: float) -> str:
    """The label of one β setting: `beta=0.5`."""
    return format_options({"beta": beta})


def cmc_spec(beta: float) -> str:
    """The spec of the paper's controller at one β: `cmc:beta=0.5`."""
    return format_spec("cmc", {"beta": beta})


def split_spec(text: str) -> tuple[str, str]:
    """(name, options text) of a spec: `cmc:beta=0.5` → ("cmc", "beta=0.5"); the options text may be empty."""
    name, _, options = text.strip().partition(":")
    return name.strip(), options


def parse_options(options: str, spec: str | None = None) -> dict[str, list[str]]:
    """key → raw values of an options text, in order: `beta=0,0.5,1,n=3` → {"beta": ["0", "0.5", "1"], "n": ["3"]}.
    Errors (ControllerSpecError) quote `spec` (default: the options text)."""
    quoted = options if spec is None else spec
    values: dict[str, list[str]] = {}
    current: str | None = None
    for token in (t.strip() for t in options.split(",")) if options.strip() else ():
        if "=" in token:
            current, _, raw = token.partition("=")
            current = current.strip()
            if not current:
                raise ControllerSpecError(f"'{quoted}': missing option name before '='")
            if current in values:
                raise ControllerSpecError(f"'{quoted}': option '{current}' given twice")
            values[current] = [raw.strip()]
        elif current is None:
            raise ControllerSpecError(f"'{quoted}': expected key=value after ':', got '{token}'")
        else:
            values[current].append(token)
        if values[current][-1] == "":
            raise ControllerSpecError(f"'{quoted}': option '{current}' has an empty value")
    return values

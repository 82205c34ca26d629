"""Question files, read the same way by `autotts collect` and `autotts solve`.

JSONL (one object per line) or a JSON list; a paper-format replay file works too. Each object has `question` (or
`problem`) and `gold_answer` (or `answer`); where the gold answer is optional (live solving) a plain string is a
question too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from core.collect.backend import CollectError


@dataclass(frozen=True)
class QuestionItem:
    """One question: its text and gold answer (a normalised string; None where unknown, which only live solving
    allows)."""

    question: str
    gold_answer: str | None = None


def load_questions(path: str | os.PathLike, limit: int | None = None, *, require_gold: bool = True
                   ) -> list[QuestionItem]:
    """The first `limit` (None: all) questions of a questions file. With `require_gold` (collection) every question
    needs a gold answer; without, plain strings are questions too (live solving)."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise CollectError(f"{p}: cannot read the questions file ({e.strerror})") from None
    objs: list[Any]
    try:
        doc = orjson.loads(raw)
        objs = doc if isinstance(doc, list) else [doc]
    except orjson.JSONDecodeError:
        objs = []
        for n, line in enumerate(raw.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                objs.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                raise CollectError(f"{p}, line {n}: not JSON; the questions file must be JSONL or a JSON list") from None
    items = [_item(o, p, i, require_gold) for i, o in enumerate(objs)]
    if not items:
        raise CollectError(f"{p}: holds no questions")
    return items[:limit] if limit else items


def _item(o: Any, p: Path, i: int, require_gold: bool) -> QuestionItem:
    if isinstance(o, str) and not require_gold:
        return QuestionItem(o)
    text = o.get("question", o.get("problem")) if isinstance(o, dict) else None
    if not isinstance(text, str) or not text:
        if not require_gold:
            raise CollectError(f"{p}, question {i}: expected a string or an object with a \"question\" text")
        if not isinstance(o, dict):
            raise CollectError(f"{p}, question {i}: expected an object with \"question\" and \"gold_answer\"")
        raise CollectError(f"{p}, question {i}: missing \"question\" text")
    gold = o.get("gold_answer", o.get("answer"))
    if gold is None and require_gold:
        raise CollectError(f"{p}, question {i}: missing \"gold_answer\" (or \"answer\")")
    return QuestionItem(text, None if gold is None else str(gold))

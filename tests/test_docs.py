"""The docs that ship: every `docs/semantics.md §n` citation names a section that exists, and no text points
at documents outside the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SEMANTICS = REPO / "docs" / "semantics.md"


def tracked_text_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "*.py", "*.md", "*.toml"], cwd=REPO, capture_output=True, text=True)
    if out.returncode != 0:  # not a git checkout (an sdist): every text file
        return [p for ext in ("py", "md", "toml") for p in REPO.rglob(f"*.{ext}") if ".venv" not in p.parts]
    return [REPO / line for line in out.stdout.splitlines() if (REPO / line).is_file()]


def test_semantics_citations_name_existing_sections():
    sections = set(re.findall(r"^## (\d+)\. ", SEMANTICS.read_text(), flags=re.M))
    assert sections == {str(i) for i in range(1, len(sections) + 1)}
    cited = {}
    for path in tracked_text_files():
        for m in re.finditer(r"docs/semantics\.md §(\d+)(?:[–-](\d+))?", path.read_text(errors="replace")):
            for n in filter(None, m.groups()):
                cited.setdefault(n, str(path.relative_to(REPO)))
    assert len(cited) >= 5
    assert set(cited) <= sections, {n: f for n, f in cited.items() if n not in sections}


def test_no_citation_of_documents_that_do_not_ship():
    stale = [str(p.relative_to(REPO)) for p in tracked_text_files() if "replay-spec" in p.read_text(errors="replace")
             and p != Path(__file__).resolve()]
    assert not stale
    assert "../shared" not in SEMANTICS.read_text() and "/work/" not in SEMANTICS.read_text()

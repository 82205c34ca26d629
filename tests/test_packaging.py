"""Packaging: every third-party import is declared in pyproject.toml, and constraints.txt (the versions CI tests)
satisfies the declared ranges."""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
SHIPPED = ("core", "mcp_server", "autotts", "autotts_tui", "replay_data")
FIRST_PARTY = {*SHIPPED, "tests", "benchmarks"}


def requirements(*extras: str) -> list[Requirement]:
    lines = PROJECT["dependencies"] + [r for e in extras for r in PROJECT["optional-dependencies"][e]]
    return [Requirement(r) for r in lines]


def imported_top_levels(folder: str) -> dict[str, str]:
    """Top-level module name -> one file importing it, for every absolute import under `folder`."""
    out: dict[str, str] = {}
    for path in sorted((REPO / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                out.setdefault(name.split(".")[0], str(path.relative_to(REPO)))
    return out


def third_party(modules: dict[str, str], local: set[str]) -> dict[str, str]:
    return {m: f for m, f in modules.items()
            if m not in sys.stdlib_module_names and m not in FIRST_PARTY and m not in local and m != "__future__"}


@pytest.mark.parametrize(("folders", "extras"), [(SHIPPED, ("collect",)), (("tests", "benchmarks"), ("dev", "collect"))])
def test_every_imported_package_is_declared(folders, extras):
    declared = {canonicalize_name(r.name) for r in requirements(*extras)}
    providers = md.packages_distributions()
    # helper modules the test suite imports by their bare name (tests/ is on sys.path under pytest)
    local = {p.stem for p in (REPO / "tests").glob("*.py")}
    missing = {}
    for folder in folders:
        for module, where in third_party(imported_top_levels(folder), local).items():
            dists = {canonicalize_name(d) for d in providers.get(module, [])}
            if not dists & declared:
                missing[module] = (where, sorted(dists) or "not installed")
    # the shipped code may use only what `pip install 'autotts[collect]'` brings; tests also the dev extra
    assert not missing, f"imported but not declared in pyproject.toml ({' + '.join(extras)} extras): {missing}"


def test_constraints_pin_every_declared_package_within_its_range():
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version and re.fullmatch(r"[\w.+-]+", version), f"constraints.txt: not an exact pin: {line}"
            pins[canonicalize_name(name)] = version
    for req in requirements("dev", "collect"):
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} has no pin in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), f"{req.name}=={pins[name]} is outside {req}"


def test_runtime_dependencies_are_ranges_not_exact_pins():
    for req in requirements():
        assert not any(s.operator in ("==", "===") for s in req.specifier), f"exact pin in dependencies: {req}"

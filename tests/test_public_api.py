"""The public API (`from autotts import …`) and light imports: names resolve lazily, cheap modules stay cheap."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import autotts
import core


def loaded_after(code: str) -> list[str]:
    """Heavy third-party and subcommand modules present in a fresh interpreter after running `code`."""
    probe = (f"{code}\nimport sys\n"
             "print(sorted({m.split('.')[0] for m in sys.modules} & {'numpy', 'numba', 'scipy', 'rich', 'orjson'}"
             " | {m for m in sys.modules if m.startswith('autotts.cli_')}))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return eval(out.strip().splitlines()[-1])  # noqa: S307 - our own printed list


@pytest.mark.parametrize("package", [autotts, core])
def test_every_public_name_resolves_to_its_defining_module(package):
    assert sorted(package.__all__) == sorted(package._EXPORTS)
    for name in package.__all__:
        value = getattr(package, name)
        assert value is getattr(importlib.import_module(package._EXPORTS[name]), name)
    assert sorted(dir(package)) == sorted(package.__all__)
    with pytest.raises(AttributeError):
        package.no_such_name  # noqa: B018


def test_facade_runs_the_readme_example():
    from autotts import evaluate, load_environment, seed_spread

    env = load_environment(importlib.import_module("replay_data").DEMO_PATH)
    result = evaluate(env, "cmc:beta=0.5", seeds=range(3))
    assert result.controller == "cmc:beta=0.5" and 0 <= result.accuracy <= 100
    assert set(seed_spread(result)) == {"std", "ci95_low", "ci95_high"}


def test_core_evaluate_stays_the_function_whichever_import_comes_first():
    code = ("import core.stats, core\nfrom core import evaluate\nimport core.evaluate as ev\n"
            "print(callable(evaluate) and evaluate is core.evaluate is ev and evaluate.__name__ == 'evaluate')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"


@pytest.mark.parametrize("code", ["import core.errors", "import core", "import autotts", "import autotts.cli"])
def test_light_imports_load_no_numerical_stack(code):
    assert loaded_after(code) == []


def test_help_loads_no_numerical_stack_and_no_subcommand():
    assert loaded_after("from autotts.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass") == []


def test_seed_spread_needs_no_scipy_stats():
    code = ("import numpy as np\nfrom core.evaluate import EvalResult\nfrom core.stats import seed_spread\n"
            "c = np.ones((5, 2), dtype=bool)\n"
            "seed_spread(EvalResult('e', 'x', 100.0, 1.0, np.arange(5), [], c, np.ones((5, 2), dtype=np.int64)))\n"
            "import sys\nprint('scipy.stats' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"

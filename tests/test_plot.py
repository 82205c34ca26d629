"""`autotts plot`: the scaling-curve figure from a study or from `autotts eval --json` output."""

from __future__ import annotations

import orjson
import pytest
from click.testing import CliRunner
from PIL import Image

from autotts.cli import main
from autotts_tui.demo_study import build_demo_study
from autotts_tui.figure import figure_data_from_study


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory):
    return build_demo_study(tmp_path_factory.mktemp("plot") / "demo-study", n_seeds=2, count=3)


@pytest.fixture(scope="module")
def eval_json(tmp_path_factory: pytest.TempPathFactory):
    result = CliRunner().invoke(main, ["eval", "--seeds", "3", "--json", "--no-progress", "-c", "sc:n=1,4,16,64",
                                       "-c", "asc", "-c", "cmc:beta=0,0.5,1"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    path = tmp_path_factory.mktemp("plot_eval") / "eval.json"
    path.write_text(result.stdout)
    return path


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_png_from_a_study(study, tmp_path):
    out = tmp_path / "fig" / "scaling.png"
    result = run("plot", str(study.folder), "-o", str(out), "--dpi", "60", "--title", "Demo")
    assert result.exit_code == 0, result.output
    assert "1 panel" in result.output and "8 curves" in result.output  # 5 baselines + 3 candidates
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size == (round(7.2 * 60), round(4.4 * 60))


def test_study_curves_pick_the_best_or_the_named(study):
    data = figure_data_from_study(study.folder, top=2)
    (panel,) = data.panels
    assert [c.label for c in panel.curves if c.kind == "baseline"] == ["SC@N", "ASC", "ESC", "Parallel-Probe", "CMC"]
    cands = [c for c in panel.curves if c.kind == "candidate"]
    assert len(cands) == 2 and all(len(c.points) == len(study.betas) for c in cands)
    assert "SYNTHETIC" in data.note
    data = figure_data_from_study(study.folder, candidates=["r0002"], baselines=False)
    assert [c.label for c in data.panels[0].curves] == ["r0002 lockstep-vote"]


def test_svg_from_eval_json_is_reproducible(eval_json, tmp_path):
    a, b = tmp_path / "a.svg", tmp_path / "b.svg"
    for out in (a, b):
        result = run("plot", str(eval_json), "-o", str(out))
        assert result.exit_code == 0, result.output
        assert "3 curves" in result.output  # SC@N, ASC, CMC
    text = a.read_text()
    assert text.startswith("<?xml") and "<svg" in text and "dc:date" not in text
    assert a.read_bytes() == b.read_bytes()


def test_pdf_and_mean_panel(eval_json, tmp_path):
    out = tmp_path / "fig.pdf"
    result = run("plot", str(eval_json), "-o", str(out), "--mean", "--size", "5x3.5")
    assert result.exit_code == 0, result.output
    assert out.read_bytes().startswith(b"%PDF")


@pytest.mark.parametrize("args, message", [
    (["-o", "x.jpg"], "must end in one of .png, .svg, .pdf"),
    (["--size", "big"], "is not WxH"),
    (["--env", "nope"], "no environment 'nope'"),
])
def test_errors_name_the_fix(eval_json, tmp_path, args, message):
    args = [a if a != "x.jpg" else str(tmp_path / "x.jpg") for a in args]
    result = CliRunner().invoke(main, ["plot", str(eval_json), *args])
    assert result.exit_code == 2 and message in result.output


def test_not_eval_output(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_bytes(orjson.dumps({"hello": 1}))
    result = CliRunner().invoke(main, ["plot", str(bad), "-o", str(tmp_path / "x.png")])
    assert result.exit_code == 2 and "autotts eval --json" in result.output
    result = CliRunner().invoke(main, ["plot", str(tmp_path / "no-study"), "-o", str(tmp_path / "x.png")])
    assert result.exit_code == 2 and "no study at" in result.output

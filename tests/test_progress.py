"""Progress bars for long `predict` and `evaluate` runs: on stderr, for many images, never in JSON
output or with verbose=False; stdout stays exactly as without them."""

from __future__ import annotations

import json
import sys

import pytest

import imgclf.progress as progress
from imgclf.cli import main
from imgclf.progress import NoBar, progress_bar


def test_progress_bar_rules(monkeypatch, capsys):
    assert isinstance(progress_bar(5000, "x", show=False), NoBar)
    assert isinstance(progress_bar(progress.PROGRESS_MIN, "x", show=True), NoBar)  # few images: none
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert isinstance(progress_bar(5000, "x"), NoBar)  # not a terminal
    with progress_bar(5000, "decoding", show=True) as bar:
        assert not isinstance(bar, NoBar)
        bar.update(5000)
    out, err = capsys.readouterr()
    assert out == "" and "decoding" in err
    # without tqdm (the ONNX-only install may lack it): no bar, no error
    monkeypatch.setitem(sys.modules, "tqdm", None)
    assert isinstance(progress_bar(5000, "x", show=True), NoBar)


class Terminal:
    """Stands for sys.stderr in imgclf.progress: a terminal that writes to whatever sys.stderr is now."""

    def isatty(self):
        return True

    def write(self, text):
        return sys.stderr.write(text)

    def flush(self):
        sys.stderr.flush()


@pytest.fixture
def few_make_a_bar(monkeypatch):
    """Bars from 10 images on, stderr taken for a terminal."""
    monkeypatch.setattr(progress, "PROGRESS_MIN", 10)
    monkeypatch.setattr(progress, "sys", type("Sys", (), {"stderr": Terminal()}))


def test_predict_shows_progress_on_stderr_only(trained_colour_model, few_make_a_bar, capsys):
    run, data = trained_colour_model
    assert main(["predict", str(run.model_path), str(data), "--json"]) == 0
    out, err = capsys.readouterr()
    assert len(json.loads(out)) == 90 and "predict" not in err  # JSON output: never a bar
    assert main(["predict", str(run.model_path), str(data)]) == 0
    table, err = capsys.readouterr()
    assert "predict" in err and "/90" in err
    from imgclf.runtime.predict import format_table, predict

    assert table == format_table(predict(run.model_path, [data], progress=False)) + "\n"  # as without a bar
    assert len(table.splitlines()) == 90


def test_evaluate_shows_progress_unless_quiet(trained_colour_model, few_make_a_bar, tmp_path, capsys):
    import imgclf

    run, data = trained_colour_model
    imgclf.evaluate(run.model_path, str(data), out_dir=tmp_path / "ev", report=False)
    out, err = capsys.readouterr()
    assert "evaluate" in err and "/90" in err and "/90" not in out and "| Accuracy |" in out
    imgclf.evaluate(run.model_path, str(data), out_dir=tmp_path / "ev2", verbose=False, report=False)
    out, err = capsys.readouterr()
    assert out == "" and "/90" not in err

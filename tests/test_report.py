"""HTML reports: parsed without a browser; every embedded image must decode with Pillow.

Covers the run report made by `train`, `imgclf report`, the evaluation report, `imgclf compare`,
`--repeats`, study folders, TensorBoard event files and bad input.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import imgclf
from imgclf.cli import main
from imgclf.runtime.modelfile import read_meta

COLOURS = {"blue": (30, 60, 220), "green": (40, 200, 60), "red": (220, 40, 40)}
RUN_SECTIONS = {"summary", "results", "learning-curves", "confusion-matrix", "per-class", "errors", "calibration",
                "robustness", "config", "timing"}


def colour_folder(root: Path, per_class: int = 20, seed: int = 0, mislabelled: float = 0.0) -> Path:
    """root/<colour>/<i>.png: noisy images of one dominant colour per class (a CNN learns them fast);
    a `mislabelled` share of each class's images takes another class's colour."""
    rng = np.random.default_rng(seed)
    names = list(COLOURS)
    for k, name in enumerate(names):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            other = names[(k + 1 + i % (len(names) - 1)) % len(names)]
            rgb = COLOURS[other] if rng.random() < mislabelled else COLOURS[name]
            img = np.clip(np.asarray(rgb)[None, None] + rng.integers(-90, 90, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / name / f"{i:03d}.png")
    return root


class Page(HTMLParser):
    """Ids, images, links, scripts, table cells and text of an HTML page."""

    def __init__(self, text: str):
        super().__init__()
        self.ids, self.imgs, self.hrefs, self.external, self.cells, self.text = set(), [], [], [], [], []
        self._in_cell = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        if tag == "a" and a.get("href"):
            self.hrefs.append(a["href"])
        if tag in ("script", "link", "iframe") or (tag == "img" and not a.get("src", "").startswith("data:")):
            self.external.append((tag, a))
        if tag in ("td", "th"):
            self._in_cell = True
            self.cells.append("")

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self._in_cell = False

    def handle_data(self, data):
        self.text.append(data)
        if self._in_cell:
            self.cells[-1] += data


def parse(path: Path) -> Page:
    page = Page(Path(path).read_text(encoding="utf-8"))
    assert page.external == [], f"external resources in {path}: {page.external}"
    for src in page.imgs:  # every embedded image decodes
        assert src.startswith("data:image/png;base64,")
        im = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1], validate=True)))
        im.load()
        assert im.format == "PNG" and im.width > 10 and im.height > 10
    return page


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("report-run")
    # 105 validation images, enough to fit a temperature; a fifth of them with another class's colour,
    # which the model calls with far too much confidence: T has work to do (were every image its class's
    # colour, the model would be right and certain on all of them, and no T could lower the NLL)
    data = colour_folder(base / "data", per_class=140, mislabelled=0.2)
    result = imgclf.train(data=str(data), epochs=3, batch_size=16, val_fraction=0.25, run_dir=base / "run",
                          verbose=0)
    return result, data


def test_train_writes_a_self_contained_report(run):
    result, _ = run
    page = parse(result.run_dir / "report.html")
    assert RUN_SECTIONS <= page.ids
    # learning curves, confusion matrix, per-class chart, reliability diagram, robustness chart + gallery
    wrong = int(round((1 - result.metrics["val"]["accuracy"]) * result.metrics["val"]["n"]))
    assert len(page.imgs) == 5 + min(wrong, 24)
    text = " ".join(page.text)
    # the seed-style results table holds the run's numbers
    assert "Training Set" in page.cells and "Validation Set" in page.cells
    assert f"{100 * result.metrics['val']['accuracy']:.2f}%" in page.cells
    assert f"{result.metrics['train']['loss']:.4f}" in page.cells
    for name in COLOURS:
        assert name in page.cells  # per-class table
    for c in ("gaussian noise", "gaussian blur", "jpeg", "brightness", "contrast"):
        assert any(cell.startswith(c) for cell in page.cells)
    assert "expected calibration error (ECE)" in page.cells and "this report" in page.cells
    assert "Most confidently wrong" in text


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_the_fitted_temperature_is_stored_and_used_by_predict(run):
    """train fits T and stores it; the report reads it (assessed on the whole validation split) and
    shows train's held-out numbers."""
    result, data = run
    rep = json.loads((result.run_dir / "report.json").read_text())
    cal = rep["calibration"]
    meta = read_meta(result.model_path)
    assert meta["temperature"] == pytest.approx(cal["temperature"]) and 0.05 <= cal["temperature"] <= 20
    assert meta["calibration"]["fit_n"] == meta["calibration"]["eval_n"] == result.metrics["val"]["n"]
    assert meta["calibration"]["seed"] == 0  # the split seed
    assert rep["calibration_fit"] == meta["calibration"] == result.metrics["calibration"]
    assert cal["fit_n"] == 0 and cal["eval_n"] == result.metrics["val"]["n"]  # the report fits nothing
    clf = imgclf.load_classifier(result.model_path)
    assert clf.temperature == pytest.approx(cal["temperature"])
    x = clf.load_images(sorted((data / "red").iterdir())[:4])
    from imgclf.runtime.classifier import apply_temperature

    raw = clf.predict_proba(x, calibrated=False)
    assert np.allclose(clf.predict_proba(x), apply_temperature(raw, cal["temperature"]), atol=1e-6)
    rows = imgclf.predict(result.model_path, [data / "red" / "000.png"], k=3)
    assert rows[0]["top"][0][1] == pytest.approx(float(apply_temperature(raw[:1], cal["temperature"]).max()), abs=1e-5)


def test_report_time_is_small(run):
    result, _ = run
    rep = json.loads((result.run_dir / "report.json").read_text())
    # the budget: at most 10% of the run, or 30 s for short runs; the bound allows a machine 5x
    # slower than the one the budget was set on (only the robustness pass adapts to the clock)
    assert rep["seconds"] <= 5 * max(30.0, 0.1 * rep["run_seconds"])
    rob = rep["robustness"]  # all validation images, unless a slow (or busy) machine made it cut them
    assert rob.get("reduced_from", rob["n"]) == result.metrics["val"]["n"] and 0 < rob["n"] <= rob.get(
        "reduced_from", rob["n"])


def test_cli_report_regenerates_the_same_numbers(run, capsys):
    result, _ = run
    before = json.loads((result.run_dir / "report.json").read_text())
    (result.run_dir / "report.html").unlink()
    assert main(["report", str(result.run_dir)]) == 0
    assert capsys.readouterr().out.strip().endswith("report.html")
    page = parse(result.run_dir / "report.html")
    assert RUN_SECTIONS <= page.ids
    after = json.loads((result.run_dir / "report.json").read_text())
    assert after["calibration"]["temperature"] == pytest.approx(before["calibration"]["temperature"], rel=1e-4)
    assert after["robustness"]["accuracy"] == before["robustness"]["accuracy"]  # seeded, deterministic


def test_cli_report_reads_the_stored_temperature_and_never_writes_the_model(run, capsys):
    result, _ = run
    meta = read_meta(result.model_path)
    fit = meta["calibration"]
    digest, mtime = sha256(result.model_path), result.model_path.stat().st_mtime_ns
    assert main(["report", str(result.run_dir)]) == 0
    capsys.readouterr()
    assert sha256(result.model_path) == digest and result.model_path.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in result.run_dir.iterdir() if p.suffix == ".keras") == ["model.keras"]
    page = parse(result.run_dir / "report.html")
    text = " ".join(page.text)
    assert f"T = {meta['temperature']:.3f} was fitted when the model was trained" in text
    assert f"after (T = {meta['temperature']:.2f})" in page.cells
    assert f"ECE, cross-validated at training ({fit['eval_n']} images)" in page.cells
    assert f"{fit['ece_before']:.4f}" in page.cells and f"{fit['ece_after']:.4f}" in page.cells
    rep = json.loads((result.run_dir / "report.json").read_text())
    assert rep["calibration"]["temperature"] == meta["temperature"] and rep["calibration_fit"] == fit


def test_evaluate_writes_a_report_without_refitting(run, tmp_path):
    result, data = run
    t_before = read_meta(result.model_path)["temperature"]
    digest = sha256(result.model_path)
    imgclf.evaluate(result.model_path, str(data), out_dir=tmp_path / "ev", verbose=False)
    page = parse(tmp_path / "ev" / "report.html")
    assert {"summary", "results", "confusion-matrix", "per-class", "errors", "calibration", "robustness"} <= page.ids
    assert read_meta(result.model_path)["temperature"] == t_before  # evaluation fits nothing
    rep = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert rep["kind"] == "evaluation" and rep["calibration"]["temperature"] == pytest.approx(t_before)
    assert rep["calibration"]["fit_n"] == 0
    # --no-report
    assert main(["evaluate", str(result.model_path), "-d", str(data), "-o", str(tmp_path / "ev2"), "--no-report"]) == 0
    assert (tmp_path / "ev2" / "metrics.json").is_file() and not (tmp_path / "ev2" / "report.html").exists()
    assert sha256(result.model_path) == digest  # evaluate only reads the model


def test_evaluate_refuses_an_output_folder_holding_the_model(run, capsys):
    result, data = run
    digest = sha256(result.model_path)
    names = sorted(p.name for p in result.run_dir.iterdir())
    for out in (result.run_dir, result.run_dir.parent, result.model_path):
        assert main(["evaluate", str(result.model_path), "-d", str(data), "-o", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {out}: output folder ")
    assert sha256(result.model_path) == digest and sorted(p.name for p in result.run_dir.iterdir()) == names


@pytest.mark.slow
def test_compare_and_repeats(run, tmp_path, capsys):
    result, data = run
    from imgclf.repeats import train_repeats

    info = train_repeats(data=str(data), repeats=2, epochs=1, batch_size=16, val_fraction=0.25,
                         run_dir=tmp_path / "rep", verbose=0)
    assert info["runs"] == ["seed-0", "seed-1"]
    val = info["stats"]["val accuracy"]
    accs = [json.loads((tmp_path / "rep" / r / "metrics.json").read_text())["val"]["accuracy"] for r in info["runs"]]
    assert val["n"] == 2 and val["values"] == pytest.approx(accs)
    assert val["mean"] == pytest.approx(np.mean(accs)) and val["std"] == pytest.approx(np.std(accs, ddof=1))
    assert "| val accuracy |" in (tmp_path / "rep" / "repeats.md").read_text()
    page = parse(tmp_path / "rep" / "report.html")
    assert {"metrics", "mean-std", "learning-curves", "config"} <= page.ids
    assert "seed-0" in page.cells and "seed-1" in page.cells and "seed" in page.cells  # the config difference
    # two runs side by side from the CLI
    out = tmp_path / "cmp.html"
    assert main(["compare", str(result.run_dir), str(tmp_path / "rep" / "seed-1"), "-o", str(out)]) == 0
    page = parse(out)
    assert {"metrics", "learning-curves", "config"} <= page.ids and len(page.imgs) == 1
    assert "run" in page.cells and "seed-1" in page.cells and "epochs" in page.cells
    assert any(h.endswith("report.html") for h in page.hrefs)


def test_study_folder_report(tmp_path):
    study = tmp_path / "study"
    (study / "plots").mkdir(parents=True)
    (study / "trials.csv").write_text("trial,state,learning_rate,val_accuracy\n0,complete,0.01,0.61\n1,pruned,0.1,0.3\n")
    (study / "summary.json").write_text(json.dumps({"study": "s1", "best": {"trial": 0, "val_accuracy": 0.61,
                                                                             "params": {"learning_rate": 0.01}}}))
    buf = io.BytesIO()
    Image.new("RGB", (60, 40), (10, 120, 200)).save(buf, format="PNG")
    (study / "plots" / "optimization_history.png").write_bytes(buf.getvalue())
    from imgclf.report.build import make_report

    path = make_report(study)
    page = parse(path)
    assert {"trials", "search-plots", "summary"} <= page.ids and len(page.imgs) == 1
    assert "learning_rate" in page.cells and "pruned" in page.cells and "61.00%" in " ".join(page.text)


def test_data_is_escaped_in_the_page(tmp_path):
    """Class names, file names and model paths are data: the page shows them as text, never as markup."""
    from imgclf.evaluation.metrics import evaluate_arrays, write_evaluation
    from imgclf.report.build import make_report
    from imgclf.report.sources import EvalSet

    evil = "<script>alert(1)</script>"
    names = ["cat", evil, 'dog "&" co']
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 30)
    probs = rng.dirichlet(np.ones(3), 30)
    x = rng.integers(0, 256, (30, 16, 16, 3), dtype=np.uint8)
    folder = tmp_path / "ev"
    folder.mkdir()
    result = evaluate_arrays(probs, y)
    write_evaluation(folder, result, names, "data")
    (folder / "metrics.json").write_text(json.dumps({
        "data": {k: result[k] for k in ("loss", "accuracy", "n", "confusion_matrix", "per_class")},
        "model": evil, "dataset": "d", "own_training_images": False, "tta": False}))
    ev = EvalSet("data", x, y, probs, [f"{evil}{i}.png" for i in range(30)], names)
    path = make_report(folder, eval_set=ev, temperature=1.5, robustness_n=0)
    text = path.read_text(encoding="utf-8")
    page = parse(path)  # no script elements, every image embedded
    assert "<script" not in text.lower() and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert evil in page.cells and 'dog "&" co' in page.cells  # the per-class table shows the names as text
    assert f"true: {evil}" in page.text  # gallery captions
    assert any(t.endswith(f"model {evil} · data d · " + str(folder)) for t in page.text)  # subtitle
    assert {"errors", "calibration", "per-class"} <= page.ids


def test_tensorboard_event_files(tmp_path):
    data = colour_folder(tmp_path / "data", per_class=6)
    run = imgclf.train(data=str(data), epochs=1, batch_size=8, val_fraction=0.5, run_dir=tmp_path / "run",
                       verbose=0, report=False, tensorboard=True)
    events = list((run.run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    assert {p.parent.name for p in events} == {"train", "validation"}
    assert all(p.stat().st_size > 0 for p in events)
    assert not (run.run_dir / "report.html").exists()  # --no-report


@pytest.mark.slow
def test_real_cifar_images(tmp_path):
    import os

    shared = Path(os.environ.get("IMGCLF_SHARED", Path(__file__).resolve().parents[2] / "shared"))
    cifar = shared / "datasets" / "cifar10-jpeg"
    assert (cifar / "train").is_dir(), f"real images not found at {cifar} (set IMGCLF_SHARED)"
    run = imgclf.train(data=str(cifar), limit_per_class=20, epochs=1, run_dir=tmp_path / "run", verbose=0)
    page = parse(run.run_dir / "report.html")
    assert RUN_SECTIONS <= page.ids
    assert any(cell.endswith(".jpg") for cell in page.text)  # gallery captions name the files
    assert "airplane" in page.cells and "truck" in page.cells


@pytest.mark.parametrize("argv, message", [
    (["report", "/no/such/run"], "/no/such/run: folder not found (expected a run, evaluation, study or repeats folder)"),
    (["compare", "/no/such/run", "/no/such/run2"], "/no/such/run: run folder not found"),
])
def test_bad_input_is_one_error_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {message}"]


def test_not_a_run_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a run, evaluation, study or repeats folder" in err[0]
    assert main(["report", str(tmp_path / "empty"), "--robustness-n", "-1"]) == 2
    assert capsys.readouterr().err.strip() == "error: robustness_n: expected an integer >= 0, got -1"

"""The CLI over the API: predict on files and folders, evaluate, one-line errors, other backends,
and a CLI that answers without TensorFlow: help and `imgclf models` load neither it nor Keras."""

import csv
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import HANG, make_folder
from imgclf.cli import main
from imgclf.config import FIELDS

SUBCOMMANDS = ["train", "evaluate", "report", "compare", "predict", "models", "export", "serve", "tune"]

# Runs `python -m imgclf.cli ARGS` for each ARGS given as JSON, in this one interpreter, then says
# which heavy modules got imported.
NO_HEAVY_IMPORTS = """
import json, runpy, sys
for argv in json.loads(sys.argv[1]):
    sys.argv = ["imgclf", *argv]
    try:
        runpy.run_module("imgclf.cli", run_name="__main__", alter_sys=True)
    except SystemExit as e:
        assert e.code in (0, None), (argv, e.code)
    sys.modules.pop("imgclf.cli", None)
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras"))
print("HEAVY", json.dumps(heavy[:5]))
"""


def run_without_heavy_imports(*argvs):
    proc = subprocess.run([sys.executable, "-c", NO_HEAVY_IMPORTS, json.dumps(argvs)], capture_output=True,
                          text=True, timeout=HANG, env={**os.environ, "COLUMNS": "2000"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    heavy = json.loads(proc.stdout.rsplit("HEAVY ", 1)[1])
    return proc.stdout.rsplit("HEAVY ", 1)[0], heavy


def test_help_and_models_import_no_tensorflow_or_keras():
    out, heavy = run_without_heavy_imports(["--help"], ["models"], *[[name, "--help"] for name in SUBCOMMANDS])
    assert heavy == [], heavy
    assert "usage: imgclf train" in out and "usage: imgclf tune" in out
    for name in ("fastnet", "mobilenetv3small", "seed_cnn"):  # imgclf models: name, description
        assert re.search(rf"^{name} +\S", out, re.M), out
    assert "recipes: seed, auto, budget, fast80, fast94" in out


def test_the_check_sees_a_heavy_import():
    """The counterpart: the same harness reports Keras once a command loads it."""
    code = NO_HEAVY_IMPORTS.replace('heavy = sorted', 'import keras\nheavy = sorted')
    proc = subprocess.run([sys.executable, "-c", code, json.dumps([["--version"]])], capture_output=True,
                          text=True, timeout=HANG)
    assert '"keras' in proc.stdout.rsplit("HEAVY ", 1)[1], proc.stdout[-500:]


def train_help_entries() -> dict[str, str]:
    """{first flag: its help text} from `imgclf train --help`, printed 2000 columns wide."""
    out, _ = run_without_heavy_imports(["train", "--help"])
    options = out.split("\noptions:\n", 1)[1]
    entries, flag = {}, None
    for line in options.splitlines():
        if re.match(r"^  -", line):  # "  --epochs INT, -e INT   passes over ..."
            flag = line.split()[0].rstrip(",")
            entries[flag] = line.strip().split("  ", 1)[1].strip() if "  " in line.strip() else ""
        elif line.startswith("    ") and flag:  # help that starts on the next line (a long flag)
            assert entries[flag] == "", f"{flag}: help on more than one line"
            entries[flag] = line.strip()
        elif line.strip() and not line.startswith(" "):
            flag = None  # a group title
    return entries


def test_every_train_flag_has_one_line_of_help_with_its_default():
    entries = train_help_entries()
    entries.pop("-h")
    config_flags = {"--" + name.replace("_", "-") for name in FIELDS if name not in ("model_options", "recipe", "plan")}
    assert config_flags <= set(entries) and len(entries) == len(config_flags) + 7, sorted(entries)
    for flag, text in entries.items():
        assert re.search(r"\S.*\(default: [^)]+\)$", text), (flag, text)
    assert entries["--epochs"].endswith("(default: 30)") and entries["--augment-flip"].endswith("(default: no)")
    assert entries["--learning-rate"] == FIELDS["learning_rate"].description + " (default: 0.01)"


def test_time_budget_flag_takes_a_duration(capsys):
    from imgclf.cli import build_parser

    args = build_parser().parse_args(["train", "--time-budget", "1.5h"])
    assert args.time_budget == 5400.0
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["train", "--time-budget", "soon"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: imgclf train: argument --time-budget: expected a duration like 90, 90s, 30m "
                          "or 1.5h, got 'soon'") and "\n" not in err, err


def test_predict_files_and_folders(trained_colour_model, tmp_path, capsys):
    run, data = trained_colour_model
    red = data / "red" / "000.png"
    assert main(["predict", str(run.model_path), str(red), "-k", "2"]) == 0
    out = capsys.readouterr().out
    assert "000.png" in out and out.split()[1] == "red"  # first guess of the table row
    assert main(["predict", str(run.model_path), str(data / "blue"), "--json", "-k", "3"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 30 and all(len(r["top"]) == 3 for r in rows)
    assert abs(sum(t["probability"] for t in rows[0]["top"]) - 1) < 1e-4
    assert sum(r["top"][0]["class"] == "blue" for r in rows) >= 25
    out_csv = tmp_path / "preds.csv"
    assert main(["predict", str(run.model_path), str(data), "--csv", str(out_csv)]) == 0
    table = list(csv.DictReader(open(out_csv)))
    assert len(table) == 90 and {"file", "class_1", "prob_1", "class_3"} <= set(table[0])


def test_predict_converts_odd_images_like_training(trained_colour_model, tmp_path, capsys):
    run, _ = trained_colour_model
    big = np.zeros((300, 200, 4), np.uint8)
    big[..., 0], big[..., 3] = 230, 255  # a large opaque red RGBA image
    Image.fromarray(big, "RGBA").save(tmp_path / "big_red.png")
    assert main(["predict", str(run.model_path), str(tmp_path / "big_red.png"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["top"][0]["class"] == "red"


def test_evaluate_recognises_the_models_own_training_images(trained_colour_model, tmp_path, capsys):
    run, data = trained_colour_model
    assert main(["evaluate", str(run.model_path), "--out", str(tmp_path / "ev")]) == 0  # data from the model file
    out = capsys.readouterr().out
    assert "own training images" in out and "Training Set" in out and "Validation Set" in out
    assert "precision" in out and "confusion matrix" in out
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["own_training_images"] is True
    assert metrics["val"]["accuracy"] == pytest.approx(run.metrics["val"]["accuracy"], abs=1e-6)
    assert (tmp_path / "ev" / "confusion_matrix.png").stat().st_size > 1000
    other = make_folder(tmp_path / "other", per_class=5, seed=9)
    assert main(["evaluate", str(run.model_path), "--data", str(other), "--out", str(tmp_path / "ev2")]) == 0
    out = capsys.readouterr().out
    assert "not the model's training images" in out and "| Data" in out
    assert json.loads((tmp_path / "ev2" / "metrics.json").read_text())["data"]["n"] == 15


def test_evaluate_uses_the_tta_the_model_records(tmp_path, capsys):
    """A model trained with TTA (mirrors and 1-pixel shifts): `imgclf evaluate` prints, by default, the
    test figure `train` wrote in metrics.json; --no-tta turns the views off, --tta forces them on."""
    import imgclf

    data = make_folder(tmp_path / "data", per_class=20, size=16)
    test = make_folder(tmp_path / "test", per_class=10, size=16, seed=3)
    run = imgclf.train(data=str(data), test_data=str(test), recipe="seed", epochs=2, input_size=16, batch_size=16,
                       learning_rate=0.01, val_fraction=0.25, tta=True, tta_translate=1, run_dir=tmp_path / "run",
                       verbose=0, report=False)
    trained = json.loads((run.run_dir / "metrics.json").read_text())
    assert trained["tta"] is True and trained["test"]["n"] == 30
    assert {"balanced_accuracy", "macro_f1", "imbalance"} <= set(trained["test"])  # item 5: in metrics.json

    def evaluate(*flags):
        out_dir = tmp_path / f"ev{len(flags)}{''.join(flags)}"
        assert main(["evaluate", str(run.model_path), "--data", str(data), "--test-data", str(test), "-o",
                     str(out_dir), "--no-report", *flags]) == 0
        table = capsys.readouterr().out
        return table, json.loads((out_dir / "metrics.json").read_text())

    table, got = evaluate()
    assert "TTA: mirrors and shifts" in table and got["tta"] is True
    row = next(line for line in table.splitlines() if line.startswith("| Accuracy"))
    assert [c.strip() for c in row.split("|")[1:-1]] == \
        ["Accuracy"] + [f"{100 * trained[k]['accuracy']:.2f}%" for k in ("train", "val", "test")]
    for k in ("train", "val", "test"):  # the same numbers train wrote, not just the same rounding
        assert got[k]["accuracy"] == trained[k]["accuracy"] and got[k]["macro_f1"] == trained[k]["macro_f1"], k
        assert got[k]["loss"] == pytest.approx(trained[k]["loss"], abs=1e-5), k
    table, off = evaluate("--no-tta")
    assert "TTA: off" in table and off["tta"] is False and off["train"] == got["train"]
    clf = imgclf.load_classifier(run.model_path)
    images = clf.load_images(sorted(test.rglob("*.png")))
    assert off["test"]["loss"] == pytest.approx(float(np.mean(-np.log(
        clf.predict_proba(images, calibrated=False)[np.arange(30), np.repeat([0, 1, 2], 10)]))), abs=1e-4)
    assert off["test"]["loss"] != pytest.approx(got["test"]["loss"], abs=1e-6)
    _, on = evaluate("--tta")
    assert on["tta"] is True and on["test"] == got["test"]


def test_bad_input_is_one_line_and_exit_2(trained_colour_model, tmp_path, capsys):
    run, _ = trained_colour_model
    cases = [
        (["predict", str(run.model_path), str(tmp_path / "nope.jpg")], "nope.jpg: no such file"),
        (["predict", str(tmp_path / "m.keras"), str(tmp_path)], "m.keras: model file not found"),
        (["train", "--data", str(tmp_path / "absent"), "--out", str(tmp_path / "r")], "absent: folder not found"),
        (["train", "--data", str(tmp_path), "--epochs", "0"], "'epochs' expects an integer >= 1"),
    ]
    (tmp_path / "junk.png").write_text("junk")
    cases.append((["predict", str(run.model_path), str(tmp_path / "junk.png")], "junk.png: not an image"))
    for argv, expected in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and expected in err and "\n" not in err, err
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_command_line_entry_point(trained_colour_model):
    run, data = trained_colour_model
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    proc = subprocess.run([sys.executable, "-m", "imgclf.cli", "predict", str(run.model_path),
                           str(data / "green" / "001.png"), "-k", "1"], capture_output=True, text=True, timeout=HANG,
                          env=env)
    assert proc.returncode == 0, proc.stderr
    assert "green" in proc.stdout
    # TensorFlow's start-up info lines (I0000 ... cpu_feature_guard ...) stay quiet; its errors would not
    assert not re.search(r"^[IW]\d{4} |cpu_feature_guard|absl::InitializeLog", proc.stderr, re.M), proc.stderr[-2000:]


JAX_SMOKE = """
import sys, numpy as np, imgclf, keras
assert keras.backend.backend() == "jax", keras.backend.backend()
run = imgclf.train(data=sys.argv[1], epochs=2, batch_size=8, run_dir=sys.argv[2], verbose=0, report=False)
model, meta = imgclf.load_model(run.model_path)
x = np.full((1, 32, 32, 3), 200, np.uint8)
print("OK", run.metrics["val"]["accuracy"], model.predict(x, verbose=0).shape)
"""


@pytest.mark.slow
def test_jax_backend_smoke(tmp_path):
    import jax  # noqa: F401  (installed by .ci/run; a missing jax is a failure, not a skip)

    data = make_folder(tmp_path / "d", per_class=8)
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    proc = subprocess.run([sys.executable, "-c", JAX_SMOKE, str(data), str(tmp_path / "run")], env=env,
                          capture_output=True, text=True, timeout=HANG)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "OK" in proc.stdout and "(1, 3)" in proc.stdout


def test_keras_is_imported_without_tensorflows_start_up_lines_but_with_its_errors(tmp_path):
    """imgclf.quiet.import_keras drops the lines TensorFlow writes when it loads (before any log level
    applies) and writes back everything else the import printed. A stand-in keras package writes
    both kinds straight to file descriptor 2, as TensorFlow's native code does."""
    fake = tmp_path / "keras"
    fake.mkdir()
    (fake / "__init__.py").write_text(
        "import os\n"
        "os.write(2, b'WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n')\n"
        "os.write(2, b'I0000 00:00:1 123 port.cc:153] oneDNN custom operations are on. You may see ...\\n')\n"
        "os.write(2, b'E0000 real trouble: a library is missing\\n')\n")
    code = "from imgclf.quiet import import_keras; import_keras(); import keras; print('imported', keras.__file__)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=HANG)
    assert proc.returncode == 0 and str(fake) in proc.stdout, proc.stderr
    assert "real trouble: a library is missing" in proc.stderr
    assert "oneDNN" not in proc.stderr and "absl::InitializeLog" not in proc.stderr, proc.stderr


def test_a_failing_or_unprintable_keras_import_is_left_to_the_command(tmp_path):
    """A keras import that raises is not import_keras' to report: it writes back what the import printed
    and returns, and the command's own import raises where the command line turns it into an error
    line. With stderr closed it is a plain import."""
    fake = tmp_path / "keras"
    fake.mkdir()
    (fake / "__init__.py").write_text("import os\nos.write(2, b'E0000 half-loaded library\\n')\n"
                                      "raise ImportError('no backend named nothing')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    code = ("import sys\nfrom imgclf.quiet import import_keras\nimport_keras()\nprint('returned')\n"
            "try:\n    import keras\nexcept ImportError as e:\n    print('command sees:', e)\n"
            "sys.stderr = None\nimport_keras()\nprint('no stderr: fine')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=HANG)
    assert proc.returncode == 0, proc.stderr
    assert "returned" in proc.stdout and "command sees: no backend named nothing" in proc.stdout
    assert "no stderr: fine" in proc.stdout and "E0000 half-loaded library" in proc.stderr


def test_commands_that_do_not_run_keras_here_do_not_import_it():
    from imgclf.cli import build_parser, uses_keras

    parser = build_parser()

    def uses(*argv):
        return uses_keras(parser.parse_args(list(argv)))

    assert uses("train", "-d", "x") and uses("evaluate", "m.keras") and uses("predict", "m.keras", "a.png")
    assert not uses("predict", "m.onnx", "a.png") and not uses("predict", "--pretrained", "cifar10", "a.png")
    assert uses("serve", "m.keras") and not uses("serve", "m.keras", "--workers", "2")
    assert not uses("serve", "m.onnx") and uses("serve", "--pretrained", "cifar10")
    assert not uses("tune", "photos", "-d", "x") and uses("tune", "photos", "-d", "x", "--isolate", "none")
    assert not uses("models") and not uses("pack", "a", "b")

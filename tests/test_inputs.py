"""Issue 13 (item 2): bad data and config inputs end with one `error:` line naming the file or
field, exit status 2, and nothing left behind (no run directory, no decoded-image cache file).

Named pipes are only ever handed to a subprocess with a timeout: if the code regressed to
opening one, the test fails on the timeout instead of hanging the suite."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import HANG, make_folder
from imgclf.cli import main
from imgclf.config import FIELD_TYPES, TrainConfig, make_config
from imgclf.errors import ConfigError

TIMEOUT = HANG  # a FIFO that is opened blocks forever; the assertion is about the exit status


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty decoded-image cache folder for this test alone (data.cache_dir() reads IMGCLF_CACHE)."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("IMGCLF_CACHE", str(folder))
    return folder


def one_error_line(err: str, *names: str, warnings: bool = False) -> str:
    """The one line of `err`, an `error:` naming `names`. With `warnings` (--skip-bad-images
    asked for them), `warning:` lines about skipped files may come first."""
    lines = err.strip().splitlines()
    if warnings:
        assert all(line.startswith("warning: skipped") for line in lines[:-1]), err
        lines = lines[-1:]
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith("error: ") and "Traceback" not in err, err
    for name in names:
        assert name in line, line
    return line


def refused(argv, capsys, *names: str) -> str:
    """Run the CLI in this process: exit status 2 and one error line naming `names`."""
    capsys.readouterr()
    assert main(argv) == 2, argv
    captured = capsys.readouterr()
    assert captured.out == "", captured.out
    return one_error_line(captured.err, *names, warnings="--skip-bad-images" in argv)


def run_cli(args, cwd: Path, cache_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "IMGCLF_CACHE": str(cache_dir)}
    return subprocess.run([sys.executable, "-m", "imgclf.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT)


def nothing_left(tmp_path: Path, cache_dir: Path, run_dir: Path | None = None) -> None:
    assert not (cache_dir.exists() and any(cache_dir.iterdir())), list(cache_dir.iterdir())
    assert not (tmp_path / "runs").exists()  # the default run directory
    if run_dir is not None:
        assert not run_dir.exists()


def train_argv(data, run_dir, *extra):
    return ["train", "--data", str(data), "--out", str(run_dir), "--epochs", "1", "--input-size", "8",
            "--batch-size", "4", "--val-fraction", "0.3", "--quiet", "--no-report", *map(str, extra)]


# ---------------------------------------------------------------------------------------
# 1. Not a regular file: FIFOs, sockets, devices, broken links are named and never opened
# ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_fifo_in_a_class_folder_is_refused_by_train(tmp_path, cache):
    data = make_folder(tmp_path / "data", per_class=4, size=8)
    os.mkfifo(data / "red" / "pipe.png")
    proc = run_cli(train_argv(data, tmp_path / "run"), tmp_path, cache)
    assert proc.returncode == 2, proc.stderr[-2000:]
    one_error_line(proc.stderr, "pipe.png", "named pipe (FIFO)")
    nothing_left(tmp_path, cache, tmp_path / "run")


@pytest.mark.slow
def test_fifo_given_to_predict_is_refused(trained_colour_model, tmp_path, cache):
    run, _ = trained_colour_model
    os.mkfifo(tmp_path / "pipe.jpg")
    proc = run_cli(["predict", run.model_path, tmp_path / "pipe.jpg"], tmp_path, cache)
    assert proc.returncode == 2, proc.stderr[-2000:]
    one_error_line(proc.stderr, "pipe.jpg", "named pipe (FIFO)")
    assert proc.stdout == ""


OPENERS = """
import sys
from imgclf.errors import ImgclfError
from imgclf.data.images import to_rgb
from imgclf.config import read_config_file
try:
    (to_rgb if sys.argv[1] == "image" else read_config_file)(sys.argv[2])
except ImgclfError as e:
    print(e)
    sys.exit(2)
"""


@pytest.mark.parametrize("opener", ["image", "config"])
def test_the_openers_themselves_refuse_a_fifo(tmp_path, opener):
    """to_rgb and read_config_file check the path before opening it, whoever calls them."""
    os.mkfifo(tmp_path / "pipe.yaml")
    proc = subprocess.run([sys.executable, "-c", OPENERS, opener, str(tmp_path / "pipe.yaml")],
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "pipe.yaml: is a named pipe (FIFO), not a regular file" in proc.stdout


def make_odd_entry(path: Path, kind: str) -> None:
    if kind == "dangling symlink":
        path.symlink_to(path.parent / "gone.png")
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        sock.close()  # the socket file stays
    elif kind == "device":
        path.symlink_to("/dev/zero")  # reading it never ends
    else:
        raise ValueError(kind)


@pytest.mark.parametrize("kind,said", [("dangling symlink", "broken symbolic link"), ("socket", "a socket"),
                                       ("device", "a character device")])
def test_other_non_regular_entries_are_refused_by_train(tmp_path, cache, capsys, kind, said):
    data = make_folder(tmp_path / "d", per_class=4, size=8)
    make_odd_entry(data / "green" / "odd.png", kind)
    refused(train_argv(data, tmp_path / "run"), capsys, "odd.png", said)
    nothing_left(tmp_path, cache, tmp_path / "run")


def test_symlink_to_a_regular_image_is_fine_and_skip_bad_skips_the_rest(tmp_path, cache, capsys):
    from imgclf.data.dataset import scan_folder

    data = make_folder(tmp_path / "d", per_class=3, size=8)
    (data / "red" / "link.png").symlink_to(data / "blue" / "000.png")
    (data / "red" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    files, _, _ = scan_folder(data, skip_bad=True)
    assert "red/link.png" in files and "red/gone.png" not in files
    assert "gone.png: broken symbolic link" in capsys.readouterr().err


def test_predict_refuses_odd_entries_inside_a_folder(trained_colour_model, tmp_path, cache, capsys):
    run, _ = trained_colour_model
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", (8, 8), (200, 0, 0)).save(folder / "a.png")
    make_odd_entry(folder / "b.png", "dangling symlink")
    refused(["predict", str(run.model_path), str(folder)], capsys, "b.png", "broken symbolic link")


# ---------------------------------------------------------------------------------------
# 2. Datasets without two classes of images: refused before anything is decoded or written
# ---------------------------------------------------------------------------------------

def test_one_class_dataset_is_refused_up_front(tmp_path, cache, capsys):
    data = make_folder(tmp_path / "one", per_class=6, size=8, classes={"red": (220, 40, 40)})
    line = refused(train_argv(data, tmp_path / "run"), capsys)
    assert line == f"error: {data}: found 1 class folder (red); expected at least 2"
    nothing_left(tmp_path, cache, tmp_path / "run")


@pytest.mark.parametrize("layout,said", [("flat", "no class sub-folders"), ("empty class", "class folder is empty"),
                                         ("only text", "not an image file")])
def test_zero_classes_or_an_empty_class_is_refused(tmp_path, cache, capsys, layout, said):
    data = tmp_path / "d"
    if layout == "flat":  # images, but no class folders
        data.mkdir()
        Image.new("RGB", (8, 8)).save(data / "x.png")
        named = str(data)
    else:
        make_folder(data, per_class=4, size=8)
        (data / "yellow").mkdir()
        if layout == "only text":
            (data / "yellow" / "notes.txt").write_text("hi")
        named = "yellow"
    refused(train_argv(data, tmp_path / "run"), capsys, named, said)
    nothing_left(tmp_path, cache, tmp_path / "run")


# ---------------------------------------------------------------------------------------
# 3. predict on a folder with no images is an error, not "(no images)" and exit 0
# ---------------------------------------------------------------------------------------

def test_predict_on_a_folder_without_images(trained_colour_model, tmp_path, capsys):
    run, _ = trained_colour_model
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "readme.txt").write_text("no images here")
    refused(["predict", str(run.model_path), str(empty)], capsys, str(empty), "no image files")


# ---------------------------------------------------------------------------------------
# 4. Every rejection comes before the decoded-image cache is written
# ---------------------------------------------------------------------------------------

def _bad_dataset(tmp_path: Path, case: str):
    """(train argv, expected names in the error) for one dataset/config rejected at load time."""
    data = make_folder(tmp_path / "d", per_class=4, size=8)
    run = tmp_path / "run"
    if case == "test classes differ":
        test = make_folder(tmp_path / "t", per_class=2, size=8, classes={"cat": (1, 2, 3), "dog": (4, 5, 6)})
        return train_argv(data, run, "--test-data", test), [str(test), "differ"]
    if case == "one image in a class":
        for p in sorted((data / "green").iterdir())[1:]:
            p.unlink()
        return train_argv(data, run), ["green", "expected at least 2"]
    if case == "validation split too large":
        return train_argv(data, run, "--val-fraction", "0.95"), ["val_fraction"]
    if case == "corrupt image":
        (data / "blue" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
        return train_argv(data, run), ["broken.png"]
    if case == "corrupt images leave a class empty":
        for p in (data / "blue").iterdir():
            p.write_bytes(b"not a png")
        return train_argv(data, run, "--skip-bad-images"), ["blue", "expected at least 2"]
    if case == "negative split seed":
        return train_argv(data, run, "--split-seed", "-1"), ["split_seed"]
    if case == "unknown model":
        return train_argv(data, run, "--model", "no_such_net"), ["model", "no_such_net"]
    if case == "unknown model option":
        return train_argv(data, run, "--model-option", "widthz=[8, 8]"), ["model_options", "widthz"]
    raise ValueError(case)


@pytest.mark.parametrize("case", ["test classes differ", "one image in a class", "validation split too large",
                                  "corrupt image", "corrupt images leave a class empty", "negative split seed",
                                  "unknown model", "unknown model option"])
def test_rejected_datasets_leave_no_cache_file(tmp_path, cache, capsys, case):
    argv, names = _bad_dataset(tmp_path, case)
    refused(argv, capsys, *names)
    nothing_left(tmp_path, cache, tmp_path / "run")


def test_classes_other_than_the_models_are_refused_before_decoding(tmp_path, cache):
    """load_dataset(class_names=...) is for evaluate: a model's classes, checked on the file list."""
    from imgclf.data.dataset import load_dataset
    from imgclf.errors import DataError

    data = make_folder(tmp_path / "d", per_class=4, size=8)
    with pytest.raises(DataError, match=r"classes \['blue', 'green', 'red'\] differ from the training classes"):
        load_dataset(str(data), input_size=8, val_fraction=0.3, class_names=["cat", "dog"])
    nothing_left(tmp_path, cache)


def test_a_good_dataset_is_cached_atomically(tmp_path, cache):
    """The counterpart: a dataset that passes is cached, under its final name only."""
    from imgclf.data.dataset import load_dataset

    load_dataset(str(make_folder(tmp_path / "d", per_class=4, size=8)), input_size=8, val_fraction=0.25)
    names = [p.name for p in cache.iterdir()]
    assert len(names) == 1 and names[0].startswith("images-") and names[0].endswith(".npz"), names


# ---------------------------------------------------------------------------------------
# 5. Config files: alias bombs, huge files and huge values give one short line
# ---------------------------------------------------------------------------------------

def billion_laughs(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines + [f"model_options: {{widths: *a{levels - 1}}}"]) + "\n"


def flow_bomb(levels: int = 9) -> str:
    """The same bomb as one flow sequence, for a KEY=VALUE command-line option."""
    items = ["&a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    items += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "[" + ", ".join(items) + "]"


def test_yaml_alias_bomb_is_refused_in_one_short_line(tmp_path, cache, capsys):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(billion_laughs())
    assert bomb.stat().st_size < 600
    data = make_folder(tmp_path / "d", per_class=4, size=8)
    line = refused(["train", "--config", str(bomb), *train_argv(data, tmp_path / "run")[1:]], capsys,
                   "bomb.yaml", "aliases")
    assert len(line) < 200, len(line)
    nothing_left(tmp_path, cache, tmp_path / "run")
    # the same bomb as a --model-option value
    line = refused(train_argv(data, tmp_path / "run", "--model-option", "widths=" + flow_bomb()),
                   capsys, "--model-option", "widths")
    assert len(line) < 200, len(line)
    nothing_left(tmp_path, cache, tmp_path / "run")


@pytest.mark.parametrize("case", ["huge file", "huge value", "huge key", "deep nesting", "huge integer"])
def test_oversized_config_files_and_values_give_short_errors(tmp_path, cache, capsys, case):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text({"huge file": "epochs: 1\n" + "# padding\n" * 200_000,
                    "huge value": "resize: " + "x" * 100_000 + "\n",
                    "huge key": "x" * 100_000 + "y: 1\n",
                    "deep nesting": "model_options: {a: " + "[" * 5_000 + "\n",
                    "huge integer": "epochs: " + "9" * 5_000 + "\n"}[case])
    data = make_folder(tmp_path / "d", per_class=4, size=8)
    line = refused(["train", "--config", str(cfg), *train_argv(data, tmp_path / "run")[1:]], capsys, "cfg.yaml")
    assert len(line) < 1000 and "xxxxxxxxxx" * 10 not in line, line[:300]
    nothing_left(tmp_path, cache, tmp_path / "run")


def test_command_line_values_are_quoted_short(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--epochs", "x" * 10_000])
    assert e.value.code == 2
    line = one_error_line(capsys.readouterr().err, "--epochs")
    assert len(line) < 400, len(line)
    line = refused(["train", "--data", str(tmp_path), "--resize", "z" * 10_000], capsys, "resize")
    assert len(line) < 400, len(line)


# ---------------------------------------------------------------------------------------
# Fuzz: make_config gives a TrainConfig or a short ConfigError, never anything else
# ---------------------------------------------------------------------------------------

values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=200) | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=10)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(FIELD_TYPES)) | st.text(max_size=30), values, max_size=4))
def test_make_config_fuzz(fields):
    fields.pop("data", None)  # any string is a valid data path at this stage
    fields.pop("config_file", None)  # make_config's own argument: a file to read
    try:
        cfg = make_config(**fields)
    except ConfigError as e:
        assert "\n" not in str(e) and len(str(e)) < 1000, str(e)[:300]
        return
    assert isinstance(cfg, TrainConfig)
    assert cfg.epochs >= 1 and cfg.batch_size >= 1 and 0 < cfg.val_fraction < 1 and cfg.learning_rate > 0

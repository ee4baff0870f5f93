"""imgclf tune: space checking, exactly-once grids under concurrency, kill + resume, pruning,
results files, and a real (tiny) training study whose best config reproduces.

The worker/storage tests use the toy objective in tests/tune_toy.py (no training). PostgreSQL tests need a
server: IMGCLF_TEST_POSTGRES_URL=postgresql://USER:PASSWORD@127.0.0.1:5432/DB (they fail when
CI=true and it is unset, and skip otherwise). USER needs CREATEDB: the first-use test creates, and
drops, a brand-new database of its own on that server.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from imgclf.cli import main
from imgclf.pipeline import tune
from imgclf.tuning import read_space
from tune_toy import TOY
from conftest import HANG

PG_URL = os.environ.get("IMGCLF_TEST_POSTGRES_URL")
TESTS = Path(__file__).resolve().parent  # tune_toy.py: processes import it from here


def need_postgres():
    if PG_URL:
        return PG_URL
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("IMGCLF_TEST_POSTGRES_URL is not set on CI: PostgreSQL tests must run there")
    pytest.skip("IMGCLF_TEST_POSTGRES_URL not set (PostgreSQL tests run on CI)")


def write_space(path: Path, params: dict, **extra) -> Path:
    path.write_text(yaml.safe_dump({"params": params, **extra}, sort_keys=False))
    return path


GRID = {"learning_rate": [0.001, 0.003, 0.01, 0.03, 0.1], "momentum": [0.0, 0.9]}  # 10 points


def toy_env(tmp_path: Path, seconds: float, machine: str | None = None) -> dict:
    env = dict(os.environ, IMGCLF_TOY_LOG=str(tmp_path / "toy.log"), IMGCLF_TOY_SECONDS=str(seconds),
               PYTHONPATH=python_path(TESTS))
    if machine:
        env["IMGCLF_TUNE_MACHINE"] = machine
    return env


def python_path(*folders: Path) -> str:
    return os.pathsep.join(filter(None, [*map(str, folders), os.environ.get("PYTHONPATH")]))


def started(tmp_path: Path) -> list[dict]:
    log = tmp_path / "toy.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def key(params: dict) -> str:
    return json.dumps(params, sort_keys=True)


def study_trials(storage: str, name: str):
    import optuna

    return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)


def assert_grid_done_once(trials, grid_size: int):
    complete = Counter(key(t.params) for t in trials if t.state.name == "COMPLETE")
    assert len(complete) == grid_size, f"{len(complete)} of {grid_size} grid points complete"
    assert set(complete.values()) == {1}, f"a grid point completed twice: {complete}"
    assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING")]


def tune_cmd(space: Path, *args) -> list[str]:
    return [sys.executable, "-m", "imgclf", "tune", str(space), "--objective", TOY, "--quiet", "--no-plots", *args]


def wait_for(predicate, timeout: float, what: str):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def kill(pid: int):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# The toy objective, except that a worker's trial waits (up to the hang guard) until another worker has
# started a trial too: "two workers shared the grid" then holds however unevenly a busy machine
# schedules the worker processes.
TWO_WORKERS_OBJECTIVE = textwrap.dedent("""
    import os
    import time
    from pathlib import Path

    from tune_toy import toy_objective


    def objective(ctx):
        pids = Path(os.environ["IMGCLF_TEST_PIDS"])
        with open(pids, "a") as f:
            f.write(f"{os.getpid()}\\n")
        deadline = time.monotonic() + 1800  # the hang guard (conftest.HANG): not imported here
        while len(set(pids.read_text().split())) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        return toy_objective(ctx)
""")


def two_workers_objective(tmp_path: Path) -> str:
    """Write the objective above as tmp_path/both_workers.py; returns its MODULE:FUNCTION."""
    (tmp_path / "both_workers.py").write_text(TWO_WORKERS_OBJECTIVE)
    return "both_workers:objective"


class FakeClock:
    """Stands in for the `time` module in tune() and the worker loop (imgclf.tuning.tuner and
    .worker) and in tune_toy: time() only moves when the code sleeps,
    so a time budget is used up by the toy objective's sleeps, not by how fast the machine is."""

    def __init__(self):
        self.now = 1_000_000.0

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def __getattr__(self, name):  # perf_counter, strftime, ...: the real ones
        return getattr(time, name)


# A worker started at the same instant as the others: it first imports all that checking the
# space and opening a storage need (Keras, Optuna's tables, the drivers), says it is ready, waits
# for the start file, then runs `imgclf tune SPACE ARGS...`: the workers race on the storage.
START_TOGETHER = textwrap.dedent("""
    import contextlib, os, sys, time
    import optuna
    with contextlib.suppress(ImportError):
        import psycopg
    from imgclf.cli import main
    from imgclf.tuning import read_space

    read_space(sys.argv[3])
    optuna.storages.RDBStorage("sqlite:///:memory:")
    ready, start = sys.argv[1], sys.argv[2]
    open(ready, "w").close()
    while not os.path.exists(start):
        time.sleep(0.001)
    sys.exit(main(["tune", *sys.argv[3:]]))
""")


def start_together(tmp_path: Path, n: int, space: Path, storage: str, name: str) -> list[subprocess.Popen]:
    """n `imgclf tune` workers on one storage and study, released at the same instant."""
    start = tmp_path / "start"
    procs = []
    for i in range(n):
        args = [str(space), "--objective", TOY, "--quiet", "--no-plots", "--no-report", "--storage", storage,
                "--study", name, "--out", str(tmp_path / f"worker-{i}")]
        procs.append(subprocess.Popen([sys.executable, "-c", START_TOGETHER, str(tmp_path / f"ready-{i}"), str(start),
                                       *args], env=toy_env(tmp_path, 0.05), stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT))
    try:
        wait_for(lambda: all((tmp_path / f"ready-{i}").exists() or procs[i].poll() is not None for i in range(n)),
                 180, "the workers to be ready")
    finally:
        start.touch()  # also on a timeout: no worker is left waiting
    return procs


def assert_all_joined_and_each_point_once(tmp_path: Path, procs, storage: str, name: str):
    outputs = [p.communicate(timeout=HANG)[0].decode() for p in procs]
    last_lines = [(out.strip().splitlines() or [""])[-1] for out in outputs]
    assert [p.returncode for p in procs] == [0] * len(procs), last_lines
    runs = started(tmp_path)
    assert len(runs) == 10 and len({key(r["params"]) for r in runs}) == 10, runs  # each point started once
    assert_grid_done_once(study_trials(storage, name), 10)
    for i in range(len(procs)):  # every worker joined the one study and wrote all of its results
        rows = list(csv.DictReader(open(tmp_path / f"worker-{i}" / "trials.csv")))
        assert len(rows) == 10 and {r["state"] for r in rows} == {"complete"}


@pytest.fixture
def fresh_postgres():
    """A brand-new, empty database on the IMGCLF_TEST_POSTGRES_URL server (dropped afterwards):
    first use is tested even when the CI database already has Optuna's tables."""
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    url = need_postgres()
    db = f"imgclf_first_use_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as con:
        con.execute(sa.text(f'CREATE DATABASE "{db}"'))
    fresh = make_url(url).set(database=db).render_as_string(hide_password=False)
    try:
        check = sa.create_engine(fresh, poolclass=sa.pool.NullPool)
        assert sa.inspect(check).get_table_names() == []  # empty: no Optuna tables yet
        check.dispose()
        yield fresh
    finally:
        with admin.connect() as con:
            con.execute(sa.text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
        admin.dispose()


# ---------------------------------------------------------------------------------------
# Space file and bad input
# ---------------------------------------------------------------------------------------

def test_example_space_is_a_valid_grid():
    from imgclf.tuning import example_space

    space = read_space(example_space("seed_cnn"))
    assert space.sampler == "grid" and space.pruner == "none"
    assert space.budget_trials == 12 and len(space.grid()) == 12
    assert {p.name for p in space.params} == {"learning_rate", "momentum", "batch_size"}
    tpe = read_space(example_space("seed_cnn"), sampler="tpe", trials=5)
    assert tpe.pruner == "median" and tpe.budget_trials == 5  # pruning on by default for samplers


def test_space_values_are_typed_and_ranges_parsed(tmp_path):
    space = read_space(write_space(tmp_path / "s.yaml", {
        "learning_rate": {"low": "1e-4", "high": 0.1, "log": True},  # YAML 1.1 reads 1e-4 as a string
        "batch_size": {"low": 16, "high": 128, "step": 16},
        "augment_flip": [True, False], "model_options.dropout": ["0.25", 0.5]}, sampler="random"))
    p = {x.name: x for x in space.params}
    assert p["learning_rate"].kind == "float" and p["learning_rate"].low == 1e-4 and p["learning_rate"].log
    assert p["batch_size"].kind == "int" and p["batch_size"].step == 16
    assert p["model_options.dropout"].choices == [0.25, 0.5]
    config = space.trial_config({"learning_rate": 0.01, "batch_size": 32, "augment_flip": True,
                                 "model_options.dropout": 0.5})
    assert config["model_options"] == {"dropout": 0.5} and config["keep_best"] is True


@pytest.mark.parametrize("params, extra, message", [
    ({"lerning_rate": [0.1]}, {}, "params.lerning_rate: unknown parameter (did you mean learning_rate?)"),
    ({"batch_size": [32, "big"]}, {}, "params.batch_size: value 'big' is not a valid int"),
    ({"learning_rate": [0.1, -1.0]}, {}, "learning_rate"),
    ({"learning_rate": []}, {}, "params.learning_rate: empty list of values"),
    ({}, {}, "params: nothing to search"),
    ({"learning_rate": {"low": 0.001, "high": 0.1}}, {}, "the grid sampler needs a list of values"),
    ({"learning_rate": {"low": 0.0, "high": 0.1, "log": True}}, {"sampler": "tpe"}, "a log range needs low > 0"),
    ({"val_fraction": [0.1, 0.2]}, {}, "changes the validation split"),
    ({"learning_rate": [0.1]}, {"sampler": "bayes"}, "sampler: expected one of grid, random, tpe"),
    ({"learning_rate": [0.1]}, {"budget": {"epochs": "many"}}, "budget.epochs: expected an integer"),
])
def test_bad_space_is_one_error_line_before_any_work(tmp_path, capsys, params, extra, message):
    space = write_space(tmp_path / "bad.yaml", params, **extra)
    rc = main(["tune", str(space), "--objective", TOY, "--out", str(tmp_path / "study")])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "study").exists()  # nothing created, nothing trained


def test_unreachable_storage_is_one_error_line(tmp_path, capsys):
    space = write_space(tmp_path / "s.yaml", {"learning_rate": [0.1]})
    rc = main(["tune", str(space), "--objective", TOY, "--out", str(tmp_path / "study"),
               "--storage", "postgresql://imgclf:secret@127.0.0.1:9/nowhere"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert err.startswith("error: --storage postgresql://imgclf:***@127.0.0.1:9/nowhere: cannot connect"), err
    assert "secret" not in err
    assert main(["tune", str(space), "--objective", TOY, "--storage", "nonsense"]) == 2
    assert "not a database URL" in capsys.readouterr().err


def test_missing_data_is_an_error_before_training(tmp_path, capsys):
    space = write_space(tmp_path / "s.yaml", {"learning_rate": [0.1]})
    assert main(["tune", str(space), "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "st")]) == 2
    assert "folder not found" in capsys.readouterr().err
    assert not (tmp_path / "st").exists()


def test_study_with_a_different_space_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("IMGCLF_TOY_SECONDS", "0")
    out = tmp_path / "study"
    first = write_space(tmp_path / "a.yaml", {"learning_rate": [0.1, 0.01]})
    result = tune(first, out_dir=out, study="s", objective=TOY, progress=False, plots=False)
    assert result.counts["complete"] == 2
    other = write_space(tmp_path / "b.yaml", {"learning_rate": [0.1, 0.01], "momentum": [0.0, 0.5]})
    rc = main(["tune", str(other), "--objective", TOY, "--out", str(out), "--study", "s"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "exists with a different search space (differs in: params)" in err, err
    assert len(study_trials(f"sqlite:///{out / 'study.db'}", "s")) == 2  # nothing added
    # the same space again: a continuation, nothing rerun
    again = tune(first, out_dir=out, study="s", objective=TOY, progress=False, plots=False)
    assert again.counts["complete"] == 2 and len(study_trials(f"sqlite:///{out / 'study.db'}", "s")) == 2
    # --resume of a study that does not exist
    rc = main(["tune", str(first), "--objective", TOY, "--out", str(tmp_path / "x"), "--resume"])
    assert rc == 2 and "no such study" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------
# SQLite: two local workers, results files, kill + resume
# ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_two_local_workers_evaluate_each_grid_point_once(tmp_path, monkeypatch):
    for k, v in toy_env(tmp_path, 0.05).items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("IMGCLF_TEST_PIDS", str(tmp_path / "pids"))
    monkeypatch.syspath_prepend(str(tmp_path))
    objective = two_workers_objective(tmp_path)
    space = write_space(tmp_path / "s.yaml", GRID, budget={"epochs": 3})
    out = tmp_path / "study"
    result = tune(space, out_dir=out, workers=2, objective=objective, progress=False)
    runs = started(tmp_path)
    assert len(runs) == 10 and len({key(r["params"]) for r in runs}) == 10  # each point started once
    assert len({r["pid"] for r in runs}) == 2  # by two worker processes
    assert_grid_done_once(study_trials(f"sqlite:///{out / 'study.db'}", "s"), 10)
    # results files
    rows = list(csv.DictReader(open(out / "trials.csv")))
    assert len(rows) == 10 and {r["state"] for r in rows} == {"complete"}
    assert {"trial", "learning_rate", "momentum", "val_accuracy", "val_loss", "epochs_run", "seconds"} <= set(rows[0])
    best = max(rows, key=lambda r: float(r["val_accuracy"]))
    assert result.best["val_accuracy"] == pytest.approx(float(best["val_accuracy"]))
    assert (out / "trials.md").read_text().count("\n") == 12
    for name in ("optimization_history", "param_importances", "slice", "intermediate_values"):
        assert (out / "plots" / f"{name}.png").stat().st_size > 5000
    cfg = yaml.safe_load((out / "best_config.yaml").read_text())
    assert cfg["learning_rate"] == result.best["params"]["learning_rate"] and cfg["epochs"] == 3
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["complete"] == 10 and summary["finished"] and summary["workers"] == 2
    assert json.loads((out / "progress.json").read_text())["done"] == 10


@pytest.mark.slow
def test_killed_workers_then_resume_completes_without_repeats(tmp_path, monkeypatch):
    env = toy_env(tmp_path, 0.3)
    monkeypatch.setenv("IMGCLF_TOY_LOG", env["IMGCLF_TOY_LOG"])
    monkeypatch.setenv("IMGCLF_TOY_SECONDS", "0.05")
    space = write_space(tmp_path / "s.yaml", GRID, budget={"epochs": 3})  # ~1 s per trial
    out = tmp_path / "study"
    parent = subprocess.Popen(tune_cmd(space, "--workers", "2", "--out", str(out)), env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: len(started(tmp_path)) >= 4, 90, "4 trials to start")
    finally:  # everything dies mid-trial: the parent and both workers
        pids = {r["pid"] for r in started(tmp_path)}
        kill(parent.pid)
        for pid in pids:
            kill(pid)
        parent.wait()
    storage = f"sqlite:///{out / 'study.db'}"
    before = study_trials(storage, "s")
    done_before = {key(t.params) for t in before if t.state.name == "COMPLETE"}
    assert [t for t in before if t.state.name == "RUNNING"], "expected trials killed mid-run"
    n_started = len(started(tmp_path))

    rc = main(["tune", "--resume", str(out), "--quiet", "--no-plots"])  # everything from tune.json
    assert rc == 0
    trials = study_trials(storage, "s")
    assert_grid_done_once(trials, 10)
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert failed and all("is gone" in t.user_attrs["failed_reason"] for t in failed)
    rerun = Counter(key(r["params"]) for r in started(tmp_path)[n_started:])
    assert not (set(rerun) & done_before), "a finished trial was run again"
    assert set(rerun.values()) == {1}
    # killed points were re-queued and run; a trial killed between its claim and its first suggested
    # value has no params of its own, and its grid point is among the ten done once above
    assert {key(t.params) for t in failed if t.params} <= set(rerun)


def test_a_claim_whose_worker_stopped_before_the_trial_started_is_failed_and_rerun(tmp_path, monkeypatch):
    import warnings

    from imgclf.tuning.queue import enqueue_grid, open_study
    from imgclf.tuning.storage import open_storage

    monkeypatch.setenv("IMGCLF_TOY_SECONDS", "0")
    space_file = write_space(tmp_path / "s.yaml", {"learning_rate": [0.1, 0.01]})
    out = tmp_path / "study"
    out.mkdir()
    url = f"sqlite:///{(out / 'study.db').resolve()}"
    space = read_space(space_file)
    study = open_study(open_storage(url, space), "s", space)
    enqueue_grid(study, space)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        orphan = study.ask()  # popped (RUNNING), but its claimer stops before recording itself
    # the time budget only guards against waiting forever for the orphan
    result = tune(space_file, out_dir=out, study="s", objective=TOY, progress=False, plots=False, time_budget="2m")
    assert result.summary["finished"] and result.counts["complete"] == 2
    trials = study_trials(url, "s")
    assert trials[orphan.number].state.name == "FAIL"
    assert "never started" in trials[orphan.number].user_attrs["failed_reason"]
    assert_grid_done_once(trials, 2)


def test_pruning_with_random_sampler_reports_savings(tmp_path, monkeypatch):
    monkeypatch.setenv("IMGCLF_TOY_SECONDS", "0.01")
    space = write_space(tmp_path / "s.yaml", {"learning_rate": {"low": 1e-5, "high": 10.0, "log": True}},
                        sampler="random", pruner="median", budget={"trials": 12, "epochs": 6}, seed=1)
    out = tmp_path / "study"
    result = tune(space, out_dir=out, objective=TOY, progress=False, plots=False)
    c = result.counts
    assert c["complete"] + c["pruned"] == 12 and c["failed"] == 0
    assert c["pruned"] >= 1
    rows = list(csv.DictReader(open(out / "trials.csv")))
    pruned = [r for r in rows if r["state"] == "pruned"]
    assert len(pruned) == c["pruned"] and all(int(r["epochs_run"]) < 6 for r in pruned)
    p = result.summary["pruning"]
    assert p["pruned_trials"] == c["pruned"] and p["epochs_saved"] == sum(6 - int(r["epochs_run"]) for r in pruned)
    assert p["seconds_saved_estimate"] > 0


# ---------------------------------------------------------------------------------------
# PostgreSQL: two independent worker processes (as on two machines) share one study
# ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_postgres_two_workers_each_grid_point_once(tmp_path):
    url = need_postgres()
    name = f"t-{uuid.uuid4().hex[:10]}"
    space = write_space(tmp_path / "s.yaml", GRID, budget={"epochs": 2})
    objective = two_workers_objective(tmp_path)
    env = {"IMGCLF_TEST_PIDS": str(tmp_path / "pids"), "PYTHONPATH": python_path(tmp_path, TESTS)}
    procs = [subprocess.Popen(tune_cmd(space, "--storage", url, "--study", name, "--out", str(tmp_path / m),
                                       "--objective", objective),
                              env={**toy_env(tmp_path, 0.1, machine=m), **env}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT)
             for m in ("machine-a", "machine-b")]
    outputs = [p.communicate(timeout=HANG)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    runs = started(tmp_path)
    assert len(runs) == 10 and len({key(r["params"]) for r in runs}) == 10, runs
    assert len({r["pid"] for r in runs}) == 2
    assert_grid_done_once(study_trials(url, name), 10)
    for m in ("machine-a", "machine-b"):  # each "machine" writes the whole study's results
        assert len(list(csv.DictReader(open(tmp_path / m / "trials.csv")))) == 10


@pytest.mark.slow
def test_postgres_workers_started_together_on_an_empty_database_all_join(tmp_path, fresh_postgres):
    # first use: Optuna creates its tables; workers that start together must not race there
    name = f"t-{uuid.uuid4().hex[:10]}"
    space = write_space(tmp_path / "s.yaml", GRID, budget={"epochs": 2})
    procs = start_together(tmp_path, 3, space, fresh_postgres, name)
    assert_all_joined_and_each_point_once(tmp_path, procs, fresh_postgres, name)


@pytest.mark.slow
def test_sqlite_workers_started_together_on_a_new_file_all_join(tmp_path):
    db = tmp_path / "shared" / "study.db"
    assert not db.exists()
    space = write_space(tmp_path / "s.yaml", GRID, budget={"epochs": 2})
    procs = start_together(tmp_path, 3, space, f"sqlite:///{db}", "s")
    assert_all_joined_and_each_point_once(tmp_path, procs, f"sqlite:///{db}", "s")


@pytest.mark.slow
def test_postgres_killed_worker_trial_fails_by_heartbeat_and_resume_completes(tmp_path, monkeypatch):
    url = need_postgres()
    name = f"t-{uuid.uuid4().hex[:10]}"
    space = write_space(tmp_path / "s.yaml", GRID, budget={"epochs": 3}, heartbeat={"interval": 1, "grace": 3})
    procs = {m: subprocess.Popen(tune_cmd(space, "--storage", url, "--study", name, "--out", str(tmp_path / m)),
                                 env=toy_env(tmp_path, 0.3, machine=m), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL) for m in ("machine-a", "machine-b")}
    try:
        wait_for(lambda: len(started(tmp_path)) >= 4, 90, "4 trials to start")
    finally:
        for p in procs.values():
            kill(p.pid)
            p.wait()
    before = study_trials(url, name)
    running = [t for t in before if t.state.name == "RUNNING"]
    assert running, "expected trials killed mid-run"
    done_before = {key(t.params) for t in before if t.state.name == "COMPLETE"}
    n_started = len(started(tmp_path))
    # resume from a third "machine": the dead workers are not local, so only their heartbeat
    # (silent for more than `grace` seconds) can fail their trials
    monkeypatch.setenv("IMGCLF_TOY_LOG", str(tmp_path / "toy.log"))
    monkeypatch.setenv("IMGCLF_TOY_SECONDS", "0.05")
    result = tune(space, storage=url, study=name, resume=True, out_dir=tmp_path / "machine-c",
                  objective=TOY, progress=False, plots=False)
    trials = study_trials(url, name)
    assert_grid_done_once(trials, 10)
    assert result.summary["finished"]
    failed = {t.number for t in trials if t.state.name == "FAIL"}
    assert {t.number for t in running} <= failed  # marked failed, not lost
    rerun = Counter(key(r["params"]) for r in started(tmp_path)[n_started:])
    assert not (set(rerun) & done_before) and set(rerun.values()) == {1}


# ---------------------------------------------------------------------------------------
# Real training (tiny): validation-only selection, test touched once, best config reproduces
# ---------------------------------------------------------------------------------------

def make_images(root: Path, n: int, seed: int):
    rng = np.random.default_rng(seed)
    for c, name in enumerate(["dark", "light"]):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            x = rng.integers(0, 100, (12, 12, 3)) + (140 if c else 0)
            Image.fromarray(x.astype(np.uint8)).save(root / name / f"{i}.png")


@pytest.mark.slow
def test_train_objective_study_validation_only_and_best_config_reproduces(tmp_path, monkeypatch):
    monkeypatch.setenv("IMGCLF_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "data"
    make_images(data / "train", 10, 0)
    make_images(data / "test", 4, 1)
    space = write_space(tmp_path / "s.yaml", {"learning_rate": [0.01, 0.05]},
                        base={"input_size": 12, "batch_size": 4, "val_fraction": 0.2}, budget={"epochs": 2})
    out = tmp_path / "study"
    result = tune(space, data=str(data), out_dir=out, progress=False, plots=False)
    assert result.counts["complete"] == 2
    for trial_dir in sorted((out / "trials").iterdir()):
        assert (trial_dir / "model.keras").is_file() and not (trial_dir / "backup").exists()  # best checkpoint only
        assert "test" not in json.loads((trial_dir / "metrics.json").read_text())  # selection never saw test
    test = result.summary["test"]
    assert test["n"] == 8 and 0.0 <= test["accuracy"] <= 1.0 and test["trial"] == result.best["trial"]
    assert (out / "test" / "metrics.json").is_file()
    assert 'id="trials"' in (out / "report.html").read_text()  # tune ends with its HTML report
    rows = list(csv.DictReader(open(out / "trials.csv")))
    assert all(float(r["peak_rss_mb"]) > 0 and int(r["epochs_run"]) == 2 for r in rows)

    from imgclf.training.trainer import train

    again = train(out / "best_config.yaml", run_dir=tmp_path / "again", verbose=0, report=False,
                  evaluate_test=False)
    assert again.metrics["val"]["accuracy"] == pytest.approx(result.best["val_accuracy"], abs=1e-9)
    assert again.metrics["val"]["loss"] == pytest.approx(result.best["val_loss"], rel=1e-4)


@pytest.mark.slow
def test_trials_in_child_processes_survive_a_crashing_trial(tmp_path, monkeypatch):
    (tmp_path / "crashy.py").write_text(
        "import os\n"
        "def objective(ctx):\n"
        "    if ctx.params['seed'] == 2:\n"
        "        os._exit(3)  # the trial's process dies without a word\n"
        "    assert os.getpid() != ctx.extra['parent']  # it runs in a child process\n"
        "    return {'val_accuracy': ctx.params['seed'] / 10, 'epochs_run': 1}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    space = write_space(tmp_path / "s.yaml", {"seed": [1, 2, 3]}, max_attempts=2)
    result = tune(space, out_dir=tmp_path / "study", objective="crashy:objective", isolate="process",
                  progress=False, plots=False)
    assert result.counts["complete"] == 2 and result.counts["failed"] == 2  # seed=2: tried twice, then given up
    assert result.best["params"] == {"seed": 3}
    rows = list(csv.DictReader(open(tmp_path / "study" / "trials.csv")))
    assert all("trial process exited with code 3" in r["note"] for r in rows if r["state"] == "fail")
    assert result.summary["finished"]


def test_time_budget_stops_new_trials_and_resume_finishes(tmp_path, monkeypatch):
    import tune_toy

    import imgclf.tuning.tuner
    import imgclf.tuning.worker

    clock = FakeClock()  # the budget is spent by the trials only
    for module in (imgclf.tuning.tuner, imgclf.tuning.worker, tune_toy):
        monkeypatch.setattr(module, "time", clock)
    monkeypatch.setenv("IMGCLF_TOY_SECONDS", "0.4")
    space = write_space(tmp_path / "s.yaml", GRID, budget={"epochs": 1, "time": "1s"})
    out = tmp_path / "study"
    first = tune(space, out_dir=out, objective=TOY, progress=False, plots=False)
    # trials start at 0, 0.4 and 0.8 s; at 1.2 s the budget is used up and no new trial starts
    assert first.counts["complete"] == 3 and not first.summary["finished"]
    assert first.counts["waiting"] == 7
    monkeypatch.setenv("IMGCLF_TOY_SECONDS", "0")
    rest = tune(space, out_dir=out, objective=TOY, progress=False, plots=False, time_budget="1h", resume=True)
    assert rest.summary["finished"]
    assert_grid_done_once(study_trials(f"sqlite:///{out / 'study.db'}", "s"), 10)


def test_the_photos_space_parses_and_its_width_reaches_fastnet():
    """The shipped `photos` space: every point is a valid config, and model_options.width sets
    fastnet's three groups to (W, 2W, 4W)."""
    from imgclf.config import make_config
    from imgclf.models.registry import create_model
    from imgclf.tuning.space import example_space

    space = read_space(example_space("photos"))
    assert {p.name for p in space.params} >= {"input_size", "model_options.width", "learning_rate", "epochs",
                                               "augment_crop", "augment_color"}
    assert space.sampler == "tpe" and space.time == 3600
    assert space.trial_epochs == 16  # epochs searched: the most a trial has (not the config default, 30)
    from imgclf.tuning.results import pruning_savings

    rows = [{"state": "pruned", "epochs": 8, "epochs_run": 2, "seconds": 20.0},
            {"state": "pruned", "epochs": 16, "epochs_run": 4, "seconds": 40.0},
            {"state": "complete", "epochs": 12, "epochs_run": 12, "seconds": 120.0}]
    saved = pruning_savings(rows, space.trial_epochs)
    assert saved["epochs_saved"] == 6 + 12 and saved["seconds_saved_estimate"] == 60.0 + 120.0
    from imgclf.errors import ConfigError

    with pytest.raises(ConfigError, match="budget.epochs .or --epochs. fixes the epochs that params.epochs searches"):
        read_space(example_space("photos"), epochs=5)  # --epochs 5 and searched epochs: one or the other
    point = {p.name: (p.choices[-1] if p.kind == "choice" else p.high) for p in space.params}
    cfg = make_config(**space.trial_config(point))
    assert cfg.model_options["width"] == 48 and cfg.class_weight == "balanced" and cfg.keep_best
    model = create_model("fastnet", 3, (32, 32, 3), **cfg.model_options)
    convs = [layer.filters for layer in model.layers if type(layer).__name__ == "Conv2D" and "whiten" not in layer.name]
    assert sorted(set(convs)) == [48, 96, 192]
    from imgclf.errors import ConfigError

    with pytest.raises(ConfigError, match="width must be an integer"):
        create_model("fastnet", 3, (32, 32, 3), width=True)

"""`imgclf tune SPACE.yaml --data ...`: a hyperparameter search on Optuna, from start to results.

The space file (space.py) declares the base config, the searched parameters, the budget, the
sampler and the pruner. The study lives in a storage (storage.py): by default an SQLite file in
the study directory; `--storage postgresql://...` with the same `--study NAME` lets workers on any
number of machines join one study. Workers (worker.py) claim trials from the study's queue
(queue.py), each grid point exactly once; results.py writes what the study found.

Study directory (default studies/<study>):
    study.db                 the SQLite storage (unless --storage is given)
    tune.json                what `imgclf tune --resume STUDY_DIR` needs (no passwords)
    trials/trial-0007/       one run directory per trial (config.yaml, history.csv, model.keras...)
    logs/worker-<i>.log      output of local worker processes (--workers N > 1)
    progress.json            live counts and best so far (rewritten while the study runs)
    trials.csv, trials.md    results table: trial, state, parameters, val accuracy/loss, epochs, seconds
    best_config.yaml         the best trial's config: `imgclf train --config best_config.yaml` reproduces it
    summary.json             counts, best trial, time saved by pruning, test result (if any)
    plots/optimization_history.png, plots/param_importances.png, plots/slice.png,
    plots/intermediate_values.png
    test/                    evaluation of the best model on the test set (only when there is one)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import ConfigError, ImgclfError, quote
from ..fileio import write_json
from .objectives import resolve_objective, train_objective
from .queue import enqueue_grid, open_study
from .results import Progress, evaluate_best_on_test, trial_rows, write_results
from .space import Space, format_params, read_space, space_from_dict
from .storage import StudyLock, open_storage, redact
from .trial_process import quiet_optuna
from .worker import run_worker

DEFAULT_STUDY_ROOT = Path("studies")


@dataclass
class TuneResult:
    study_dir: Path
    study: str
    storage: str  # redacted
    counts: dict
    best: dict | None
    summary: dict
    workers: list[dict] = field(default_factory=list)


@dataclass
class _Plan:
    """One tune run, resolved from the arguments and (with --resume) the study's tune.json."""

    space: Space
    source: str  # the space file, or where the space was read from
    study: str
    study_dir: Path
    url: str  # the storage, with its password
    data: str | None
    test_data: str | None
    objective: Callable
    ref: str | None  # the objective's MODULE:FUNCTION (None: not importable)
    isolate: str


SPACE_OVERRIDES = ("sampler", "pruner", "trials", "epochs", "time_budget", "trial_time", "base")


def tune(space_file: str | Path | None = None, *, data: str | None = None, test_data: str | None = None,
         study: str | None = None, storage: str | None = None, workers: int = 1, resume: bool | str | Path = False,
         out_dir: str | Path | None = None, objective=None, isolate: str | None = None,
         threads_per_worker: int | None = None, test: bool = True, progress: bool = True, plots: bool = True,
         **space_overrides) -> TuneResult:
    """Run (or continue) a hyperparameter search. See the module docstring for the files written.

    `resume=True` continues the study named by the space file / --study (it must exist);
    `resume=STUDY_DIR` reads what it needs from STUDY_DIR/tune.json. Re-running on the same
    storage and study name also continues it: finished trials are never rerun.
    `space_overrides` override the space file: sampler, pruner, trials, epochs, time_budget,
    trial_time, and base (a dict of config fields).
    `objective`: None (train), "module:function" or a callable taking a TrialContext.
    `isolate`: "process" runs each trial in a fresh child process (default for the train
    objective: Keras/TensorFlow otherwise keep memory from every trial), "none" runs it in the worker.
    The study's HTML report is drawn on top of this (imgclf.pipeline.tune).
    """
    unknown = sorted(set(space_overrides) - set(SPACE_OVERRIDES))
    if unknown:
        raise ConfigError(f"tune: unknown setting {unknown[0]!r} (expected one of {', '.join(SPACE_OVERRIDES)})")
    t_start = time.perf_counter()
    overrides = {name: space_overrides.get(name) for name in SPACE_OVERRIDES if name != "base"}
    overrides["base_overrides"] = space_overrides.get("base")
    plan = _plan(space_file, overrides, resume=resume, out_dir=out_dir, study=study, storage=storage, data=data,
                 test_data=test_data, objective=objective, isolate=isolate, workers=workers)
    space, study_dir = plan.space, plan.study_dir
    quiet_optuna()
    rdb = open_storage(plan.url, space)
    with StudyLock(plan.url, plan.study):
        the_study = open_study(rdb, plan.study, space, create=not resume, data=plan.data)
        if space.sampler == "grid":
            enqueue_grid(the_study, space)
    write_json(study_dir / "tune.json", {"study": plan.study, "storage_url": redact(plan.url), "space": space.to_dict(),
                                         "space_source": plan.source, "data": plan.data,
                                         "test_data": plan.test_data, "objective": plan.ref})
    spec = {"space": space.to_dict(), "space_source": plan.source, "storage": plan.url, "study": plan.study,
            "study_dir": str(study_dir.resolve()), "objective": plan.ref, "data": plan.data,
            "test_data": plan.test_data, "deadline": time.time() + space.time if space.time else None,
            "sys_path": _objective_path(plan.objective), "isolate": plan.isolate}
    mon = Progress(the_study, space, study_dir, enabled=progress)
    mon.update(force=True)
    if workers == 1:
        worker_results = [_work_here(spec, plan, mon)]
    else:
        worker_results = _work_in_processes(workers, spec, study_dir, threads_per_worker, mon)
    counts = mon.update(force=True)
    summary = write_results(the_study, space, study_dir, plan.data, plan.test_data, plots=plots)
    summary.update(storage=redact(plan.url), workers=workers, wall_seconds=round(time.perf_counter() - t_start, 1),
                   finished=counts["waiting"] == 0 and counts["running"] == 0)
    if test and summary["finished"] and plan.objective is train_objective:
        summary["test"] = evaluate_best_on_test(summary, study_dir, plan.data, plan.test_data)
    write_json(study_dir / "summary.json", summary)
    if counts["done"] == 0 and counts["failed"]:
        reasons = [r.get("note") for r in trial_rows(the_study, space) if r["state"] == "fail" and r.get("note")]
        raise ImgclfError(f"study {plan.study}: every trial failed ({reasons[0] if reasons else 'see logs'}; "
                          f"logs in {study_dir / 'logs'})")
    return TuneResult(study_dir, plan.study, redact(plan.url), counts, summary.get("best"), summary, worker_results)


def _plan(space_file, overrides: dict, *, resume, out_dir, study, storage, data, test_data, objective, isolate,
          workers: int) -> _Plan:
    """Check the arguments (before any work) and resolve what they leave to the space file and tune.json."""
    saved = {}
    if resume and not isinstance(resume, bool):
        tune_json = Path(resume) / "tune.json"
        if not tune_json.is_file():
            raise ConfigError(f"--resume {Path(resume)}: not a study directory (expected tune.json inside)")
        saved = json.loads(tune_json.read_text())
        out_dir = out_dir or Path(resume)
    if workers < 1:
        raise ConfigError(f"--workers: expected an integer >= 1, got {workers}")
    if space_file is not None:
        space = read_space(space_file, **overrides)
        source = str(space_file)
    elif saved:
        source = saved.get("space_source", "tune.json")
        space = space_from_dict(saved["space"], source,
                                **{**overrides, "sampler": overrides["sampler"] or saved["space"]["sampler"],
                                   "pruner": overrides["pruner"] or saved["space"]["pruner"]})
    else:
        raise ConfigError("space: no space file given (imgclf tune SPACE.yaml, or --resume STUDY_DIR)")
    data = data or saved.get("data") or space.base.get("data")
    test_data = test_data or saved.get("test_data") or space.base.get("test_data")
    fn, ref = resolve_objective(objective if objective is not None else saved.get("objective"))
    if fn is train_objective:
        _check_data(data, test_data)
    isolate = isolate or ("process" if fn is train_objective else "none")
    if isolate not in ("process", "none"):
        raise ConfigError(f"--isolate: expected process or none, got {quote(isolate)}")
    if isolate == "process" and ref is None:
        raise ConfigError("--isolate process: the objective must be importable (module:function)")
    if workers > 1 and ref is None:
        raise ConfigError("--workers: worker processes need an importable objective (module:function), "
                          "not a lambda or a function defined in __main__")
    name = study or saved.get("study") or space.study or Path(source).stem
    study_dir = Path(out_dir) if out_dir else DEFAULT_STUDY_ROOT / name
    study_dir.mkdir(parents=True, exist_ok=True)
    url = storage or saved.get("storage_url") or f"sqlite:///{(study_dir / 'study.db').resolve()}"
    if "***" in url:
        raise ConfigError(f"--resume: the study's storage {url} needs its password: pass --storage URL again")
    return _Plan(space, source, name, study_dir, url, data, test_data, fn, ref, isolate)


def _check_data(data: str | None, test_data: str | None) -> None:
    if not data:
        raise ConfigError("--data: no dataset given (expected an image folder, a CIFAR-10 archive or 'cifar10')")
    from ..data.dataset import is_cifar_source

    if data != "cifar10" and not is_cifar_source(data) and not Path(data).is_dir():
        raise ConfigError(f"--data {data}: folder not found")
    if test_data and not Path(test_data).is_dir():
        raise ConfigError(f"--test-data {test_data}: folder not found")


def _work_here(spec: dict, plan: _Plan, mon: Progress) -> dict:
    """One worker: this process, logging to logs/worker-main.log."""
    log_path = plan.study_dir / "logs" / "worker-main.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)

    def log(msg):
        with open(log_path, "a") as f:
            f.write(f"{time.strftime('%H:%M:%S')} {msg}\n")

    try:
        return run_worker({**spec, "worker_id": "main"}, objective=plan.objective, log=log, on_change=mon.update)
    except KeyboardInterrupt:
        print(f"interrupted: the running trial is marked failed and will be re-run; continue with "
              f"imgclf tune --resume {plan.study_dir}", file=sys.stderr)
        raise


def _work_in_processes(n: int, spec: dict, study_dir: Path, threads: int | None, mon: Progress) -> list[dict]:
    """n local worker processes (python -m imgclf.tuning --worker I); progress while they run."""
    procs = _spawn_workers(n, spec, study_dir, threads or max(1, (os.cpu_count() or 1) // n))
    try:
        while any(p.poll() is None for p in procs):
            mon.update()
            time.sleep(1.0)
    except KeyboardInterrupt:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait()
        print(f"interrupted: running trials are marked failed and will be re-run; continue with "
              f"imgclf tune --resume {study_dir}", file=sys.stderr)
        raise
    results = [{"worker": i, "returncode": p.returncode} for i, p in enumerate(procs)]
    bad = [r for r in results if r["returncode"] not in (0, None)]
    if bad:
        tail = (study_dir / "logs" / f"worker-{bad[0]['worker']}.log").read_text().strip().splitlines()[-1:]
        print(f"warning: {len(bad)} worker(s) ended with an error; last line of worker-{bad[0]['worker']}.log: "
              f"{tail[0] if tail else ''}", file=sys.stderr)
    return results


def _spawn_workers(n: int, spec: dict, study_dir: Path, threads: int) -> list[subprocess.Popen]:
    logs = study_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, IMGCLF_TUNE_SPEC=json.dumps(spec), PYTHONUNBUFFERED="1")
    if threads:
        env.update(IMGCLF_TUNE_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
                   TF_NUM_INTRAOP_THREADS=str(threads), TF_NUM_INTEROP_THREADS=str(min(2, threads)))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    procs = []
    for i in range(n):
        log = open(logs / f"worker-{i}.log", "a")
        procs.append(subprocess.Popen([sys.executable, "-m", "imgclf.tuning", "--worker", str(i)], env=env,
                                      stdout=log, stderr=subprocess.STDOUT))
        log.close()
    return procs


def _objective_path(fn) -> list[str]:
    """The folder of the objective's module: worker and trial processes import it from there."""
    mod = sys.modules.get(getattr(fn, "__module__", ""), None)
    path = getattr(mod, "__file__", None)
    return [str(Path(path).resolve().parent)] if path else []


def print_summary(result: TuneResult) -> None:
    s = result.summary
    c = result.counts
    print(f"\nstudy {result.study} ({result.storage}): {c['complete']} complete, {c['pruned']} pruned, "
          f"{c['failed']} failed, {c['waiting']} waiting, {c['running']} running; wall {s['wall_seconds']:.0f} s")
    if result.best:
        b = result.best
        print(f"best: trial {b['trial']}  val_accuracy {b['val_accuracy']:.4f}  val_loss "
              f"{(b.get('val_loss') or float('nan')):.4f}  {format_params(b['params'])}")
    p = s["pruning"]
    if p["pruned_trials"]:
        print(f"pruning: {p['pruned_trials']} trials stopped early, {p['epochs_saved']} epochs not run, "
              f"about {p['seconds_saved_estimate']:.0f} s saved ({100 * p['fraction_saved_estimate']:.0f}% of trial time)")
    if s.get("test"):
        t = s["test"]
        if "accuracy" in t:
            print(f"test set (touched once, best trial {t['trial']} only): accuracy {t['accuracy']:.4f}, "
                  f"loss {t['loss']:.4f} on {t['n']} images")
        else:
            print(f"test set: {t.get('note')}")
    d = result.study_dir
    plots = ", plots/*.png" if s["files"].get("plots") else ""
    print(f"written: {d}/trials.csv, trials.md, best_config.yaml, summary.json{plots}")
    if result.best:
        print(f"reproduce the best trial: imgclf train --config {d}/best_config.yaml")
    if not s.get("finished"):
        print(f"the study is not finished: continue it with imgclf tune --resume {d}")

"""A worker: claim a trial, run it to a final state, repeat until the budget, the grid or the
time is used up. Local workers are processes: `python -m imgclf.tuning --worker I` (spec in the
IMGCLF_TUNE_SPEC environment variable); `imgclf tune` on any machine is a worker too.

Trials do not leak: the Keras session is cleared between trials, each trial keeps only its
best-epoch model (train's keep_best), per-trial memory (RSS, peak RSS) is recorded, and the train
objective runs each trial in a process of its own (trial_process.py).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Callable

from ..errors import ImgclfError, quote
from .objectives import TrialContext, resolve_objective
from .queue import claim, open_study, trial_id, worker_identity
from .sampling import suggest
from .space import Space, format_params, space_from_dict
from .storage import StudyLock, first_line, open_storage, retry
from .trial_process import memory_mb, objective_in_child, quiet_optuna


class Heartbeat:
    """Records the trial's heartbeat every `interval` seconds while the trial runs (Optuna starts
    its own only inside study.optimize, which workers do not use)."""

    def __init__(self, storage, trial_id: int, interval: int):
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while True:
            with contextlib.suppress(Exception):
                self.storage.record_heartbeat(self.trial_id)
            if self.stop.wait(self.interval):
                return

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        return False


class Terminate(BaseException):
    """SIGTERM in a worker process: the running trial is failed (and re-queued), the worker ends."""


def _on_sigterm(signum, frame):
    raise Terminate()


def run_trial(study, storage, trial, space: Space, spec: dict, objective: Callable, log=print) -> str:
    """Run one claimed trial (an optuna.Trial from claim) to a final state; returns the state name."""
    import optuna
    from optuna.trial import TrialState

    number = trial.number
    tid = trial_id(storage, study, number)
    run_dir = Path(spec["study_dir"]) / "trials" / f"trial-{number:04d}"
    retry(trial.set_user_attr, "run_dir", str(run_dir.resolve()))
    t0 = time.perf_counter()
    state, value, error = TrialState.FAIL, None, None
    ctx = None
    with Heartbeat(storage, tid, space.heartbeat_interval):
        try:
            params = suggest(trial, space)
            ctx = TrialContext(trial, params, space.trial_config(params), run_dir, space,
                               extra={"data": spec.get("data")})
            if spec.get("data"):
                ctx.config["data"] = spec["data"]
            if spec.get("test_data"):
                ctx.config["test_data"] = spec["test_data"]
            log(f"trial {number} started: {format_params(params)}")
            if spec.get("isolate") == "process" and spec.get("objective"):
                out = objective_in_child(ctx, spec, tid, log)
            else:
                out = objective(ctx)
            if isinstance(out, dict):
                value = out.get("val_accuracy", out.get("value"))
                for k, v in out.items():
                    if k != "value" and (v is None or isinstance(v, (int, float, str, bool))):
                        retry(trial.set_user_attr, k, v)
            else:
                value = out
            if value is None or not math.isfinite(float(value)):
                raise ImgclfError(f"objective returned {quote(value)} (expected a finite number)")
            value = float(value)
            state = TrialState.COMPLETE
        except optuna.TrialPruned as e:
            state = TrialState.PRUNED
            error = str(e) or "pruned"
        except (KeyboardInterrupt, Terminate):
            error = "interrupted"
            _finish(study, trial, TrialState.FAIL, None, error, t0, run_dir)
            raise
        except Exception as e:  # noqa: BLE001 - a failed trial is recorded, the study goes on
            error = f"{type(e).__name__}: {first_line(e)}"
            with contextlib.suppress(Exception):
                retry(trial.set_user_attr, "objective_error", True)
            log(f"trial {number} failed: {error}\n" + traceback.format_exc())
    _finish(study, trial, state, value, error, t0, run_dir,
            child_peak=ctx.extra.get("child_peak_rss_mb") if ctx is not None else None)
    return state.name


def _finish(study, trial, state, value, error, t0, run_dir: Path, child_peak: float | None = None) -> None:
    """Record the trial's time, memory and reason, then tell Optuna its final state."""
    from optuna.trial import TrialState

    seconds = time.perf_counter() - t0
    rss, peak = memory_mb()
    with contextlib.suppress(Exception):
        retry(trial.set_user_attr, "seconds", round(seconds, 3))
        retry(trial.set_user_attr, "rss_mb", round(rss, 1))  # the worker process, after the trial
        retry(trial.set_user_attr, "worker_peak_rss_mb", round(peak, 1))
        if child_peak:
            retry(trial.set_user_attr, "trial_process_peak_rss_mb", child_peak)
        retry(trial.set_user_attr, "peak_rss_mb", round(max(peak, child_peak or 0), 1))
        if error and state != TrialState.COMPLETE:
            retry(trial.set_user_attr, "failed_reason" if state == TrialState.FAIL else "pruned_reason", error)
    if state == TrialState.FAIL:
        shutil.rmtree(run_dir / "backup", ignore_errors=True)
    retry(study.tell, trial, value if state == TrialState.COMPLETE else None, state=state,
          skip_if_finished=True)


def run_worker(spec: dict, objective: Callable | None = None, log=None, on_change=None) -> dict:
    """The worker loop: claim a trial, run it, until the budget, the grid or the time is used up.

    Returns {"trials": n run here, "states": {...}, "errors": [...]}.
    """
    quiet_optuna()
    space = space_from_dict(spec["space"], spec.get("space_source", "space"))
    if objective is None:
        objective, _ = resolve_objective(spec.get("objective"))
    log = log or (lambda msg: print(msg, flush=True))
    storage = open_storage(spec["storage"], space)
    study = open_study(storage, spec["study"], space, create=False)
    lock = StudyLock(spec["storage"], spec["study"])
    worker = worker_identity(spec.get("worker_id", "0"))
    deadline = spec.get("deadline")
    poll = float(spec.get("poll_seconds", min(2, space.heartbeat_interval)))
    done: dict[str, int] = {}
    errors: list[str] = []
    consecutive_failures = 0
    while True:
        if deadline and time.time() >= deadline:
            log("time budget reached: no new trials")
            break
        trial, others_running = claim(study, storage, space, lock, worker)
        if trial is None:
            if others_running:  # they may die: then their points come back to the queue
                time.sleep(poll)
                continue
            break
        if on_change:
            on_change()
        state = run_trial(study, storage, trial, space, spec, objective, log=log)
        done[state] = done.get(state, 0) + 1
        if on_change:
            on_change()
        if state == "FAIL":
            consecutive_failures += 1
            t = retry(storage.get_trial, trial_id(storage, study, trial.number))
            errors.append(t.user_attrs.get("failed_reason", "failed"))
            if consecutive_failures >= 3:
                log(f"stopping this worker: {consecutive_failures} trials failed in a row ({errors[-1]})")
                break
        else:
            consecutive_failures = 0
    return {"trials": sum(done.values()), "states": done, "errors": errors}


def worker_main(argv: list[str]) -> int:
    """A local worker process: python -m imgclf.tuning --worker I (the spec in IMGCLF_TUNE_SPEC)."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    spec = json.loads(os.environ["IMGCLF_TUNE_SPEC"])
    spec["worker_id"] = argv[-1]
    for p in spec.get("sys_path", []):
        if p not in sys.path:
            sys.path.insert(0, p)
    try:
        result = run_worker(spec)
    except (KeyboardInterrupt, Terminate):
        return 130
    except ImgclfError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result), flush=True)
    return 0

"""The trial queue of a study: create or join it, enqueue the grid, fail dead trials, claim the next.

* Grid points are evaluated exactly once however many workers run. Optuna's GridSampler is not
  used (it repeats points under concurrency). The grid is enqueued as WAITING trials, and every
  enqueue and every claim happens under the study lock (storage.StudyLock). Enqueueing is
  idempotent: a point is enqueued only when no trial for it is waiting, running, complete or
  pruned, so workers joining late, a resumed run, or two machines starting at once cannot add it
  twice.
* A claim is Optuna's study.ask(), which pops the oldest WAITING trial (or, for the random and TPE
  samplers, creates a new one). Its check-then-set is not atomic on SQLite; under the lock it
  does not need to be. Before the lock is released the claimed trial gets its first heartbeat and
  its worker's identity, so any RUNNING trial without a worker was claimed by a process that
  stopped before it could start it.
* A killed worker's trial is failed and its grid point re-queued: by Optuna's heartbeat
  (fail_stale_trials, RDB storage) after the grace period, or at once when the worker ran on this
  machine and its process is gone. Points that failed `max_attempts` times are not re-queued again.
  Re-queueing is enqueue_grid's alone, under the lock. Optuna's RetryFailedTrialCallback would be a
  second path, for heartbeat-stale trials only, that copies the dead trial's attributes (its
  worker among them) and, for samplers, re-runs its point instead of sampling a new one.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import warnings
from pathlib import Path

from ..errors import ConfigError
from .sampling import make_pruner, make_sampler
from .space import Space
from .storage import StudyLock, retry


def machine_id() -> str:
    """Which machine (and pid namespace) a worker runs on: trials of dead local workers are failed
    at once; others wait for the heartbeat. IMGCLF_TUNE_MACHINE overrides it (tests, odd containers)."""
    if os.environ.get("IMGCLF_TUNE_MACHINE"):
        return os.environ["IMGCLF_TUNE_MACHINE"]
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    try:
        ns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        ns = 0
    return f"{socket.gethostname()}/{boot[:8]}/{ns}"


def _grid_key(point: dict) -> str:
    return json.dumps(point, sort_keys=True, default=str)


def _trial_point(trial, names: list[str]) -> dict | None:
    params = trial.system_attrs.get("fixed_params") or trial.params
    if not all(n in params for n in names):
        return None
    return {n: params[n] for n in names}


def open_study(storage, name: str, space: Space, *, create: bool = True, data: str | None = None):
    """Create or join study `name`; refuse one that exists with a different space."""
    import optuna
    from optuna.exceptions import DuplicatedStudyError

    names = [s.study_name for s in storage.get_all_studies()]
    if name not in names:
        if not create:
            raise ConfigError(f"--study {name}: no such study in the storage (found: "
                              f"{', '.join(names) or 'none'}); run without --resume to start it")
        try:
            optuna.create_study(study_name=name, storage=storage, direction="maximize")
        except DuplicatedStudyError:
            pass  # another worker created it a moment ago
    study = optuna.load_study(study_name=name, storage=storage)
    attrs = study.user_attrs
    if "imgclf_space" not in attrs:
        if study.trials:
            raise ConfigError(f"--study {name}: the study exists and was not created by imgclf tune; "
                              f"choose another --study name")
        study.set_user_attr("imgclf_space", space.identity())
        study.set_user_attr("imgclf_fingerprint", space.fingerprint())
        study.set_user_attr("imgclf_data", data)
    elif attrs.get("imgclf_fingerprint") != space.fingerprint():
        old, new = attrs["imgclf_space"], space.identity()
        diff = sorted(k for k in set(old) | set(new) if json.dumps(old.get(k), sort_keys=True, default=str)
                      != json.dumps(new.get(k), sort_keys=True, default=str))
        detail = ", ".join(diff)
        if "base" in diff:
            b_old, b_new = old.get("base", {}), new.get("base", {})
            fields_ = sorted(k for k in set(b_old) | set(b_new) if b_old.get(k) != b_new.get(k))
            detail = detail.replace("base", f"base ({', '.join(fields_)})")
        raise ConfigError(f"--study {name}: the study exists with a different search space (differs in: {detail});"
                          f" use another --study name, or the space it was started with")
    return study


def _counts_by_point(trials, names):
    from optuna.trial import TrialState

    covered, failed = set(), {}
    for t in trials:
        point = _trial_point(t, names)
        if point is None:
            continue
        key = _grid_key(point)
        if t.state in (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED):
            covered.add(key)
        elif t.state == TrialState.FAIL and t.user_attrs.get("objective_error"):
            failed[key] = failed.get(key, 0) + 1  # only the objective's own errors use up attempts
    return covered, failed


def enqueue_grid(study, space: Space) -> int:
    """Enqueue the grid points that no trial covers (call under the study lock). Returns how many."""
    names = [p.name for p in space.params]
    trials = retry(study.get_trials, deepcopy=False)
    covered, failed = _counts_by_point(trials, names)
    room = space.budget_trials - len(covered)
    added = 0
    for point in space.grid():
        if added >= room:
            break
        key = _grid_key(point)
        if key in covered or failed.get(key, 0) >= space.max_attempts:
            continue
        retry(study.enqueue_trial, point, user_attrs={"grid_key": key, "attempt": failed.get(key, 0) + 1})
        covered.add(key)
        added += 1
    return added



def trial_id(storage, study, number: int) -> int:
    """The storage's id of trial `number` of `study` (what record_heartbeat and the storage take)."""
    study_id = retry(storage.get_study_id_from_name, study.study_name)
    return retry(storage.get_trial_id_from_study_id_trial_number, study_id, number)


def fail_dead_trials(study, storage, space: Space) -> list[int]:
    """Fail RUNNING trials whose worker is gone: at once for workers on this machine (process
    gone) and for claims that never started, by Optuna's heartbeat (no heartbeat for `grace`
    seconds) for any other. Call under the study lock. Returns their numbers."""
    from optuna.storages import fail_stale_trials
    from optuna.trial import TrialState

    before = {t.number for t in retry(study.get_trials, deepcopy=False, states=(TrialState.FAIL,))}
    me = machine_id()
    for t in retry(study.get_trials, deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker")
        if worker is None:  # claims set it under the lock: its claimer stopped before the trial started
            reason = "the worker that claimed it is gone (the trial never started)"
        elif worker.get("machine") == me and worker.get("pid") and not _pid_alive(worker["pid"]):
            reason = f"worker process {worker['pid']} on {worker.get('host')} is gone"
        else:
            continue
        try:
            retry(storage.set_trial_user_attr, trial_id(storage, study, t.number), "failed_reason", reason)
            retry(study.tell, t.number, state=TrialState.FAIL, skip_if_finished=True)
        except Exception:  # noqa: BLE001 - finished meanwhile
            pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        retry(fail_stale_trials, study)
    failed = [t for t in retry(study.get_trials, deepcopy=False, states=(TrialState.FAIL,))
              if t.number not in before]
    for t in failed:  # a dead trial keeps nothing but its logs: drop its per-epoch backups
        run_dir = t.user_attrs.get("run_dir")
        if run_dir and (t.user_attrs.get("worker") or {}).get("machine") == me:
            shutil.rmtree(Path(run_dir) / "backup", ignore_errors=True)
    return [t.number for t in failed]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (our own child, killed, not reaped yet) is not alive
        state = Path(f"/proc/{int(pid)}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return True


def worker_identity(worker_id: str) -> dict:
    """What a claimed trial records about its worker: fail_dead_trials reads it."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "machine": machine_id(), "id": worker_id}


def claim(study, storage, space: Space, lock: StudyLock, worker: dict):
    """Take the next trial with study.ask(): a waiting one (grid point or re-queued), or for
    samplers a new one while the budget allows. Returns (the optuna.Trial, with this space's
    sampler and pruner set, or None; whether other trials are still running)."""
    from optuna.trial import TrialState
    from sqlalchemy import exc as sa_exc

    with lock:
        fail_dead_trials(study, storage, space)
        if space.sampler == "grid":
            enqueue_grid(study, space)
        trials = retry(study.get_trials, deepcopy=False)
        running = any(t.state == TrialState.RUNNING for t in trials)
        waiting = any(t.state == TrialState.WAITING for t in trials)
        new_allowed = space.sampler != "grid" and sum(t.state != TrialState.FAIL for t in trials) < space.budget_trials
        if not (waiting or new_allowed):
            return None, running
        study.pruner = make_pruner(space)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "heartbeat is meant for Study.optimize": this one is ours
                trial = study.ask()
        except sa_exc.OperationalError:  # database busy: not retried here, since a trial it popped
            return None, True  # would be left behind (the next claim fails it: it has no worker)
        # the first heartbeat and the worker before the lock is released: a worker that dies from
        # here on leaves a trial the heartbeat check or the local process check can fail
        retry(storage.record_heartbeat, trial_id(storage, study, trial.number))
        retry(trial.set_user_attr, "worker", worker)
        study.sampler = make_sampler(space, trial.number)
        return trial, running

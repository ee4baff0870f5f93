"""A trial in a process of its own (`python -m imgclf.tuning --trial`, the payload on stdin).

Whatever TensorFlow/Keras keep alive between models dies with the process, so a worker's memory
stays flat over hundreds of trials. The child talks to the storage itself (reports, pruning);
the worker keeps the trial's heartbeat and tells its end.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import subprocess
import sys
import traceback
import warnings
from pathlib import Path

from ..fileio import write_json
from .objectives import TrialContext, resolve_objective
from .sampling import make_pruner, make_sampler
from .space import space_from_dict
from .storage import first_line, open_storage, retry


class TrialProcessError(Exception):
    """The objective failed (or its process died) in the trial's child process."""


class RunningTrial:
    """The running trial as a trial process sees it: what TrialContext uses of optuna.Trial
    (number, report, should_prune, set_user_attr), on the public storage and pruner API. The
    worker asked for the trial (study.ask) and will tell its end (study.tell)."""

    def __init__(self, study, storage, trial_id: int):
        self.study, self.storage, self.trial_id = study, storage, trial_id
        self.number = retry(storage.get_trial_number_from_id, trial_id)

    def report(self, value: float, step: int) -> None:
        self.storage.set_trial_intermediate_value(self.trial_id, int(step), float(value))

    def should_prune(self) -> bool:
        return self.study.pruner.prune(self.study, self.storage.get_trial(self.trial_id))

    def set_user_attr(self, key: str, value) -> None:
        self.storage.set_trial_user_attr(self.trial_id, key, value)


def memory_mb() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process in MiB."""
    rss = 0.0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
    return rss, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def objective_in_child(ctx: TrialContext, spec: dict, trial_id: int, log) -> dict | float:
    """Run the objective in a fresh Python process (see the module docstring); its result, or
    optuna.TrialPruned / TrialProcessError."""
    import optuna

    result_file = ctx.run_dir.parent / f".result-{ctx.number:04d}-{os.getpid()}.json"
    result_file.parent.mkdir(parents=True, exist_ok=True)
    result_file.unlink(missing_ok=True)
    payload = {"storage": spec["storage"], "study": spec["study"], "trial_id": trial_id, "space": ctx.space.to_dict(),
               "params": ctx.params, "config": ctx.config, "run_dir": str(ctx.run_dir), "objective": spec["objective"],
               "sys_path": spec.get("sys_path", []), "result": str(result_file), "parent": os.getpid()}
    log_path = Path(spec["study_dir"]) / "logs" / f"trial-{ctx.number:04d}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with open(log_path, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "imgclf.tuning", "--trial"], stdin=subprocess.PIPE,
                                stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            proc.communicate(json.dumps(payload).encode())
        except BaseException:  # interrupted: the child goes too
            proc.kill()
            proc.wait()
            raise
    try:
        result = json.loads(result_file.read_text())
    except (OSError, ValueError):
        tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] if log_path.exists() else []
        raise TrialProcessError(f"trial process exited with code {proc.returncode}"
                                + (f" ({tail[0][:200]})" if tail else "")) from None
    finally:
        result_file.unlink(missing_ok=True)
    ctx.extra["child_peak_rss_mb"] = result.get("peak_rss_mb")
    if result["status"] == "pruned":
        raise optuna.TrialPruned(result.get("reason") or "pruned")
    if result["status"] != "ok":
        log(result.get("traceback", ""))
        raise TrialProcessError(result.get("error", "failed"))
    return result["out"]


def trial_main() -> int:
    """The child process of one trial: python -m imgclf.tuning --trial (payload on stdin)."""
    import optuna

    payload = json.loads(sys.stdin.read())
    for p in payload.get("sys_path", []):
        if p not in sys.path:
            sys.path.insert(0, p)
    quiet_optuna()
    space = space_from_dict(payload["space"], "trial")
    storage = open_storage(payload["storage"], space)
    study = optuna.load_study(study_name=payload["study"], storage=storage)
    trial = RunningTrial(study, storage, payload["trial_id"])
    study.sampler, study.pruner = make_sampler(space, trial.number), make_pruner(space)
    ctx = TrialContext(trial, payload["params"], payload["config"], Path(payload["run_dir"]), space,
                       extra={"parent": payload["parent"]})
    fn, _ = resolve_objective(payload["objective"])
    try:
        out = fn(ctx)
        if isinstance(out, dict):
            out = {k: v for k, v in out.items() if v is None or isinstance(v, (int, float, str, bool))}
        result = {"status": "ok", "out": out}
    except optuna.TrialPruned as e:
        result = {"status": "pruned", "reason": str(e)}
    except Exception as e:  # noqa: BLE001 - reported to the worker, which fails the trial
        result = {"status": "error", "error": f"{type(e).__name__}: {first_line(e)}",
                  "traceback": traceback.format_exc()}
    result["peak_rss_mb"] = round(memory_mb()[1], 1)
    write_json(Path(payload["result"]), result)
    return 0

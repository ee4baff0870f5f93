"""What a study found: counts and progress, the trials table, the best config, plots, the test set.

Written to the study directory: progress.json (live), trials.csv, trials.md, best_config.yaml,
summary.json, plots/*.png and, when the dataset has a test set, test/ (the best model, evaluated
once at the end: model selection uses the validation split only).
"""

from __future__ import annotations

import csv
import io
import json
import threading
import time
import warnings
from pathlib import Path

import yaml

from ..config import make_config
from ..fileio import atomic_write, write_json
from .space import Space, format_params
from .storage import first_line, retry


def best_trial(trials):
    """Highest validation accuracy; ties go to the lower validation loss, then the earlier trial."""
    from optuna.trial import TrialState

    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    loss = lambda t: t.user_attrs.get("val_loss") if isinstance(t.user_attrs.get("val_loss"), (int, float)) \
        else float("inf")  # noqa: E731
    return max(complete, key=lambda t: (t.value, -loss(t), -t.number), default=None)


def study_counts(study) -> dict:
    from optuna.trial import TrialState

    trials = retry(study.get_trials, deepcopy=False)
    c = {s: 0 for s in ("complete", "pruned", "running", "waiting", "failed")}
    names = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.RUNNING: "running",
             TrialState.WAITING: "waiting", TrialState.FAIL: "failed"}
    for t in trials:
        if t.state in names:
            c[names[t.state]] += 1
    best = best_trial(trials)
    c["done"] = c["complete"] + c["pruned"]
    c["best"] = None if best is None else {"trial": best.number, "val_accuracy": best.value,
                                           "params": best.params}
    return c


def progress_line(c: dict, total: int, elapsed: float) -> str:
    best = (f"best val_accuracy {c['best']['val_accuracy']:.4f} (trial {c['best']['trial']}: "
            f"{format_params(c['best']['params'])})") if c["best"] else "best: none yet"
    m, s = divmod(int(elapsed), 60)
    return (f"[tune {m // 60:02d}:{m % 60:02d}:{s:02d}] {c['done']}/{total} done ({c['complete']} complete, "
            f"{c['pruned']} pruned) | {c['running']} running | {c['failed']} failed | {c['waiting']} waiting | {best}")


class Progress:
    def __init__(self, study, space: Space, study_dir: Path, enabled: bool = True):
        self.study, self.space, self.study_dir, self.enabled = study, space, study_dir, enabled
        self.t0 = time.perf_counter()
        self.last, self.last_time = None, 0.0
        self.lock = threading.Lock()

    def update(self, force: bool = False) -> dict:
        with self.lock:
            c = study_counts(self.study)
            key = json.dumps(c, sort_keys=True, default=str)
            elapsed = time.perf_counter() - self.t0
            if key != self.last or force or time.perf_counter() - self.last_time > 60:
                self.last, self.last_time = key, time.perf_counter()
                write_json(self.study_dir / "progress.json", {**c, "total": self.space.budget_trials,
                                                              "elapsed_seconds": elapsed, "time": time.time()})
                if self.enabled:
                    print(progress_line(c, self.space.budget_trials, elapsed), flush=True)
            return c


def trial_rows(study, space: Space) -> list[dict]:
    rows = []
    for t in retry(study.get_trials, deepcopy=False):
        params = t.params or t.system_attrs.get("fixed_params") or {}
        a = t.user_attrs
        value = t.value if t.state.name == "COMPLETE" else a.get("val_accuracy", t.value)
        rows.append({"trial": t.number, "state": t.state.name.lower(),
                     **{p.name: params.get(p.name) for p in space.params},
                     "val_accuracy": value, "val_loss": a.get("val_loss"), "epochs_run": a.get("epochs_run"),
                     "seconds": a.get("seconds"), "peak_rss_mb": a.get("peak_rss_mb"),
                     "worker": (f"{a['worker']['host']}:{a['worker']['pid']}" if a.get("worker") else None),
                     "note": a.get("failed_reason") or a.get("pruned_reason")})
    return rows


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    formats = {"val_accuracy": "{:.4f}", "val_loss": "{:.4f}", "seconds": "{:.1f}", "peak_rss_mb": "{:.0f}"}

    def cell(c, v):
        if v is None:
            return ""
        if isinstance(v, float):
            return formats.get(c, "{:.4g}").format(v)
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(c, r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def pruning_savings(rows: list[dict], epochs: int | None) -> dict:
    """Estimated time pruning saved: the epochs a pruned trial did not run (of its own epochs where
    the space searches them), at its own epoch time."""
    saved, epochs_saved, n = 0.0, 0, 0
    for r in rows:
        planned = int(r.get("epochs") or epochs or 0)
        if r["state"] != "pruned" or not r.get("epochs_run") or not r.get("seconds") or not planned:
            continue
        left = max(0, planned - int(r["epochs_run"]))
        saved += left * float(r["seconds"]) / int(r["epochs_run"])
        epochs_saved += left
        n += 1
    spent = sum(float(r["seconds"] or 0) for r in rows if r["state"] in ("complete", "pruned"))
    return {"pruned_trials": n, "epochs_saved": epochs_saved, "seconds_saved_estimate": round(saved, 1),
            "trial_seconds_spent": round(spent, 1),
            "fraction_saved_estimate": round(saved / (saved + spent), 4) if saved + spent > 0 else 0.0}


def write_plots(study, plot_dir: Path) -> dict[str, str]:
    """Optuna's matplotlib plots as PNG; a plot that cannot be drawn is listed with the reason."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    from ..figures import save_figure

    plot_dir.mkdir(parents=True, exist_ok=True)
    out = {}
    plots = {"optimization_history": ovm.plot_optimization_history,
             "param_importances": ovm.plot_param_importances,
             "slice": ovm.plot_slice,
             "intermediate_values": ovm.plot_intermediate_values}
    for name, fn in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = fn(study)
            fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
            fig.set_size_inches(max(fig.get_size_inches()[0], 7), max(fig.get_size_inches()[1], 4.5))
            save_figure(fig, plot_dir / f"{name}.png")
            out[name] = str(plot_dir / f"{name}.png")
        except Exception as e:  # noqa: BLE001 - e.g. importances need 2+ complete trials
            out[name] = f"not drawn: {first_line(e)}"
        finally:
            plt.close("all")
    return out


def write_results(study, space: Space, study_dir: Path, data: str | None = None,
                  test_data: str | None = None, plots: bool = True) -> dict:
    """trials.csv, trials.md, best_config.yaml, plots/, summary.json in the study directory."""
    rows = trial_rows(study, space)
    columns = ["trial", "state", *[p.name for p in space.params], "val_accuracy", "val_loss", "epochs_run",
               "seconds", "peak_rss_mb", "worker", "note"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    _write_text(study_dir / "trials.csv", buf.getvalue())
    _write_text(study_dir / "trials.md", markdown_table(rows, columns[:-2] + ["note"]))
    counts = study_counts(study)
    summary = {"study": study.study_name, "sampler": space.sampler, "pruner": space.pruner,
               "budget_trials": space.budget_trials, "epochs_per_trial": space.trial_epochs,
               "counts": {k: v for k, v in counts.items() if k != "best"}, "best": None,
               "pruning": pruning_savings(rows, space.trial_epochs),
               "files": {"trials_csv": "trials.csv", "trials_md": "trials.md"}}
    if counts["best"]:
        best = best_trial(retry(study.get_trials, deepcopy=False))
        config = space.trial_config(best.params)
        config["data"] = data or config.get("data")
        if test_data:
            config["test_data"] = test_data
        config["report"] = True
        resolved = make_config(**config).to_dict()
        header = (f"# best configuration of study {study.study_name!r}: trial {best.number}, "
                  f"val_accuracy {best.value:.4f}\n# reproduce: imgclf train --config best_config.yaml\n")
        _write_text(study_dir / "best_config.yaml", header + yaml.safe_dump(resolved, sort_keys=False))
        summary["best"] = {"trial": best.number, "val_accuracy": best.value, "params": best.params,
                           "val_loss": best.user_attrs.get("val_loss"), "epochs_run": best.user_attrs.get("epochs_run"),
                           "run_dir": best.user_attrs.get("run_dir"), "model": best.user_attrs.get("model")}
        summary["files"]["best_config"] = "best_config.yaml"
    if plots:
        summary["files"]["plots"] = {k: (str(Path(v).relative_to(study_dir)) if not v.startswith("not drawn") else v)
                                     for k, v in write_plots(study, study_dir / "plots").items()}
    return summary


def has_test_set(data: str | None, test_data: str | None) -> bool:
    if test_data:
        return True
    if not data:
        return False
    from ..data.dataset import is_cifar_source

    root = Path(data)
    return is_cifar_source(data) or ((root / "train").is_dir() and (root / "test").is_dir())


def evaluate_best_on_test(summary: dict, study_dir: Path, data: str | None, test_data: str | None) -> dict | None:
    """Touch the test set once: the best trial's model, evaluated at the end of the study.
    Not repeated for the same best trial (re-running the command reuses test/metrics.json)."""
    best = summary.get("best")
    if not best or not has_test_set(data, test_data):
        return None
    out = study_dir / "test"
    done = out / "metrics.json"
    if done.exists():
        old = json.loads(done.read_text())
        if old.get("trial") == best["trial"]:
            return old.get("test_result")
    model = best.get("model")
    if not model or not Path(model).is_file():
        return {"note": f"best model not on this machine ({model}); evaluate it where it was trained"}
    from ..evaluation.evaluator import evaluate

    results = evaluate(model, data, test_data, out_dir=out, verbose=False)
    test = results.get("test")
    result = {"accuracy": test["accuracy"], "loss": test["loss"], "n": test["n"], "trial": best["trial"]}
    meta = json.loads(done.read_text())
    meta["trial"], meta["test_result"] = best["trial"], result
    write_json(done, meta)
    return result



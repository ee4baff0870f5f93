"""One report section's content as plain data: strings, rows of strings and PNG bytes.

Each function here turns numbers (metrics, calibration, robustness, a config) into what one
template in templates/ lays out; the templates escape every string. Figures come from
imgclf.figures.
"""

from __future__ import annotations

import json

import numpy as np

from .. import figures
from ..evaluation.metrics import SET_NAMES, unbalanced
from .formatting import MISSING, format_value, num, pct, secs, set_label
from .sources import EvalSet

GALLERY_SIZE = 24


def results(metrics: dict) -> dict | None:
    """The seed's results table (loss, accuracy, images per set), with balanced accuracy and macro-F1
    under accuracy where the classes are unbalanced (metrics.unbalanced); None when nothing was recorded."""
    present = [k for k in SET_NAMES if isinstance(metrics.get(k), dict) and "accuracy" in metrics[k]]
    if not present:
        return None
    rows = [["Loss"] + [num(metrics[k]["loss"]) for k in present],
            ["Accuracy"] + [pct(metrics[k]["accuracy"]) for k in present]]
    if unbalanced({k: metrics[k] for k in present}):
        rows += [[label] + [pct(metrics[k].get(key)) for k in present]
                 for key, label in (("balanced_accuracy", "Balanced accuracy (mean per-class recall)"),
                                    ("macro_f1", "Macro-F1"))]
    rows.append(["Images"] + [str(metrics[k].get("n", MISSING)) for k in present])
    return {"headers": ["Metric"] + [SET_NAMES[k] for k in present], "rows": rows}


def per_class(report: dict, class_names: list[str], set_name: str) -> dict:
    """Precision, recall, F1 and support per class (+ averages) and their bar chart."""
    keys = [(str(i), name) for i, name in enumerate(class_names)] + [(k, k) for k in ("macro avg", "weighted avg")]
    rows = []
    for key, name in keys:
        r = report.get(key)
        if r:
            rows.append([name, num(r["precision"], 3), num(r["recall"], 3), num(r["f1-score"], 3),
                         str(int(r["support"]))])
    png = None
    if all(str(i) in report for i in range(len(class_names))):
        png = figures.figure_png(figures.per_class_figure(report, class_names))
    return {"set": set_label(set_name), "headers": ["class", "precision", "recall", "F1", "support"], "rows": rows,
            "png": png}


def confusion(cm_png: bytes | None, per_class_data: dict | None, missing: str = "not available") -> dict:
    """The confusion matrix beside the per-class table; `missing` stands in for an absent table."""
    return {"cm_png": cm_png, "per_class": per_class_data, "missing": missing}


def gallery(ev: EvalSet, k: int = GALLERY_SIZE) -> dict:
    """The k most confidently wrong images, with true and predicted class and file name."""
    pred = ev.probs.argmax(axis=1)
    conf = ev.probs.max(axis=1)
    wrong = np.flatnonzero(pred != ev.y)
    top = wrong[np.argsort(-conf[wrong], kind="stable")][:k]
    images = [{"png": figures.thumbnail_png(ev.x[i]), "true": ev.class_names[int(ev.y[i])],
              "predicted": f"{ev.class_names[int(pred[i])]} {100 * conf[i]:.1f}%",
              "file": str(ev.files[i]) if i < len(ev.files) else ""} for i in top]
    return {"set": set_label(ev.name), "images": images, "wrong": len(wrong), "n": len(ev.y)}


def calibration(cal: dict, fit: dict | None, set_name: str) -> dict:
    """`cal`: calibration.assess() of the shown images at the stored temperature; `fit`: the
    record `train` stored with it (calibration.stored_calibration), None if the model has none."""
    t = cal["temperature"]
    where = f"the {cal['eval_n']} images of the {set_label(set_name)}"
    rows = [["expected calibration error (ECE)", num(cal["ece_before"]), num(cal["ece_after"])],
            ["negative log likelihood", num(cal["nll_before"]), num(cal["nll_after"])],
            ["accuracy (unchanged by T)", pct(cal["accuracy"]), pct(cal["accuracy"])]]
    if fit is None:
        how = f"T = {t:.3f} is the model's stored temperature. Below: {where} at T = 1 and at T."
    elif "skipped" in fit:
        how = (f"No temperature was fitted when the model was trained, so T = {t:.3f}. Why: "
               f"{fit['skipped'].removeprefix('calibration: ')}. Below: {where}.")
    else:
        if "folds" in fit:  # fitted on the whole split, kept because its cross-validation lowered the NLL
            how = (f"T = {t:.3f} was fitted when the model was trained (minimum NLL on all {fit['fit_n']} validation "
                   f"images) and is stored in the model file: predict and serve apply it. It was kept because a "
                   f"{fit['folds']}-fold cross-validation (each fold's T fitted on the other folds) lowered the "
                   f"held-out NLL in {fit['folds_improved']} of {fit['folds']} folds; out of fold:")
            measured, in_sample = "cross-validated", "They fitted T, so their 'after' numbers are in-sample."
        else:  # models from before cross-validation: fitted on one half, measured on the other
            how = (f"T = {t:.3f} was fitted when the model was trained (minimum NLL on {fit['fit_n']} validation "
                   f"images) and is stored in the model file: predict and serve apply it. Measured then on the "
                   f"other {fit['eval_n']} (a seeded, class-stratified half):")
            measured, in_sample = "held-out half", "Half of them fitted T, so their 'after' numbers are partly in-sample."
        how += (f" ECE {num(fit['ece_before'])} -> {num(fit['ece_after'])}, NLL {num(fit['nll_before'])} -> "
                f"{num(fit['nll_after'])}. Below: {where} at T = 1 and at the stored T.")
        if set_name == "val":
            how += " " + in_sample
        rows += [[f"ECE, {measured} at training ({fit['eval_n']} images)", num(fit["ece_before"]),
                  num(fit["ece_after"])],
                 [f"NLL, {measured} at training", num(fit["nll_before"]), num(fit["nll_after"])]]
    return {"note": f"{how} ECE over {cal['n_bins']} equal-width confidence bins.",
            "headers": ["", "before (T = 1)", f"after (T = {t:.2f})"], "rows": rows,
            "png": figures.figure_png(figures.reliability_figure(cal)),
            "alt": "reliability diagrams before and after temperature scaling"}


def robustness(rob: dict, set_name: str) -> dict:
    """Accuracy per corruption and severity (corruptions.robustness's result) and its chart."""
    sev = rob["severities"]

    def at(row, s):
        return row[s] if s in row else row[str(s)]

    rows = [["clean", *[pct(rob["clean"])] * len(sev)]]
    for name, row in rob["accuracy"].items():
        params = rob.get("params", {}).get(name, [])
        label = name.replace("_", " ") + (f" ({', '.join(str(p) for p in params)})" if params else "")
        rows.append([label, *[pct(at(row, s)) for s in sev]])
    rows.append(["mean over corruptions", *[pct(np.mean([at(row, s) for row in rob["accuracy"].values()]))
                                            for s in sev]])
    note = (f"accuracy on a seeded subsample of {rob['n']} images of the {set_label(set_name)}, clean and under "
            f"each corruption at severities {', '.join(map(str, sev))} of 5 (parameters in brackets, CIFAR-10-C "
            f"style; numpy and Pillow). Mean corrupted accuracy {pct(rob['mean_corrupted'])} vs "
            f"{pct(rob['clean'])} clean.")
    return {"note": note, "headers": ["corruption"] + [f"severity {s}" for s in sev], "rows": rows,
            "png": figures.figure_png(figures.robustness_figure(rob)), "alt": "accuracy under corruptions"}


def config_rows(cfg: dict) -> list[dict]:
    """Each config field with its value, and the seed recipe's default where it differs."""
    from ..config import TrainConfig

    defaults = TrainConfig().to_dict()
    rows = []
    for k, v in cfg.items():
        changed = k in defaults and defaults[k] != v
        rows.append({"field": k, "value": json.dumps(v), "default": json.dumps(defaults.get(k)) if changed else "",
                     "changed": changed})
    return rows


def timing_rows(metrics: dict) -> list[list[str]]:
    """Where a run's time went (the report's own time is added when the page is rendered)."""
    s = metrics.get("seconds", {})
    rows = [["data loading", secs(s.get("data_load"))], ["training (fit)", secs(s.get("fit"))],
            ["mean epoch", secs(s.get("per_epoch_mean"))], ["epochs run", str(metrics.get("epochs_run", MISSING))],
            ["training images / s", num(metrics.get("train_images_per_second"), 0)],
            ["whole run (load, fit, evaluation)", secs(s.get("total"))],
            ["weights kept", str(metrics.get("weights", MISSING))], ["backend", str(metrics.get("backend", MISSING))]]
    flops = metrics.get("flops") or {}
    if flops.get("forward_per_image"):
        rows.insert(6, ["forward pass / image", f"{float(flops['forward_per_image']) / 1e6:.1f} MFLOPs"])
    if flops.get("total_train"):
        rows.insert(7, ["training compute", f"{float(flops['total_train']) / 1e15:.4f} PFLOPs"])
    return rows


def stats_rows(stats: dict) -> list[list[str]]:
    """Mean ± std, number of runs and each run's value, per metric (sources.stats_over)."""
    return [[k, f"{format_value(k, s['mean'])} ± {format_value(k, s['std'])}", str(s["n"]),
             ", ".join(format_value(k, x) for x in s["values"])] for k, s in stats.items()]


def config_differences(configs: list[dict]) -> list[list[str]]:
    """Config fields that differ between runs: [field, value in run 1, value in run 2, ...]."""
    fields = list(dict.fromkeys(k for c in configs for k in c))
    differ = [k for k in fields if len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1]
    return [[k] + [json.dumps(c.get(k)) for c in configs] for k in differ]

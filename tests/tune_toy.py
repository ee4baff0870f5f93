"""A synthetic objective for `imgclf tune` tests: checks storages and workers without training.

Tests name it as "tune_toy:toy_objective"; processes they start need this folder on PYTHONPATH
(tune's own worker and trial processes find it from the objective's module path).

    IMGCLF_TOY_SECONDS   seconds per step (default 0.2)
    IMGCLF_TOY_LOG       a file that gets one JSON line per evaluation start (trial, params, pid)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time

TOY = "tune_toy:toy_objective"


def toy_objective(ctx) -> dict:
    """Value: a smooth function of the numeric parameters plus a hash of the others, in [0, 1],
    reached over `epochs` steps (each reported to the pruner)."""
    import optuna

    log = os.environ.get("IMGCLF_TOY_LOG")
    if log:
        with open(log, "a") as f:
            f.write(json.dumps({"trial": ctx.number, "params": ctx.params, "pid": os.getpid()}, sort_keys=True) + "\n")
    seconds = float(os.environ.get("IMGCLF_TOY_SECONDS", "0.2"))
    score = 0.0
    for name, value in sorted(ctx.params.items()):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            score += 1.0 / (1.0 + abs(math.log10(abs(value) + 1e-12) + 1.5))
        else:
            score += int(hashlib.sha256(str(value).encode()).hexdigest()[:4], 16) / 65535
    target = score / max(1, len(ctx.params))
    epochs = int(ctx.config.get("epochs") or 1)
    value = 0.0
    for step in range(1, epochs + 1):
        time.sleep(seconds)
        value = target * (1 - 0.5 ** step)
        if ctx.report(step, value):
            ctx.set("epochs_run", step)
            raise optuna.TrialPruned(f"pruned after step {step}")
    return {"val_accuracy": value, "val_loss": 1.0 - value, "epochs_run": epochs}

"""What a trial runs: the objective (by default imgclf's own training) and what it is given.

An objective is a function taking a TrialContext and returning the validation accuracy (a number,
or a dict with val_accuracy and other numbers to record). `--objective MODULE:FUNCTION` names
another; worker and trial processes import it by that name.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..config import make_config
from ..errors import ConfigError, quote
from .space import Space
from .storage import first_line, retry

TRAIN_OBJECTIVE = "imgclf.tuning:train_objective"  # the public name: stable in tune.json files


@dataclass
class TrialContext:
    """What an objective gets. `report(step, value)` returns True when the pruner says stop."""

    trial: Any  # optuna.Trial; in a trial's own process a trial_process.RunningTrial (same methods)
    params: dict
    config: dict  # TrainConfig fields for this trial
    run_dir: Path
    space: Space
    extra: dict = field(default_factory=dict)

    @property
    def number(self) -> int:
        return self.trial.number

    def report(self, step: int, value: float) -> bool:
        parent = self.extra.get("parent")
        if parent and os.getppid() != parent:  # a trial process whose worker was killed: stop
            raise SystemExit(f"worker process {parent} is gone")
        retry(self.trial.report, float(value), int(step))
        epochs = int(self.config.get("epochs") or self.space.trial_epochs)  # this trial's own, if searched
        if self.space.pruner == "none" or (not self.space.trial_time and step >= epochs):
            return False  # stopping at the last epoch saves nothing: the trial completes
        return bool(retry(self.trial.should_prune))

    def set(self, key: str, value) -> None:
        retry(self.trial.set_user_attr, key, value)


_TF_THREADS_SET = False


def _limit_threads() -> None:
    global _TF_THREADS_SET
    n = os.environ.get("IMGCLF_TUNE_THREADS")
    if _TF_THREADS_SET or not n:
        return
    _TF_THREADS_SET = True
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        with contextlib.suppress(RuntimeError):  # already initialised: too late, keep defaults
            tf.config.threading.set_intra_op_parallelism_threads(int(n))
            tf.config.threading.set_inter_op_parallelism_threads(min(2, int(n)))


def train_objective(ctx: TrialContext) -> dict:
    """The default objective: imgclf.training.train with the trial's config; best-epoch
    validation accuracy; per-epoch validation accuracy goes to the pruner."""
    import gc

    _limit_threads()
    import keras
    import optuna

    from ..training.trainer import train

    class Report(keras.callbacks.Callback):
        pruned_at = None

        def on_epoch_end(self, epoch, logs=None):
            acc = (logs or {}).get("val_accuracy")
            if acc is not None and ctx.report(epoch + 1, acc):
                self.pruned_at = epoch + 1
                self.model.stop_training = True

    keras.backend.clear_session()
    report = Report()
    try:
        result = train(make_config(**ctx.config), run_dir=ctx.run_dir, verbose=0, callbacks=[report],
                       evaluate_test=False)
    finally:
        keras.backend.clear_session()
        gc.collect()
    out = {"val_accuracy": result.metrics["val"]["accuracy"], "val_loss": result.metrics["val"]["loss"],
           "epochs_run": result.metrics["epochs_run"], "train_accuracy": result.metrics["train"]["accuracy"],
           "model": str(result.model_path)}
    if report.pruned_at is not None:
        for k, v in out.items():
            ctx.set(k, v)
        raise optuna.TrialPruned(f"pruned after epoch {report.pruned_at}")
    return out


def resolve_objective(objective) -> tuple[Callable, str | None]:
    """A callable or 'module:function' (or 'train') -> (callable, import string or None)."""
    if objective is None or objective == "train":
        objective = TRAIN_OBJECTIVE
    if callable(objective):
        module, name = getattr(objective, "__module__", None), getattr(objective, "__qualname__", "")
        ref = f"{module}:{name}" if module and module != "__main__" and "<" not in name else None
        return objective, ref
    if not isinstance(objective, str) or ":" not in objective:
        raise ConfigError(f"--objective: expected MODULE:FUNCTION or 'train', got {quote(objective)}")
    module, name = objective.split(":", 1)
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"--objective {objective}: cannot import ({first_line(e)})") from None
    if not callable(fn):
        raise ConfigError(f"--objective {objective}: not a function")
    return fn, objective



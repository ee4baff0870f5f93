"""Training callbacks: the learning-rate schedule (by steps or by wall time), airbench's lookahead,
an EMA swap that is safe on JAX, the run state that makes `--resume` exact (history CSV,
dropout RNG state, best weights), the progress bar of a time-budgeted run, and early stopping
that says which epoch it kept."""

from __future__ import annotations

import csv
import json
import math
import os
import time
from pathlib import Path

import keras
import numpy as np

from ..config import TrainConfig
from ..fileio import atomic_write, write_csv
from .batches import Batches


def sync_jax_state(model: keras.Model) -> None:
    """JAX keeps the training state outside the variables during an epoch: write it back, so that
    a callback reads current values and the trainer re-reads what the callback assigns before the
    next step. A no-op on the other backends."""
    if getattr(model, "_jax_state", None) is not None and hasattr(model, "jax_state_sync"):
        model.jax_state_sync()


def lr_at(cfg: TrainConfig, progress: float) -> float:
    """Learning rate at `progress` in [0, 1] of training (by steps, or by wall time with a budget)."""
    base = cfg.learning_rate
    warm = cfg.warmup_epochs / cfg.epochs if cfg.time_budget is None else min(cfg.warmup_epochs / max(cfg.epochs, 1), 0.5)
    if warm > 0 and progress < warm:
        start = cfg.warmup_start_fraction
        return base * (start + (1 - start) * progress / warm)
    if cfg.lr_schedule == "constant":
        return base
    rest = (progress - warm) / max(1e-9, 1 - warm)
    rest = min(max(rest, 0.0), 1.0)
    low = base * cfg.final_lr_fraction
    if cfg.lr_schedule == "cosine":
        return low + (base - low) * 0.5 * (1 + math.cos(math.pi * rest))
    return low + (base - low) * (1 - rest)  # onecycle: linear warmup (above), then linear decay


class Schedule(keras.callbacks.Callback):
    """Sets the learning rate each batch; with a time budget, progress is elapsed / budget and
    training stops when the budget is spent. Under steps_per_execution > 1 fit() calls the batch
    hooks once per call (begin: its first step, end: its last), so the rate changes once per call."""

    def __init__(self, cfg: TrainConfig, steps_per_epoch: int, n_train: int = 0, start: float | None = None):
        super().__init__()
        self.cfg, self.steps_per_epoch, self.n_train = cfg, steps_per_epoch, n_train
        self.epoch = 0
        self.start = start  # the budget clock: train()'s start, so data loading counts against it
        self.images_seen = 0  # training images this session (for the FLOP count)
        self.begin = 0  # the first step of the current call (steps_per_execution)

    def on_train_begin(self, logs=None):
        if self.start is None:
            self.start = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def progress(self, batch: int) -> float:
        if self.cfg.time_budget:
            return min(1.0, (time.perf_counter() - self.start) / self.cfg.time_budget)
        return (self.epoch * self.steps_per_epoch + batch) / (self.cfg.epochs * self.steps_per_epoch)

    def on_train_batch_begin(self, batch, logs=None):
        self.begin = batch
        if self.cfg.lr_schedule == "constant" and not self.cfg.warmup_epochs:
            return
        lr = lr_at(self.cfg, self.progress(batch))
        sync_jax_state(self.model)  # so that the next step reads this learning rate
        self.model.optimizer.learning_rate.assign(lr)

    def on_train_batch_end(self, batch, logs=None):
        bs = self.cfg.batch_size
        batch = min(batch, self.steps_per_epoch - 1)  # a call past the epoch's end says begin + per call - 1
        for step in range(self.begin, batch + 1):  # every step of this call
            self.images_seen += max(0, min(bs, self.n_train - step * bs)) if self.n_train else bs
        if self.cfg.time_budget and self.progress(batch) >= 1.0:
            self.model.stop_training = True


def clock_text(seconds: float) -> str:
    """Seconds as m:ss, or h:mm:ss from an hour on."""
    h, rest = divmod(max(0, int(round(seconds))), 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class BudgetProgress(keras.callbacks.ProgbarLogger):
    """Keras' progress bar for a time-budgeted run, each epoch headed by the time used and left of
    the budget instead of "Epoch 5/10000" (the epoch count of such a run is open-ended). fit() uses
    it in place of its own ProgbarLogger, with fit's `verbose`."""

    def __init__(self, schedule: Schedule, clock=None):
        super().__init__()
        self.schedule, self.clock = schedule, clock  # clock: the schedule's (time.perf_counter) unless given
        self.epochs_done = 0

    def budget_text(self) -> str:
        budget = round(self.schedule.cfg.time_budget)
        used = math.floor((self.clock or time.perf_counter)() - self.schedule.start)  # used + left = budget
        return f"{clock_text(used)} of the {clock_text(budget)} time budget used, {clock_text(budget - used)} left"

    def on_epoch_begin(self, epoch, logs=None):
        self._reset_progbar()
        self._maybe_init_progbar()
        if self.verbose:
            print(f"Epoch {epoch + 1}: {self.budget_text()}", flush=True)

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        self.epochs_done = epoch + 1

    def on_train_end(self, logs=None):
        if self.verbose:
            print(f"training ended after epoch {self.epochs_done}: {self.budget_text()}", flush=True)


class EarlyStop(keras.callbacks.EarlyStopping):
    """Keras' EarlyStopping on val_accuracy (strictly higher is better, as RunState's best). A run
    it stops keeps the run's best epoch, not the last: the trainer has RunState save the best
    weights (which survive --resume) and loads them; `outcome` says what was kept."""

    def __init__(self, patience: int):
        super().__init__("val_accuracy", patience=patience, mode="max")
        self.last = None

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        self.last = (logs or {}).get("val_accuracy")

    def outcome(self, best: dict, epochs: int | None = None) -> str:
        """One line: when it stopped, the epoch kept (`best`: RunState's best.json) and the last one's."""
        of = f" of {epochs}" if epochs else ""
        last = f"; the last had {self.last:.4f}" if self.last is not None else ""
        return (f"early stopping: no gain in val_accuracy for {self.patience} epochs, stopped after epoch "
                f"{self.stopped_epoch + 1}{of}; kept the run's best, epoch {best['epoch']} (val_accuracy "
                f"{best['val_accuracy']:.4f}){last}")


class Lookahead(keras.callbacks.Callback):
    """airbench's lookahead. From `cfg.lookahead_start` (a fraction of training) on, every `every`
    steps: average <- average + (1 - rho) (weights - average), then weights <- average, for every
    float variable (BN statistics included). rho = base**every * progress**3 grows from 0 to
    0.95**5, so the weights move freely at first and are averaged strongly at the end. Each epoch
    ends with weights = average, so the next epoch starts its average from the weights: that is
    what makes a resumed run identical to an uninterrupted one. Under steps_per_execution > 1 the
    average moves at the end of each call that passed a multiple of `every` steps."""

    def __init__(self, schedule: Schedule, every: int = 5, base: float = 0.95, power: float = 3.0):
        super().__init__()
        self.schedule, self.every, self.base, self.power = schedule, every, base, power
        self.average: list[np.ndarray] | None = None
        self.variables: list = []
        self.done = 0  # steps of this run at the end of the last call

    def on_train_begin(self, logs=None):
        self.variables = [v for v in self.model.weights if keras.backend.standardize_dtype(v.dtype).startswith("float")]

    def _snapshot(self):
        sync_jax_state(self.model)
        return [np.array(keras.ops.convert_to_numpy(v)) for v in self.variables]

    def on_epoch_begin(self, epoch, logs=None):
        self.average = self._snapshot() if self.schedule.progress(0) >= self.schedule.cfg.lookahead_start else None
        self.done = epoch * self.schedule.steps_per_epoch

    def on_train_batch_end(self, batch, logs=None):
        batch = min(batch, self.schedule.steps_per_epoch - 1)  # a last call shorter than steps_per_execution
        progress = self.schedule.progress(batch + 1)
        step = self.schedule.epoch * self.schedule.steps_per_epoch + batch + 1
        last = batch + 1 == self.schedule.steps_per_epoch or getattr(self.model, "stop_training", False)
        passed = step // self.every > self.done // self.every  # one step per call: step % every == 0
        self.done = step
        if progress >= self.schedule.cfg.lookahead_start and passed:
            if self.average is None:
                self.average = self._snapshot()
            else:
                rho = self.base ** self.every * min(progress, 1.0) ** self.power
                for a, w in zip(self.average, self._snapshot()):
                    a += (1 - rho) * (w - a)
                self._assign()
        elif last and self.average is not None:
            self._assign()  # the epoch (and its validation) ends on the average, as in airbench

    def _assign(self):
        sync_jax_state(self.model)
        for a, v in zip(self.average, self.variables):
            v.assign(a.copy())  # a copy: JAX must not share a buffer with our average


class SwapEMA(keras.callbacks.SwapEMAWeights):
    """Keras' SwapEMAWeights, with the non-TensorFlow swap done through numpy copies: on JAX the
    stock swap leaves a model variable and its average holding the same buffer, which the next
    jitted step donates twice ("Array has been deleted").

    The trainer uses it with swap_on_epoch off (Keras' default): the EMA weights are in the model
    for validation only (on_test_begin to on_test_end), never across an epoch boundary. Swapped in
    from one epoch's end to the next one's begin, they were what the callbacks placed before this
    one saw at that begin (Lookahead's average started from them), while a resumed run starts from
    the backup, taken before the swap: resume was not exact. And a run stopped early (time budget,
    early stopping) ended on the trained weights, as fit() then puts the averages, swapped out,
    into the model."""

    def swap(self) -> None:
        """Exchange the model's weights and their averages (twice: back as they were)."""
        sync_jax_state(self.model)
        self._swap_variables()

    @staticmethod
    def _pairs(optimizer):
        return zip(optimizer._trainable_variables, optimizer._model_variables_moving_average)

    def _backend_swap_variables(self, optimizer):
        for var, average in self._pairs(optimizer):
            a = np.array(keras.ops.convert_to_numpy(var))
            b = np.array(keras.ops.convert_to_numpy(average))
            var.assign(b)
            average.assign(a)

    def _backend_finalize_ema_values(self, optimizer):
        for var, average in self._pairs(optimizer):
            average.assign(np.array(keras.ops.convert_to_numpy(var)))

    def on_train_end(self, logs=None):
        # fit() ends with optimizer.finalize_variable_values (var <- average): de-alias again
        if keras.backend.backend() != "tensorflow":
            for var, average in self._pairs(self.model.optimizer):
                var.assign(np.array(keras.ops.convert_to_numpy(var)))
                average.assign(np.array(keras.ops.convert_to_numpy(average)))


class RunState(keras.callbacks.Callback):
    """Per-epoch history CSV, the random-generator state for exact resume, and the best weights.

    Keras' BackupAndRestore (placed before this callback) restores weights and optimizer; the
    dropout layers' SeedGenerator states are not in the saved weights, so they are saved here
    per epoch and put back, along with the data order (Batches.set_epoch).
    """

    def __init__(self, run_dir: Path, batches: Batches, keep_best: bool, ema: SwapEMA | None = None):
        super().__init__()
        self.run_dir, self.batches, self.keep_best = run_dir, batches, keep_best
        self.ema = ema  # with EMA, validation measured the averages: the best weights saved are those
        self.backup = run_dir / "backup"
        self.rows: list[dict] = []
        self.best = -1.0
        self.t0 = 0.0

    def _seed_vars(self):
        return [v for v in self.model.variables if "seed_generator_state" in v.path]

    def on_train_begin(self, logs=None):
        self.backup.mkdir(parents=True, exist_ok=True)
        start = self.model._initial_epoch or 0  # set by BackupAndRestore when it restored
        history = self.run_dir / "history.csv"
        if start and history.exists():
            with open(history, newline="") as f:
                self.rows = [r for r in csv.DictReader(f) if int(r["epoch"]) < start + 1]
        rng_file = self.backup / f"rng-{start}.npz"
        if start and rng_file.exists():
            with np.load(rng_file) as z:
                for i, v in enumerate(self._seed_vars()):
                    v.assign(z[f"v{i}"])
        best_file = self.backup / "best.json"
        if start and best_file.exists():
            self.best = json.loads(best_file.read_text())["val_accuracy"]

    def on_epoch_begin(self, epoch, logs=None):
        self.batches.set_epoch(epoch)
        self.t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        row = {"epoch": epoch + 1, **{k: float(v) for k, v in logs.items()},
               "lr": float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)),
               "epoch_seconds": time.perf_counter() - self.t0}
        self.rows.append(row)
        write_csv(self.run_dir / "history.csv", self.rows)
        # RNG state *after* this epoch = state at the start of epoch+1 (BackupAndRestore's number).
        arrays = {f"v{i}": keras.ops.convert_to_numpy(v) for i, v in enumerate(self._seed_vars())}
        atomic_write(self.backup / f"rng-{epoch + 1}.npz", lambda f: np.savez(f, **arrays))
        stale = self.backup / f"rng-{epoch - 1}.npz"  # keep two: BackupAndRestore may fall back one
        if stale.exists():
            stale.unlink()
        if self.keep_best and logs.get("val_accuracy", -1) > self.best:
            self.best = float(logs["val_accuracy"])
            tmp = self.backup / ".best.tmp.weights.h5"
            if self.ema is not None:
                self.ema.swap()
            try:
                self.model.save_weights(tmp)
            finally:
                if self.ema is not None:
                    self.ema.swap()
            os.replace(tmp, self.backup / "best.weights.h5")
            atomic_write(self.backup / "best.json",
                         lambda f: f.write(json.dumps({"epoch": epoch + 1, "val_accuracy": self.best}).encode()))

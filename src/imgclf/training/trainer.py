"""Training: config in, run directory out.

    run_dir/
      config.yaml          the resolved config
      history.csv          one row per epoch (loss, accuracy, val_*, lr, epoch_seconds)
      metrics.json         the seed's results table (train / val / test loss and accuracy), timing and calibration
      model.keras          the trained model, with imgclf.json metadata inside (class names, split,
                           the temperature fitted on half of the validation split, metrics)
      learning_curves.png  loss and accuracy, train vs validation
      confusion_matrix.png, classification_report.txt   on the validation split
      backup/              per-epoch checkpoint for --resume (removed when training completes)

Data stays in memory as uint8; batches are shuffled by (seed, epoch) and augmented in
vectorised numpy, so a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from ..config import TrainConfig, make_config, read_config_file, save_config
from ..data.dataset import Dataset, ImageSet, class_weights, load_dataset
from ..errors import ConfigError, ImgclfError
from ..fileio import atomic_write, write_csv, write_json
from ..runtime.classifier import tta_views

import keras  # noqa: E402  (after the imgclf imports so that bad input fails before the slow import)

from .. import __version__  # noqa: E402
from ..models.registry import create_model, init_from_data  # noqa: E402
from ..runtime.modelfile import save_model  # noqa: E402


# ---------------------------------------------------------------------------------------
# Batches: shuffle + vectorised augmentation on uint8, deterministic in (seed, epoch, batch)
# ---------------------------------------------------------------------------------------

def augment_batch(x: np.ndarray, rng: np.random.Generator, flip: bool | np.ndarray = False, translate: int = 0,
                  cutout: int = 0) -> np.ndarray:
    """Random horizontal flip, pad-and-crop translation (reflect padding) and cutout, on a uint8 batch.
    `flip` may also be a boolean array: which images to mirror (Batches' alternating flip)."""
    n, h, w, _ = x.shape
    if flip is not False:
        mirror = flip if isinstance(flip, np.ndarray) else rng.random(n) < 0.5
        x = np.where(mirror[:, None, None, None], x[:, :, ::-1], x)
    if translate:
        t = translate
        padded = np.pad(x, ((0, 0), (t, t), (t, t), (0, 0)), mode="reflect")
        dy = rng.integers(0, 2 * t + 1, n)
        dx = rng.integers(0, 2 * t + 1, n)
        rows = dy[:, None] + np.arange(h)[None, :]  # (n, h)
        cols = dx[:, None] + np.arange(w)[None, :]  # (n, w)
        x = padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
    if cutout:
        cy = rng.integers(0, h, n)
        cx = rng.integers(0, w, n)
        yy = np.arange(h)[None, :, None]
        xx = np.arange(w)[None, None, :]
        y0 = (cy - cutout // 2)[:, None, None]  # a cutout x cutout square centred at (cy, cx), clipped
        x0 = (cx - cutout // 2)[:, None, None]
        mask = (yy >= y0) & (yy < y0 + cutout) & (xx >= x0) & (xx < x0 + cutout)
        x = np.where(mask[..., None], np.uint8(0), x)
    return np.ascontiguousarray(x)


class Batches(keras.utils.PyDataset):
    """Batches of (float32 pixels 0..255, labels) from an ImageSet.

    For training, the order is a permutation drawn from (seed, epoch), and augmentation
    draws from (seed, epoch, batch index): nothing depends on what ran before, which is what
    makes `--resume` exact.
    """

    def __init__(self, images: ImageSet, batch_size: int, num_classes: int, train: bool = False,
                 seed: int = 0, cfg: TrainConfig | None = None, one_hot: bool = False,
                 sample_weights: dict[int, float] | None = None):
        super().__init__()
        self.images, self.batch_size, self.num_classes = images, batch_size, num_classes
        self.train, self.seed, self.cfg, self.one_hot = train, seed, cfg, one_hot
        self.sample_weights = sample_weights
        self.epoch = 0
        self.order = np.arange(len(images))
        # alternating flip (airbench): each image gets a random mirror state from the seed, then
        # flips every epoch, so every pair of epochs shows both orientations exactly once
        self.base_flip = np.random.default_rng([seed, 2]).random(len(images)) < 0.5
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self.train:
            self.order = np.random.default_rng([self.seed, epoch]).permutation(len(self.images))

    def __len__(self) -> int:
        return math.ceil(len(self.images) / self.batch_size)

    def __getitem__(self, i):
        index = self.order[i * self.batch_size:(i + 1) * self.batch_size]
        x = self.images.images(index)
        if self.train and self.cfg is not None:
            rng = np.random.default_rng([self.seed, self.epoch, i, 1])
            flip = self.cfg.augment_flip
            if flip and self.cfg.augment_flip_alternate:
                flip = self.base_flip[index] ^ bool(self.epoch % 2)
            x = augment_batch(x, rng, flip, self.cfg.augment_translate, self.cfg.augment_cutout)
        y = self.images.y[index]
        if self.one_hot:
            y = np.eye(self.num_classes, dtype=np.float32)[y]
        x = x.astype(np.float32)
        if self.sample_weights is not None:
            w = np.asarray([self.sample_weights[int(c)] for c in self.images.y[index]], np.float32)
            return x, y, w
        return x, y


# ---------------------------------------------------------------------------------------
# Callbacks
# ---------------------------------------------------------------------------------------

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
    training stops when the budget is spent."""

    def __init__(self, cfg: TrainConfig, steps_per_epoch: int, n_train: int = 0, start: float | None = None):
        super().__init__()
        self.cfg, self.steps_per_epoch, self.n_train = cfg, steps_per_epoch, n_train
        self.epoch = 0
        self.start = start  # the budget clock: train()'s start, so data loading counts against it
        self.images_seen = 0  # training images this session (for the FLOP count)

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
        if self.cfg.lr_schedule == "constant" and not self.cfg.warmup_epochs:
            return
        lr = lr_at(self.cfg, self.progress(batch))
        sync_jax_state(self.model)  # so that the next step reads this learning rate
        self.model.optimizer.learning_rate.assign(lr)

    def on_train_batch_end(self, batch, logs=None):
        bs = self.cfg.batch_size
        self.images_seen += max(0, min(bs, self.n_train - batch * bs)) if self.n_train else bs
        if self.cfg.time_budget and self.progress(batch) >= 1.0:
            self.model.stop_training = True


class Lookahead(keras.callbacks.Callback):
    """airbench's lookahead. From `cfg.lookahead_start` (a fraction of training) on, every `every`
    steps: average <- average + (1 - rho) (weights - average), then weights <- average, for every
    float variable (BN statistics included). rho = base**every * progress**3 grows from 0 to
    0.95**5, so the weights move freely at first and are averaged strongly at the end. Each epoch
    ends with weights = average, so the next epoch starts its average from the weights: that is
    what makes a resumed run identical to an uninterrupted one."""

    def __init__(self, schedule: Schedule, every: int = 5, base: float = 0.95, power: float = 3.0):
        super().__init__()
        self.schedule, self.every, self.base, self.power = schedule, every, base, power
        self.average: list[np.ndarray] | None = None
        self.variables: list = []

    def on_train_begin(self, logs=None):
        self.variables = [v for v in self.model.weights if keras.backend.standardize_dtype(v.dtype).startswith("float")]

    def _snapshot(self):
        sync_jax_state(self.model)
        return [np.array(keras.ops.convert_to_numpy(v)) for v in self.variables]

    def on_epoch_begin(self, epoch, logs=None):
        self.average = self._snapshot() if self.schedule.progress(0) >= self.schedule.cfg.lookahead_start else None

    def on_train_batch_end(self, batch, logs=None):
        progress = self.schedule.progress(batch + 1)
        step = self.schedule.epoch * self.schedule.steps_per_epoch + batch + 1
        last = batch + 1 == self.schedule.steps_per_epoch or getattr(self.model, "stop_training", False)
        if progress >= self.schedule.cfg.lookahead_start and step % self.every == 0:
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
    jitted step donates twice ("Array has been deleted")."""

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

    def __init__(self, run_dir: Path, batches: Batches, keep_best: bool):
        super().__init__()
        self.run_dir, self.batches, self.keep_best = run_dir, batches, keep_best
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
            self.model.save_weights(tmp)
            os.replace(tmp, self.backup / "best.weights.h5")
            atomic_write(self.backup / "best.json",
                         lambda f: f.write(json.dumps({"epoch": epoch + 1, "val_accuracy": self.best}).encode()))


# ---------------------------------------------------------------------------------------
# The training entry point
# ---------------------------------------------------------------------------------------

@dataclass
class RunResult:
    run_dir: Path
    model_path: Path
    metrics: dict
    config: TrainConfig


def _set_determinism(cfg: TrainConfig) -> None:
    keras.utils.set_random_seed(cfg.seed)
    if cfg.deterministic and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


class BiasScaledSGD(keras.optimizers.SGD):
    """Keras' SGD with biases (BN shifts, conv biases) trained at `bias_lr_scale` times the
    learning rate: airbench's per-group rate, which lets the shifts of its scale-free BN layers keep
    up with the weights. Their gradients are scaled, which for SGD with momentum is the same as
    scaling their learning rate, while the decoupled weight decay (lr * wd * w per step) is left as
    it is, as in airbench (lr x 64, wd / 64). Training only: the saved model is compiled with Keras'
    own SGD, so it needs no imgclf to load."""

    def __init__(self, bias_lr_scale: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.bias_lr_scale = bias_lr_scale

    def apply(self, grads, trainable_variables=None):
        # JAX's stateless path passes no variables: then grads follow the built variable list
        variables = getattr(self, "_trainable_variables", []) if trainable_variables is None else trainable_variables
        variables = list(variables)
        if self.bias_lr_scale != 1.0 and len(variables) == len(grads):
            grads = [g * self.bias_lr_scale if g is not None and v.name in ("beta", "bias") else g
                     for g, v in zip(grads, variables)]
        return super().apply(grads, trainable_variables)

    def get_config(self):
        return {**super().get_config(), "bias_lr_scale": self.bias_lr_scale}


def build_compiled_model(cfg: TrainConfig, num_classes: int) -> keras.Model:
    model = create_model(cfg.model, num_classes, (cfg.input_size, cfg.input_size, 3), precision=cfg.precision,
                         **cfg.model_options)
    common = dict(learning_rate=cfg.learning_rate, use_ema=cfg.ema, ema_momentum=cfg.ema_momentum,
                  weight_decay=cfg.weight_decay or None)
    if cfg.optimizer == "sgd" and cfg.bias_lr_scale != 1.0:
        optimizer = BiasScaledSGD(cfg.bias_lr_scale, momentum=cfg.momentum, nesterov=cfg.nesterov, **common)
    elif cfg.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(momentum=cfg.momentum, nesterov=cfg.nesterov, **common)
    else:
        optimizer = keras.optimizers.AdamW(**{**common, "weight_decay": cfg.weight_decay})
    if cfg.label_smoothing:  # the sparse loss has no label smoothing: one-hot targets instead
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing)
        metrics = [keras.metrics.CategoricalAccuracy(name="accuracy")]
    else:
        loss = keras.losses.SparseCategoricalCrossentropy()
        metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    model.compile(optimizer=optimizer, loss=loss, metrics=metrics)
    return model


def model_meta(cfg: TrainConfig, data: Dataset, model: keras.Model) -> dict:
    return {
        "imgclf_version": __version__, "keras_version": keras.__version__, "backend": keras.backend.backend(),
        "model": cfg.model, "recipe": cfg.recipe, "class_names": data.class_names,
        "input_size": cfg.input_size, "resize": cfg.resize, "temperature": 1.0,
        "split": {**data.split, "limit_per_class": cfg.limit_per_class},
        "params": int(model.count_params()),
    }


def default_run_dir(cfg: TrainConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.recipe or cfg.model}-{stamp}"


def train(config: TrainConfig | str | Path | None = None, *, run_dir: str | Path | None = None,
          resume: str | Path | None = None, verbose: int = 1, callbacks=(), evaluate_test: bool = True,
          **overrides) -> RunResult:
    """Train a model and write a run directory. See the module docstring for its contents.

    `config` is a TrainConfig or a YAML/TOML file; keyword overrides win over both.
    `resume=RUN_DIR` continues an interrupted run from its last completed epoch.
    `evaluate_test=False` leaves the test set untouched (hyperparameter search selects on validation only).
    """
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / "config.yaml").is_file():
            raise ImgclfError(f"{run_dir}: not a run directory (expected config.yaml inside)")
        cfg = make_config(**read_config_file(run_dir / "config.yaml"))
    elif isinstance(config, TrainConfig):
        cfg = make_config(**{**config.to_dict(), **{k: v for k, v in overrides.items() if v is not None}})
    else:
        cfg = make_config(config, **overrides)

    if cfg.tensorboard:
        import importlib.util

        if importlib.util.find_spec("tensorboard") is None:
            raise ConfigError("tensorboard: --tensorboard needs the tensorboard package (pip install tensorboard)")
    t_start = time.perf_counter()
    # Load (and check) the data before anything is written: bad input leaves no run directory.
    data = load_dataset(cfg.data, cfg.test_data, cfg.input_size, cfg.resize, cfg.val_fraction,
                        cfg.split_seed, cfg.limit_per_class, cfg.skip_bad_images)
    load_seconds = time.perf_counter() - t_start
    num_classes = len(data.class_names)

    _set_determinism(cfg)
    model = build_compiled_model(cfg, num_classes)
    # data-dependent init (fastnet's whitening layer), from an evenly spaced sample: deterministic,
    # so a resumed run computes the same filters (and BackupAndRestore restores them anyway)
    init_from_data(model, data.train.images(np.arange(0, len(data.train), max(1, len(data.train) // 5000))))

    run_dir = Path(run_dir) if run_dir else default_run_dir(cfg)
    if resume is None:
        if run_dir.exists() and any(run_dir.iterdir()):
            raise ImgclfError(f"{run_dir}: run directory exists and is not empty (use --resume to continue it)")
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")

    one_hot = cfg.label_smoothing > 0
    weights = class_weights(data.train.y, num_classes) if cfg.class_weight == "balanced" else None
    train_batches = Batches(data.train, cfg.batch_size, num_classes, train=True, seed=cfg.seed, cfg=cfg,
                            one_hot=one_hot, sample_weights=weights)
    val_batches = Batches(data.val, 256, num_classes, one_hot=one_hot)
    epochs = cfg.epochs if not cfg.time_budget else 10_000

    cbs = [keras.callbacks.BackupAndRestore(str(run_dir / "backup"), double_checkpoint=True, delete_checkpoint=False),
           RunState(run_dir, train_batches, cfg.keep_best),
           Schedule(cfg, len(train_batches), len(data.train), start=t_start)]
    schedule = cbs[-1]
    if cfg.lookahead_start:
        cbs.append(Lookahead(schedule))
    if cfg.ema:
        cbs.append(SwapEMA(swap_on_epoch=True))
    if cfg.early_stopping:
        cbs.append(keras.callbacks.EarlyStopping("val_accuracy", patience=cfg.early_stopping, mode="max"))
    if cfg.tensorboard:
        cbs.append(keras.callbacks.TensorBoard(str(run_dir / "tensorboard")))
    cbs.extend(callbacks)

    t_fit = time.perf_counter()
    # shuffle=False: Batches shuffles by (seed, epoch) itself; Keras would shuffle batch order with
    # Python's global random state, which a resumed run cannot reproduce.
    model.fit(train_batches, validation_data=val_batches, epochs=epochs, verbose=verbose, callbacks=cbs,
              shuffle=False)
    fit_seconds = time.perf_counter() - t_fit

    chosen = "final"
    best_json = run_dir / "backup" / "best.json"
    if cfg.keep_best and best_json.exists():
        model.load_weights(run_dir / "backup" / "best.weights.h5")
        chosen = f"best (epoch {json.loads(best_json.read_text())['epoch']})"
    precision = model.dtype_policy.name  # "auto" resolved
    if precision != "float32" or cfg.bias_lr_scale != 1.0:
        # evaluate and save a float32 model compiled with Keras' own SGD: portable (no imgclf class
        # in the file), and what users will run. Variables are float32 under every mixed policy,
        # so the copy is exact.
        trained = model
        model = build_compiled_model(dataclasses.replace(cfg, precision="float32", bias_lr_scale=1.0), num_classes)
        model.set_weights(trained.get_weights())

    from ..evaluation.evaluator import evaluate_arrays, results_table, write_evaluation  # matplotlib/sklearn: imported late

    meta = model_meta(cfg, data, model)
    history = list(csv.DictReader(open(run_dir / "history.csv", newline="")))
    sets = {"train": data.train, "val": data.val}
    if data.test is not None and evaluate_test:
        sets["test"] = data.test
    def predict(images: ImageSet, tta: bool) -> np.ndarray:
        if not tta:
            return model.predict(Batches(images, 256, num_classes), verbose=0)
        # test-time augmentation, the same views and weights as Classifier.predict_proba(tta=True)
        chunks = []
        for start in range(0, len(images), 2048):
            x = images.images(np.arange(start, min(start + 2048, len(images))))
            chunks.append(sum(w * model.predict(np.ascontiguousarray(v, dtype=np.float32), batch_size=256, verbose=0)
                              for w, v in tta_views(x, cfg.tta_translate)))
        return np.concatenate(chunks)

    # validation first: seconds.to_final_val is when the final model's validation accuracy is known
    results = {"val": evaluate_arrays(predict(data.val, cfg.tta), data.val.y)}
    to_final_val = time.perf_counter() - t_start
    for name, s in sets.items():
        if name not in results:  # the training-set row stays plain (the seed's table); test uses TTA too
            results[name] = evaluate_arrays(predict(s, cfg.tta and name != "train"), s.y)
    results = {name: results[name] for name in sets}
    # Training owns the temperature: fitted on half of the validation split and measured on the other
    # half (seeded by the split seed), from single-pass probabilities as predict and serve return by
    # default, and stored in the model's metadata before the file is written. Reports only read it.
    from ..evaluation import calibration

    val_single = predict(data.val, False) if cfg.tta else results["val"]["probs"]
    meta["temperature"], meta["calibration"] = calibration.fit_for_model(val_single, data.val.y, seed=cfg.split_seed)
    epoch_seconds = [float(r["epoch_seconds"]) for r in history]
    metrics = {
        **{name: {"loss": r["loss"], "accuracy": r["accuracy"], "n": r["n"]} for name, r in results.items()},
        "weights": chosen, "epochs_run": len(history),
        "seconds": {"data_load": load_seconds, "fit": fit_seconds, "per_epoch_mean": float(np.mean(epoch_seconds)),
                    "to_final_val": to_final_val, "total": time.perf_counter() - t_start},
        "tta": cfg.tta,
        "train_images_per_second": len(data.train) * len(history) / max(sum(epoch_seconds), 1e-9),
        "backend": keras.backend.backend(), "precision": precision,
        "calibration": meta["calibration"],  # T and its numbers, or why it was skipped
    }
    from ..models.flops import count_flops

    flops = count_flops(model)
    images_seen = schedule.images_seen + (model._initial_epoch or 0) * len(data.train)  # + resumed epochs
    metrics["flops"] = {"forward_per_image": flops["forward"], "train_per_image": flops["train"],
                        "train_images": images_seen, "total_train": flops["train"] * images_seen}
    meta["metrics"] = {k: metrics[k] for k in sets}
    meta["tta"] = cfg.tta  # the metrics above are with test-time augmentation (tta_views)
    meta["tta_translate"] = cfg.tta_translate
    model_path = save_model(model, run_dir / "model.keras", meta)
    write_evaluation(run_dir, results["val"], data.class_names, "val")
    write_json(run_dir / "metrics.json", metrics)
    from ..figures import plot_learning_curves

    plot_learning_curves(history, run_dir / "learning_curves.png")
    shutil.rmtree(run_dir / "backup", ignore_errors=True)
    if verbose:
        print(results_table(metrics))
        print(f"run directory: {run_dir}")
    if cfg.report:  # reuses the model, images and (single-pass) validation predictions in memory
        from ..report.build import make_report

        make_report(run_dir, model=model, data=data, val_probs=val_single, verbose=bool(verbose))
    return RunResult(run_dir, model_path, metrics, cfg)


__all__ = ["train", "RunResult", "Batches", "augment_batch", "TrainConfig", "ConfigError",
           "build_compiled_model", "lr_at"]

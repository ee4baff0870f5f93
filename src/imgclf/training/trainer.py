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
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import keras
import numpy as np

from .. import __version__
from ..config import TrainConfig, make_config, read_config_file, save_config
from ..data import stream
from ..data.dataset import Dataset, ImageSet, class_weights, load_dataset
from ..errors import ConfigError, ImgclfError
from ..fileio import write_json
from ..models.registry import init_from_data
from ..runtime.classifier import tta_views
from ..runtime.modelfile import save_model
from . import device_augment, distribute, finetune
from .batches import Batches, one_hot_labels
from .callbacks import BudgetProgress, EarlyStop, Lookahead, RunState, Schedule, SwapEMA
from .optimizers import build_compiled_model, compile_args
from .plan import explicit_fields, plan_config, plan_input_size


@dataclass
class RunResult:
    run_dir: Path
    model_path: Path
    metrics: dict
    config: TrainConfig
    # what the run still holds in memory, for a report on top of it (imgclf.pipeline): the trained
    # model, the dataset and the single-pass validation probabilities
    model: keras.Model | None = field(default=None, repr=False)
    data: Dataset | None = field(default=None, repr=False)
    val_probs: np.ndarray | None = field(default=None, repr=False)


def _set_determinism(cfg: TrainConfig) -> None:
    keras.utils.set_random_seed(cfg.seed)
    if cfg.deterministic and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def model_meta(cfg: TrainConfig, data: Dataset, model: keras.Model) -> dict:
    return {
        "imgclf_version": __version__, "keras_version": keras.__version__, "backend": keras.backend.backend(),
        "model": cfg.model, "recipe": cfg.recipe, "class_names": data.class_names,
        "input_size": cfg.input_size, "resize": cfg.resize, "decode": data.train.decode, "temperature": 1.0,
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
    cfg = finetune.resolve(cfg)  # init_from: the file checked, its sha256 recorded in the run's config
    replicas = distribute.setup(cfg, resumed=resume is not None)  # --devices: checked before anything is written

    if cfg.tensorboard:
        import importlib.util

        if importlib.util.find_spec("tensorboard") is None:
            raise ConfigError("tensorboard: --tensorboard needs the tensorboard package (pip install tensorboard)")
    t_start = time.perf_counter()
    planning = cfg.recipe == "auto" and not cfg.plan and bool(cfg.data) and resume is None  # resumed: kept
    if planning:  # the input size now (it decides the decoding); the rest once the data passed its checks
        explicit = explicit_fields(config, overrides)
        facts, cfg = plan_input_size(cfg, explicit)
    # Load (and check) the data before anything is written: bad input leaves no run directory.
    data = load_dataset(cfg.data, cfg.test_data, cfg.input_size, cfg.resize, cfg.val_fraction,
                        cfg.split_seed, cfg.limit_per_class, cfg.skip_bad_images,
                        progress=None if verbose else False)
    load_seconds = time.perf_counter() - t_start
    num_classes = len(data.class_names)
    from ..data.summary import summarize

    data_summary = summarize(data)  # split sizes, classes, image sizes (headers of a sample), skipped files
    if verbose:
        print(data_summary, flush=True)
    if planning:
        cfg = plan_config(cfg, facts, explicit, verbose=bool(verbose))

    _set_determinism(cfg)
    with replicas.scope():  # several devices: variables replicated (TensorFlow: batch norm synchronised)
        model = replicas.prepare(build_compiled_model(cfg, num_classes))
        # data-dependent init (fastnet's whitening layer), from an evenly spaced sample: deterministic,
        # so a resumed run computes the same filters (and BackupAndRestore restores them anyway)
        if not cfg.init_from:  # a fine-tuned backbone keeps the whitening filters it was trained with
            init_from_data(model, data.train.images(np.arange(0, len(data.train), max(1, len(data.train) // 5000))))
        # augment_device: fit() trains a model that augments on the accelerator and then runs `model`
        # (its variables); everything after training uses `model` itself
        fit_model = (device_augment.training_model(model, cfg.augment_translate, cfg.augment_cutout,
                                                   compile_args(cfg, model)) if cfg.augment_device else model)

    run_dir = replicas.run_dir(Path(run_dir) if run_dir else default_run_dir(cfg))
    if resume is None:
        if run_dir.exists() and any(run_dir.iterdir()):
            raise ImgclfError(f"{run_dir}: run directory exists and is not empty (use --resume to continue it)")
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")

    one_hot = one_hot_labels(cfg)
    weights = class_weights(data.train.y, num_classes) if cfg.class_weight == "balanced" else None
    train_batches = replicas.batches(Batches(data.train, cfg.batch_size, num_classes, train=True, seed=cfg.seed,
                                             cfg=cfg, one_hot=one_hot, sample_weights=weights,
                                             device=cfg.augment_device))
    val_batches = replicas.batches(Batches(data.val, 256, num_classes, one_hot=one_hot, cfg=cfg,
                                           device=cfg.augment_device))  # several devices: even
    # a set that streams from disk is read ahead in parallel (data/stream.py): the same batches, in order
    train_batches, val_batches = stream.wrap(train_batches, data.train), stream.wrap(val_batches, data.val)
    epochs = cfg.epochs if not cfg.time_budget else 10_000

    ema = SwapEMA() if cfg.ema else None  # the averages in the model for validation only
    cbs = [keras.callbacks.BackupAndRestore(str(run_dir / "backup"), double_checkpoint=True, delete_checkpoint=False),
           RunState(run_dir, train_batches, cfg.keep_best or bool(cfg.early_stopping), ema),
           Schedule(cfg, len(train_batches), len(data.train), start=t_start)]
    schedule = cbs[-1]
    if cfg.lookahead_start:
        cbs.append(Lookahead(schedule))
    if ema is not None:
        cbs.append(ema)
    if cfg.early_stopping:
        cbs.append(EarlyStop(cfg.early_stopping))
    if cfg.time_budget:
        cbs.append(BudgetProgress(schedule))  # time used and left, not "Epoch 5/10000"
    if cfg.tensorboard:
        cbs.append(keras.callbacks.TensorBoard(str(run_dir / "tensorboard")))
    cbs.extend(finetune.callbacks(cfg, model))  # freeze_epochs: the backbone frozen, then trained
    cbs.extend(callbacks)

    t_fit = time.perf_counter()
    # shuffle=False: Batches shuffles by (seed, epoch) itself; Keras would shuffle batch order with
    # Python's global random state, which a resumed run cannot reproduce.
    if verbose and replicas.engine is not None:
        print(replicas.describe(), flush=True)
    with replicas.scope():
        fit_model.fit(train_batches, validation_data=val_batches, epochs=epochs, verbose=verbose, callbacks=cbs,
                      shuffle=False)
    fit_seconds = time.perf_counter() - t_fit

    chosen = "final"
    best_json = run_dir / "backup" / "best.json"
    stopped = next((c for c in cbs if isinstance(c, EarlyStop) and c.stopped_epoch), None)  # keeps the best too
    if (cfg.keep_best or stopped) and best_json.exists():
        fit_model.load_weights(run_dir / "backup" / "best.weights.h5")  # saved by RunState from fit_model
        chosen = f"best (epoch {json.loads(best_json.read_text())['epoch']})"
        if stopped and verbose:
            print(stopped.outcome(json.loads(best_json.read_text()), None if cfg.time_budget else cfg.epochs))
    precision = model.dtype_policy.name  # "auto" resolved
    if precision != "float32" or cfg.bias_lr_scale != 1.0 or cfg.backbone_lr_scale != 1.0 or replicas.replicas > 1:
        # evaluate and save a float32 model compiled with Keras' own SGD: portable (no imgclf class
        # in the file), and what users will run. Variables are float32 under every mixed policy,
        # so the copy is exact. After several devices the copy also leaves the distribution (one
        # device, plain batch norm), so evaluation and the saved file are those of a one-device run.
        trained = model
        model = build_compiled_model(dataclasses.replace(cfg, precision="float32", bias_lr_scale=1.0,
                                                         backbone_lr_scale=1.0), num_classes)
        model.set_weights(trained.get_weights())

    from ..evaluation.metrics import SCORE_KEYS, evaluate_arrays, results_table, write_evaluation  # imported late

    meta = model_meta(cfg, data, model)
    meta.update(finetune.meta_fields(cfg))  # init_from: the file (name or path, sha256) and its model
    history = list(csv.DictReader(open(run_dir / "history.csv", newline="")))
    sets = {"train": data.train, "val": data.val}
    if data.test is not None and evaluate_test:
        sets["test"] = data.test
    def predict(images: ImageSet, tta: bool) -> np.ndarray:
        if not tta:
            return model.predict(stream.wrap(Batches(images, 256, num_classes), images), verbose=0)
        # test-time augmentation, the same views and weights as Classifier.predict_proba(tta=True); batch by
        # batch (the same numbers as model.predict on the array, without the tf.data pipeline whose rewrite
        # under op determinism logs "E0000 ... use_unbounded_threadpool" on every run)
        chunks = []
        for start in range(0, len(images), 2048):
            x = images.images(np.arange(start, min(start + 2048, len(images))))
            chunks.append(sum(w * np.concatenate([np.asarray(model.predict_on_batch(
                np.ascontiguousarray(v[i:i + 256], dtype=np.float32))) for i in range(0, len(v), 256)])
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
        **{name: {k: r[k] for k in ("loss", "accuracy", "n", *SCORE_KEYS)} for name, r in results.items()},
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
    images_seen = schedule.images_seen + (fit_model._initial_epoch or 0) * len(data.train)  # + resumed epochs
    metrics["flops"] = {"forward_per_image": flops["forward"], "train_per_image": flops["train"],
                        "train_images": images_seen, "total_train": flops["train"] * images_seen}
    meta["metrics"] = {k: metrics[k] for k in sets}
    meta["tta"] = cfg.tta  # the metrics above are with test-time augmentation (tta_views)
    meta["tta_translate"] = cfg.tta_translate
    model_path = save_model(model, run_dir / "model.keras", meta)
    write_evaluation(run_dir, results["val"], data.class_names, "val")
    metrics["data_summary"] = data_summary.to_dict()
    write_json(run_dir / "metrics.json", metrics)
    from ..figures import plot_learning_curves

    plot_learning_curves(history, run_dir / "learning_curves.png")
    shutil.rmtree(run_dir / "backup", ignore_errors=True)
    if verbose:
        print(results_table(metrics))
        print(f"run directory: {run_dir}")
    return RunResult(run_dir, model_path, metrics, cfg, model=model, data=data, val_probs=val_single)


__all__ = ["train", "RunResult", "model_meta", "default_run_dir"]

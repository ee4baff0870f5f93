"""The auto recipe's plan: a config that fits the folder and the time budget, fixed before training.

`--recipe auto` (recipes/auto.yaml) starts from the fast recipes' shared settings and leaves the
rest to `make_plan`, which looks at the data and the hardware once:

  data      training images, classes, the median image side, the class imbalance
  hardware  the time of a few real training steps of fast80's net at the planned input size
            (seconds; wider nets are timed by their FLOPs relative to it)

and chooses, for every field the user did not set:

  input_size   32 px for images whose median short side is small, else 64 px; under --init-from,
               the size the pretrained model was trained at (its features are learnt at that scale)
  model        the fast recipes' fastnet: fast80's narrow net when the set is large (each
               epoch already sees many images), else the widest net that fits the epochs
               wanted into the budget
  epochs       as many passes as the set's size calls for (fewer for a larger set), cut to what
               the estimated speed fits into the budget (10 minutes by default, --time-budget)
  schedule     the warmup scaled with the number of epochs; keep_best on; a smaller batch for
               a set too small for MIN_STEPS steps an epoch
  class_weight balanced when the largest class is over 3x the smallest

The plan is a fixed number of epochs, not a clock: the run is deterministic, the plan is written
into the run's config.yaml (field `plan`) and `--resume` reuses it instead of planning again.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass

import numpy as np

DEFAULT_BUDGET = 600.0  # seconds of training when no --time-budget is given
TRAIN_SHARE = 0.85  # of the budget, the part planned for training steps (the rest: evaluation, saving)
PROBE_STEPS = 3  # timed training steps (after one untimed step that builds the graph)
EPOCH_OVERHEAD = 1.5  # an epoch's time over the probe's bare steps: augmentation, validation, checkpoints
NARROW = [32, 64, 128]  # fast80's net
WIDTHS = ([64, 256, 256], [64, 128, 256], NARROW)  # widest first: fast94's, budget's, fast80's
LARGE_SET = 20_000  # training images from which the narrow net is chosen
SEEN_IMAGES = 200_000  # images seen in training that the epoch count aims at
EPOCH_RANGE = (4, 80)
MIN_STEPS = 10  # training steps per epoch below which a small set gets a smaller batch
UNBALANCED = 3.0  # largest / smallest class above which the loss is class-weighted
WARMUP_SHARE = {"fast80": 0.2, "fast94": 0.23}  # warmup_epochs / epochs of the recipe a plan starts from


@dataclass(frozen=True)
class Facts:
    """What the planner needs to know about the data."""

    n_train: int
    n_classes: int
    median_side: int  # median of the images' shorter sides, in pixels
    imbalance: float  # largest class / smallest class


def step_probe(cfg, num_classes: int, steps: int = PROBE_STEPS) -> float:
    """Seconds per training image of cfg's compiled model, from `steps` timed steps on random data
    (after one untimed step). Keras' global random state is reset by training afterwards."""
    from .batches import one_hot_labels
    from .optimizers import build_compiled_model

    model = build_compiled_model(cfg, num_classes)
    n, size = cfg.batch_size, cfg.input_size
    x = np.random.default_rng(0).integers(0, 256, (n, size, size, 3)).astype(np.float32)
    y = np.arange(n) % num_classes
    if one_hot_labels(cfg):
        y = np.eye(num_classes, dtype=np.float32)[y]
    model.train_on_batch(x, y)
    t = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    seconds = (time.perf_counter() - t) / (steps * n)
    del model
    import keras

    keras.backend.clear_session()  # the probe's graph and layer names go; training seeds itself afterwards
    return seconds


def wanted_epochs(n_train: int) -> int:
    """Epochs for a set of n_train images: about SEEN_IMAGES images seen, within EPOCH_RANGE."""
    lo, hi = EPOCH_RANGE
    return int(min(hi, max(lo, math.ceil(SEEN_IMAGES / max(n_train, 1)))))


def choose_input_size(median_side: int) -> int:
    return 32 if median_side < 48 else 64


def make_plan(facts: Facts, explicit: set[str], budget: float | None, image_seconds: callable,
              configured: dict | None = None, input_size: int | None = None) -> dict:
    """The planned field values (only fields not in `explicit`) and their summary under "plan".

    `image_seconds(widths, input_size, batch_size, precision)` gives the training seconds per image
    of fastnet with those widths (widths None: the configured model); `configured` holds the
    config's own input_size, batch_size and precision, used where the user set them; `input_size`,
    when given, is the size to plan (a pretrained model's) instead of the one the images call for."""
    configured = {"input_size": 32, "batch_size": 256, "precision": "float32", **(configured or {})}
    budget = float(budget or DEFAULT_BUDGET)
    values: dict = {}
    base = "fast80" if facts.n_train >= LARGE_SET else "fast94"

    def choose(name, value):
        if name not in explicit:
            values[name] = value
        return values.get(name, configured.get(name))

    size = choose("input_size", input_size or choose_input_size(facts.median_side))
    small = facts.n_train < MIN_STEPS * 256  # at least MIN_STEPS steps an epoch
    batch = choose("batch_size", max(16, 2 ** int(math.log2(max(facts.n_train // MIN_STEPS, 1))))) if small \
        else values.get("batch_size", configured["batch_size"])
    precision = choose("precision", "auto") if base == "fast94" else configured["precision"]
    want = wanted_epochs(facts.n_train)
    seconds = budget * TRAIN_SHARE

    def epoch_seconds(widths) -> float:
        return facts.n_train * image_seconds(widths, size, batch, precision) * EPOCH_OVERHEAD

    if "model_options" in explicit or "model" in explicit:
        widths = None
    elif base == "fast80":
        widths = NARROW
    else:
        widths = next((w for w in WIDTHS if want * epoch_seconds(w) <= seconds), NARROW)
    if widths is not None:
        values["model_options"] = {"widths": list(widths), "logit_scale": 1 / 9}
    est = epoch_seconds(widths)
    epochs = choose("epochs", max(1, min(want, int(seconds // max(est, 1e-9)))))
    if "epochs" not in explicit and "warmup_epochs" not in explicit:
        values["warmup_epochs"] = round(WARMUP_SHARE[base] * epochs, 3)
    if base == "fast94":
        for name, value in (("bias_lr_scale", 64.0), ("warmup_start_fraction", 0.2),
                            ("final_lr_fraction", 0.07), ("lookahead_start", 0.3)):
            choose(name, value)
    if facts.imbalance > UNBALANCED:
        choose("class_weight", "balanced")
    values["time_budget"] = None  # spent by the plan: the run is a fixed number of epochs
    values["plan"] = {
        "images": facts.n_train, "classes": facts.n_classes, "median_side": facts.median_side,
        "imbalance": round(facts.imbalance, 2), "budget_seconds": budget, "starts_from": base,
        "estimated_epoch_seconds": round(est, 1),
        "text": describe(facts, values, base, configured.get("augmentation", "flip + translate")),
    }
    return values


def augmentation_text(cfg) -> str:
    """The config's training augmentations in a few words, e.g. "flip + translate + crop"."""
    parts = [name for name, on in (("flip", cfg.augment_flip), ("translate", cfg.augment_translate),
                                   ("cutout", cfg.augment_cutout), ("crop", cfg.augment_crop),
                                   ("colour jitter", cfg.augment_color), ("MixUp", cfg.mixup),
                                   ("CutMix", cfg.cutmix)) if on]
    return " + ".join(parts) or "no augmentation"


def describe(facts: Facts, values: dict, base: str, augmentation: str) -> str:
    """The plan in one line, e.g. "2,882 images in 10 classes (median side 400 px, largest class 7.1x the
    smallest): fastnet 64/256/256 at 64 px, 40 epochs from fast94's settings, flip + translate,
    class-weighted, best epoch kept"."""
    widths = (values.get("model_options") or {}).get("widths")
    net = "fastnet " + "/".join(map(str, widths)) if widths else "the configured network"
    size = f" at {values['input_size']} px" if "input_size" in values else ""
    epochs = f"{values['epochs']} epochs" if "epochs" in values else "the configured epochs"
    weighted = ", class-weighted" if values.get("class_weight") == "balanced" else ""
    return (f"{facts.n_train:,} images in {facts.n_classes} classes (median side {facts.median_side} px, "
            f"largest class {facts.imbalance:.1f}x the smallest): {net}{size}, {epochs} from {base}'s "
            f"settings, {augmentation}{weighted}, best epoch kept")


def data_facts(data: str, limit_per_class: int | None = None, val_fraction: float = 0.1,
               skip_bad: bool = False, sample: int = 200) -> Facts:
    """Facts about a dataset from its file list and a seeded sample of image headers (nothing decoded).

    Bad folders raise the same DataError that loading them would."""
    from pathlib import Path

    from ..data.dataset import find_val_folder, is_cifar_source, list_folder
    from ..data.summary import header_size

    if is_cifar_source(data):  # the official archive: 5,000 32x32 images per class, 10 classes
        n = 10 * min(5000, limit_per_class or 5000)
        return Facts(round(n * (1 - val_fraction)), 10, 32, 1.0)
    root = Path(data)
    val_folder = find_val_folder(root) if (root / "train").is_dir() else None
    train_root = root / "train" if (root / "train").is_dir() else root
    files, labels, names = list_folder(train_root, skip_bad, limit_per_class)
    counts = np.bincount(labels, minlength=len(names))
    n_train = len(files) if val_folder is not None else round(len(files) * (1 - val_fraction))
    pick = np.sort(np.random.default_rng(0).choice(len(files), size=min(sample, len(files)), replace=False))
    sides = [min(s) for s in (header_size(train_root / files[i]) for i in pick) if s is not None]
    median_side = int(np.median(sides)) if sides else 32
    return Facts(n_train, len(names), median_side, float(counts.max() / max(counts.min(), 1)))


def fastnet_train_flops(num_classes: int):
    """train_flops(widths, input_size): fastnet built (not trained) and its FLOPs counted, once per
    (widths, input_size)."""
    from ..models.flops import count_flops
    from ..models.registry import create_model

    @functools.cache
    def counted(widths: tuple, input_size: int) -> float:
        model = create_model("fastnet", num_classes, (input_size, input_size, 3), widths=list(widths),
                             logit_scale=1 / 9)
        return float(count_flops(model)["train"])

    return lambda widths, input_size: counted(tuple(widths), input_size)


def probed_image_seconds(cfg, num_classes: int):
    """image_seconds for make_plan on this machine: fast80's net timed for a few real steps at the
    asked input size, batch and precision (the configured model itself when widths is None); a
    wider fastnet costs that times its share of FLOPs. Each probe runs once."""
    from ..config import make_config

    flops, probes = fastnet_train_flops(num_classes), {}

    def image_seconds(widths, input_size, batch_size, precision) -> float:
        key = (None if widths is None else "fastnet", input_size, batch_size, precision)
        if key not in probes:
            fields = {"input_size": input_size, "batch_size": batch_size, "precision": precision}
            if widths is not None:
                fields.update(model="fastnet", model_options={"widths": NARROW, "logit_scale": 1 / 9})
            probes[key] = step_probe(make_config(**{**cfg.to_dict(), **fields}), num_classes)
        if widths is None:
            return probes[key]
        return probes[key] * flops(widths, input_size) / flops(NARROW, input_size)

    return image_seconds


def explicit_fields(config, overrides: dict) -> set[str]:
    """The config fields the user set: keyword overrides, the fields of a config file, or the fields
    of a TrainConfig that differ from the auto recipe's."""
    from ..config import TrainConfig, make_config, read_config_file

    explicit = {name for name, value in overrides.items() if value is not None}
    if isinstance(config, TrainConfig):
        auto = make_config(recipe="auto").to_dict()
        explicit |= {name for name, value in config.to_dict().items() if value != auto.get(name)}
    elif config is not None:
        explicit |= set(read_config_file(config))
    return explicit - {"recipe", "plan"}


def plan_input_size(cfg, explicit: set[str]):
    """Step 1 of planning, before the data is loaded: (the data's Facts, cfg with the planned input
    size). Only the file list and a sample of image headers are read; nothing is built."""
    from ..config import make_config

    facts = data_facts(cfg.data, cfg.limit_per_class, cfg.val_fraction, cfg.skip_bad_images)
    if "input_size" not in explicit:
        size = pretrained_input_size(cfg) or choose_input_size(facts.median_side)
        cfg = make_config(**{**cfg.to_dict(), "input_size": size})
    return facts, cfg


def pretrained_input_size(cfg) -> int | None:
    """The input size the init_from model was trained at (its metadata), or None without init_from.
    Fine-tuning at that size measured far better than at the size the photos call for
    (bench/README.md, fine-tuning)."""
    if not cfg.init_from:
        return None
    from ..runtime.modelfile import read_meta
    from .finetune import source_path

    return int(read_meta(source_path(cfg.init_from))["input_size"])


def plan_config(cfg, facts: Facts, explicit: set[str], verbose: bool = True):
    """Step 2, once the data has loaded and passed its checks: the probe, then cfg with every
    planned value (see make_plan)."""
    from ..config import make_config

    if cfg.init_from:  # the network comes from that file: plan the rest around it
        explicit = explicit | {"model", "model_options"}
    values = make_plan(facts, explicit, cfg.time_budget, probed_image_seconds(cfg, facts.n_classes),
                       {**{name: getattr(cfg, name) for name in ("input_size", "batch_size", "precision")},
                        "augmentation": augmentation_text(cfg)},
                       input_size=cfg.input_size if cfg.init_from else None)  # step 1 set the pretrained size
    if verbose:
        print(f"plan: {values['plan']['text']}", flush=True)
    return make_config(**{**cfg.to_dict(), **values})

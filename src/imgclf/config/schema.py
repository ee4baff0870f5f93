"""The declared schema of a training config: every field's kind, default, bounds and description.

The defaults ARE the seed recipe (../shared/seed/README.md, reconstructed: the seed gives the
structure of its CNN but no numbers): seed_cnn, SGD with momentum, 30 epochs, pixels scaled to
[0, 1] by the model's first layer, a stratified validation split.

One declaration serves config files, recipes, command-line flags (their help text is the
description) and tune spaces. TrainConfig is a pydantic dataclass: constructing one validates
it, and a bad value raises one ConfigError line that names the field and what it expects.
"""

import dataclasses
import types
from typing import Annotated, Any, Literal, NamedTuple, Optional, Union, get_args, get_origin

from pydantic import AfterValidator, ConfigDict, Field, ValidationError, model_validator
from pydantic.dataclasses import dataclass

from ..errors import ConfigError, quote
from ..models.registry import list_models
from .kinds import KIND_TEXT, Float, Flag, Int, Options, Text, coerce
from .recipes import recipe_names

MAX_INPUT_SIZE = 4096  # pixels per side: the image pixel limit (imgclf.data.images.MAX_PIXELS) allows no more
MAX_SEED = 2**32 - 1
Resize = Literal["stretch", "crop", "pad"]
Optimizer = Literal["sgd", "adamw"]
Schedule = Literal["constant", "cosine", "onecycle"]
Precision = Literal["float32", "mixed_bfloat16", "mixed_float16", "auto"]
PRECISIONS = get_args(Precision)


def _registered_model(name: str) -> str:
    if name not in list_models():
        raise ValueError(f"one of {', '.join(list_models())}")
    return name


def _shipped_recipe(name: str) -> str:
    if name not in recipe_names():
        raise ValueError(f"one of {', '.join(recipe_names())}")
    return name


def _sha256_hex(text: str) -> str:
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text.lower()):
        raise ValueError("a sha256: 64 hexadecimal digits")
    return text.lower()


ModelName = Annotated[Text, AfterValidator(_registered_model)]
Sha256 = Annotated[Text, AfterValidator(_sha256_hex)]
RecipeName = Annotated[Text, AfterValidator(_shipped_recipe)]


def setting(default, description: str, **bounds):
    """A field: its default, its one-line description (the flag's help) and its bounds (ge, gt, le, lt)."""
    if isinstance(default, dict):
        return Field(default_factory=lambda: dict(default), description=description, **bounds)
    return Field(default, description=description, **bounds)


@dataclass(config=ConfigDict(extra="forbid"))
class TrainConfig:
    """Every training hyperparameter. Constructing one validates it (ConfigError on a bad value)."""

    # data
    data: Optional[Text] = setting(None, 'image folder, CIFAR-10 archive or folder, or "cifar10" (download)')
    test_data: Optional[Text] = setting(None, "a separate test image folder")
    input_size: Int = setting(32, "side of the square the images are resized to, in pixels",
                              ge=8, le=MAX_INPUT_SIZE)
    resize: Resize = setting("stretch", "how images become square: stretch, crop or pad")
    val_fraction: Float = setting(0.1, "fraction of the training images held out (stratified) for validation",
                                  gt=0, lt=1)
    split_seed: Int = setting(0, "seed of the validation split (independent of seed)", ge=0, le=MAX_SEED)
    limit_per_class: Optional[Int] = setting(None, "use at most this many training images per class", ge=1)
    skip_bad_images: Flag = setting(False, "skip unreadable images with a warning instead of stopping")
    class_weight: Optional[Literal["balanced"]] = setting(None, "balanced: weight the loss by inverse class frequency")
    # model
    model: ModelName = setting("seed_cnn", "a registered model (imgclf models lists them)")
    model_options: Options = setting({}, "keyword options of the model's builder (--model-option KEY=VALUE)")
    # fine-tuning (imgclf.training.finetune)
    init_from: Optional[Text] = setting(None, 'start from an imgclf model (a .keras file, or "cifar10": the shipped '
                                              "one): its layers and weights up to the classifier head, with a new "
                                              "head for these classes (model and model_options are then unused)")
    init_from_sha256: Optional[Sha256] = setting(None, "sha256 of the init_from file: recorded by training, checked "
                                                     "when given (a resumed or repeated run starts from the same file)")
    freeze_epochs: Int = setting(0, "train only the classifier head for this many epochs (the backbone's batch norm "
                                    "in inference mode), then every layer", ge=0)
    backbone_lr_scale: Float = setting(1.0, "the layers before the classifier head learn at this times "
                                            "learning_rate, their weight decay unchanged", gt=0)
    # optimisation
    epochs: Int = setting(30, "passes over the training images", ge=1)
    batch_size: Int = setting(64, "images per training step", ge=1)
    optimizer: Optimizer = setting("sgd", "sgd (the seed's) or adamw")
    learning_rate: Float = setting(0.01, "the (peak) learning rate", gt=0)
    momentum: Float = setting(0.9, "SGD momentum", ge=0, le=1)
    nesterov: Flag = setting(False, "Nesterov momentum (SGD)")
    weight_decay: Float = setting(0.0, "decoupled weight decay (0 = off)", ge=0)
    bias_lr_scale: Float = setting(1.0, "SGD only: biases and BN shifts learn at this times learning_rate, "
                                        "their weight decay unchanged (airbench: 64)", gt=0)
    lr_schedule: Schedule = setting("constant", "learning rate schedule after the warmup: constant, cosine or onecycle")
    warmup_epochs: Float = setting(0.0, "epochs of linear learning rate warmup", ge=0)
    warmup_start_fraction: Float = setting(0.0, "the warmup starts at this fraction of learning_rate (airbench: 0.2)",
                                           ge=0, le=1)
    final_lr_fraction: Float = setting(0.0, "cosine/onecycle decay ends at this fraction of learning_rate", ge=0, le=1)
    label_smoothing: Float = setting(0.0, "label smoothing of the cross-entropy loss", ge=0, lt=1)
    precision: Precision = setting("float32", "arithmetic of training only (weights, the saved model and every "
                                              "reported accuracy stay float32); auto: mixed_bfloat16 on a CPU with "
                                              "bf16 units, else float32")
    # augmentation (train only; vectorised numpy on uint8 batches)
    augment_flip: Flag = setting(False, "random horizontal flips")
    augment_flip_alternate: Flag = setting(False, "with augment_flip: each image's mirror state alternates by epoch")
    augment_translate: Int = setting(0, "random shifts of up to this many pixels, reflect-padded (0 = off)", ge=0)
    augment_cutout: Int = setting(0, "side of a random square cutout in pixels (0 = off)", ge=0)
    augment_crop: Float = setting(0.0, "random resized crop: a box of this to 100% of the image's area (aspect "
                                       "3/4 to 4/3), resized back to the input size (0 = off)", ge=0, le=1)
    augment_color: Float = setting(0.0, "colour jitter: brightness, contrast and saturation each scaled by a "
                                        "random factor in [1 - s, 1 + s] (0 = off)", ge=0, lt=1)
    mixup: Float = setting(0.0, "MixUp: images and labels mixed in pairs, weights from Beta(a, a) (0 = off)", ge=0)
    cutmix: Float = setting(0.0, "CutMix: a box pasted from a paired image, its area from Beta(a, a) (0 = off); "
                                 "with mixup too, each batch takes one of the two", ge=0)
    augment_device: Flag = setting(False, "flip, translate and cutout as keras.ops inside the compiled training "
                                          "step (on the accelerator) instead of numpy: the same draws, so the same "
                                          "batches; uint8 pixels cross to the device (not with mixup or cutmix)")
    # averaging and inference
    ema: Flag = setting(False, "exponential moving average of the weights (Keras' use_ema)")
    ema_momentum: Float = setting(0.99, "momentum of that moving average", ge=0, le=1)
    lookahead_start: Float = setting(0.0, "airbench's lookahead: from this fraction of training on, every 5 steps "
                                          "the weights (and BN statistics) move to a slow average (0 = off)",
                                     ge=0, lt=1)
    tta: Flag = setting(False, "test-time augmentation in evaluation: the mean over each image and its mirror")
    tta_translate: Int = setting(0, "with tta, also views shifted by this many pixels", ge=0)
    # control
    seed: Int = setting(0, "seed of initialisation, shuffling and augmentation", ge=0, le=MAX_SEED)
    deterministic: Flag = setting(True, "deterministic kernels: a seeded run repeats digit for digit")
    devices: Int = setting(1, "devices to train on, data-parallel (flag: all or N; 0 = all): GPUs, else CPU "
                              "devices; batch_size is the global batch, split evenly over them", ge=0)
    steps_per_execution: Int = setting(1, "training steps per compiled call (fewer host round trips on an "
                                          "accelerator); the learning rate and lookahead then change once per call",
                                       ge=1, le=1000)
    early_stopping: Int = setting(0, "patience in epochs on val_accuracy (0 = off)", ge=0)
    keep_best: Flag = setting(False, "model.keras holds the best-val-accuracy epoch instead of the last")
    time_budget: Optional[Float] = setting(None, "seconds of training, the schedule spread over this wall time "
                                                 "(flag: 90s, 30m, 1.5h)", gt=0)
    recipe: Optional[RecipeName] = setting(None, "the shipped recipe the values start from")
    plan: Options = setting({}, "the auto recipe's plan: what it found in the data and chose (written by training; "
                                "a resumed run keeps it)")
    tensorboard: Flag = setting(False, "write TensorBoard logs into the run directory")
    report: Flag = setting(True, "write report.html when training ends")

    @model_validator(mode="wrap")
    @classmethod
    def _one_error_line(cls, values, handler):
        """Any invalid field: one ConfigError line naming it (the first in field order)."""
        try:
            cfg = handler(values)
        except ValidationError as e:
            raise ConfigError(_message(e.errors()[0])) from None
        if cfg.bias_lr_scale != 1.0 and cfg.optimizer != "sgd":
            raise ConfigError(f"config: field 'bias_lr_scale' expects 1 unless optimizer is sgd (Adam's steps "
                              f"do not scale with the gradient), got {quote(cfg.bias_lr_scale)}")
        if cfg.augment_translate >= cfg.input_size:  # reflect padding needs a shift shorter than the image
            raise ConfigError(f"config: field 'augment_translate' expects fewer pixels than input_size "
                              f"({cfg.input_size}), got {quote(cfg.augment_translate)}")
        if cfg.augment_device and (cfg.mixup or cfg.cutmix):  # MixUp/CutMix mix the augmented pixels on the host
            raise ConfigError("config: field 'augment_device' expects mixup and cutmix off (they run on the host, "
                              "after flip, translate and cutout), got augment_device true with "
                              f"mixup {quote(cfg.mixup)}, cutmix {quote(cfg.cutmix)}")
        return cfg

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class FieldSpec(NamedTuple):
    kind: str  # int | float | bool | str | dict (imgclf.config.kinds.KINDS)
    optional: bool  # None (nothing) is a valid value
    default: Any
    description: str
    choices: tuple | None  # the allowed strings of a choice field
    info: Any  # pydantic's FieldInfo: the declared bounds


def _spec(info) -> FieldSpec:
    annotation, optional = info.annotation, False
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        annotation, optional = args[0], len(args) < len(get_args(annotation))
    if get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    choices = get_args(annotation) if get_origin(annotation) is Literal else None
    kind = "str" if choices else {dict: "dict"}.get(get_origin(annotation), getattr(annotation, "__name__", ""))
    default = info.default_factory() if info.default_factory is not None else info.default
    return FieldSpec(kind, optional, default, info.description, choices, info)


FIELDS: dict[str, FieldSpec] = {name: _spec(info) for name, info in TrainConfig.__pydantic_fields__.items()}
FIELD_TYPES: dict[str, str] = {name: spec.kind for name, spec in FIELDS.items()}  # name -> kind


def _bounds_text(spec: FieldSpec) -> str:
    """'an integer >= 1', 'a number in [0, 1)', ... from the field's declared bounds."""
    bounds = {}
    for item in spec.info.metadata:
        for key in ("ge", "gt", "le", "lt"):  # annotated_types.Ge(ge=...) and its siblings
            if hasattr(item, key):
                bounds[key] = getattr(item, key)
    noun = "an integer" if spec.kind == "int" else "a number"
    low = ("ge", bounds["ge"]) if "ge" in bounds else ("gt", bounds["gt"]) if "gt" in bounds else None
    high = ("le", bounds["le"]) if "le" in bounds else ("lt", bounds["lt"]) if "lt" in bounds else None
    if low and high:
        if spec.kind == "int" and low[0] == "ge" and high[0] == "le":
            return f"{noun} from {low[1]} to {high[1]}"
        if low[0] == "gt" and high[0] == "lt":
            return f"{noun} between {low[1]} and {high[1]}"
        return f"{noun} in {'[' if low[0] == 'ge' else '('}{low[1]}, {high[1]}{']' if high[0] == 'le' else ')'}"
    if low == ("gt", 0):
        return f"a positive {'integer' if spec.kind == 'int' else 'number'}"
    if low:
        return f"{noun} {'>=' if low[0] == 'ge' else '>'} {low[1]}"
    if high:
        return f"{noun} {'<=' if high[0] == 'le' else '<'} {high[1]}"
    return f"{spec.kind} ({KIND_TEXT[spec.kind]})"


def expected(name: str) -> str:
    """What field `name` accepts, in words, from its declaration."""
    spec = FIELDS[name]
    if spec.choices:
        text = f"one of {', '.join(spec.choices)}" if len(spec.choices) > 1 else spec.choices[0]
    else:
        text = _bounds_text(spec)
    return text + " or nothing" if spec.optional else text


def _message(error: dict) -> str:
    loc = error.get("loc") or ()
    name = next((part for part in loc if isinstance(part, str) and part in FIELDS), None)
    if name is None:  # an unknown field (extra="forbid") or a missing argument
        field = loc[0] if loc else "?"
        if field not in FIELDS:
            return f"config: unknown config field {quote(field)} (known fields: {', '.join(sorted(FIELDS))})"
        return f"config: field {field!r}: {error.get('msg', 'invalid')}"
    cause = (error.get("ctx") or {}).get("error")  # a ValueError from a kind or validator says what it expects
    what = str(cause) if error.get("type") == "value_error" and cause else expected(name)
    return f"config: field {name!r} expects {what}, got {quote(error.get('input'))}"


def check_value(name: str, value: Any, source: str) -> Any:
    """One value coerced to field `name`'s kind (its bounds are checked with the whole config);
    ConfigError naming `source` and the field otherwise."""
    if not isinstance(name, str) or name not in FIELDS:
        raise ConfigError(f"{source}: unknown config field {quote(name)} (known fields: {', '.join(sorted(FIELDS))})")
    spec = FIELDS[name]
    if value is None:
        if spec.optional:
            return None
        raise ConfigError(f"{source}: field {name!r} must not be empty")
    try:
        return coerce(spec.kind, value)
    except ValueError:
        kind = f"{spec.kind} or nothing" if spec.optional else spec.kind
        raise ConfigError(f"{source}: field {name!r} expects {kind} ({KIND_TEXT[spec.kind]}), "
                          f"got {quote(value)}") from None

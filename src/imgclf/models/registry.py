"""Model registry: `create_model(name, num_classes, input_shape, **options)`, timm-style.

Every model takes RGB pixel values 0..255 (uint8 or float32, NHWC) and starts with a
Rescaling layer: 1/255 for imgclf's own nets (imgclf.models.stem), the backbone's own (x/127.5 - 1
for MobileNetV3) for keras.applications backbones (imgclf.models.applications), so a saved
model.keras needs no outside preprocessing. Models are built with the Functional API from keras
layers only, so every Keras backend can run them.

The registry itself imports no Keras: the names and descriptions are declared here, and a
family's module (one file per family) is imported only when a model is built or its options
are checked. `imgclf models` and `imgclf --help` therefore answer without loading TensorFlow.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Callable

from ..errors import ConfigError
from .whitening import init_from_data, whitening_filters  # noqa: F401  (re-exported: numpy only)

# name -> (module holding a builder of that name, one-line description)
FAMILIES: dict[str, tuple[str, str]] = {
    "seed_cnn": ("imgclf.models.seed_cnn",
                 "the seed's CNN: 4 conv-BN-ReLU layers, 2 max-pools, dropout, dense softmax"),
    "fastnet": ("imgclf.models.fastnet",
                "airbench-style fast CNN: patch-whitening stem, 3 conv groups, BN, GELU (the fast recipes)"),
    "mobilenetv3small": ("imgclf.models.applications",
                         "keras.applications MobileNetV3-Small backbone (weights: imagenet, a file or none), "
                         "new dense head"),
    "mobilenetv3large": ("imgclf.models.applications",
                         "keras.applications MobileNetV3-Large backbone (weights: imagenet, a file or none), "
                         "new dense head"),
}
_REGISTERED: dict[str, tuple[Callable, str]] = {}  # models added at run time with register_model


def register_model(fn: Callable) -> Callable:
    """Decorator: add a builder `fn(num_classes, input_shape, **options) -> keras.Model` under its name."""
    doc = (fn.__doc__ or "").strip().splitlines()
    _REGISTERED[fn.__name__] = (fn, doc[0] if doc else "")
    return fn


def list_models() -> list[str]:
    return sorted({*FAMILIES, *_REGISTERED})


def describe_models() -> dict[str, str]:
    """{name: one-line description}, sorted by name; imports no model family."""
    described = {name: text for name, (_, text) in FAMILIES.items()}
    described.update({name: text for name, (_, text) in _REGISTERED.items()})
    return {name: described[name] for name in sorted(described)}


def model_builder(name: str) -> Callable:
    """The builder function of a registered model (imports its family module: Keras)."""
    if name in _REGISTERED:
        return _REGISTERED[name][0]
    if name not in FAMILIES:
        raise ConfigError(f"model: unknown model {name!r} (expected one of {', '.join(list_models())})")
    return getattr(importlib.import_module(FAMILIES[name][0]), name)


def check_options(name: str, input_shape, options: dict) -> None:
    """TypeError unless the model's builder accepts these option names (nothing is built)."""
    inspect.signature(model_builder(name)).bind(num_classes=2, input_shape=tuple(input_shape), **options)


def cpu_has_bf16() -> bool:
    """True where the CPU has native bfloat16 arithmetic (x86 avx512_bf16 or AMX; Linux only)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str) -> str:
    """"auto" -> mixed_bfloat16 when training runs on a bf16-capable CPU under TensorFlow (there
    its oneDNN kernels run bf16 convolutions faster than float32), else float32.
    GPUs get float32 under "auto": mixed precision on them is not measured yet."""
    if precision != "auto":
        return precision
    import keras

    if keras.backend.backend() != "tensorflow" or not cpu_has_bf16():
        return "float32"
    import tensorflow as tf

    return "float32" if tf.config.list_physical_devices("GPU") else "mixed_bfloat16"


def create_model(name: str, num_classes: int = 10, input_shape=(32, 32, 3), precision: str = "float32",
                 **options):
    """Build a registered model (a keras.Model). `precision` is a Keras dtype policy ("float32",
    "mixed_bfloat16", "mixed_float16") or "auto" (resolve_precision), for this model's layers
    only: the global policy is restored afterwards."""
    builder = model_builder(name)
    import keras

    previous = keras.config.dtype_policy()
    try:
        keras.config.set_dtype_policy(resolve_precision(precision))
        return builder(num_classes=num_classes, input_shape=tuple(input_shape), **options)
    except TypeError as e:
        raise ConfigError(f"model_options: {e}") from None
    except ValueError as e:  # e.g. an input too small for the model's pooling
        first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
        detail = next((line.strip() for line in str(e).splitlines() if "Received" in line or "size" in line), first)
        raise ConfigError(f"input_size: model {name} cannot be built for {input_shape[0]}x{input_shape[1]} "
                          f"images ({detail[:200]}); expected a larger input_size") from None
    finally:
        keras.config.set_dtype_policy(previous)

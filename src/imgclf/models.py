"""Model registry: `create_model(name, num_classes, input_shape, **options)`, timm-style.

Every model takes RGB pixel values 0..255 (uint8 or float32, NHWC) and starts with a
Rescaling(1/255) layer, so a saved model.keras needs no outside preprocessing. Models are
built with the Functional API from keras layers only, so every Keras backend can run them.
"""

from __future__ import annotations

from typing import Callable

import keras
from keras import layers

from .errors import ConfigError

MODELS: dict[str, Callable[..., keras.Model]] = {}


def register_model(fn: Callable[..., keras.Model]) -> Callable[..., keras.Model]:
    MODELS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    return sorted(MODELS)


def create_model(name: str, num_classes: int = 10, input_shape=(32, 32, 3), **options) -> keras.Model:
    if name not in MODELS:
        raise ConfigError(f"model: unknown model {name!r} (expected one of {', '.join(list_models())})")
    try:
        return MODELS[name](num_classes=num_classes, input_shape=tuple(input_shape), **options)
    except TypeError as e:
        raise ConfigError(f"model_options: {e}") from None


def pixels_input(input_shape) -> tuple[keras.KerasTensor, keras.KerasTensor]:
    """The shared model stem: raw 0..255 pixels in, [0, 1] floats out (the seed's scaling)."""
    inputs = keras.Input(shape=input_shape, name="pixels")
    return inputs, layers.Rescaling(1.0 / 255, name="scale_0_1")(inputs)


@register_model
def seed_cnn(num_classes=10, input_shape=(32, 32, 3), widths=(32, 32, 64, 64), dropout=0.25,
             dense_dropout=0.5) -> keras.Model:
    """The seed's CNN, reconstructed: 4 x [conv3x3 'same' -> batch norm -> ReLU], 2x2 max pooling
    and dropout after the 2nd and 4th conv, then flatten, dropout, dense softmax."""
    inputs, x = pixels_input(input_shape)
    for i, width in enumerate(widths):
        x = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"conv{i + 1}")(x)
        x = layers.BatchNormalization(name=f"bn{i + 1}")(x)
        x = layers.ReLU(name=f"relu{i + 1}")(x)
        if i % 2 == 1:
            x = layers.MaxPooling2D(2, name=f"pool{i // 2 + 1}")(x)
            x = layers.Dropout(dropout, name=f"drop{i // 2 + 1}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dropout(dense_dropout, name="drop_dense")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="probs")(x)
    return keras.Model(inputs, outputs, name="seed_cnn")

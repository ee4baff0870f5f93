"""Backbones from keras.applications with an imgclf head: MobileNetV3 (small and large).

The backbone is built on imgclf's `pixels` input (raw RGB 0..255) with `include_preprocessing=True`:
MobileNetV3's own first layer is a Rescaling(1/127.5, offset -1), so the model takes the same
0..255 pixels as every imgclf model, loads in safe mode (no Lambda layer) and exports to ONNX.
Then global average pooling (the backbone's `pooling="avg"`), optional dropout, and a new head:
Dense(num_classes) `logits` -> softmax `probs` (float32 under mixed precision).

Weights (`model_options: {weights: ...}`):
  "imagenet"  Keras downloads the ImageNet weights on first use (into ~/.keras/models); offline,
              building the model fails with one error line
  PATH        a local weights file for the same backbone without its top, e.g. one written by
              `keras.applications.MobileNetV3Small(include_top=False, weights=None, ...).save_weights(PATH)`
              (.weights.h5), or Keras' own `*_no_top*.h5` download
  null        random initialisation
The backbone's convolutions do not depend on the image size, so any weights load at any input
size from 32 px up (Keras' ImageNet weights were trained at 224 px).
"""

from __future__ import annotations

from pathlib import Path

import keras
from keras import layers

from ..errors import ConfigError, quote


def _weights_path(weights, name: str) -> str | None:
    """None, "imagenet" or an existing file path; ConfigError naming the option otherwise."""
    if weights is None or weights == "imagenet":
        return weights
    if not isinstance(weights, str) or not weights.strip():
        raise ConfigError(f"model_options: weights of {name} expects imagenet, a weights file or nothing, "
                          f"got {quote(weights)}")
    if not Path(weights).is_file():
        raise ConfigError(f"model_options: weights: {weights}: file not found (expected a weights file "
                          f"of {name} without its top, .weights.h5 or .h5)")
    return weights


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:200]


def application(builder: str, name: str, num_classes: int, input_shape, weights, dropout: float,
                **options) -> keras.Model:
    """`keras.applications.<builder>` (no top, average pooling, its own preprocessing layers) on
    imgclf's pixels input, with a dropout + dense softmax head for `num_classes` classes."""
    path = _weights_path(weights, name)
    inputs = keras.Input(shape=input_shape, name="pixels")
    try:
        backbone = getattr(keras.applications, builder)(
            input_tensor=inputs, include_top=False, pooling="avg", include_preprocessing=True,
            weights="imagenet" if path == "imagenet" else None, **options)
    except ValueError as e:  # an input below 32 px, an alpha without ImageNet weights, ...
        raise ConfigError(f"model_options: {name}: {_first_line(e)}") from None
    except Exception as e:  # the ImageNet download: no network, a proxy, a partial file
        raise ConfigError(f"model_options: weights: imagenet: Keras could not fetch the ImageNet weights of "
                          f"{name} ({_first_line(e)}); give a local weights file or weights: null") from None
    if path not in (None, "imagenet"):
        try:
            backbone.load_weights(path)
        except Exception as e:  # h5py and Keras raise many types; the user needs one line
            raise ConfigError(f"model_options: weights: {path}: cannot load it into {name} without its top "
                              f"({_first_line(e)})") from None
    x = backbone.output
    if dropout:
        x = layers.Dropout(dropout, name="head_dropout")(x)
    x = layers.Dense(num_classes, name="logits")(x)
    outputs = layers.Activation("softmax", dtype="float32", name="probs")(x)  # float32 under mixed precision
    return keras.Model(inputs, outputs, name=name)


def mobilenetv3small(num_classes=10, input_shape=(224, 224, 3), weights="imagenet", alpha=1.0,
                     minimalistic=False, dropout=0.0) -> keras.Model:
    """MobileNetV3-Small from keras.applications (ImageNet weights, a local file or none), new dense head."""
    return application("MobileNetV3Small", "mobilenetv3small", num_classes, input_shape, weights, dropout,
                       alpha=alpha, minimalistic=minimalistic)


def mobilenetv3large(num_classes=10, input_shape=(224, 224, 3), weights="imagenet", alpha=1.0,
                     minimalistic=False, dropout=0.0) -> keras.Model:
    """MobileNetV3-Large from keras.applications (ImageNet weights, a local file or none), new dense head."""
    return application("MobileNetV3Large", "mobilenetv3large", num_classes, input_shape, weights, dropout,
                       alpha=alpha, minimalistic=minimalistic)

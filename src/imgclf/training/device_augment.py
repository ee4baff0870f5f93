"""Flip, translate and cutout on the accelerator: the fast recipes' augmentation as keras.ops inside
the compiled training step (`augment_device: true`).

The random draws stay on the host, where `Batches` makes them from (seed, epoch, batch index) with
`augment_draws`, exactly as the numpy path does; only the pixel work moves. So a batch is the same
either way, pixel for pixel, and exact resume holds. What crosses to the device per batch is the
uint8 images (a quarter of the float32 bytes) and five int32 numbers per image.

    DeviceAugment    a layer: (uint8 images, (n, 5) draws) -> float32 augmented images
    training_model   the model fit() trains: pixels and draws in, the model's outputs out, sharing
                     the model's variables (the saved model is the plain one)
"""

from __future__ import annotations

import keras
from keras import ops

DRAWS = 5  # mirror, dy, dx, cy, cx (augment.augment_draws)


class DeviceAugment(keras.layers.Layer):
    """`apply_draws` in keras.ops: flip where mirror is 1, a reflect-padded shift that starts the
    crop at (dy, dx) of the padded image, and a `cutout`-sided square of zeros centred at (cy, cx).
    The output is float32 pixels 0..255 (integers), what the model's input takes."""

    def __init__(self, translate: int = 0, cutout: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.translate, self.cutout = int(translate), int(cutout)

    def call(self, inputs):
        x, draws = inputs
        x = ops.cast(x, "float32")  # exact for uint8; reflect padding and gathers on floats on every backend
        draws = ops.cast(draws, "int32")
        h, w = x.shape[1], x.shape[2]
        mirror = ops.reshape(draws[:, 0] > 0, (-1, 1, 1, 1))
        x = ops.where(mirror, ops.flip(x, axis=2), x)
        if self.translate:  # one of 2t+1 windows per image along each axis: slices and selects, no gather
            t = self.translate
            padded = ops.pad(x, [[0, 0], [t, t], [t, t], [0, 0]], mode="reflect")
            x = padded[:, :h]
            for shift in range(1, 2 * t + 1):
                x = ops.where(ops.reshape(draws[:, 1] == shift, (-1, 1, 1, 1)), padded[:, shift:shift + h], x)
            rows = x
            x = rows[:, :, :w]
            for shift in range(1, 2 * t + 1):
                x = ops.where(ops.reshape(draws[:, 2] == shift, (-1, 1, 1, 1)), rows[:, :, shift:shift + w], x)
        if self.cutout:
            k = self.cutout
            y0 = ops.reshape(draws[:, 3] - k // 2, (-1, 1, 1))
            x0 = ops.reshape(draws[:, 4] - k // 2, (-1, 1, 1))
            yy = ops.reshape(ops.arange(h, dtype="int32"), (1, h, 1))
            xx = ops.reshape(ops.arange(w, dtype="int32"), (1, 1, w))
            mask = (yy >= y0) & (yy < y0 + k) & (xx >= x0) & (xx < x0 + k)
            x = ops.where(ops.expand_dims(mask, -1), ops.zeros_like(x), x)
        return x

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])

    def get_config(self):
        return {**super().get_config(), "translate": self.translate, "cutout": self.cutout}


def training_model(model: keras.Model, translate: int, cutout: int, compile_args: dict) -> keras.Model:
    """The model that fit() trains under `augment_device`: uint8 images and their draws in,
    DeviceAugment, then `model` itself (its variables, not copies), compiled with `compile_args`.
    Training it trains `model`; the trainer saves `model`, which has no augmentation in it."""
    h, w, c = model.input_shape[1:]
    pixels = keras.Input((h, w, c), dtype="uint8", name="pixels")
    draws = keras.Input((DRAWS,), dtype="int32", name="draws")
    outputs = model(DeviceAugment(translate, cutout, name="device_augment")([pixels, draws]))
    wrapper = keras.Model([pixels, draws], outputs, name=f"{model.name}_device_augment")
    wrapper.compile(**compile_args)
    return wrapper


__all__ = ["DeviceAugment", "training_model", "DRAWS"]

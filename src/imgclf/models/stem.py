"""The stem every imgclf model starts with: raw 0..255 pixels in, [0, 1] floats out.

So a saved model.keras needs no outside preprocessing (the seed's scaling lives in the model).
"""

from __future__ import annotations

import keras
from keras import layers


def pixels_input(input_shape) -> tuple[keras.KerasTensor, keras.KerasTensor]:
    """(the model's input, its pixels scaled to [0, 1] by a Rescaling(1/255) layer)."""
    inputs = keras.Input(shape=input_shape, name="pixels")
    return inputs, layers.Rescaling(1.0 / 255, name="scale_0_1")(inputs)

"""seed_cnn: the seed's CNN, reconstructed (the seed gives its structure but no numbers)."""

from __future__ import annotations

import keras
from keras import layers

from .stem import pixels_input


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
    # dtype float32: under a mixed-precision policy the probabilities (and so the loss) stay float32
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", name="probs")(x)
    return keras.Model(inputs, outputs, name="seed_cnn")

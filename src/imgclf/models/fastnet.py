"""fastnet: the fast-training architecture, after airbench / hlb-CIFAR10 / "How to train your ResNet".

A fixed patch-whitening first layer (its filters set from training patches by
imgclf.models.whitening.init_from_data), then three groups of
[conv3x3 -> max-pool 2 -> BN -> act -> conv3x3 -> BN -> act], a global max-pool and a linear
classifier. Keras layers only (no custom layers), so it runs on every backend and loads in safe mode.
"""

from __future__ import annotations

import keras
from keras import layers

from .stem import pixels_input


def fastnet(num_classes=10, input_shape=(32, 32, 3), widths=(64, 256, 256), whiten_width=24,
            whiten_kernel=2, whiten_stride=1, activation="gelu", bn_momentum=0.6, logit_scale=1.0,
            second_conv=True, head_init="glorot_uniform", l2=0.0, identity_init=False,
            width=None) -> keras.Model:
    """Fast CIFAR-scale CNN. `widths` sets the three conv groups (airbench94: 64, 256, 256; the
    CPU recipes use narrower ones); `width=W`, where given, sets them to (W, 2W, 4W), one number that a
    tune space can search. `second_conv=False` keeps one conv per group. BN layers
    learn a shift only (no scale), with a fast running-statistics momentum (few steps).
    `whiten_stride=2` makes the whitening a lossless 2x2 space-to-depth step (32x32x3 ->
    16x16x12 whitened, x2 signs): every later layer runs at a quarter of the pixels, which on a
    CPU buys a wider net for the same time.
    `l2` adds an L2 penalty (coupled weight decay: it goes through SGD's momentum, as in airbench)
    to every trainable conv/dense kernel and BN shift. `identity_init` starts each 3x3 conv's first
    c_in filters as the identity (airbench's dirac init: an implicit residual at the start)."""
    if width is not None:
        if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= 1024:
            raise TypeError(f"fastnet's width must be an integer from 1 to 1024, got {width!r}")
        widths = (width, 2 * width, 4 * width)
    if len(widths) != 3:
        raise TypeError(f"fastnet expects 3 widths, got {list(widths)}")
    inputs, x = pixels_input(input_shape)
    # Under mixed_bfloat16 (the CPU path) the activations run in float32 between bf16 convs:
    # TensorFlow's CPU GELU is slower in bf16 than in float32 (its erf has no fast bf16 kernel),
    # so this makes the training step faster (measurements: bench/README.md).
    act_dtype = "float32" if keras.config.dtype_policy().name == "mixed_bfloat16" else None
    # The whitening layer: 2x2 'valid' conv whose filters are the (+ and -) eigenvectors of the
    # training-patch covariance, scaled to unit variance; frozen (set by init_from_data).
    x = layers.Conv2D(whiten_width, whiten_kernel, strides=whiten_stride, padding="valid", use_bias=True,
                      name="whiten", trainable=False)(x)
    x = layers.Activation(activation, dtype=act_dtype, name="whiten_act")(x)

    reg = keras.regularizers.L2(l2) if l2 else None

    def bn(name):
        return layers.BatchNormalization(momentum=bn_momentum, epsilon=1e-5, scale=False, beta_regularizer=reg,
                                         name=name)

    def conv(width, name):
        return layers.Conv2D(width, 3, padding="same", use_bias=False, kernel_regularizer=reg, name=name)

    for g, width in enumerate(widths, start=1):
        x = conv(width, f"g{g}_conv1")(x)
        x = layers.MaxPooling2D(2, name=f"g{g}_pool")(x)
        x = bn(f"g{g}_bn1")(x)
        x = layers.Activation(activation, dtype=act_dtype, name=f"g{g}_act1")(x)
        if second_conv:
            x = conv(width, f"g{g}_conv2")(x)
            x = bn(f"g{g}_bn2")(x)
            x = layers.Activation(activation, dtype=act_dtype, name=f"g{g}_act2")(x)
    x = layers.GlobalMaxPooling2D(name="global_pool")(x)
    # head_init="zeros" starts at loss log(num_classes) (Glorot on max-pooled features starts
    # higher); the recipes were measured with the Keras default
    x = layers.Dense(num_classes, use_bias=False, kernel_initializer=head_init, kernel_regularizer=reg,
                     name="logits")(x)
    if logit_scale != 1.0:
        x = layers.Rescaling(logit_scale, dtype="float32", name="logit_scale")(x)
    outputs = layers.Activation("softmax", dtype="float32", name="probs")(x)  # float32 under mixed precision
    model = keras.Model(inputs, outputs, name="fastnet")
    if identity_init:
        set_identity_init(model)
    return model


def set_identity_init(model: keras.Model) -> None:
    """Overwrite, in every 3x3 'same' conv with c_in <= c_out, filters 0..c_in-1 with the identity
    (1 at the centre tap of its own input channel, 0 elsewhere); the other filters keep their
    random init. Each such conv then starts by passing its input through (airbench's dirac init)."""
    import numpy as np

    for layer in model.layers:
        if isinstance(layer, layers.Conv2D) and layer.kernel_size == (3, 3) and layer.trainable:
            kernel = np.array(keras.ops.convert_to_numpy(layer.kernel))
            c_in, c_out = kernel.shape[2], kernel.shape[3]
            if c_in > c_out:
                continue
            kernel[:, :, :, :c_in] = 0.0
            kernel[1, 1, np.arange(c_in), np.arange(c_in)] = 1.0
            layer.kernel.assign(kernel)

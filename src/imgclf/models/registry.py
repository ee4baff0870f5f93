"""Model registry: `create_model(name, num_classes, input_shape, **options)`, timm-style.

Every model takes RGB pixel values 0..255 (uint8 or float32, NHWC) and starts with a
Rescaling(1/255) layer, so a saved model.keras needs no outside preprocessing. Models are
built with the Functional API from keras layers only, so every Keras backend can run them.
"""

from __future__ import annotations

from typing import Callable

import keras
from keras import layers

from ..errors import ConfigError

MODELS: dict[str, Callable[..., keras.Model]] = {}


def register_model(fn: Callable[..., keras.Model]) -> Callable[..., keras.Model]:
    MODELS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    return sorted(MODELS)


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
    its oneDNN kernels run bf16 convolutions about twice as fast as float32), else float32.
    GPUs get float32 under "auto": mixed precision on them is not measured yet."""
    if precision != "auto":
        return precision
    if keras.backend.backend() != "tensorflow" or not cpu_has_bf16():
        return "float32"
    import tensorflow as tf

    return "float32" if tf.config.list_physical_devices("GPU") else "mixed_bfloat16"


def create_model(name: str, num_classes: int = 10, input_shape=(32, 32, 3), precision: str = "float32",
                 **options) -> keras.Model:
    """Build a registered model. `precision` is a Keras dtype policy ("float32", "mixed_bfloat16",
    "mixed_float16") or "auto" (resolve_precision), for this model's layers only: the global
    policy is restored afterwards."""
    if name not in MODELS:
        raise ConfigError(f"model: unknown model {name!r} (expected one of {', '.join(list_models())})")
    previous = keras.config.dtype_policy()
    try:
        keras.config.set_dtype_policy(resolve_precision(precision))
        return MODELS[name](num_classes=num_classes, input_shape=tuple(input_shape), **options)
    except TypeError as e:
        raise ConfigError(f"model_options: {e}") from None
    finally:
        keras.config.set_dtype_policy(previous)


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
    # dtype float32: under a mixed-precision policy the probabilities (and so the loss) stay float32
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", name="probs")(x)
    return keras.Model(inputs, outputs, name="seed_cnn")


# ---------------------------------------------------------------------------------------
# fastnet: the fast-training architecture (issue 4), after airbench / hlb-CIFAR10 / "How to
# train your ResNet": a fixed 2x2 patch-whitening first layer, then three groups of
# [conv3x3 -> max-pool 2 -> BN -> act -> conv3x3 -> BN -> act], a global max-pool and a linear
# classifier. Keras layers only (no custom layers), so it runs on every backend and loads in
# safe mode. The whitening filters are set from training patches by `init_from_data`.
# ---------------------------------------------------------------------------------------

@register_model
def fastnet(num_classes=10, input_shape=(32, 32, 3), widths=(64, 256, 256), whiten_width=24,
            whiten_kernel=2, whiten_stride=1, activation="gelu", bn_momentum=0.6, logit_scale=1.0,
            second_conv=True, head_init="glorot_uniform", l2=0.0, identity_init=False) -> keras.Model:
    """Fast CIFAR-scale CNN. `widths` sets the three conv groups (airbench94: 64, 256, 256; the
    CPU recipes use narrower ones); `second_conv=False` keeps one conv per group. BN layers
    learn a shift only (no scale), with a fast running-statistics momentum (few steps).
    `whiten_stride=2` makes the whitening a lossless 2x2 space-to-depth step (32x32x3 ->
    16x16x12 whitened, x2 signs): every later layer runs at a quarter of the pixels, which on a
    CPU buys a wider net for the same time (the CPU recipes use it).
    `l2` adds an L2 penalty (coupled weight decay: it goes through SGD's momentum, as in airbench)
    to every trainable conv/dense kernel and BN shift. `identity_init` starts each 3x3 conv's first
    c_in filters as the identity (airbench's dirac init: an implicit residual at the start)."""
    if len(widths) != 3:
        raise TypeError(f"fastnet expects 3 widths, got {list(widths)}")
    inputs, x = pixels_input(input_shape)
    # Under mixed_bfloat16 (the CPU path) the activations run in float32 between bf16 convs:
    # TensorFlow's CPU GELU is 2.3x slower in bf16 than in float32 (its erf has no fast bf16
    # kernel); this made the budget net's training step 8% faster (701 -> 756 img/s, float32: 529).
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


def whitening_filters(x_uint8, kernel: int = 2, width: int = 24, eps: float = 5e-4, max_images: int = 5000):
    """(kernel, bias) for a `kernel`x`kernel` patch-whitening conv, from uint8 NHWC images.

    Pixels are scaled to [0, 1] (as the model's first layer does). Filters are the eigenvectors
    of the centred patch covariance divided by sqrt(eigenvalue + eps), largest first, each with
    its negative (so a ReLU/GELU after it keeps both signs); the bias centres the outputs.
    Pure numpy, so it is the same on every backend.
    """
    import numpy as np

    x = np.asarray(x_uint8[:max_images], dtype=np.float32) / 255.0
    n, h, w, c = x.shape
    k = kernel
    # all kxk patches, flattened in Conv2D kernel order (kh, kw, c_in)
    patches = np.stack([x[:, i:h - k + 1 + i, j:w - k + 1 + j, :] for i in range(k) for j in range(k)], axis=3)
    patches = patches.reshape(-1, k * k * c).astype(np.float64)
    mean = patches.mean(axis=0)
    cov = np.cov(patches - mean, rowvar=False)
    evals, evecs = np.linalg.eigh(cov)  # ascending
    order = np.argsort(evals)[::-1]
    evals, evecs = evals[order], evecs[:, order]
    half = width // 2
    if half > evecs.shape[1] or width % 2:
        raise ValueError(f"whiten width must be even and at most {2 * evecs.shape[1]}, got {width}")
    filters = evecs[:, :half] / np.sqrt(evals[:half] + eps)  # (k*k*c, half)
    filters = np.concatenate([filters, -filters], axis=1)
    kernel_w = filters.reshape(k, k, c, width).astype(np.float32)
    bias = (-(mean @ filters)).astype(np.float32)
    return kernel_w, bias


def init_from_data(model: keras.Model, x_uint8) -> bool:
    """Data-dependent initialisation: fills a model's `whiten` layer from training images.
    Returns whether the model had one."""
    try:
        layer = model.get_layer("whiten")
    except ValueError:
        return False
    kernel_shape = tuple(layer.kernel.shape)
    kernel_w, bias = whitening_filters(x_uint8, kernel=kernel_shape[0], width=kernel_shape[-1])
    layer.set_weights([kernel_w, bias])
    return True

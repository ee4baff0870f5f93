"""Data-dependent initialisation: a model's `whiten` layer (fastnet's first conv) from training patches.

Pure numpy and layer methods: no Keras import, so the registry can offer it without loading Keras.
"""

from __future__ import annotations


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


def init_from_data(model, x_uint8) -> bool:
    """Fills a model's `whiten` layer from training images. Returns whether the model had one."""
    try:
        layer = model.get_layer("whiten")
    except ValueError:
        return False
    kernel_shape = tuple(layer.kernel.shape)
    kernel_w, bias = whitening_filters(x_uint8, kernel=kernel_shape[0], width=kernel_shape[-1])
    layer.set_weights([kernel_w, bias])
    return True

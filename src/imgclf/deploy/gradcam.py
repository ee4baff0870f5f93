"""Where did the model look? Grad-CAM for Keras models, occlusion maps for any model.

Grad-CAM (Selvaraju et al. 2017) weights each channel c of a late feature map A (H x W x C) by
the spatial mean of d score / d A[..., c] and keeps the positive part of the weighted sum.

keras.ops has no gradient function, but `keras.ops.jvp` (forward-mode differentiation) exists
on the TensorFlow, JAX and PyTorch backends, and the Grad-CAM weights are directional
derivatives: with the tangent V_c = one-hot(channel c) / (H * W) at every position,

    jvp(head, A, V_c) = sum_ij d out / d A[i, j, c] / (H * W) = alpha_c   (for every class at once).

So one jvp call over a batch of C copies of A (tangents V_1..V_C) gives every channel weight for
every class, exactly, on any backend. `head` is the part of the model after the feature layer.
The score is the class probability (the model ends in softmax); d log p = dp / p, so using the
log-probability would only rescale the map, which the normalisation to [0, 1] removes.

Occlusion (Zeiler & Fergus 2014) needs only forward passes, so it also works for `.onnx` models:
slide a grey square over the image and record how much the class probability drops.
"""

from __future__ import annotations

import numpy as np

from ..data.images import BACKGROUND


def _rank4_layers(model):
    out = []
    for layer in model.layers[1:]:
        try:
            shape = layer.output.shape
        except (AttributeError, ValueError):
            continue
        if len(shape) == 4 and (shape[1] or 0) >= 2:
            out.append(layer)
    return out


class GradCam:
    """Grad-CAM for a functional Keras model; `layer` is a layer name (default: the last layer with a
    spatial (rank-4) output from which the rest of the model can be rebuilt)."""

    method = "grad-cam"

    def __init__(self, model, layer: str | None = None):
        import keras

        self.keras, self.model = keras, model
        # pooling, dropout and padding only coarsen, copy or pad the map before them: use that map
        SKIP = (keras.layers.Dropout, keras.layers.MaxPooling2D, keras.layers.AveragePooling2D,
                keras.layers.ZeroPadding2D)
        candidates = [model.get_layer(layer)] if layer else \
            [lyr for lyr in _rank4_layers(model) if not isinstance(lyr, SKIP)][::-1]
        self.layer = self.head = None
        for lyr in candidates:
            try:
                head = keras.Model(lyr.output, model.output)
            except Exception:  # the rest of the graph also needs tensors from before this layer
                continue
            self.layer, self.head = lyr, head
            break
        if self.layer is None:
            raise ValueError(f"{model.name}: no spatial layer from which Grad-CAM can be computed")
        self.features = keras.Model(model.inputs[0] if len(model.inputs) == 1 else model.inputs, self.layer.output)

    @property
    def layer_name(self) -> str:
        return self.layer.name

    def __call__(self, x: np.ndarray, class_index: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(heatmap in [0, 1] at the input size, probabilities) for one uint8 image (H, W, 3)."""
        ops = self.keras.ops
        a = np.asarray(self.features(x[None].astype(np.float32), training=False), dtype=np.float32)[0]
        h, w, c = a.shape
        primals = np.broadcast_to(a, (c, h, w, c)).astype(np.float32)
        tangents = np.zeros((c, h, w, c), np.float32)
        tangents[np.arange(c), :, :, np.arange(c)] = 1.0 / (h * w)
        probs, alphas = ops.jvp(lambda t: self.head(t, training=False), (ops.convert_to_tensor(primals),),
                                (ops.convert_to_tensor(tangents),))
        probs = np.asarray(ops.convert_to_numpy(probs))[0]
        alphas = np.asarray(ops.convert_to_numpy(alphas))  # (C channels, classes)
        k = int(np.argmax(probs)) if class_index is None else int(class_index)
        cam = np.maximum(np.tensordot(a, alphas[:, k], axes=([2], [0])), 0.0)
        return normalise(upsample(normalise(cam), x.shape[:2])), probs


def occlusion_map(predict, x: np.ndarray, class_index: int | None = None, patch: int | None = None,
                  stride: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(heatmap in [0, 1] at the input size, probabilities) for one uint8 image, from forward passes only:
    `predict(batch_uint8) -> probs`. All occluded copies go through the model as one batch."""
    h, w = x.shape[:2]
    patch = patch or max(2, min(h, w) // 4)
    stride = stride or max(1, patch // 2)
    ys = list(range(0, max(h - patch, 0) + 1, stride))
    xs = list(range(0, max(w - patch, 0) + 1, stride))
    batch = np.repeat(x[None], len(ys) * len(xs) + 1, axis=0)
    for n, (i, j) in enumerate((i, j) for i in ys for j in xs):
        batch[n + 1, i:i + patch, j:j + patch] = BACKGROUND
    p = np.asarray(predict(batch))
    probs = p[0]
    k = int(np.argmax(probs)) if class_index is None else int(class_index)
    drop = probs[k] - p[1:, k]
    heat, count = np.zeros((h, w)), np.zeros((h, w))
    for n, (i, j) in enumerate((i, j) for i in ys for j in xs):
        heat[i:i + patch, j:j + patch] += drop[n]
        count[i:i + patch, j:j + patch] += 1
    return normalise(np.maximum(heat / np.maximum(count, 1), 0.0)), probs


def normalise(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float32)
    top = float(m.max()) if m.size else 0.0
    return m / top if top > 0 else np.zeros_like(m)


def upsample(m: np.ndarray, size) -> np.ndarray:
    """Bilinear resize of a 2-D map in [0, 1] to (height, width)."""
    from PIL import Image

    if m.shape == tuple(size):
        return m
    img = Image.fromarray(m.astype(np.float32)).resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)


def colormap(m: np.ndarray) -> np.ndarray:
    """A jet-like colour map: [0, 1] -> uint8 RGB (blue = low, red = high)."""
    t = np.clip(np.asarray(m, dtype=np.float32), 0, 1)[..., None]
    r = np.clip(1.5 - np.abs(4 * t - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * t - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * t - 1), 0, 1)
    return (255 * np.concatenate([r, g, b], -1)).astype(np.uint8)


def overlay(image: np.ndarray, heat: np.ndarray, scale: int = 4, alpha: float = 0.45) -> np.ndarray:
    """The image with the coloured heatmap blended over it, enlarged `scale` times (nearest pixels)."""
    from PIL import Image

    h, w = image.shape[:2]
    heat = upsample(heat, (h, w))
    blend = (1 - alpha) * image.astype(np.float32) + alpha * colormap(heat).astype(np.float32)
    out = Image.fromarray(np.clip(blend, 0, 255).astype(np.uint8))
    if scale > 1:
        out = out.resize((w * scale, h * scale), Image.Resampling.NEAREST)
    return np.asarray(out)

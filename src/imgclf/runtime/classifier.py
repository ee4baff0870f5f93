"""Classifiers: a model plus its metadata, run on uint8 RGB batches at the model's input size.

`Classifier` is the runtime-independent part: batching, test-time augmentation (`tta_views`) and
the model's fitted temperature (`apply_temperature`: softmax(log p / T); T = 1 leaves the
probabilities unchanged). Its subclasses run the model: `KerasClassifier` (keras_classifier.py)
and `OnnxClassifier` (onnx_runtime.py); `load_classifier` (load.py) picks one from the file.
Also here: `top_k` and `expand_paths`, which predict and serve share.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ImgclfError
from ..data.images import check_regular_file, is_image_file, to_rgb
from .modelmeta import OLD_DECODE

def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    if temperature == 1.0:
        return probs
    logits = np.log(np.clip(probs, 1e-12, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)

def tta_views(x: np.ndarray, translate: int = 0) -> list[tuple[float, np.ndarray]]:
    """Test-time augmentation of a uint8 NHWC batch: (weight, view) pairs whose weighted mean of
    probabilities is the prediction. The image and its mirror, each 1/2; with `translate` t > 0
    (airbench's TTA), the two unshifted views get 1/4 each and the image shifted t pixels
    up-left and down-right (reflect padding), and their mirrors, 1/8 each."""
    mirror = x[:, :, ::-1]
    if not translate:
        return [(0.5, x), (0.5, mirror)]
    t, (h, w) = translate, x.shape[1:3]
    padded = np.pad(x, ((0, 0), (t, t), (t, t), (0, 0)), mode="reflect")
    shifted = [padded[:, :h, :w], padded[:, 2 * t:2 * t + h, 2 * t:2 * t + w]]
    return [(0.25, x), (0.25, mirror)] + [(0.125, v) for s in shifted for v in (s, s[:, :, ::-1])]

class Classifier:
    """A model plus its metadata. Subclasses implement `_raw_probs(x_uint8)`.

    `meta` must have passed modelmeta.validate_meta (modelfile.read_meta and
    onnx_runtime.read_onnx_meta do that), and the model modelmeta.check_shapes."""

    runtime = "?"

    def __init__(self, path: Path, meta: dict):
        self.path, self.meta = Path(path), meta
        self.class_names: list[str] = list(meta["class_names"])
        self.input_size = int(meta["input_size"])
        self.resize: str = meta["resize"]
        self.decode: str = meta.get("decode", OLD_DECODE)  # images.to_rgb's decode rule
        self.temperature = float(meta.get("temperature", 1.0))
        self.tta_translate = int(meta.get("tta_translate", 0))  # the TTA the model was evaluated with

    def _raw_probs(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def predict_proba(self, x: np.ndarray, batch_size: int = 256, tta: bool = False,
                      calibrated: bool = True) -> np.ndarray:
        """Probabilities for a uint8 NHWC batch. `tta` averages over `tta_views`: each image and
        its mirror, plus shifted views if the model's recipe used them (meta `tta_translate`)."""
        out = []
        for i in range(0, len(x), batch_size):
            batch = np.asarray(x[i:i + batch_size])
            if tta:
                p = sum(weight * self._raw_probs(np.ascontiguousarray(view))
                        for weight, view in tta_views(batch, self.tta_translate))
            else:
                p = self._raw_probs(batch)
            if p.ndim != 2 or p.shape[1] != len(self.class_names):  # a model whose output shape was not fixed
                raise ImgclfError(f"{self.path}: class_names: {len(self.class_names)} names for the model's "
                                  f"output of shape {p.shape}")
            out.append(p)
        probs = np.concatenate(out) if out else np.zeros((0, len(self.class_names)), np.float32)
        return apply_temperature(probs, self.temperature) if calibrated else probs

    def load_images(self, sources) -> np.ndarray:
        size = self.input_size
        if not len(sources):
            return np.zeros((0, size, size, 3), np.uint8)
        return np.stack([to_rgb(s, (size, size), self.resize, self.decode) for s in sources])

def top_k(probs: np.ndarray, class_names: list[str], k: int = 5) -> list[list[tuple[str, float]]]:
    k = min(k, probs.shape[1])
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [[(class_names[j], float(p[j])) for j in row] for p, row in zip(probs, order)]

def expand_paths(paths) -> list[Path]:
    """Files as given, and image files found recursively in folders, in sorted order."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            # a non-regular entry with an image name (FIFO, socket, broken link) is refused, not skipped
            out.extend(sorted(q for q in p.rglob("*") if is_image_file(q) and not q.is_dir()
                              and check_regular_file(q)))
        elif p.exists() or p.is_symlink():
            check_regular_file(p)
            out.append(p)
        else:
            raise ImgclfError(f"{p}: no such file or folder")
    return out

"""`load_classifier(path)`: the classifier for a model file, picked by its suffix.

`.keras` runs on Keras, `.onnx` on ONNX Runtime; each runtime is imported only for its own files,
so the `.onnx` path never imports TensorFlow or Keras.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ImgclfError
from .classifier import Classifier


def load_classifier(path: str | Path) -> Classifier:
    path = Path(path)
    if not path.is_file():
        raise ImgclfError(f"{path}: model file not found")
    if path.suffix == ".keras":
        from .keras_classifier import KerasClassifier

        return KerasClassifier(path)
    if path.suffix == ".onnx":
        from .onnx_runtime import OnnxClassifier

        return OnnxClassifier(path)
    raise ImgclfError(f"{path}: unknown model format (expected .keras or .onnx)")

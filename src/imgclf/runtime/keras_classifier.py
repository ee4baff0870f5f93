"""A `.keras` model run on Keras. Keras is imported when a KerasClassifier is made, not before."""

from __future__ import annotations

import numpy as np

from .classifier import Classifier
from .modelfile import load_model


class KerasClassifier(Classifier):
    runtime = "keras"

    def __init__(self, path):
        self.model, meta = load_model(path)
        super().__init__(path, meta)

    def _raw_probs(self, x):
        return np.asarray(self.model.predict_on_batch(x.astype(np.float32)), dtype=np.float32)

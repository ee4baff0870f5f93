"""Running a saved model: the model file, its metadata, classifiers (Keras, ONNX) and predict.

    modelmeta.py         what a model's metadata may say (validate_meta, check_shapes)
    modelfile.py         the .keras file with imgclf.json inside (read_meta, save_model, load_model)
    classifier.py        Classifier: batching, test-time augmentation, temperature; top_k, expand_paths
    keras_classifier.py  KerasClassifier (.keras)
    onnx_runtime.py      OnnxClassifier (.onnx, on ONNX Runtime)
    load.py              load_classifier(path): the classifier for a file
    predict.py           predict on files and folders, and its table / CSV / JSON output
    zoo.py               the pretrained models shipped in pretrained/

Nothing here imports TensorFlow or Keras at module load; the .onnx path never does.
"""

from .classifier import Classifier, apply_temperature, expand_paths, top_k, tta_views
from .keras_classifier import KerasClassifier
from .load import load_classifier
from .modelfile import load_model, read_meta, save_model, write_meta
from .modelmeta import check_shapes, validate_meta
from .onnx_runtime import OnnxClassifier, read_onnx_meta
from .zoo import available, pretrained_path

# predict() stays in imgclf.runtime.predict (and imgclf.predict): re-exported here, its name would
# hide the submodule of the same name.
__all__ = ["Classifier", "KerasClassifier", "OnnxClassifier", "load_classifier", "apply_temperature",
           "tta_views", "top_k", "expand_paths", "load_model", "read_meta", "save_model", "write_meta",
           "check_shapes", "validate_meta", "read_onnx_meta", "available", "pretrained_path"]

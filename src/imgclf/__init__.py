"""imgclf: train, tune, evaluate and deploy CNN image classifiers (Keras 3).

The Python API mirrors the CLI:

    import imgclf
    run = imgclf.train(data="path/to/folder", epochs=5)        # -> RunResult(run_dir, model_path, metrics)
    imgclf.evaluate(run.model_path)                               # the seed's results table
    imgclf.predict(run.model_path, ["cat.jpg"], k=3)

Heavy modules (Keras, TensorFlow) load on first use, so `import imgclf` stays cheap and the
ONNX serving path never imports them.
"""

__version__ = "0.1.0"

_LAZY = {
    "train": ("imgclf.pipeline", "train"),
    "train_repeats": ("imgclf.repeats", "train_repeats"),
    "tune": ("imgclf.pipeline", "tune"),
    "TrainConfig": ("imgclf.config", "TrainConfig"),
    "make_config": ("imgclf.config", "make_config"),
    "evaluate": ("imgclf.pipeline", "evaluate"),
    "predict": ("imgclf.runtime.predict", "predict"),
    "create_model": ("imgclf.models.registry", "create_model"),
    "list_models": ("imgclf.models.registry", "list_models"),
    "load_model": ("imgclf.runtime.modelfile", "load_model"),
    "load_classifier": ("imgclf.runtime.load", "load_classifier"),
    "load_dataset": ("imgclf.data.dataset", "load_dataset"),
    "load_cifar10": ("imgclf.data.cifar", "load_cifar10"),
    "to_rgb": ("imgclf.data.images", "to_rgb"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'imgclf' has no attribute {name!r}")

"""Fine-tuning: start from another model's backbone, freeze it for the first epochs, train it slower.

    init_from          an imgclf .keras file, or the name of a shipped pretrained model ("cifar10"),
                       loaded in safe mode (imgclf.runtime.modelfile.load_model). Its layers up to the
                       classifier head are rebuilt one for one on this run's input, with the file's
                       weights; a new head (the file's head layers, the dense one sized for this
                       run's classes, freshly initialised) follows. The file's sha256 is recorded in
                       the run's config (init_from_sha256) and the model's metadata (init_from).
    freeze_epochs      the first freeze_epochs epochs train the head only: the backbone's layers are
                       set trainable=False, which in Keras 3 also runs its batch norm in inference
                       mode (running statistics used, not updated). Then every layer trains.
    backbone_lr_scale  the backbone's weights step at this times the learning rate (SGD and AdamW).

The classifier head of a model is its last Dense layer and the weight-free layers after it
(fastnet: logits, logit_scale, probs; seed_cnn: probs; keras.applications backbones: logits,
probs); the backbone is every layer before it. The same split serves models built from the
registry (a keras.applications backbone with ImageNet weights, say) and models from init_from.

Input size: the run's input_size (the config's, as for any run), whatever size the file was
trained at. imgclf's nets and MobileNetV3 are convolutional up to a global pooling (or a Flatten
that only the head reads), so their backbones run at other sizes; a backbone whose weights depend
on the size, or one that would pool the image down to nothing, is refused with one error line
that names the size the file was trained at.

Exact resume: the frozen state is a function of the epoch alone (set at each epoch's start), the
optimizer holds slots for every weight from the first step, and fit() retraces its step when the
set of trainable weights changes, so a run resumed on either side of the unfreezing repeats the
uninterrupted one. Freezing needs the TensorFlow backend: Keras' JAX trainer keeps the optimizer's
variable list fixed for a run.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import keras

from ..config import TrainConfig
from ..errors import ConfigError, ImgclfError
from ..models.registry import create_model, resolve_precision


def source_path(init_from: str) -> Path:
    """The .keras file that `init_from` names: a file path, else a shipped pretrained model's name."""
    from ..runtime.zoo import available, pretrained_path

    path = Path(init_from)
    if not path.is_file() and init_from in available():
        path = pretrained_path(init_from, prefer=("keras",))
    if not path.exists():
        raise ConfigError(f"init_from: {init_from}: not found (expected an imgclf .keras model file or a shipped "
                          f"pretrained model: {', '.join(available()) or 'none shipped'})")
    if not path.is_file():
        raise ConfigError(f"init_from: {init_from}: not a file (expected an imgclf .keras model file)")
    if path.suffix != ".keras":
        onnx = path.suffix == ".onnx"
        hint = " (an ONNX export cannot be trained: give the .keras file it came from)" if onnx else ""
        raise ConfigError(f"init_from: {init_from}: expected an imgclf .keras model file{hint}")
    return path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve(cfg: TrainConfig) -> TrainConfig:
    """`cfg` with init_from_sha256 filled in, after the checks that need no data (one ConfigError
    line each): the init_from file exists and is an imgclf model, its sha256 matches a recorded
    one, and freezing has the backend it needs. Unchanged when there is nothing to fine-tune."""
    if cfg.init_from is None:
        if cfg.init_from_sha256 is not None:
            raise ConfigError("config: field 'init_from_sha256' needs init_from (the file it is the sha256 of)")
    else:
        from ..runtime.modelfile import read_meta

        path = source_path(cfg.init_from)
        try:
            read_meta(path)
        except ImgclfError as e:
            raise ConfigError(f"init_from: {e}") from None
        digest = file_sha256(path)
        if cfg.init_from_sha256 is not None and digest != cfg.init_from_sha256:
            raise ConfigError(f"init_from: {path}: its sha256 is {digest[:16]}…, not the "
                              f"{cfg.init_from_sha256[:16]}… recorded in init_from_sha256 (the file has changed)")
        cfg = dataclasses.replace(cfg, init_from_sha256=digest)
    if cfg.freeze_epochs and keras.backend.backend() != "tensorflow":
        raise ConfigError(f"config: field 'freeze_epochs' needs the tensorflow backend (Keras' "
                          f"{keras.backend.backend()} trainer cannot change which weights train during a run)")
    return cfg


def meta_fields(cfg: TrainConfig) -> dict:
    """What a fine-tuned model's metadata says of its start: {"init_from": {...}, "model": the file's}."""
    if cfg.init_from is None:
        return {}
    from ..runtime.modelfile import read_meta

    source = read_meta(source_path(cfg.init_from))
    record = {"source": cfg.init_from, "sha256": cfg.init_from_sha256, "model": source.get("model"),
              "input_size": source["input_size"], "classes": len(source["class_names"])}
    return {"init_from": record, "model": source.get("model") or cfg.model}


def split_head(model: keras.Model) -> tuple:
    """(the backbone's output tensor, the head's layers in order): the head is the last Dense layer
    and the chain of weight-free layers after it that ends at the model's output."""
    layers = model.layers
    last = max((i for i, layer in enumerate(layers) if isinstance(layer, keras.layers.Dense)), default=None)
    if last is None:
        raise ConfigError(f"init_from: model {model.name!r} has no dense classifier head to replace")
    head = layers[last:]
    try:
        chained = all(layer.input is before.output for before, layer in zip(head, head[1:]))
        chained = chained and head[-1].output is model.outputs[0] and len(model.outputs) == 1
        chained = chained and not any(layer.weights for layer in head[1:])
    except (AttributeError, ValueError):  # a layer called more than once has no single input
        chained = False
    if not chained:
        raise ConfigError(f"init_from: model {model.name!r}: the layers after its last Dense layer are not a "
                          "chain of weight-free layers ending at the output (no classifier head found)")
    return head[0].input, head


def backbone_layers(model: keras.Model) -> list:
    """The layers before the classifier head that hold weights (batch norm statistics included)."""
    head = {id(layer) for layer in split_head(model)[1]}
    return [layer for layer in model.layers if id(layer) not in head and layer.weights]


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:160]


def build_model(cfg: TrainConfig, num_classes: int) -> keras.Model:
    """The model a run starts from: the registry's `cfg.model`, or with init_from the file's
    backbone (its weights, on this run's input size and precision) and a new head."""
    shape = (cfg.input_size, cfg.input_size, 3)
    if cfg.init_from is None:
        return create_model(cfg.model, num_classes, shape, precision=cfg.precision, **cfg.model_options)
    from ..runtime.modelfile import load_model

    path = source_path(cfg.init_from)
    try:
        source, meta = load_model(path)
    except ImgclfError as e:
        raise ConfigError(f"init_from: {e}") from None
    features, head = split_head(source)
    policy = resolve_precision(cfg.precision)
    copies = []

    def rebuilt(layer):
        config = layer.get_config()
        if policy != "float32":  # the file's layers are float32; the backbone runs at the run's precision
            config["dtype"] = policy
        copy = type(layer).from_config(config)
        copies.append((layer, copy))
        return copy

    previous = keras.config.dtype_policy()
    try:
        keras.config.set_dtype_policy(policy)
        inputs = keras.Input(shape=shape, name="pixels")
        try:
            body = keras.models.clone_model(keras.Model(source.inputs[0], features), input_tensors=inputs,
                                            clone_function=rebuilt)
            for layer, copy in copies:
                copy.set_weights(layer.get_weights())
        except Exception as e:  # a size-bound weight or a pooling to nothing: Keras raises several types
            raise ConfigError(f"init_from: {path.name}: its backbone cannot run at input_size {cfg.input_size} "
                              f"({_first_line(e)}); it was trained at {meta['input_size']} px "
                              f"(--input-size {meta['input_size']})") from None
        x = body.output
        for i, layer in enumerate(head):  # the file's head layers, the dense one sized for these classes
            config = {**layer.get_config(), **({"units": num_classes} if i == 0 else {})}
            x = type(layer).from_config(config)(x)
        return keras.Model(inputs, x, name=source.name)
    finally:
        keras.config.set_dtype_policy(previous)


class BackboneLRScale:
    """Mixin for a Keras optimizer: the backbone's weights step at `backbone_lr_scale` times the
    learning rate (the rate itself is scaled, so it works for Adam as for SGD); the decoupled
    weight decay (lr * wd * w) is left as it is. Training only: the saved model is compiled with
    Keras' own optimizer, so it needs no imgclf to load."""

    def __init__(self, *args, backbone_lr_scale: float = 1.0, backbone_variables=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.backbone_lr_scale = backbone_lr_scale
        self._backbone_keys = {self._var_key(v) for v in backbone_variables}

    def update_step(self, gradient, variable, learning_rate):
        if self._var_key(variable) in self._backbone_keys:
            learning_rate = learning_rate * self.backbone_lr_scale
        return super().update_step(gradient, variable, learning_rate)


def scale_backbone_lr(optimizer, model: keras.Model, scale: float):
    """`optimizer`, or with scale != 1 the same optimizer (its config) with BackboneLRScale mixed in."""
    if scale == 1.0:
        return optimizer
    base = type(optimizer)
    scaled = type(f"BackboneScaled{base.__name__}", (BackboneLRScale, base), {})
    variables = [v for layer in backbone_layers(model) for v in layer.trainable_weights]
    return scaled(backbone_lr_scale=scale, backbone_variables=variables, **optimizer.get_config())


class FreezeBackbone(keras.callbacks.Callback):
    """Epochs 0..freeze_epochs-1 train the head only; from then on every layer trains as built.
    The backbone's layers that were trainable are set trainable=False (batch norm then runs in
    inference mode) and fit's step is retraced whenever that changes; training ends unfrozen, so
    the saved model (and a later init_from of it) trains every layer."""

    def __init__(self, model: keras.Model, freeze_epochs: int):
        super().__init__()
        self.layers = [layer for layer in backbone_layers(model) if layer.trainable]
        self.freeze_epochs = freeze_epochs
        self.frozen = False

    def set_frozen(self, frozen: bool, retrace: bool = True) -> None:
        if frozen == self.frozen:
            return
        for layer in self.layers:
            layer.trainable = not frozen
        self.frozen = frozen
        model = self.model
        if hasattr(model, "_compiled_trainable_state"):  # the step is retraced below: what a recompile would do
            model._compiled_trainable_state = {layer: layer.trainable for layer in model._flatten_layers()}
        if retrace:
            model.make_train_function(force=True)

    def on_train_begin(self, logs=None):
        # slots for every weight before the first (frozen) step, so the optimizer's variables are
        # the same in every phase (and in a backup taken in either)
        if not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)

    def on_epoch_begin(self, epoch, logs=None):
        self.set_frozen(epoch < self.freeze_epochs)

    def on_train_end(self, logs=None):
        self.set_frozen(False, retrace=False)


def callbacks(cfg: TrainConfig, model: keras.Model) -> list:
    """The fine-tuning callbacks of a run (none unless freeze_epochs)."""
    return [FreezeBackbone(model, cfg.freeze_epochs)] if cfg.freeze_epochs else []


__all__ = ["resolve", "build_model", "meta_fields", "callbacks", "split_head", "backbone_layers",
           "scale_backbone_lr", "source_path", "FreezeBackbone", "BackboneLRScale"]

"""The optimizer and the compiled model a training run starts from."""

from __future__ import annotations

import keras

from ..config import TrainConfig
from .batches import one_hot_labels
from .finetune import build_model, scale_backbone_lr


class BiasScaledSGD(keras.optimizers.SGD):
    """Keras' SGD with biases (BN shifts, conv biases) trained at `bias_lr_scale` times the
    learning rate: airbench's per-group rate, which lets the shifts of its scale-free BN layers keep
    up with the weights. Their gradients are scaled, which for SGD with momentum is the same as
    scaling their learning rate, while the decoupled weight decay (lr * wd * w per step) is left as
    it is, as in airbench (lr x 64, wd / 64). Training only: the saved model is compiled with Keras'
    own SGD, so it needs no imgclf to load."""

    def __init__(self, bias_lr_scale: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.bias_lr_scale = bias_lr_scale

    def apply(self, grads, trainable_variables=None):
        # JAX's stateless path passes no variables: then grads follow the built variable list
        variables = getattr(self, "_trainable_variables", []) if trainable_variables is None else trainable_variables
        variables = list(variables)
        if self.bias_lr_scale != 1.0 and len(variables) == len(grads):
            grads = [g * self.bias_lr_scale if g is not None and v.name in ("beta", "bias") else g
                     for g, v in zip(grads, variables)]
        return super().apply(grads, trainable_variables)

    def get_config(self):
        return {**super().get_config(), "bias_lr_scale": self.bias_lr_scale}


def build_compiled_model(cfg: TrainConfig, num_classes: int) -> keras.Model:
    model = build_model(cfg, num_classes)  # the registry's cfg.model, or init_from's backbone with a new head
    model.compile(**compile_args(cfg, model))
    return model


def compile_args(cfg: TrainConfig, model: keras.Model) -> dict:
    """compile()'s arguments for training `model` under `cfg`: a new optimizer, the loss, the metrics."""
    common = dict(learning_rate=cfg.learning_rate, use_ema=cfg.ema, ema_momentum=cfg.ema_momentum,
                  weight_decay=cfg.weight_decay or None)
    if cfg.optimizer == "sgd" and cfg.bias_lr_scale != 1.0:
        optimizer = BiasScaledSGD(cfg.bias_lr_scale, momentum=cfg.momentum, nesterov=cfg.nesterov, **common)
    elif cfg.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(momentum=cfg.momentum, nesterov=cfg.nesterov, **common)
    else:
        optimizer = keras.optimizers.AdamW(**{**common, "weight_decay": cfg.weight_decay})
    optimizer = scale_backbone_lr(optimizer, model, cfg.backbone_lr_scale)
    if one_hot_labels(cfg):  # label smoothing, MixUp, CutMix: one-hot (or mixed) targets
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing)
        metrics = [keras.metrics.CategoricalAccuracy(name="accuracy")]
    else:
        loss = keras.losses.SparseCategoricalCrossentropy()
        metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    return {"optimizer": optimizer, "loss": loss, "metrics": metrics, "steps_per_execution": cfg.steps_per_execution}

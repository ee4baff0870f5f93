"""Training: the loop, batches, schedules and callbacks (repeated runs: imgclf.repeats).

    trainer.py     train(): config in, run directory out
    batches.py     the index-keyed batch source
    augment.py     its augmentations: flip, translate, cutout, resized crop, colour jitter, MixUp/CutMix
    callbacks.py   learning-rate schedule, lookahead, EMA swap, resumable run state
    optimizers.py  the optimizer and the compiled model

Importing this package imports Keras.
"""

from .augment import augment_batch
from .batches import Batches
from .callbacks import Lookahead, RunState, Schedule, SwapEMA, lr_at, sync_jax_state
from .optimizers import BiasScaledSGD, build_compiled_model
from .trainer import RunResult, default_run_dir, model_meta, train

__all__ = ["train", "RunResult", "model_meta", "default_run_dir",
           "Batches", "augment_batch", "Schedule", "Lookahead", "SwapEMA", "RunState", "lr_at",
           "sync_jax_state", "BiasScaledSGD", "build_compiled_model"]

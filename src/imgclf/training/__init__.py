"""Training: the loop, batches, schedules, callbacks and repeated runs.

    trainer.py     train(): config in, run directory out
    batches.py     the index-keyed batch source and its augmentation
    callbacks.py   learning-rate schedule, lookahead, EMA swap, resumable run state
    optimizers.py  the optimizer and the compiled model
    repeats.py     the same config over several seeds, mean ± std

Importing this package imports Keras.
"""

from .batches import Batches, augment_batch
from .callbacks import Lookahead, RunState, Schedule, SwapEMA, lr_at, sync_jax_state
from .optimizers import BiasScaledSGD, build_compiled_model
from .repeats import train_repeats
from .trainer import RunResult, default_run_dir, model_meta, train

__all__ = ["train", "RunResult", "model_meta", "default_run_dir", "train_repeats",
           "Batches", "augment_batch", "Schedule", "Lookahead", "SwapEMA", "RunState", "lr_at",
           "sync_jax_state", "BiasScaledSGD", "build_compiled_model"]

"""Data-parallel training on several devices, through the backends' own engines.

    devices       1 (the default): no distribution at all, a run exactly as on one device.
                  N or all (0): N of the visible devices (GPUs, else CPU devices), every process's on
                  several hosts; each step's global batch of batch_size images is split evenly
                  over them (batch_size must be a multiple of the device count).
    JAX           keras.distribution.DataParallel over those devices: variables replicated, each
                  batch sharded on its first axis. jit then computes one global step (batch norm
                  included), so 1 and N devices agree to float rounding.
    TensorFlow    tf.distribute.MirroredStrategy (one host) or MultiWorkerMirroredStrategy (TF_CONFIG
                  names several workers); keras.distribution is a prototype there. Batch norm is
                  synchronised across replicas (BatchNormalization.synchronized) during training only:
                  the saved model is rebuilt outside the strategy, with plain batch norm.
    Several hosts JAX: keras.distribution.initialize (jax.distributed.initialize) when
                  KERAS_DISTRIBUTION_NUM_PROCESSES is over 1, with KERAS_DISTRIBUTION_JOB_ADDRESSES
                  (the coordinator's host:port first) and KERAS_DISTRIBUTION_PROCESS_ID. Every process
                  builds every global batch and keeps its own contiguous share, so the batches are
                  those of a one-host run. TensorFlow: TF_CONFIG; the strategy shares them out itself.
                  Each process writes its own run directory (process k > 0: RUN_DIR.process<k>).
                  A time budget or the auto plan would be decided by each host's own clock, so with
                  several processes both are refused (one error line): give a recipe and epochs.
                  On one host a time budget stays allowed: one process, one clock.
    Even shares   on several devices every batch is cut to a multiple of the device count (EvenShares):
                  an epoch's last batch loses at most devices - 1 images (other ones each epoch, as
                  the order is reshuffled), and so does the validation during training; the final
                  evaluation, after training, runs on one device over every image.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import keras

from ..config import TrainConfig
from ..errors import ConfigError

MAX_PROCESSES = 100_000  # hosts of a multi-host launch


def process_count() -> tuple[int, int]:
    """(processes, this process's index) of a multi-host launch, from the environment (checked:
    a malformed value is one ConfigError line naming the variable)."""
    if keras.backend.backend() == "tensorflow":
        return _tf_config(os.environ.get("TF_CONFIG") or "{}")
    names = ("KERAS_DISTRIBUTION_NUM_PROCESSES", "KERAS_DISTRIBUTION_PROCESS_ID")
    try:
        count = int(os.environ.get(names[0]) or 1)
        index = int(os.environ.get(names[1]) or 0)
    except ValueError:
        raise ConfigError(f"{names[0]} and {names[1]}: expected whole numbers") from None
    if not 1 <= count <= MAX_PROCESSES or not 0 <= index < count:
        raise ConfigError(f"{names[0]} and {names[1]}: expected 1 to {MAX_PROCESSES} processes and an id "
                          f"from 0 to processes - 1, got {count} and {index}")
    return count, index


def _tf_config(text: str) -> tuple[int, int]:
    """(workers, this worker's index) from TF_CONFIG's JSON: cluster.worker, task.type and task.index."""
    try:
        spec = json.loads(text) if len(text) <= 1_000_000 else None
    except ValueError:
        spec = None
    cluster = spec.get("cluster", {}) if isinstance(spec, dict) else None
    workers = cluster.get("worker", []) if isinstance(cluster, dict) else None
    task = spec.get("task", {}) if isinstance(spec, dict) else None
    if not (isinstance(workers, list) and len(workers) <= MAX_PROCESSES and all(isinstance(w, str) for w in workers)
            and isinstance(task, dict)):
        raise ConfigError("TF_CONFIG: expected JSON like {\"cluster\": {\"worker\": [\"host:port\", ...]}, "
                          "\"task\": {\"type\": \"worker\", \"index\": 0}}")
    if task.get("type", "worker") != "worker":
        return max(1, len(workers)), 0
    index = task.get("index", 0)
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < max(1, len(workers)):
        raise ConfigError(f"TF_CONFIG: task.index: expected a worker number from 0 to {max(1, len(workers)) - 1}, "
                          f"got {str(index)[:40]!r}")
    return max(1, len(workers)), index


def visible_devices(backend: str) -> list:
    """The devices a run may use: the accelerators, else the CPU devices (virtual ones included)."""
    if backend == "jax":
        import jax

        return jax.devices()  # every process's, after jax.distributed.initialize
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_logical_devices("GPU")
        return [d.name for d in gpus or tf.config.list_logical_devices("CPU")]
    return []


def _device_text(devices: list) -> str:
    kinds = sorted({getattr(d, "platform", None) or str(d).split(":")[-2].lower() for d in devices})
    return f"{len(devices)} ({', '.join(kinds)})"


class EvenShares(keras.utils.PyDataset):
    """What fit() reads of `batches` on several devices: each batch cut to a multiple of the device
    count (an epoch's last batch loses at most devices - 1 images; one with fewer is skipped), so
    that every device takes an equal share, and on several JAX hosts this process's contiguous
    share of it. Every process builds the same global batch, so the batches are a one-host run's."""

    def __init__(self, batches, devices: int, index: int = 0, processes: int = 1):
        super().__init__()
        self.batches, self.devices, self.index, self.processes = batches, devices, index, processes

    def set_epoch(self, epoch: int) -> None:
        self.batches.set_epoch(epoch)

    def __len__(self) -> int:
        full = len(self.batches)
        tail = len(self.batches.images) - (full - 1) * self.batches.batch_size
        return full - (0 < tail < self.devices)

    def __getitem__(self, i):
        batch = self.batches[i]
        n = len(keras.tree.flatten(batch[0])[0])  # x may be (images, draws) under augment_device
        share = (n - n % self.devices) // self.processes
        return keras.tree.map_structure(lambda part: part[self.index * share:(self.index + 1) * share], batch)


@dataclass
class Replicas:
    """Where a run trains: `replicas` devices over `processes` processes, and the engine's handle
    (a tf.distribute strategy or a keras.distribution; None on one device)."""

    replicas: int = 1
    processes: int = 1
    process_index: int = 0
    engine: object = None
    backend: str = ""

    @contextlib.contextmanager
    def scope(self):
        """Build and fit a model inside this: variables are created replicated, data is split."""
        if self.engine is None:
            yield
        elif self.backend == "tensorflow":
            with self.engine.scope():
                yield
        else:
            previous = keras.distribution.distribution()
            keras.distribution.set_distribution(self.engine)
            try:
                yield
            finally:
                keras.distribution.set_distribution(previous)

    def prepare(self, model: keras.Model) -> keras.Model:
        """Synchronised batch norm (TensorFlow, several replicas): the layers' own switch, read
        when the training step is traced. The trainer saves a copy built outside the strategy."""
        if self.backend == "tensorflow" and self.replicas > 1:
            for layer in _batch_norms(model):
                layer.synchronized = True
        return model

    def batches(self, batches):
        """`batches` (a Batches) on one device, else EvenShares of it (on several JAX hosts this
        process's share; TensorFlow's strategy shares a batch out over workers itself)."""
        if self.replicas == 1:
            return batches
        jax_hosts = self.backend == "jax" and self.processes > 1
        return EvenShares(batches, self.replicas, *((self.process_index, self.processes) if jax_hosts else ()))

    def run_dir(self, run_dir: Path) -> Path:
        return run_dir if self.process_index == 0 else run_dir.with_name(f"{run_dir.name}.process{self.process_index}")

    def describe(self) -> str:
        hosts = f" on {self.processes} processes" if self.processes > 1 else ""
        return f"data-parallel training on {self.replicas} devices{hosts} ({self.backend})"


def _batch_norms(model):
    stack = list(model.layers)
    while stack:
        layer = stack.pop()
        if isinstance(layer, keras.layers.BatchNormalization):
            yield layer
        stack.extend(getattr(layer, "layers", []))  # nested models


_INITIALISED = []  # jax.distributed.initialize may run once per process
_ENGINES: dict = {}


def setup(cfg: TrainConfig, resumed: bool = False) -> Replicas:
    """The devices of a run, checked against the config (one ConfigError line each): the device
    count exists, splits batch_size evenly, and several processes get no clock-decided schedule."""
    processes, index = process_count()
    if cfg.devices == 1 and processes == 1:
        return Replicas()
    backend = keras.backend.backend()
    if backend not in ("jax", "tensorflow"):
        raise ConfigError(f"devices: data-parallel training needs the jax or tensorflow backend, not {backend}")
    if processes > 1:
        if cfg.time_budget:
            raise ConfigError(f"time_budget: {processes} processes would each stop at their own clock; give "
                              "epochs instead (or a recipe)")
        if cfg.recipe == "auto" and not cfg.plan and not resumed:
            raise ConfigError(f"recipe: the auto plan times this machine's steps, which {processes} processes "
                              "would do differently; give --recipe or --config")
        if backend == "jax" and not _INITIALISED:
            keras.distribution.initialize()  # jax.distributed.initialize from KERAS_DISTRIBUTION_*
            _INITIALISED.append(True)
    visible = visible_devices(backend)
    wanted = len(visible) if cfg.devices == 0 else cfg.devices
    if processes > 1 and wanted != len(visible):
        raise ConfigError(f"devices: with {processes} processes give all (the {len(visible)} devices of every "
                          f"host), got {cfg.devices}")
    if wanted > len(visible):
        raise ConfigError(f"devices: {wanted} asked, this machine has {_device_text(visible)}; give at most "
                          f"{len(visible)} or all")
    if cfg.batch_size % wanted:
        raise ConfigError(f"batch_size: expected a multiple of the {wanted} devices (each takes an equal share "
                          f"of the global batch), got {cfg.batch_size}")
    if wanted == 1 and processes == 1:
        return Replicas()
    key = (backend, processes, tuple(map(str, visible[:wanted])))
    if key not in _ENGINES:  # one per device set and process: a multi-worker strategy may be made only once
        if backend == "jax":
            _ENGINES[key] = keras.distribution.DataParallel(devices=visible[:wanted])
        else:
            import tensorflow as tf

            _ENGINES[key] = (tf.distribute.MultiWorkerMirroredStrategy() if processes > 1
                             else tf.distribute.MirroredStrategy(devices=visible[:wanted]))
    engine = _ENGINES[key]
    replicas = engine.num_replicas_in_sync if backend == "tensorflow" else wanted
    if cfg.batch_size % replicas:  # several TensorFlow workers: the global batch spans every worker's devices
        raise ConfigError(f"batch_size: expected a multiple of the {replicas} devices of all {processes} "
                          f"workers (each takes an equal share of the global batch), got {cfg.batch_size}")
    return Replicas(replicas, processes, index, engine, backend)


__all__ = ["setup", "Replicas", "EvenShares", "process_count", "visible_devices"]

"""The training input for sets that stream from disk: the index-keyed batch source
(training/batches.Batches), read ahead in parallel through Grain.

Batches gives batch i of the current epoch from (seed, epoch, i) alone. StreamBatches maps that
same function over the batch indices with Grain (`MapDataset.range(i, n).map(batches[i])`, thread
prefetch with a bounded buffer), so its batches are Batches' own, in the same order, while the
next few are decoded on other threads. Nothing else differs: shuffling, augmentation and exact
resume stay Batches', and RunState still calls Batches.set_epoch at each epoch's start.

StreamBatches.set_epoch (what RunState calls) stops the read-ahead before it passes the epoch on,
and each epoch's read-ahead starts at its first batch, after set_epoch: no batch of one epoch is
ever decoded with another's order. It may wrap Batches directly or through distribute.EvenShares.

    IMGCLF_STREAM   auto (default): stream the sets that do not fit in memory (IMGCLF_MAX_MEMORY_GB);
                    on: every set, in memory or not (tests, benchmarks); off: never
"""

from __future__ import annotations

import os

import keras

from ..errors import ConfigError
from .prefetch import default_threads, ordered_map

MODES = ("auto", "on", "off")


def stream_mode() -> str:
    mode = os.environ.get("IMGCLF_STREAM", "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise ConfigError(f"IMGCLF_STREAM: expected one of {', '.join(MODES)}, got {mode!r}")
    return mode


class StreamBatches(keras.utils.PyDataset):
    """`batches` (a Batches, or a PyDataset over one), batch i at a time, in order, decoded ahead
    on `threads` threads with at most `buffer` batches waiting. Reading out of order (Keras peeks
    at the first batches for their shapes; each epoch starts again at 0) restarts the read-ahead."""

    def __init__(self, batches, threads: int | None = None, buffer: int | None = None):
        super().__init__()  # Keras reads it in order from one thread; the parallelism is Grain's
        self.batches = batches
        self.threads = threads or default_threads()
        self.buffer = buffer or 2 * self.threads
        self._it, self._next = None, -1

    def __len__(self) -> int:
        return len(self.batches)

    def set_epoch(self, epoch: int) -> None:
        self.close()
        self.batches.set_epoch(epoch)

    def __getitem__(self, i):
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"batch {i} of {n}")
        if self._it is None or i != self._next:
            self.close()
            self._it = ordered_map(self.batches.__getitem__, n, self.threads, self.buffer, start=i)
        self._next = i + 1
        return next(self._it)

    def on_epoch_end(self) -> None:
        self.close()

    def close(self) -> None:
        if self._it is not None:
            self._it.close()
            self._it, self._next = None, -1


def wrap(batches, images):
    """What fit and predict read: `batches` (of the ImageSet `images`) through StreamBatches when
    `images` streams from disk (IMGCLF_STREAM=auto) or always (on); `batches` itself otherwise."""
    mode = stream_mode()
    if mode == "on" or (mode == "auto" and images.x is None):
        return StreamBatches(batches)
    return batches


__all__ = ["StreamBatches", "wrap", "stream_mode", "MODES"]

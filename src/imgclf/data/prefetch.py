"""Ordered, parallel, bounded reading ahead of decoded images, through Grain.

`ordered_map(fn, n)` yields fn(start), fn(start + 1), ..., fn(n - 1) in that order, computed ahead
on Grain's thread pool with a bounded buffer: memory holds at most `buffer` results whatever n is.
Pillow releases the GIL while it decodes and resizes, so threads decode in parallel. Without Grain
(the ONNX-only install, a platform without its wheel) a plain thread pool does the same, as bounded.
Loading a whole folder into memory decodes on forked processes instead where that is safe
(`process_map`), and on the same threads where it is not (data/dataset.py).

This module loads neither Keras nor Grain at import (runtime/ and the ONNX-only predict use it);
Grain, which loads jax, is imported on first use only.

    IMGCLF_STREAM_THREADS     decoding threads (default: one per CPU)
    IMGCLF_DECODE_PROCESSES   0: process_map keeps to threads (default 1: forks where it is safe)
"""

from __future__ import annotations

import os
from typing import Callable, Iterator

import numpy as np

from ..errors import ConfigError

PIECE = 256  # images per decoding task of image_chunks


def default_threads() -> int:
    raw = os.environ.get("IMGCLF_STREAM_THREADS", "")
    if not raw:
        return max(1, os.cpu_count() or 1)
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= 256:
        raise ConfigError(f"IMGCLF_STREAM_THREADS: expected a whole number from 1 to 256, got {raw!r}")
    return value


def grain_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("grain") is not None


def ordered_map(fn: Callable[[int], object], n: int, threads: int | None = None, buffer: int | None = None,
                start: int = 0) -> Iterator:
    """fn(i) for i in range(start, n), in order, `threads` of them computed ahead (at most `buffer`
    waiting). An exception from fn is raised when its result's turn comes."""
    if start >= n:
        return
    threads = threads or default_threads()
    if threads <= 1:
        for i in range(start, n):
            yield fn(i)
        return
    if not grain_available():  # Grain has no wheel for this platform: a plain thread pool, as bounded
        yield from _pool_map(fn, range(start, n), threads, buffer or 2 * threads)
        return
    import grain

    options = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=buffer or 2 * threads)
    it = iter(grain.MapDataset.range(start, n).map(fn).to_iter_dataset(options))
    try:
        yield from it
    finally:
        it.close()  # stops the threads of an iterator left before its end


def _pool_map(fn, indices, threads: int, buffer: int) -> Iterator:
    """fn(i) for i in indices, in order, on `threads` threads with at most `buffer` submitted ahead."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(threads)
    try:
        ahead: deque = deque()
        for i in indices:
            ahead.append(pool.submit(fn, i))
            if len(ahead) >= buffer:
                yield ahead.popleft().result()
        while ahead:
            yield ahead.popleft().result()
    finally:  # an error, or a consumer that stopped early: what has not started never runs
        pool.shutdown(wait=True, cancel_futures=True)


def process_map(fn: Callable, jobs: list, workers: int | None = None) -> Iterator:
    """fn(job) for each of `jobs`, in order, on `workers` forked processes, or on ordered_map's threads
    where forking is not safe. `fn` must be a module-level function; jobs and results are pickled.

    For decoding a whole folder into memory: per image, Python work that holds the GIL (opening the
    file, parsing the JPEG header, building the array) is a large share of a draft decode, and on
    small images the most of it, so threads scale poorly (bench/decode.py measures both). Processes
    are forked, which starts them in milliseconds and needs no `if __name__ == "__main__"` guard, and
    only on Linux and not under Keras' JAX backend, whose threads make a fork unsafe (JAX says so).
    IMGCLF_DECODE_PROCESSES=0 keeps to threads. If a worker dies, the jobs not yet returned run on
    threads instead, with a warning."""
    forks = forking_decodes()  # checks IMGCLF_DECODE_PROCESSES whatever the job count
    workers = max(1, min(workers or default_threads(), len(jobs)))
    done = 0
    if workers > 1 and forks:
        import multiprocessing
        import sys
        from concurrent.futures import ProcessPoolExecutor
        from concurrent.futures.process import BrokenProcessPool

        before = set(multiprocessing.active_children())
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                   initializer=_die_with_parent, initargs=(os.getpid(),))
        try:
            try:
                results = pool.map(fn, jobs)  # forks the workers and queues every job
            except OSError as e:  # a fork refused (a process limit, memory): the workers started go
                for child in set(multiprocessing.active_children()) - before:
                    child.kill()
                    child.join()
                print(f"warning: cannot start decoding processes ({e.strerror or type(e).__name__}); "
                      f"decoding on threads", file=sys.stderr)
            else:
                for result in results:
                    yield result
                    done += 1
                return
        except BrokenProcessPool:
            print(f"warning: a decoding process died; decoding the remaining {len(jobs) - done} of "
                  f"{len(jobs)} parts on threads", file=sys.stderr)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    yield from ordered_map(lambda i: fn(jobs[i]), len(jobs), workers, start=done)


def _die_with_parent(parent: int) -> None:
    """A decoding process's first step: the kernel kills it when its parent dies, even by SIGKILL
    (the OOM killer), which would otherwise leave it waiting on the job queue for ever."""
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG (Linux)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def forking_decodes() -> bool:
    """Whether process_map forks: on Linux, unless Keras runs on JAX or IMGCLF_DECODE_PROCESSES=0.

    TensorFlow and Grain import jax too, but only running it starts the threads that make a fork
    unsafe (and JAX warns at a fork once it has started them)."""
    import sys

    raw = os.environ.get("IMGCLF_DECODE_PROCESSES", "1")
    if raw not in ("0", "1"):
        raise ConfigError(f"IMGCLF_DECODE_PROCESSES: expected 0 or 1, got {raw[:20]!r}")
    keras = sys.modules.get("keras")
    on_jax = keras is not None and keras.backend.backend() == "jax"
    return raw == "1" and sys.platform.startswith("linux") and not on_jax


def image_chunks(images, chunk: int = 2048, threads: int | None = None) -> Iterator[np.ndarray]:
    """An ImageSet's images in order, `chunk` at a time: slices of the array if it is in memory,
    else decoded ahead in pieces of PIECE images on `threads` threads (a few chunks in memory)."""
    n = len(images)
    if images.x is not None:
        for i in range(0, n, chunk):
            yield images.x[i:i + chunk]
        return
    per = max(1, chunk // PIECE)
    pieces = ordered_map(lambda p: images.images(np.arange(p * PIECE, min((p + 1) * PIECE, n))),
                         -(-n // PIECE), threads, buffer=2 * per)
    group = []
    for piece in pieces:
        group.append(piece)
        if len(group) == per:
            yield np.concatenate(group)
            group = []
    if group:
        yield np.concatenate(group)


def decode_all(images, threads: int | None = None, bar=None) -> np.ndarray:
    """Every image of a streaming ImageSet, decoded in parallel into one uint8 array."""
    h, w = images.size
    out = np.empty((len(images), h, w, 3), np.uint8)
    at = 0
    for x in image_chunks(images, PIECE, threads):
        out[at:at + len(x)] = x
        at += len(x)
        if bar is not None:
            bar.update(len(x))
    return out


class ImageView:
    """A streaming ImageSet seen as a read-only uint8 array (n, h, w, 3): indexing (an int, a slice
    or an index array) decodes only the images asked for; np.asarray(view) decodes them all."""

    def __init__(self, images):
        self.images = images
        h, w = images.size
        self.shape, self.dtype, self.ndim = (len(images), h, w, 3), np.dtype(np.uint8), 4

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            return self.images.images(np.asarray([key]))[0]
        if isinstance(key, slice):
            key = np.arange(len(self))[key]
        key = np.asarray(key)
        if key.dtype == bool:
            key = np.flatnonzero(key)
        if len(key) == 0:
            return np.zeros((0, *self.shape[1:]), np.uint8)
        return self.images.images(key)

    def __array__(self, dtype=None, copy=None):
        x = decode_all(self.images)
        return x if dtype is None else x.astype(dtype)


__all__ = ["ordered_map", "process_map", "forking_decodes", "image_chunks", "decode_all", "ImageView",
           "default_threads", "grain_available"]

"""The batcher of `imgclf serve`: requests that arrive together share one model call.

A single worker thread runs the model; a request waits at most `window_ms` for others to join its
batch, and requests that arrive while the model is busy queue up and form the next batch. On
shutdown the queued requests are answered for at most `drain_s` seconds (`imgclf serve
--graceful-timeout`), then the thread stops.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np


class Batcher:
    """Collects concurrent requests into one model call, run on a single worker thread.
    `metrics` (imgclf.deploy.metrics.Metrics), if given, sees every batch size and model failure.
    `drain_s`: how long stop() keeps answering queued requests (serve's graceful timeout)."""

    def __init__(self, fn, window_ms: float = 2.0, max_batch: int = 64, metrics=None, drain_s: float = 30.0):
        self.fn, self.window, self.max_batch, self.metrics = fn, window_ms / 1000.0, max_batch, metrics
        self.drain_s = drain_s
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="imgclf-model")
        self.queue: asyncio.Queue | None = None
        self.task = None
        self.busy = False  # a batch has left the queue and is not answered yet
        self.calls = self.images = self.requests = 0

    async def start(self):
        self.queue = asyncio.Queue()
        self.task = asyncio.create_task(self._loop())

    async def stop(self, drain_s: float | None = None):
        """Drain: answer every queued request (for at most `drain_s` seconds, default the batcher's
        own `drain_s`), then stop the thread."""
        if self.task:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + (self.drain_s if drain_s is None else drain_s)
            while (self.busy or not self.queue.empty()) and not self.task.done() and loop.time() < deadline:
                await asyncio.sleep(0.005)
            self.task.cancel()
            try:
                await self.task
            except (asyncio.CancelledError, Exception):
                pass
        await asyncio.get_running_loop().run_in_executor(None, self.executor.shutdown, True)

    def _count(self, images: int, error: bool = False) -> None:
        if self.metrics is not None:
            if error:
                self.metrics.model_errors.inc()
            else:
                self.metrics.observe_batch(images)

    async def run(self, fn, *args):
        """Run any other model work (heatmaps) on the model thread, between batches."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def submit(self, x: np.ndarray) -> np.ndarray:
        if self.queue is None:  # used without the app's lifespan (e.g. a plain TestClient)
            try:
                probs = await self.run(self.fn, x)
            except Exception:
                self._count(len(x), error=True)
                raise
            self._count(len(x))
            return probs
        fut = asyncio.get_running_loop().create_future()
        await self.queue.put((x, fut))
        return await fut

    async def _loop(self):
        loop = asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            self.busy = True
            n = len(items[0][0])
            deadline = loop.time() + self.window
            while n < self.max_batch:
                try:
                    remaining = deadline - loop.time()
                    item = self.queue.get_nowait() if remaining <= 0 else \
                        await asyncio.wait_for(self.queue.get(), remaining)
                except (asyncio.QueueEmpty, asyncio.TimeoutError):
                    break
                items.append(item)
                n += len(item[0])
            batch = np.concatenate([x for x, _ in items])
            try:
                probs = await loop.run_in_executor(self.executor, self.fn, batch)
            except Exception as e:  # noqa: BLE001  (handed to every waiting request)
                self._count(n, error=True)
                for _, fut in items:
                    if not fut.done():
                        fut.set_exception(e)
                self.busy = False
                continue
            self._count(n)
            self.calls += 1
            self.images += n
            self.requests += len(items)
            start = 0
            for x, fut in items:
                if not fut.done():
                    fut.set_result(probs[start:start + len(x)])
                start += len(x)
            self.busy = False

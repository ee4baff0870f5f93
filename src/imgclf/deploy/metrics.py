"""Prometheus metrics for `imgclf serve`, served at GET /metrics (prometheus-client).

    imgclf_http_requests_total{endpoint, status}     requests answered, by endpoint and status code
    imgclf_http_errors_total{endpoint, status}        the 4xx and 5xx among them
    imgclf_http_request_duration_seconds{endpoint}    latency histogram, from the first byte in to the last out
    imgclf_http_requests_in_progress                  requests being handled now
    imgclf_batch_size                                 images per model call (the batcher's batches)
    imgclf_model_errors_total                         model calls that raised

`endpoint` is the route (/predict, /health, ...), a mount (/static, /docs-assets) or `other`, so
that a client cannot create label values at will.

One process: each app has its own registry (several apps can live in one process, as in tests).
Several worker processes (`imgclf serve --workers N`): prometheus-client's multiprocess mode, chosen
by PROMETHEUS_MULTIPROC_DIR, which the parent sets to a fresh folder before the workers start and
removes when they have stopped; each worker writes its values to files there and /metrics, in
whichever worker answers it, sums them over all workers, dead ones included (counts do not drop when
a worker is replaced). The in-progress gauge counts live workers only: a worker that ends marks
itself dead, and /metrics marks any worker whose process is gone.
"""

from __future__ import annotations

import glob
import os
import re
import time

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
ROUTES = ("/predict", "/health", "/model", "/metrics", "/docs", "/openapi.json", "/")
MOUNTS = ("/static", "/docs-assets")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def endpoint_label(path: str) -> str:
    if path in ROUTES:
        return path
    return next((m for m in MOUNTS if path.startswith(m + "/")), "other")


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def mark_dead_workers(path: str) -> list[int]:
    """Mark dead every worker whose live-gauge files are in `path` but whose process is gone."""
    from prometheus_client import multiprocess

    dead = []
    pids = {int(m.group(1)) for f in glob.glob(os.path.join(path, "gauge_live*_*.db"))
            if (m := re.search(r"_(\d+)\.db$", f))}
    for pid in sorted(pids):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid, path)
            dead.append(pid)
        except PermissionError:  # alive, another user's
            pass
    return dead


class Metrics:
    """The serving metrics of one app, and the ASGI middleware that records them."""

    def __init__(self, max_batch: int = 64):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.multiproc = multiprocess_dir()
        self.registry = CollectorRegistry(auto_describe=True)
        reg = {"registry": self.registry}
        self.requests = Counter("imgclf_http_requests", "HTTP requests answered, by endpoint and status code",
                                ["endpoint", "status"], **reg)
        self.errors = Counter("imgclf_http_errors", "HTTP requests answered with a 4xx or 5xx status",
                              ["endpoint", "status"], **reg)
        self.latency = Histogram("imgclf_http_request_duration_seconds", "time to answer a request, by endpoint",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, **reg)
        self.in_progress = Gauge("imgclf_http_requests_in_progress", "requests being handled now",
                                 multiprocess_mode="livesum", **reg)
        sizes, b = [], 1
        while b < max_batch:
            sizes.append(b)
            b *= 2
        self.batch_size = Histogram("imgclf_batch_size", "images per model call",
                                    buckets=tuple(sizes) + (max_batch,), **reg)
        self.model_errors = Counter("imgclf_model_errors", "model calls that raised an exception", **reg)

    def observe_batch(self, images: int) -> None:
        self.batch_size.observe(images)

    def render(self) -> tuple[bytes, str]:
        """The text exposition of every metric (summed over all workers in multiprocess mode)."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        if not self.multiproc:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        from prometheus_client import multiprocess

        mark_dead_workers(self.multiproc)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self.multiproc)
        return generate_latest(registry), CONTENT_TYPE_LATEST

    def worker_exit(self) -> None:
        """This worker stops: its live gauges no longer count."""
        if self.multiproc:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid(), self.multiproc)

    def middleware(self, app):
        return MetricsMiddleware(app, self)


class MetricsMiddleware:
    """ASGI middleware: counts and times every HTTP request, whatever answers it (even a request
    refused by the body limit, or one that raised)."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        m, endpoint, status = self.metrics, endpoint_label(scope.get("path", "")), 500
        start = time.perf_counter()

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        m.in_progress.inc()
        try:
            await self.app(scope, receive, send_status)
        finally:
            m.in_progress.dec()
            m.latency.labels(endpoint).observe(time.perf_counter() - start)
            m.requests.labels(endpoint, str(status)).inc()
            if status >= 400:
                m.errors.labels(endpoint, str(status)).inc()

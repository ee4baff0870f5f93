"""HTTP serving: a FastAPI app around any imgclf model (.keras on Keras, .onnx on ONNX Runtime).

    imgclf serve model.onnx [--host 127.0.0.1 --port 8000]
    imgclf serve --pretrained cifar10

Endpoints:
    POST /predict?k=5[&heatmap=true]   multipart field `files` (one or more images; `file` also works)
    GET  /health                        liveness and batching counters
    GET  /metrics                       Prometheus metrics (imgclf.deploy.metrics)
    GET  /model                         name, classes, input size, metrics, versions, model card
    GET  /docs                          OpenAPI docs, with Swagger UI served locally (works offline)
    GET  /                              a web page: drop images, see top-5 bars and a heatmap

Requests that arrive together are batched into one model call: a single worker thread runs the
model; a request waits at most `batch_window_ms` for others to join its batch, and requests that
arrive while the model is busy queue up and form the next batch. On shutdown (SIGTERM), uvicorn
stops accepting connections and lets in-flight requests finish (up to `graceful_timeout` seconds);
then the batcher answers what is still queued (again for up to `graceful_timeout` seconds) before
its thread stops.

Several worker processes: `imgclf serve --workers N` (imgclf.deploy.app, the app factory).

Every bad input is answered with a 4xx and `{"error": "<one line>"}`: not multipart (415),
a field other than `files`/`file` or no file (400), a zero-byte, non-image or truncated file
(400), more files or bytes than the limits, or an image above the pixel limit (413), a bad
query parameter (422). Uploads are decoded in memory or spooled by Starlette to anonymous
temporary files; a client-chosen file name is never used as a path.

This module imports neither TensorFlow nor Keras unless the model is a .keras file.
"""

from __future__ import annotations

import asyncio
import base64
import io
from pathlib import Path

import numpy as np
from fastapi import Query, Request  # at module level: the endpoint annotations are resolved here

from .. import __version__
from ..errors import DataError
from ..data.images import MAX_PIXELS, to_rgb
from ..runtime.classifier import Classifier, top_k
from ..runtime.load import load_classifier
from .batching import Batcher

STATIC = Path(__file__).with_name("static")
FILE_FIELDS = ("files", "file")


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class TooLarge(Exception):
    """Raised from inside the request body stream once it passes the byte limit."""


class BodyLimit:
    """ASGI middleware: refuse request bodies over `max_bytes` (by Content-Length, and by counting
    the bytes of a chunked upload as they arrive)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            from starlette.responses import JSONResponse

            msg = (f"request body of {int(length):,} bytes is over the {self.max_bytes:,}-byte limit"
                   if length.isdigit() else "Content-Length is not a number")
            return await JSONResponse({"error": msg}, status_code=413 if length.isdigit() else 400)(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise TooLarge(f"request body is over the {self.max_bytes:,}-byte limit")
            return message

        return await self.app(scope, counted, send)


def _png_data_url(rgb: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


class Explainer:
    """Heatmaps: Grad-CAM (via keras.ops.jvp) for Keras models, occlusion for everything else."""

    def __init__(self, clf: Classifier, method: str = "auto"):
        self.clf, self.method, self.layer, self.gradcam = clf, method, None, None
        if method in ("auto", "grad-cam") and hasattr(clf, "model"):
            from .gradcam import GradCam

            try:
                self.gradcam = GradCam(clf.model)
                self.method, self.layer = "grad-cam", self.gradcam.layer_name
            except ValueError:
                self.method = "occlusion"
        elif method == "none":
            self.method = "none"
        else:
            self.method = "occlusion"

    def describe(self) -> str:
        return {"grad-cam": f"Grad-CAM on layer {self.layer} (gradients by keras.ops.jvp)",
                "occlusion": "occlusion map (probability drop when a grey square hides each region; "
                             "this runtime has no gradients)",
                "none": "no heatmap"}[self.method]

    def __call__(self, image: np.ndarray, class_index: int) -> dict | None:
        from .gradcam import occlusion_map, overlay

        if self.method == "none":
            return None
        if self.gradcam is not None:
            heat, _ = self.gradcam(image, class_index)
        else:
            heat, _ = occlusion_map(lambda b: self.clf.predict_proba(b, calibrated=False), image, class_index)
        scale = max(1, 128 // max(image.shape[:2]))
        return {"method": self.method, "layer": self.layer, "description": self.describe(),
                "png": _png_data_url(overlay(image, heat, scale=scale))}


def _batched_fn(clf: Classifier):
    """The model call for a batch; Keras batches are padded to a power of two so that the compiled
    predict function is traced for a handful of shapes only."""
    if clf.runtime != "keras":
        return lambda x: clf.predict_proba(x)

    def fn(x):
        n = len(x)
        size = 1 << max(0, (n - 1).bit_length())
        if size != n:
            x = np.concatenate([x, np.zeros((size - n,) + x.shape[1:], x.dtype)])
        return clf.predict_proba(x)[:n]

    return fn


def model_info(clf: Classifier, explainer: Explainer | None = None) -> dict:
    meta = clf.meta
    info = {
        "name": meta.get("model"), "file": clf.path.name, "runtime": clf.runtime,
        "classes": clf.class_names, "input_size": clf.input_size, "resize": clf.resize,
        "temperature": clf.temperature, "recipe": meta.get("recipe"), "params": meta.get("params"),
        "metrics": meta.get("metrics"), "imgclf_version": __version__,
        "trained_with": {"imgclf": meta.get("imgclf_version"), "keras": meta.get("keras_version"),
                         "backend": meta.get("backend")},
        "keras_version": meta.get("keras_version"),
        "heatmap": explainer.describe() if explainer else None,
    }
    for key in ("card", "data", "pretrained", "exported_from", "export_format"):
        if key in meta:
            info[key] = meta[key]
    return info


def load_for_serving(path: str | Path, threads: int | None = None) -> Classifier:
    """load_classifier, with `threads` intra-op threads for ONNX Runtime or TensorFlow (None: the
    runtime's own choice). TensorFlow's thread pools are fixed once it has run an op: in a process
    that already ran TensorFlow, `threads` does not change them."""
    path = Path(path)
    if threads and path.suffix == ".onnx":
        from ..runtime.onnx_runtime import OnnxClassifier

        return OnnxClassifier(path, threads=threads)
    if threads and path.suffix == ".keras" and path.is_file():
        import keras

        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            try:
                tf.config.threading.set_intra_op_parallelism_threads(threads)
                tf.config.threading.set_inter_op_parallelism_threads(threads)
            except RuntimeError:  # already initialised in this process
                pass
    return load_classifier(path)


def create_app(model: str | Path | Classifier, *, max_files: int = 16, max_bytes: int = 20_000_000,
               batch_window_ms: float = 2.0, max_batch: int = 64, heatmap: str = "auto", warmup: bool = True,
               threads: int | None = None, graceful_timeout: float = 30.0):
    """The FastAPI app serving `model` (a path to .keras/.onnx, or a loaded Classifier). On shutdown
    its batcher answers queued requests for at most `graceful_timeout` seconds."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.responses import FileResponse, JSONResponse
    from fastapi.staticfiles import StaticFiles
    from starlette.datastructures import UploadFile
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from fastapi.responses import Response

    from .metrics import Metrics, MetricsMiddleware

    clf = model if isinstance(model, Classifier) else load_for_serving(model, threads)
    explainer = Explainer(clf, heatmap)
    metrics = Metrics(max_batch)
    batcher = Batcher(_batched_fn(clf), batch_window_ms, max_batch, metrics, drain_s=graceful_timeout)
    info = model_info(clf, explainer)
    if warmup:  # trace/compile now, not on the first request
        # Keras traces each power of two up to max_batch; ONNX Runtime needs one small and one full batch
        sizes = [2 ** i for i in range(max_batch.bit_length()) if 2 ** i <= max_batch] \
            if clf.runtime == "keras" else sorted({1, max_batch})
        for size in sizes:
            batcher.fn(np.zeros((size, clf.input_size, clf.input_size, 3), np.uint8))

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        yield
        await batcher.stop()
        metrics.worker_exit()

    app = FastAPI(title="imgclf", version=__version__, docs_url=None, redoc_url=None, lifespan=lifespan,
                  description=f"Image classifier `{info['name']}` ({clf.runtime}): {len(clf.class_names)} classes.")
    app.state.classifier, app.state.batcher, app.state.info, app.state.metrics = clf, batcher, info, metrics

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc: RequestValidationError):
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "body"))
            parts.append(f"{where}: {err.get('msg')}")
        return JSONResponse({"error": "; ".join(parts) or "invalid request"}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc: StarletteHTTPException):
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _internal(request, exc: Exception):  # never expected; still one JSON line, server stays up
        return JSONResponse({"error": f"internal error ({type(exc).__name__})"}, status_code=500)

    docs_assets = _swagger_assets()
    if docs_assets is not None:
        app.mount("/docs-assets", StaticFiles(directory=docs_assets), name="docs-assets")
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/docs", include_in_schema=False)
    async def docs():
        if docs_assets is None:
            raise ApiError(404, "offline docs need the swagger-ui-bundle-v2 package")
        return get_swagger_ui_html(openapi_url=app.openapi_url, title="imgclf API",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/docs-assets/favicon-32x32.png")

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/health")
    async def health():
        """Liveness, and how much batching has happened."""
        return {"status": "ok", "runtime": clf.runtime, "model_calls": batcher.calls,
                "images": batcher.images, "requests": batcher.requests}

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics():
        body, media_type = metrics.render()
        return Response(body, media_type=media_type)

    @app.get("/model")
    async def model_card():
        """The model: name, classes, input size, training metrics, versions, model card."""
        return info

    upload_schema = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["files"],
        "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"},
                                 "description": f"1 to {max_files} images (PNG, JPEG, BMP, WebP)"}}}}}}}

    @app.post("/predict", openapi_extra=upload_schema)
    async def predict(request: Request,
                      k: int = Query(5, ge=1, le=1000, description="classes per image (at most the number of classes)"),
                      heatmap: bool = Query(False, description="add a heatmap image (Grad-CAM or occlusion)")):
        """Top-k classes with probabilities for each uploaded image, in upload order."""
        ctype = request.headers.get("content-type", "")
        if not ctype.startswith("multipart/form-data"):
            raise ApiError(415, "expected a multipart/form-data upload with images in field 'files'")
        try:
            form = await request.form(max_files=max_files, max_fields=max_files + 8)
        except TooLarge as e:
            raise ApiError(413, str(e)) from None
        except StarletteHTTPException as e:
            text = str(e.detail)
            if "Too many files" in text:
                raise ApiError(413, f"too many files: at most {max_files} per request") from None
            raise ApiError(400, f"malformed multipart upload ({text})") from None
        try:
            uploads = []
            for key, value in form.multi_items():
                if not isinstance(value, UploadFile):
                    raise ApiError(400, f"unexpected form field {key!r} (send images as files in field 'files')")
                if key not in FILE_FIELDS:
                    raise ApiError(400, f"unexpected file field {key!r} (send images in field 'files')")
                uploads.append(value)
            if not uploads:
                raise ApiError(400, "no image uploaded (send one or more images in field 'files')")
            blobs = [await up.read() for up in uploads]
        finally:
            await form.close()
        names = [up.filename or f"file {i + 1}" for i, up in enumerate(uploads)]
        for name, blob in zip(names, blobs):
            if not blob:
                raise ApiError(400, f"{name}: empty file (0 bytes)")
        images = await asyncio.get_running_loop().run_in_executor(None, _decode_all, blobs, names, clf)
        probs = await batcher.submit(images)
        tops = top_k(probs, clf.class_names, k)
        out = []
        for i, (name, top) in enumerate(zip(names, tops)):
            item = {"file": name, "top": [{"class": c, "probability": p} for c, p in top]}
            if heatmap:
                item["heatmap"] = await batcher.run(explainer, images[i], int(np.argmax(probs[i])))
            out.append(item)
        return {"model": info["name"], "runtime": clf.runtime, "k": k, "predictions": out}

    if max_bytes:
        app.add_middleware(BodyLimit, max_bytes=max_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: it sees every answer
    return app


def _decode_all(blobs, names, clf: Classifier) -> np.ndarray:
    size = (clf.input_size, clf.input_size)
    out = []
    for name, blob in zip(names, blobs):
        try:
            out.append(to_rgb(blob, size, clf.resize, clf.decode))
        except DataError as e:
            msg = str(e).replace("<bytes>", name, 1)
            raise ApiError(413 if "pixel limit" in msg else 400, msg) from None
        except Exception as e:  # noqa: BLE001  (any decoder failure is the upload's fault)
            raise ApiError(400, f"{name}: cannot decode the image ({type(e).__name__})") from None
    return np.stack(out)


def _exit_normally(signum, frame):
    raise SystemExit(0)


def _swagger_assets() -> Path | None:
    try:
        import swagger_ui_bundle
    except ImportError:
        return None
    path = Path(str(swagger_ui_bundle.swagger_ui_path))
    return path if (path / "swagger-ui-bundle.js").is_file() else None


def serve(model, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
          graceful_timeout: float = 30.0, **options) -> None:
    """Run the app with uvicorn in this process (blocking). Binds to 127.0.0.1 unless told otherwise.
    SIGTERM: in-flight requests finish (up to `graceful_timeout` seconds), then a normal return."""
    import signal
    import threading

    import uvicorn

    app = create_app(model, graceful_timeout=graceful_timeout, **options)
    info = app.state.info
    print(f"serving {info['name']} ({info['runtime']}, {len(info['classes'])} classes) on http://{host}:{port}"
          f"  (docs: /docs, page: /, metrics: /metrics)", flush=True)
    if threading.current_thread() is threading.main_thread():
        # uvicorn re-raises the signal it shut down on once it has stopped: this handler then ends
        # the process normally (exit status 0) instead of letting the signal kill it.
        signal.signal(signal.SIGTERM, _exit_normally)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=graceful_timeout)


__all__ = ["create_app", "serve", "Batcher", "ApiError", "BodyLimit", "Explainer", "model_info", "MAX_PIXELS"]

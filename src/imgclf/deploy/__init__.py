"""Deployment: export to other formats, the HTTP server and its page, and Grad-CAM.

    export.py   a .keras model to ONNX, SavedModel or TFLite, with a parity check, or to the
                layouts model servers load (model_servers.py: a Triton repository, TF Serving's name/1/)
    serve.py    the FastAPI app (batched predictions, /model, /docs) and `imgclf serve`
    batching.py the batcher: concurrent requests share one model call
    metrics.py  Prometheus metrics at /metrics (multiprocess mode under --workers)
    app.py      the app factory (settings from IMGCLF_SERVE_*) behind `imgclf serve --workers N`
    gradcam.py  Grad-CAM heatmaps (.keras) and occlusion maps (any runtime)
    static/     the web page served at /

Submodules are imported on use: serve needs FastAPI, export and Grad-CAM need Keras.
"""

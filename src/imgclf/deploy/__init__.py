"""Deployment: export to other formats, the HTTP server and its page, and Grad-CAM.

    export.py   a .keras model to ONNX, SavedModel or TFLite, with a parity check
    serve.py    the FastAPI app (batched predictions, /model, /docs) and `imgclf serve`
    gradcam.py  Grad-CAM heatmaps (.keras) and occlusion maps (any runtime)
    static/     the web page served at /

Submodules are imported on use: serve needs FastAPI, export and Grad-CAM need Keras.
"""

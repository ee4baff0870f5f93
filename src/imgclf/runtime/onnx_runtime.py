"""Run an exported imgclf model on ONNX Runtime: no TensorFlow, no Keras.

An imgclf `.onnx` file is the model graph (raw 0..255 RGB NHWC float input, softmax
probabilities out) plus imgclf's metadata: the same JSON as the `imgclf.json` member of a
`.keras` file, stored in the ONNX model's `metadata_props` under the key `imgclf`.
`imgclf export MODEL --format onnx` writes such files; this module only reads them.

This module must never import tensorflow or keras (the slim serving install has neither).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import ImgclfError
from .classifier import Classifier
from .modelmeta import MAX_META_BYTES, check_shapes, max_model_bytes, parse_meta_json, validate_meta

META_KEY = "imgclf"


def _session(path: Path, threads: int | None):
    try:
        import onnxruntime as ort
    except ImportError:
        raise ImgclfError(f"{path}: running .onnx models needs onnxruntime (pip install onnxruntime)") from None
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only
    if threads:
        opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    if os.environ.get("IMGCLF_ORT_SPIN", "0") != "1":
        # ORT's worker threads busy-wait between runs by default; on a small machine that steals the
        # CPU the server's event loop and image decoding need (IMGCLF_ORT_SPIN=1 turns it back on).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own exception types (Fail, InvalidProtobuf, ...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ImgclfError(f"{path}: not a valid ONNX model ({first[:200]})") from None


def read_onnx_meta(session, path: Path) -> dict:
    """imgclf's metadata from an ONNX Runtime session of `path`, validated."""
    props = session.get_modelmeta().custom_metadata_map
    if META_KEY not in props:
        raise ImgclfError(f"{path}: no '{META_KEY}' metadata inside (expected a model exported by imgclf export)")
    where = f"{path}: '{META_KEY}' metadata"
    raw = props[META_KEY]
    if len(raw) > MAX_META_BYTES:
        raise ImgclfError(f"{where}: {len(raw):,} characters (at most {MAX_META_BYTES:,} expected)")
    return validate_meta(parse_meta_json(raw, where), where)


class OnnxClassifier(Classifier):
    """A `.onnx` model exported by imgclf, run by ONNX Runtime on the CPU.

    `threads` sets ONNX Runtime's intra-op threads (default: IMGCLF_ORT_THREADS, else ORT's own
    choice, one per physical core).
    """

    runtime = "onnxruntime"

    def __init__(self, path, threads: int | None = None):
        path = Path(path)
        if not path.is_file():
            raise ImgclfError(f"{path}: model file not found")
        cap = max_model_bytes()
        if path.stat().st_size > cap:
            raise ImgclfError(f"{path}: the model is over {cap:,} bytes; set IMGCLF_MAX_MODEL_BYTES to allow more")
        threads = threads or (int(os.environ["IMGCLF_ORT_THREADS"]) if os.environ.get("IMGCLF_ORT_THREADS") else None)
        self.session = _session(path, threads)
        meta = read_onnx_meta(self.session, path)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ImgclfError(f"{path}: expected a model with one image input and one output, it has "
                              f"{len(inputs)} inputs and {len(outputs)} outputs")
        check_shapes(meta, f"{path}: '{META_KEY}' metadata", inputs[0].shape, outputs[0].shape)
        super().__init__(path, meta)
        inp = inputs[0]
        self.input_name = inp.name
        self.input_dtype = np.uint8 if "uint8" in inp.type else np.float32
        self.fixed_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None

    def _raw_probs(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=self.input_dtype)
        if self.fixed_batch is not None and len(x) != self.fixed_batch:  # a graph with a fixed batch size
            return np.concatenate([self._raw_probs(x[i:i + 1]) for i in range(len(x))])
        return np.asarray(self.session.run(None, {self.input_name: x})[0], dtype=np.float32)

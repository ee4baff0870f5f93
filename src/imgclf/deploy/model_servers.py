"""The folder layouts that model servers load as they are (written by `imgclf export`).

    imgclf export model.keras -f triton    -o repo   ->  repo/NAME/config.pbtxt
                                                          repo/NAME/labels.txt
                                                          repo/NAME/1/model.onnx
    imgclf export model.keras -f tfserving -o models ->  models/NAME/1/  (a SavedModel: serving_default)

Triton: `tritonserver --model-repository repo`. config.pbtxt names the ONNX Runtime platform, the
graph's input and output tensors with their data types and per-image dims (the batch dimension is
Triton's own: with max_batch_size > 0 it is left out of `dims`, and the ONNX graph's first dimension
must be dynamic), max_batch_size, dynamic batching, and labels.txt (the class names, one per line)
for Triton's classification output. The text is checked against Triton's ModelConfig schema
(tritonclient.grpc.model_config_pb2, parsed with protobuf's text_format) where tritonclient is
installed. Input: raw 0..255 RGB NHWC float32, as every imgclf export; output: probabilities.

TF Serving: `tensorflow_model_server --model_base_path=$PWD/models/NAME --model_name=NAME`; it serves
the highest numbered version folder. NAME defaults to the model file's stem; the version is 1.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import ImgclfError, quote

LAYOUTS = ("triton", "tfserving")
VERSION = "1"
MAX_BATCH_SIZE = 64
QUEUE_DELAY_US = 2000  # as `imgclf serve`'s default batch window
NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")
# ONNX TensorProto element types -> Triton data types (the ones an image model can have)
TRITON_TYPES = {1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 6: "TYPE_INT32", 7: "TYPE_INT64",
                10: "TYPE_FP16", 11: "TYPE_FP64", 16: "TYPE_BF16"}


def model_name(name: str | None, model_path: Path) -> str:
    name = model_path.stem if name is None else name
    if not NAME_RE.fullmatch(name):
        raise ImgclfError(f"--name: {quote(name)} is not a model name (expected 1 to 100 letters, digits, '_', '-' "
                          "or '.', not starting with '-' or '.')")
    return name


def _tensor(value, where: str) -> tuple[str, str, list[int]]:
    """(name, Triton data type, dims without the batch dimension) of an ONNX graph input/output."""
    ttype = value.type.tensor_type
    if ttype.elem_type not in TRITON_TYPES:
        raise ImgclfError(f"{where}: tensor {value.name!r} has ONNX element type {ttype.elem_type}, which the "
                          "Triton layout does not map")
    dims = list(ttype.shape.dim)
    if not dims or dims[0].HasField("dim_value"):
        raise ImgclfError(f"{where}: tensor {value.name!r} has no dynamic batch dimension (Triton's batching "
                          "needs one)")
    rest = [d.dim_value if d.HasField("dim_value") else -1 for d in dims[1:]]
    return value.name, TRITON_TYPES[ttype.elem_type], rest


def triton_config(onnx_path: Path, name: str, labels: bool = True, max_batch_size: int = MAX_BATCH_SIZE) -> str:
    """config.pbtxt for the ONNX model at `onnx_path`, checked against Triton's schema where it can be."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    weights = {t.name for t in graph.initializer}
    inputs = [v for v in graph.input if v.name not in weights]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise ImgclfError(f"{onnx_path}: expected one input and one output, got {len(inputs)} and {len(graph.output)}")
    where = str(onnx_path)
    (in_name, in_type, in_dims), (out_name, out_type, out_dims) = _tensor(inputs[0], where), _tensor(graph.output[0], where)

    def block(kind, tensor_name, dtype, dims, extra=""):
        return (f"{kind} [\n  {{\n    name: \"{tensor_name}\"\n    data_type: {dtype}\n"
                f"    dims: [ {', '.join(map(str, dims))} ]\n{extra}  }}\n]\n")

    text = (f"name: \"{name}\"\nplatform: \"onnxruntime_onnx\"\nmax_batch_size: {max_batch_size}\n"
            + block("input", in_name, in_type, in_dims)
            + block("output", out_name, out_type, out_dims, "    label_filename: \"labels.txt\"\n" if labels else "")
            + f"dynamic_batching {{\n  max_queue_delay_microseconds: {QUEUE_DELAY_US}\n}}\n"
            + "instance_group [\n  {\n    kind: KIND_CPU\n    count: 1\n  }\n]\n")
    check_triton_config(text, where)
    return text


def check_triton_config(text: str, where: str = "config.pbtxt"):
    """Parse `text` into tritonclient's ModelConfig message (None where tritonclient is not installed)."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        return None
    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as e:
        raise ImgclfError(f"{where}: the Triton config does not fit Triton's ModelConfig schema ({e})") from None


def triton_layout(onnx_file: Path, root: Path, name: str, class_names: list[str]) -> Path:
    """root/name/{config.pbtxt, labels.txt, 1/model.onnx} from `onnx_file` (moved); returns root/name."""
    model_dir = root / name
    (model_dir / VERSION).mkdir(parents=True)
    os.replace(onnx_file, model_dir / VERSION / "model.onnx")
    (model_dir / "labels.txt").write_text("".join(c + "\n" for c in class_names))
    (model_dir / "config.pbtxt").write_text(triton_config(model_dir / VERSION / "model.onnx", name))
    return model_dir


def tfserving_layout(savedmodel: Path, root: Path, name: str) -> Path:
    """root/name/1/ from the SavedModel folder `savedmodel` (moved); returns root/name."""
    model_dir = root / name
    model_dir.mkdir(parents=True)
    os.replace(savedmodel, model_dir / VERSION)
    return model_dir

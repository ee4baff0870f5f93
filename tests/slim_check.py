"""Check a serving-only install (no TensorFlow, no Keras): run with the slim venv's python.

    python -m venv /tmp/slim && /tmp/slim/bin/pip install . && /tmp/slim/bin/python tests/slim_check.py

It proves that this environment cannot import tensorflow or keras, then, with the .onnx model
shipped as `--pretrained cifar10`, that `imgclf predict` works and that `imgclf serve` answers
/health, /model, /docs (offline assets), POST /predict (with an occlusion heatmap), a bad
upload with a 4xx and /metrics, and that both refuse an .onnx file with bad metadata with one error line; and that
the ONNX path decodes with the model's decode rule ("full" when its metadata has none, "draft" when it
says so). Standard library only on the client side. Exit status 0 = all good; the last
line is 'N passed, 0 failed'.
"""

from __future__ import annotations

HANG = 1800  # a hang guard, not a speed bound (tests/conftest.py)
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("IMGCLF_SHARED", REPO.parent / "shared"))
IMGCLF = [sys.executable, "-m", "imgclf.cli"]
checks = {"passed": 0, "failed": 0}


def check(name, cond, detail=""):
    checks["passed" if cond else "failed"] += 1
    print(f"{'ok  ' if cond else 'FAIL'} {name}" + (f": {detail}" if detail and not cond else ""), flush=True)


def multipart(field, filename, blob):
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + blob + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def request(url, body=None, ctype=None):
    req = urllib.request.Request(url, data=body, headers={"Content-Type": ctype} if ctype else {})
    try:
        with urllib.request.urlopen(req, timeout=HANG) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def read_varint(buf: bytes, i: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        n, i, shift = n | (buf[i] & 0x7F) << shift, i + 1, shift + 7
        if buf[i - 1] < 0x80:
            return n, i


def with_imgclf_metadata(model: bytes, text: str) -> bytes:
    """An ONNX model (protobuf ModelProto) whose only metadata_props entry is imgclf = `text`,
    without the onnx package: field 14 holds StringStringEntryProto {key = 1, value = 2}."""
    out, i = bytearray(), 0
    while i < len(model):
        start = i
        tag, i = read_varint(model, i)
        if tag & 7 == 0:
            i = read_varint(model, i)[1]
        elif tag & 7 == 2:
            size, i = read_varint(model, i)
            i += size
        else:
            i += {1: 8, 5: 4}[tag & 7]
        if tag >> 3 != 14:
            out += model[start:i]
    key, value = b"imgclf", text.encode()
    entry = b"\x0a" + varint(len(key)) + key + b"\x12" + varint(len(value)) + value
    return bytes(out + b"\x72" + varint(len(entry)) + entry)


def check_bad_metadata(tmp: Path, img: Path) -> None:
    """predict and serve refuse an .onnx file whose metadata is wrong with one error line, exit 2."""
    from imgclf.runtime.zoo import PRETRAINED_DIR

    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    good = {"class_names": classes, "input_size": 32, "resize": "stretch"}
    cases = (("good", good), ("temperature", {**good, "temperature": 0}),
             ("class_names", {**good, "class_names": classes[:9]}), ("decode", {**good, "decode": "fast"}))
    for i, (name, meta) in enumerate(cases):
        path = tmp / f"model{i}.onnx"  # the field is not in the file name
        path.write_bytes(with_imgclf_metadata((PRETRAINED_DIR / "cifar10.onnx").read_bytes(), json.dumps(meta)))
        if name == "good":  # the rewritten file itself is sound
            r = subprocess.run(IMGCLF + ["predict", str(path), str(img)], capture_output=True, text=True, timeout=HANG)
            check("a rewritten .onnx with good metadata predicts", r.returncode == 0, r.stderr[-500:])
            continue
        for command in (["predict", str(path), str(img)], ["serve", str(path), "--port", "9"]):
            r = subprocess.run(IMGCLF + command, capture_output=True, text=True, timeout=HANG)
            lines = r.stderr.strip().splitlines()
            one_line = len(lines) == 1 and lines[0].startswith("error: ") and path.name in lines[0]
            check(f"{command[0]} refuses bad {name} metadata with one error line", r.returncode == 2 and one_line
                  and name in lines[0].replace(str(path), ""), r.stderr[-500:])


def check_decode_rule(tmp: Path) -> None:
    """The ONNX-only install decodes a photo-sized JPEG with the model's rule: "full" for the shipped
    model (its metadata names none), "draft" for a copy whose metadata says "draft"."""
    import numpy as np
    from PIL import Image

    from imgclf.data.images import to_rgb
    from imgclf.runtime.onnx_runtime import OnnxClassifier
    from imgclf.runtime.zoo import PRETRAINED_DIR

    rng = np.random.default_rng(0)
    photo = tmp / "photo.jpg"
    Image.fromarray(rng.integers(0, 256, (533, 400, 3), dtype=np.uint8)).save(photo, quality=90)
    shipped = OnnxClassifier(PRETRAINED_DIR / "cifar10.onnx")
    draft_path = tmp / "draft.onnx"
    draft_path.write_bytes(with_imgclf_metadata((PRETRAINED_DIR / "cifar10.onnx").read_bytes(),
                                                json.dumps({**shipped.meta, "decode": "draft"})))
    draft = OnnxClassifier(draft_path)
    check("a model without a decode rule decodes in full", shipped.decode == "full" and np.array_equal(
        shipped.load_images([photo])[0], to_rgb(photo, 32, shipped.resize, "full")))
    check("a draft model decodes in draft mode", draft.decode == "draft" and np.array_equal(
        draft.load_images([photo])[0], to_rgb(photo, 32, draft.resize, "draft")))
    check("the two rules differ on a photo",
          not np.array_equal(shipped.load_images([photo]), draft.load_images([photo])))
    r = subprocess.run(IMGCLF + ["predict", str(draft_path), str(photo)], capture_output=True, text=True, timeout=HANG)
    check("imgclf predict with a draft model", r.returncode == 0, r.stderr[-500:])


def main() -> int:
    for name in ("tensorflow", "keras"):
        check(f"{name} is not installed", importlib.util.find_spec(name) is None)
    ships = sorted((SHARED / "datasets" / "cifar10-jpeg" / "train" / "ship").glob("*.jpg"))
    if not ships:
        print(f"error: {SHARED / 'datasets' / 'cifar10-jpeg'}: no CIFAR-10 JPEGs found "
              "(set IMGCLF_SHARED to the shared folder)", file=sys.stderr)
        return 2
    image = ships[0]
    with tempfile.TemporaryDirectory() as tmp:
        img = Path(tmp) / "ship.jpg"
        shutil.copyfile(image, img)
        r = subprocess.run(IMGCLF + ["predict", "--pretrained", "cifar10", str(img), "--json"], capture_output=True,
                           text=True, timeout=HANG)
        check("imgclf predict --pretrained cifar10", r.returncode == 0, r.stderr[-500:])
        if r.returncode == 0:
            top = json.loads(r.stdout)[0]["top"]
            check("predict gives 5 classes", len(top) == 5, r.stdout)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen(IMGCLF + ["serve", "--pretrained", "cifar10", "--port", str(port)],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            deadline, up = time.time() + HANG, False
            while time.time() < deadline and server.poll() is None and not up:
                try:
                    up = request(url + "/health")[0] == 200
                except OSError:
                    time.sleep(0.2)
            check("imgclf serve starts", up)
            if up:
                status, body = request(url + "/model")
                info = json.loads(body)
                check("/model: onnxruntime with 10 classes", info["runtime"] == "onnxruntime"
                      and len(info["classes"]) == 10, body[:300])
                status, body = request(url + "/docs")
                check("/docs is offline", status == 200 and b"/docs-assets/" in body and b"https://" not in body)
                check("/docs assets", request(url + "/docs-assets/swagger-ui-bundle.js")[0] == 200)
                status, body = request(url + "/predict?k=3&heatmap=true", *multipart("files", "ship.jpg", img.read_bytes()))
                pred = json.loads(body)["predictions"][0] if status == 200 else {}
                check("POST /predict", status == 200 and len(pred.get("top", [])) == 3, body[:300])
                check("occlusion heatmap", pred.get("heatmap", {}).get("method") == "occlusion")
                status, body = request(url + "/predict", *multipart("files", "a.txt", b"not an image"))
                check("bad upload is a 4xx with a JSON error", status == 400 and "error" in json.loads(body), body[:300])
                check("page at /", request(url + "/")[0] == 200)
                status, body = request(url + "/metrics")
                counted = b'imgclf_http_requests_total{endpoint="/predict",status="200"} 1.0' in body
                check("/metrics counts the prediction", status == 200 and counted, body[:300])
        finally:
            server.terminate()
            out = server.communicate(timeout=HANG)[0]
        check("serve imported no tensorflow", "tensorflow" not in out.lower(), out[-500:])
        check_bad_metadata(Path(tmp), img)
        check_decode_rule(Path(tmp))
    print(f"{checks['passed']} passed, {checks['failed']} failed")
    return 1 if checks["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())

"""Check a serving-only install (no TensorFlow, no Keras): run with the slim venv's python.

    python -m venv /tmp/slim && /tmp/slim/bin/pip install . && /tmp/slim/bin/python tests/slim_check.py

It proves that this environment cannot import tensorflow or keras, then, with the .onnx model
shipped as `--pretrained cifar10`, that `imgclf predict` works and that `imgclf serve` answers
/health, /model, /docs (offline assets), POST /predict (with an occlusion heatmap) and a bad
upload with a 4xx. Standard library only on the client side. Exit status 0 = all good; the last
line is 'N passed, 0 failed'.
"""

from __future__ import annotations

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
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def main() -> int:
    for name in ("tensorflow", "keras"):
        check(f"{name} is not installed", importlib.util.find_spec(name) is None)
    image = sorted((SHARED / "datasets" / "cifar10-jpeg" / "train" / "ship").glob("*.jpg"))[0]
    with tempfile.TemporaryDirectory() as tmp:
        img = Path(tmp) / "ship.jpg"
        shutil.copyfile(image, img)
        r = subprocess.run(IMGCLF + ["predict", "--pretrained", "cifar10", str(img), "--json"], capture_output=True,
                           text=True, timeout=120)
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
            deadline, up = time.time() + 120, False
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
        finally:
            server.terminate()
            out = server.communicate(timeout=20)[0]
        check("serve imported no tensorflow", "tensorflow" not in out.lower(), out[-500:])
    print(f"{checks['passed']} passed, {checks['failed']} failed")
    return 1 if checks["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())

"""Issue 16, part 3: imgclf's fast94 recipe against airbench94 on the same GPU.

Two steps on two machines. Here, where package registries answer:

    python bench/gpu.py prepare [--out .carry]   # pack the JPEGs, fetch the wheels the GPU image lacks
    python bench/gpu.py run --smoke              # check: 2,000 images, 1 epoch each, JAX on the CPU

and on the GPU machine, in one call of the session's `device` tool (repo root, .carry/ carried):

    run(command="set -o pipefail; PYTHONUNBUFFERED=1 python3 bench/gpu.py run --carry .carry --out $OUT 2>&1 | tee $OUT/gpu_bench.log",
        carry=[".carry"], timeout_s=540)

`prepare` fills .carry/ (git-ignored): the CIFAR-10 training JPEGs in one .npz (bench/gpu_data.py)
and wheels/: Keras and the config schema's pydantic with the pure dependencies the GPU image lacks
(/work/.library/device/KINDS.md lists what it holds), at this .venv's versions, and airbench, built
from its sdist (PyPI has no wheel).

`run` installs the carried wheels this interpreter lacks into a folder of its own (pip --target, so
the image's JAX, PyTorch and numpy stay in use), decodes the JPEGs with imgclf's decoder, splits
them as every bench result does (imgclf's stratified 10% validation split, split seed 0: 45,000 /
5,000), then runs these stages, each in a child process limited by what is left of --budget:
  airbench94  airbench's own code from the wheel, as published (warmup94(), then train94()), on
              cifar10/train.pt and test.pt made from the split: its "test" accuracy is on our held-out
              5,000, since the official test set is not on these machines
  fast94      imgclf.training.trainer.train(recipe="fast94") on the same images (written as CIFAR-10
              python batches, so imgclf's loader carves the same 5,000 and decodes nothing)
  profile     where fast94's time goes: an epoch of batches produced alone; one batch fed through
              fit() again and again (step compute and Keras' per-step cost, no input pipeline), with
              and without the trainer's per-batch callbacks; a short jax.profiler trace
  fast94_gpu  fast94 with GPU_OPTIONS, each only where imgclf.config knows the field
OUT/gpu_bench.json is rewritten after each stage; a table is printed last.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(Path(__file__).resolve().parent), str(REPO / "src")]
import gpu_data  # noqa: E402

SHARED = Path(os.environ.get("IMGCLF_SHARED", REPO.parent / "shared"))
CARRY_LIMIT = 64 * 2**20  # the device tool's limit on what travels (working tree + carried paths)
GPU_PYTHON = "3.12"  # the GPU image's python3 (KINDS.md)
CARRIED = ("keras", "namex", "optree", "pydantic", "pydantic-core", "annotated-types", "typing-inspection",
           "typing-extensions")
ON_GPU = {"numpy", "absl-py", "rich", "h5py", "ml-dtypes", "packaging", "pyyaml", "pillow", "scipy",
          "scikit-learn", "matplotlib", "tqdm", "jinja2", "torch", "torchvision", "jax", "jaxlib"}
AIRBENCH = "airbench==0.1.8"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")
GPU_OPTIONS = {"augment_device": True, "steps_per_execution": 8, "precision": "mixed_bfloat16"}
STAGES = (("airbench94", 45), ("fast94", 100), ("profile", 40), ("fast94_gpu", 90))  # name, least seconds
DEVICE_RUN = ('run(command="set -o pipefail; PYTHONUNBUFFERED=1 python3 bench/gpu.py run --carry .carry --out $OUT '
              '2>&1 | tee $OUT/gpu_bench.log", carry=[".carry"], timeout_s=540)')
HELD_OUT = ("imgclf's stratified 10% validation split (split seed 0) of the CIFAR-10 training JPEGs, for both; "
            "airbench normally scores the official 10,000-image test set, which is not on these machines")


def fail(message: str):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def write_json(path: Path, obj) -> None:
    from imgclf.fileio import write_json as atomic_json

    atomic_json(path, obj)


def versions(*names: str) -> dict:
    found = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


# ---------------------------------------------------------------------------------------------
# prepare (here)
# ---------------------------------------------------------------------------------------------

def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def requirements(wheel: Path) -> set[str]:
    import zipfile

    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode().splitlines()
    names = set()
    for line in lines:
        if line.startswith("Requires-Dist:") and "extra ==" not in line:
            spec = line.split(":", 1)[1].split(";")[0].strip()
            name = spec.replace("(", " ").replace("[", " ").split()[0]
            for sep in "<>=!~":
                name = name.split(sep)[0]
            names.add(name.lower().replace("_", "-"))
    return names


def tree_bytes() -> int:
    """What the device tool sends besides carried paths: tracked and untracked-not-ignored files."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                            capture_output=True).stdout.decode().split("\0")
    return sum((REPO / f).stat().st_size for f in listed if f and (REPO / f).is_file())


def prepare(args) -> None:
    out = Path(args.out)
    folder = Path(args.data) / "train"
    if not folder.is_dir():
        fail(f"{folder}: not found (expected the CIFAR-10 JPEG folder's train/<class>/*.jpg; set --data)")
    out.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["git", "check-ignore", "-q", str(out.resolve())], cwd=REPO).returncode != 0:
        print(f"warning: {out} is not ignored by git: add /{out.name}/ to .gitignore", file=sys.stderr)
    t = time.perf_counter()
    packed = gpu_data.pack(folder, out / gpu_data.PACK_NAME)
    print(f"packed {packed['images']:,} JPEGs ({packed['jpeg_bytes'] / 2**20:.1f} MiB of JPEG) into "
          f"{out / gpu_data.PACK_NAME}: {packed['file_bytes'] / 2**20:.1f} MiB ({time.perf_counter() - t:.0f} s)")
    data = gpu_data.load_pack(out / gpu_data.PACK_NAME)
    from imgclf.data.images import DEFAULT_DECODE, to_rgb

    data["index"] = np.linspace(0, len(data["labels"]) - 1, 200).astype(int)
    same = np.array_equal(gpu_data.decode(data), np.stack(
        [to_rgb(folder / str(data["files"][i]), 32, "stretch", DEFAULT_DECODE) for i in data["index"]]))
    print(f"200 packed images decode to the same pixels as imgclf's loader reads from the files: {same}")
    if not same:
        fail(f"{out / gpu_data.PACK_NAME}: decoded pixels differ from the files")

    wheels = out / "wheels"
    shutil.rmtree(wheels, ignore_errors=True)  # one version of each
    wanted = versions(*CARRIED)
    platforms = [x for p in PLATFORMS for x in ("--platform", p)]
    for name, version in wanted.items():
        if version is None:
            fail(f"{name}: not installed in this interpreter (prepare carries the versions this .venv runs)")
        pip("download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", args.python,
            "--implementation", "cp", *platforms, "-d", str(wheels), f"{name}=={version}")
    pip("wheel", "-q", "--no-deps", "-w", str(wheels), AIRBENCH)  # an sdist only: a pure-python wheel
    carried = {w.name.split("-")[0].lower().replace("_", "-") for w in wheels.glob("*.whl")}
    for wheel in sorted(wheels.glob("*.whl")):
        missing = requirements(wheel) - carried - ON_GPU
        print(f"  {wheel.name}: {wheel.stat().st_size / 2**20:.2f} MiB"
              + (f"; needs {sorted(missing)}, neither carried nor known on the GPU image" if missing else ""))
    carry = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    tree = tree_bytes()
    print(f"{out}: {carry / 2**20:.1f} MiB; with the working tree ({tree / 2**20:.1f} MiB): "
          f"{(carry + tree) / 2**20:.1f} of the {CARRY_LIMIT / 2**20:.0f} MiB that may travel")
    if carry + tree > CARRY_LIMIT:
        per_image = packed["file_bytes"] / packed["images"]
        room = CARRY_LIMIT - tree - (carry - packed["file_bytes"])
        print(f"too large: about {max(0, int(room / per_image)):,} of the {packed['images']:,} images fit")
    print(f"on the GPU machine, one call:\n  {DEVICE_RUN}")


# ---------------------------------------------------------------------------------------------
# run (the GPU machine; here with --smoke)
# ---------------------------------------------------------------------------------------------

def install(wheels: Path, site: Path) -> dict:
    """pip install --target the carried wheels whose distribution this interpreter lacks (or has at
    another version); the image's own packages stay in use for the rest."""
    t, need, present = time.perf_counter(), [], []
    for wheel in sorted(wheels.glob("*.whl")) if wheels.is_dir() else []:
        name, version = wheel.name.split("-")[:2]
        (present if versions(name)[name] == version else need).append(wheel)
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
               "--no-cache-dir", "--upgrade", "--target", str(site)]
    failed = []
    if need and subprocess.run(command + [str(w) for w in need]).returncode != 0:  # then one by one
        failed = [w.name for w in need if subprocess.run(command + [str(w)]).returncode != 0]
        print(f"warning: could not install {failed}; the stages that need them will say so", file=sys.stderr)
    return {"installed": [w.name for w in need if w.name not in failed], "failed": failed,
            "already_present": [w.name for w in present], "seconds": time.perf_counter() - t}


def run(args) -> None:
    t0 = time.perf_counter()
    budget = args.budget or (3600 if args.smoke else 450)
    out = Path(args.out or os.environ.get("OUT") or REPO / "runs" / "gpu_bench")
    pack_path = Path(args.carry) / gpu_data.PACK_NAME
    if not pack_path.is_file():
        fail(f"{pack_path}: not found (expected the pack `python bench/gpu.py prepare` writes)")
    try:
        data = gpu_data.load_pack(pack_path, args.smoke_images if args.smoke else None)
    except gpu_data.PackError as e:
        fail(str(e))
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu_bench_"))
    try:
        site = work / "site"
        report = {"what": "imgclf fast94 against airbench94 on one machine (issue 16, part 3)",
                  "when_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"), "smoke": args.smoke,
                  "host": {"python": platform.python_version(), "cpus": os.cpu_count()},
                  "install": install(Path(args.carry) / "wheels", site), "held_out": HELD_OUT}
        sys.path.insert(0, str(site))
        t = time.perf_counter()
        x, y = gpu_data.decode(data), data["labels"][data["index"]]
        train_index, val_index = gpu_data.split(y)
        names = data["class_names"]
        np.savez(work / "data.npz", x=x, y=y, train=train_index, val=val_index, class_names=np.asarray(names))
        gpu_data.write_cifar_batches(work / "cifar", x, y, names, x[val_index], y[val_index])
        report["data"] = {"images": len(y), "train": len(train_index), "val": len(val_index),
                          "decode_seconds": time.perf_counter() - t}
        print(f"{len(y):,} images decoded: {len(train_index):,} train, {len(val_index):,} held out "
              f"({report['data']['decode_seconds']:.1f} s)", flush=True)
        env = {**os.environ, "KERAS_BACKEND": "jax", "IMGCLF_CACHE": str(work / "cache"), "MPLBACKEND": "Agg",
               "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
               "PYTHONPATH": os.pathsep.join(p for p in (str(site), str(REPO / "src"), os.environ.get("PYTHONPATH"))
                                             if p)}
        for name, least in STAGES:
            left = budget - (time.perf_counter() - t0)
            if left < least:
                report[name] = {"skipped": f"budget: {left:.0f} s left, the stage needs about {least} s"}
                print(f"== {name}: skipped, {report[name]['skipped']}", flush=True)
            else:
                report[name] = stage_process(name, work, out, args.smoke, env, left)
            report["device"] = next((report[n]["device"] for n in ("fast94", "profile", "fast94_gpu", "airbench94")
                                     if "device" in report.get(n, {})), None)
            report["comparison"] = compare(report)
            report["seconds_total"] = time.perf_counter() - t0
            write_json(out / "gpu_bench.json", report)
        print_table(report)
        print(f"results: {out / 'gpu_bench.json'}")
    finally:
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)


def stage_process(name: str, work: Path, out: Path, smoke: bool, env: dict, timeout: float) -> dict:
    part = work / f"part_{name}.json"
    print(f"== {name}: up to {timeout:.0f} s", flush=True)
    cmd = [sys.executable, __file__, "stage", name, "--work", str(work), "--out", str(out), "--part", str(part)]
    t = time.perf_counter()
    try:
        code = subprocess.run(cmd + (["--smoke"] if smoke else []), env=env, cwd=REPO, timeout=timeout).returncode
        result = json.loads(part.read_text()) if part.exists() else {"error": f"exit status {code}, no result"}
    except subprocess.TimeoutExpired:
        result = {"error": f"stopped at the budget, after {timeout:.0f} s"}
    result["stage_seconds"] = time.perf_counter() - t
    for key in ("skipped", "error"):
        if key in result:
            print(f"== {name}: {key}: {result[key]}", flush=True)
    return result


def stage(args) -> None:
    from gpu_stages import STAGE_FUNCTIONS

    try:
        result = STAGE_FUNCTIONS[args.name](Path(args.work), Path(args.out), args.smoke)
    except Exception as e:  # one stage failing leaves the others' results
        traceback.print_exc()
        result = {"error": f"{type(e).__name__}: {e}"[:800]}
    write_json(Path(args.part), result)


# ---------------------------------------------------------------------------------------------
# the comparison
# ---------------------------------------------------------------------------------------------

def ok(part) -> bool:
    return isinstance(part, dict) and "curve" in part and bool(part["curve"])


def first_reaching(curve: list[dict], target: float):
    return next((c["seconds"] for c in curve if c["val"] >= target - 1e-9), None)


def compare(report: dict) -> dict:
    a, rows = report.get("airbench94"), {}
    for name in ("fast94", "fast94_gpu"):
        f = report.get(name)
        if not (ok(a) and ok(f)):
            continue
        finals = (a["curve"][-1]["val"], f["curve"][-1]["val"])
        target = 0.94 if min(finals) >= 0.94 else min(finals)
        ta, tf = first_reaching(a["curve"], target), first_reaching(f["curve"], target)

        def ratio(key):
            return f[key] / a[key] if f.get(key) and a.get(key) else None
        rows[name] = {"throughput_ratio": ratio("images_per_second"),
                      "steady_throughput_ratio": ratio("steady_images_per_second"),
                      "target_ratio_0_5_met": (ratio("steady_images_per_second") or ratio("images_per_second")
                                               or 0) >= 0.5,
                      "accuracy_target": target, "airbench94_seconds_to_target": ta, "seconds_to_target": tf,
                      "time_to_target_ratio": tf / ta if ta and tf else None}
    return rows


def print_table(report: dict) -> None:
    cols = [n for n in ("airbench94", "fast94", "fast94_gpu") if ok(report.get(n))]
    print(f"\ndevice: {report.get('device')}; held out: {HELD_OUT}")
    fmt = {"images_per_second": "{:,.0f}", "steady_images_per_second": "{:,.0f}", "train_seconds": "{:.1f}",
           "stage_seconds": "{:.0f}", "final_val_tta": "{:.2%}", "last_epoch_val": "{:.2%}"}
    print("\n" + " " * 26 + "".join(f"{c:>14}" for c in cols))
    for key, form in fmt.items():
        cells = [report[c].get(key) for c in cols]
        print(f"{key:<26}" + "".join(f"{form.format(v) if v is not None else '-':>14}" for v in cells))
    for name, row in report.get("comparison", {}).items():
        def secs(v):
            return "never" if v is None else f"{v:.1f} s"
        print(f"{name}/airbench94: throughput {row['steady_throughput_ratio'] or 0:.2f}x steady "
              f"({row['throughput_ratio'] or 0:.2f}x all epochs; target >= 0.5); {row['accuracy_target']:.2%} "
              f"reached at {secs(row['seconds_to_target'])} vs {secs(row['airbench94_seconds_to_target'])}")
    prof = report.get("profile", {})
    if "pipeline_epoch_seconds" in prof:  # milliseconds per batch: where a training step's time goes
        parts = [f"producing the batch {1000 * prof['pipeline_epoch_seconds'] / prof['batches_per_epoch']:.1f}"]
        parts += [f"{k}, one batch fed again and again {1000 * v['epoch_seconds'] / v['steps']:.1f}"
                  for k, v in prof.get("compute", {}).items()]
        for name in ("fast94", "fast94_gpu"):
            if ok(report.get(name)):
                epochs = [c["epoch_seconds"] for c in report[name]["curve"]]
                per = statistics.median(epochs[1:] or epochs) / prof["batches_per_epoch"]
                parts.append(f"{name}'s training (median epoch, validation included) {1000 * per:.1f}")
        print(f"profile, ms per batch of {prof['batch_size']}:\n  " + "\n  ".join(parts))
    for name in ("airbench94", "fast94", "profile", "fast94_gpu"):
        part = report.get(name, {})
        if "skipped" in part or "error" in part:
            print(f"{name}: {part.get('skipped') or part.get('error')}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="pack the JPEGs and fetch the wheels into --out (here)")
    p.add_argument("--out", default=str(REPO / ".carry"))
    p.add_argument("--data", default=str(SHARED / "datasets" / "cifar10-jpeg"))
    p.add_argument("--python", default=GPU_PYTHON, help="the GPU machine's Python version, for binary wheels")
    r = sub.add_parser("run", help="the benchmark (the GPU machine; here with --smoke)")
    r.add_argument("--carry", default=str(REPO / ".carry"))
    r.add_argument("--out", default=None, help="results folder (default: $OUT, else runs/gpu_bench)")
    r.add_argument("--smoke", action="store_true", help="a few images, 1 epoch each: checks the path, not speed")
    r.add_argument("--smoke-images", type=int, default=2000)
    r.add_argument("--budget", type=float, default=None, help="seconds for all stages (default 450; smoke 3600)")
    r.add_argument("--keep-work", action="store_true", help="keep the temporary work folder")
    s = sub.add_parser("stage", help=argparse.SUPPRESS)
    s.add_argument("name")
    s.add_argument("--work", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--part", required=True)
    s.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "run" and (args.smoke_images < 20 or (args.budget is not None and args.budget <= 0)):
        fail("run: --smoke-images expects at least 20 and --budget a positive number of seconds")
    {"prepare": prepare, "run": run, "stage": stage}[args.command](args)


if __name__ == "__main__":
    main()

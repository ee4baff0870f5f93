"""Pretrained models shipped inside the package (src/imgclf/runtime/pretrained/<name>.keras / .onnx).

`imgclf predict --pretrained cifar10 img.jpg` and `imgclf serve --pretrained cifar10` use them
with no training and no network. They are written by `bench/pretrained.py` (see README for the
command, seed and checksums). Both files carry the same metadata and model card.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import ImgclfError

PRETRAINED_DIR = Path(__file__).with_name("pretrained")


def available() -> list[str]:
    if not PRETRAINED_DIR.is_dir():
        return []
    return sorted({p.stem for p in PRETRAINED_DIR.iterdir() if p.suffix in (".keras", ".onnx")})


def keras_available() -> bool:
    return importlib.util.find_spec("keras") is not None and importlib.util.find_spec("tensorflow") is not None


def pretrained_path(name: str, prefer: tuple[str, ...] = ("onnx", "keras")) -> Path:
    """The shipped file for `name`, by format preference; .keras only where Keras is installed."""
    names = available()
    if name not in names:
        raise ImgclfError(f"--pretrained: unknown pretrained model {name!r} "
                          f"(available: {', '.join(names) or 'none shipped'})")
    for fmt in prefer:
        path = PRETRAINED_DIR / f"{name}.{fmt}"
        if path.is_file() and (fmt != "keras" or keras_available()):
            return path
    raise ImgclfError(f"--pretrained {name}: no file this install can run (the .keras file needs "
                      "pip install 'imgclf[train]')")

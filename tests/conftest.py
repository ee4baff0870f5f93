"""Shared fixtures: small synthetic image folders, the real CIFAR-10 JPEGs, an isolated cache."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("IMGCLF_SHARED", REPO.parent / "shared"))
CIFAR_JPEG = SHARED / "datasets" / "cifar10-jpeg"

# Synthetic classes that a CNN learns in a few steps: the dominant colour of the image.
# How long a test waits for a subprocess or a server before calling it hung: a guard against hangs,
# not a speed bound, so it holds on a machine many times slower than usual or under heavy load.
HANG = 1800

COLOURS = {"blue": (30, 60, 220), "green": (40, 200, 60), "red": (220, 40, 40)}


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Decoded-image cache in a temp folder, so tests neither use nor fill ~/.cache."""
    os.environ["IMGCLF_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield


def make_folder(root: Path, per_class: int = 12, size: int = 32, seed: int = 0, classes=COLOURS) -> Path:
    """root/<colour>/<i>.png: noisy images of one dominant colour per class."""
    rng = np.random.default_rng(seed)
    for name, rgb in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            noise = rng.integers(-40, 40, (size, size, 3))
            img = np.clip(np.asarray(rgb)[None, None, :] + noise, 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / name / f"{i:03d}.png")
    return root


@pytest.fixture
def colour_folder(tmp_path) -> Path:
    return make_folder(tmp_path / "colours")


@pytest.fixture(scope="session")
def cifar_jpeg() -> Path:
    if not (CIFAR_JPEG / "train").is_dir():
        pytest.fail(f"real images not found at {CIFAR_JPEG} (set IMGCLF_SHARED to the shared folder)")
    return CIFAR_JPEG


@pytest.fixture(scope="session")
def trained_colour_model(tmp_path_factory):
    """A seed_cnn trained for a few epochs on the colour folder: (run result, data folder)."""
    import imgclf

    base = tmp_path_factory.mktemp("colour-run")
    data = make_folder(base / "data", per_class=30)
    run = imgclf.train(data=str(data), epochs=4, batch_size=16, learning_rate=0.01, val_fraction=0.2,
                       run_dir=base / "run", verbose=0, report=False)
    return run, data

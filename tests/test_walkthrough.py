"""Execute examples/walkthrough.ipynb end to end (nbclient), so that the notebook never rots."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import HANG

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "examples" / "walkthrough.ipynb"
SHARED = Path(os.environ.get("IMGCLF_SHARED", REPO.parent / "shared"))


@pytest.mark.slow
def test_walkthrough_notebook_runs(tmp_path, monkeypatch):
    import nbformat  # test dependencies: nbformat, nbclient, ipykernel
    from nbclient import NotebookClient

    assert (SHARED / "datasets" / "cifar10-jpeg" / "train").is_dir(), f"CIFAR-10 JPEGs not found under {SHARED}"
    monkeypatch.setenv("IMGCLF_SHARED", str(SHARED.resolve()))
    monkeypatch.setenv("IMGCLF_WALKTHROUGH_OUT", str(tmp_path / "out"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit the notebook without outputs"
    NotebookClient(nb, timeout=HANG, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert errors == []
    out = tmp_path / "out"
    for name in ("seed/report.html", "seed/model.keras", "study/trials.csv", "study/report.html", "evaluation/report.html",
                 "compare.html", "model.onnx"):
        assert (out / name).is_file(), name
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "| Accuracy |" in text and "Keras vs ONNX Runtime: max |dp|" in text

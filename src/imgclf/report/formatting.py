"""How a report writes numbers: percentages, fixed decimals, durations; '–' for a missing value."""

from __future__ import annotations

import numpy as np

from ..evaluation.metrics import SET_NAMES

MISSING = "–"


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v))


def pct(v) -> str:
    return MISSING if _missing(v) else f"{100 * float(v):.2f}%"


def num(v, digits: int = 4) -> str:
    return MISSING if _missing(v) else f"{float(v):.{digits}f}"


def secs(v) -> str:
    if v is None:
        return MISSING
    v = float(v)
    return f"{v:.1f} s" if v < 120 else (f"{v / 60:.1f} min" if v < 7200 else f"{v / 3600:.2f} h")


def format_value(key: str, v) -> str:
    """A compared metric by its name: accuracies as %, seconds as durations, epochs whole."""
    if v is None:
        return MISSING
    if "accuracy" in key:
        return pct(v)
    if "seconds" in key:
        return secs(v)
    if key == "epochs":
        return str(int(v))
    return num(v, 3 if ("ECE" in key or key == "temperature") else 4)


def set_label(name: str) -> str:
    """'val' -> 'validation set', as a sentence names it."""
    return SET_NAMES.get(name, name).lower()

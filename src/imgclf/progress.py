"""Progress bars for long runs over many images: tqdm on stderr, or nothing.

`progress_bar(total, desc, show)` gives a tqdm bar when there are more than `minimum` items and
`show` is True, or None with stderr a terminal; otherwise (and where tqdm is not installed, as in
the ONNX-only install) a stand-in with the same `update` that draws nothing. stdout is never
touched, so output that scripts parse stays the same. No imgclf imports: any stage may use it.
"""

from __future__ import annotations

import sys

PROGRESS_MIN = 1000  # fewer images take seconds: no bar


class NoBar:
    """What progress_bar gives when no bar is drawn."""

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> NoBar:
        return self

    def __exit__(self, *exc) -> None:
        pass


def progress_bar(total: int, desc: str, show: bool | None = None, minimum: int | None = None,
                 unit: str = " images"):
    """A tqdm bar on stderr over `total` items (a context manager with `update(n)`), or a NoBar: when
    `show` is False, when `show` is None and stderr is not a terminal, for `minimum` (default
    PROGRESS_MIN) items or fewer, or without tqdm."""
    if show is None:
        show = sys.stderr.isatty()
    if not show or total <= (PROGRESS_MIN if minimum is None else minimum):
        return NoBar()
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm comes with the training extra; the ONNX-only install may lack it
        return NoBar()
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True)

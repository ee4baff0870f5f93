"""One exception type for every bad input a user can hand imgclf.

The CLI turns an ImgclfError into a single `error: ...` line and exit code 2, so
every message must name the file or field and say what was expected. A message quotes a bad
value through `quote`, so it never echoes a whole file, path or nested structure back.
"""

from __future__ import annotations

import reprlib

MAX_QUOTE = 60  # an error message quotes at most this many characters of a value
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 3, MAX_QUOTE + 2, MAX_QUOTE, MAX_QUOTE


class ImgclfError(Exception):
    """Bad input from the user: a file, folder, field or value that is not as expected."""


class DataError(ImgclfError):
    """A dataset, image or archive that cannot be used."""


class ConfigError(ImgclfError):
    """A config field or command-line value that is not valid."""


def shorten(text, limit: int = MAX_QUOTE) -> str:
    """`text` cut to `limit` characters (+ '…')."""
    text = str(text)
    return text if len(text) <= limit else text[:limit] + "…"


def quote(value, limit: int = MAX_QUOTE) -> str:
    """repr(value) for an error message, cut to `limit` characters (+ '…')."""
    if isinstance(value, str) and len(value) > limit:
        return repr(value[:limit]) + "…"
    return shorten(_REPR.repr(value), limit)

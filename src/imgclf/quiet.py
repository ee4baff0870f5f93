"""Import Keras (and TensorFlow under it) without TensorFlow's start-up chatter on stderr.

TensorFlow's native libraries write a few lines when they load, before any log level applies
(`TF_CPP_MIN_LOG_LEVEL` does not reach them), twice on one import: "All log messages before
absl::InitializeLog() ...", "oneDNN custom operations are on ...", "This TensorFlow binary is
optimized ..." with its instruction list. `import_keras()` imports Keras once with stderr's file
descriptor pointed at a temporary file, then writes back every line that is not one of those, so a
real error at import still shows (one that kills the process outright, a native abort, is lost
with it). The command line calls it before a command that uses Keras.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile

CHATTER = ("All log messages before absl::InitializeLog() is called",
           "oneDNN custom operations are on",
           "This TensorFlow binary is optimized to use available CPU instructions",
           "To enable the following instructions:",
           "rebuild TensorFlow with the appropriate compiler flags")
MAX_REPLAY = 1 << 20  # bytes of the import's stderr written back


def chatter(line: str) -> bool:
    return any(part in line for part in CHATTER)


def import_keras() -> None:
    """Import keras quietly (see the module docstring); nothing when it is imported or not installed.
    Without a usable stderr or temporary file it is a plain import. An import that raises (a bad
    KERAS_BACKEND, say) leaves keras unimported and writes back what it printed: the command's
    own import then raises again, inside the command line's error handling."""
    if "keras" in sys.modules or importlib.util.find_spec("keras") is None:
        return
    try:
        sys.stderr.flush()
        log = tempfile.TemporaryFile()
    except (AttributeError, OSError):  # stderr closed (None), or no usable temporary folder
        return
    with log:
        try:
            saved = os.dup(2)
        except OSError:  # file descriptor 2 closed
            return
        os.dup2(log.fileno(), 2)
        try:
            import keras  # noqa: F401
        except Exception:
            pass  # raised again where the command imports it, as an error line
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            log.seek(0)
            text = log.read(MAX_REPLAY).decode(errors="replace")
            kept = [line for line in text.splitlines() if not chatter(line)]
            if kept:
                print("\n".join(kept), file=sys.stderr, flush=True)


__all__ = ["import_keras", "chatter", "CHATTER"]

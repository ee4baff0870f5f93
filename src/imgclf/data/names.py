"""The rule for class names: a class name is a folder name, so it must be one that loads again.

Training checks its folder names with `class_name_problem`, and the model-file checks
(runtime/modelmeta.py) apply the same rule to a model's `class_names`, so every model that
training saves loads again.
"""

from __future__ import annotations

import unicodedata

MAX_NAME_CHARS = 255  # a class name is a folder name: at most 255 bytes on common file systems


def class_name_problem(name) -> str | None:
    """What a class name needs and `name` lacks (None if it is fine)."""
    if not isinstance(name, str) or not name.strip():
        return "a non-blank string"
    if len(name) > MAX_NAME_CHARS:
        return f"at most {MAX_NAME_CHARS} characters"
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in name):
        return "no control characters"
    return None

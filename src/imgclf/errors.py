"""One exception type for every bad input a user can hand imgclf.

The CLI turns an ImgclfError into a single `error: ...` line and exit code 2, so
every message must name the file or field and say what was expected.
"""


class ImgclfError(Exception):
    """Bad input from the user: a file, folder, field or value that is not as expected."""


class DataError(ImgclfError):
    """A dataset, image or archive that cannot be used."""


class ConfigError(ImgclfError):
    """A config field or command-line value that is not valid."""

"""The one image conversion function: every image, at training and at prediction time.

`to_rgb(...)` turns any file or PIL image into an (H, W, 3) uint8 RGB array of the model's
input size. Doing this in exactly one place is what makes training and serving agree.

Rules, in order:
1. Pixel limit: images above MAX_PIXELS are refused (Pillow's decompression-bomb guard, set
   far below its 89 MP default, with its warning turned into an error). Only regular files
   (or symlinks to them) up to MAX_FILE_BYTES are read: a FIFO, socket or device would block
   or never end, so it is refused before it is opened (check_regular_file).
2. EXIF orientation is applied (phone photos are often stored sideways).
3. Mode: 16-bit grayscale ("I;16", "I") is scaled 0..65535 -> 0..255 (not clipped);
   32-bit float ("F") is taken as 0..1 if its max is <= 1, else 0..255; RGBA / LA / palette
   transparency is composited on a fixed mid-grey BACKGROUND; everything else -> RGB.
4. Resize to (height, width) by one rule (recorded with the model):
   - "stretch": resize to exactly the target size, ignoring aspect ratio (CIFAR-style);
   - "crop": scale the short side to the target, then centre-crop;
   - "pad": scale the long side to the target, then pad centred with BACKGROUND.
   Resampling is bilinear with Pillow's antialiasing (reducing_gap=None for exactness).
5. Decode rule (recorded with the model as "decode"; a model without one is "full"):
   - "full": every JPEG is decoded at its stored size;
   - "draft": a JPEG is decoded by Pillow's draft mode at 1/2, 1/4 or 1/8 of its size (the
     decoder's DCT scaling), the largest reduction that keeps both sides at least the target's
     longer side, whatever the EXIF orientation; so the resize in 4. never gets fewer pixels
     than it needs, and an image less than twice the target's size decodes exactly as "full".
     Other formats decode as "full" (MPO, a JPEG with extra pictures, counts as JPEG).
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from ..errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
RESIZE_RULES = ("stretch", "crop", "pad")
DECODE_RULES = ("full", "draft")
DEFAULT_DECODE = "draft"  # what load_dataset (training) uses and new models record
MAX_PIXELS = 16_000_000  # 16 MP: ample for classifier inputs, far below Pillow's 89 MP default
MAX_FILE_BYTES = 128 * 2**20  # an image file larger than this is refused before it is read
BACKGROUND = (128, 128, 128)  # fixed colour for transparency and padding

Image.MAX_IMAGE_PIXELS = MAX_PIXELS


def _kind(mode: int) -> str:
    for test, kind in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return kind
    return "an unknown kind of file"


def check_regular_file(path: str | os.PathLike, what: str = "an image file") -> os.stat_result:
    """Stat `path` (following symlinks) without opening it; DataError unless it is a regular file.

    Call this before opening any file a user names: opening a FIFO blocks until a writer
    comes, and reading a device may never end."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise DataError(f"{path}: broken symbolic link (expected {what})") from None
        raise DataError(f"{path}: file not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or type(e).__name__})") from None
    if not stat.S_ISREG(st.st_mode):
        raise DataError(f"{path}: is {_kind(st.st_mode)}, not a regular file (expected {what})")
    return st


def is_regular_file(path: str | os.PathLike) -> bool:
    """True for a regular file or a symlink to one (False for FIFOs, sockets, devices, broken links)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def read_regular_file(path: str | os.PathLike, max_bytes: int = MAX_FILE_BYTES, what: str = "an image file") -> bytes:
    """The bytes of a regular file of at most `max_bytes`; DataError naming `path` otherwise.

    Checked before opening (check_regular_file) and again on the open descriptor, which is
    opened non-blocking so that a file swapped for a FIFO in between cannot hang the read."""
    st = check_regular_file(path, what)
    if st.st_size > max_bytes:
        raise DataError(f"{path}: {st.st_size:,} bytes; expected {what} of at most {max_bytes:,} bytes")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or type(e).__name__})") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise DataError(f"{path}: is {_kind(st.st_mode)}, not a regular file (expected {what})")
        # Ask for the size fstat gives plus one byte (asking for max_bytes would allocate that much for
        # every file); a file that has grown since is read on, to at most one byte past the limit.
        data = f.read(min(st.st_size, max_bytes) + 1)
        if max_bytes >= len(data) > st.st_size:
            data += f.read(max_bytes + 1 - len(data))
    if len(data) > max_bytes:
        raise DataError(f"{path}: larger than {max_bytes:,} bytes; expected {what} of at most that size")
    return data


def _open(source, draft_side: int | None = None) -> Image.Image:
    """Open and fully decode `source` (path, bytes, file object or PIL image), turning every
    failure into DataError. A path is read only if it is a regular file of at most MAX_FILE_BYTES.

    With `draft_side`, a JPEG is decoded reduced (Pillow's draft mode), both sides kept at least
    `draft_side` in stored and so also in upright orientation. A PIL image is used as given."""
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, (str, os.PathLike)):
        name, fp = str(source), io.BytesIO(read_regular_file(source))
    else:
        name = "<bytes>" if isinstance(source, (bytes, bytearray)) else str(source)
        fp = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(fp)
            if draft_side and img.format in ("JPEG", "MPO"):  # MPO: a phone's multi-picture JPEG
                img.draft(None, (draft_side, draft_side))
            img.load()  # decode now, so truncated files fail here and not later
        return img
    except FileNotFoundError:
        raise DataError(f"{name}: file not found") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DataError(f"{name}: image is larger than the {MAX_PIXELS:,}-pixel limit") from None
    except UnidentifiedImageError:
        raise DataError(f"{name}: not an image file (expected PNG, JPEG, BMP or WebP)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{name}: corrupt or truncated image ({e})") from None


def _to_rgb_mode(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        # 16-bit PNGs arrive as mode "I;16" or as "I" holding 0..65535; both scale by 257.
        arr = np.round(arr / 257.0) if arr.max(initial=0) > 255 or img.mode.startswith("I;16") else arr
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        scale = 255.0 if arr.max(initial=0) <= 1.0 else 1.0
        img = Image.fromarray(np.clip(np.round(arr * scale), 0, 255).astype(np.uint8), "L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def _resize(img: Image.Image, height: int, width: int, rule: str) -> Image.Image:
    if img.size == (width, height):
        return img
    if rule == "stretch":
        return img.resize((width, height), Image.Resampling.BILINEAR)
    if rule == "crop":
        return ImageOps.fit(img, (width, height), Image.Resampling.BILINEAR, centering=(0.5, 0.5))
    if rule == "pad":
        return ImageOps.pad(img, (width, height), Image.Resampling.BILINEAR, color=BACKGROUND)
    raise DataError(f"resize: unknown rule {rule!r} (expected one of {', '.join(RESIZE_RULES)})")


def to_rgb(source, size=(32, 32), resize: str = "stretch", decode: str = "full") -> np.ndarray:
    """Convert a path, bytes or PIL image to a (height, width, 3) uint8 RGB array.

    `size` is (height, width) or an int for a square; `decode` is "full" or "draft" (rule 5).
    Raises DataError with the file name on anything that is not a usable image.
    """
    height, width = (size, size) if isinstance(size, int) else size
    if resize not in RESIZE_RULES:
        raise DataError(f"resize: unknown rule {resize!r} (expected one of {', '.join(RESIZE_RULES)})")
    if decode not in DECODE_RULES:
        raise DataError(f"decode: unknown rule {decode!r} (expected one of {', '.join(DECODE_RULES)})")
    img = _resize(_to_rgb_mode(_upright(_open(source, max(height, width) if decode == "draft" else None))),
                  height, width, resize)
    return np.array(img, dtype=np.uint8)


_ORIENTATIONS = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
                 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
                 8: Image.Transpose.ROTATE_90}  # EXIF orientation -> the transpose that makes the image upright


def _upright(img: Image.Image) -> Image.Image:
    """`img` turned by its EXIF orientation (the pixels of ImageOps.exif_transpose, without its copy of an
    image that is already upright or its rewrite of the metadata, which to_rgb drops)."""
    try:
        img.load()  # a lazily opened TIFF applies its own orientation when it loads
        method = _ORIENTATIONS.get(img.getexif().get(ExifTags.Base.Orientation, 1))
    except Exception:  # a broken EXIF block should not make a readable image unusable
        return img
    return img if method is None else img.transpose(method)


def is_image_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS

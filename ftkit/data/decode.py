"""Content-sniffing image decoding with Pillow, free of TensorFlow.

Two jobs: :func:`inspect` reads a file's header (format, mode, size, EXIF orientation, bit depth) without
decoding pixels, for the scan and the doctor; :func:`decode` fully decodes the files that the in-graph
fast path (``tf.io.decode_jpeg``/``decode_png``) would get wrong: EXIF-rotated, CMYK, with alpha, GIF,
BMP, WebP, TIFF, or failing the fast path's end-marker check.

Conversions (documented policy):

- grayscale, palette, CMYK and YCbCr become RGB (Pillow's conversions; CMYK is converted without a colour
  profile);
- alpha (RGBA, LA, palette or RGB with a transparent colour) is composited over white
  (:data:`ALPHA_BACKGROUND`), the way most viewers show a transparent image on a page; dropping alpha
  instead would expose whatever colour is stored under transparent pixels;
- 16-bit images keep their precision until the final rounding to 0..255 (``value / 257``);
- animations (GIF, WebP, APNG) give their first frame; multi-page TIFF its first page;
- EXIF orientation is applied, so a phone photo stands the way it was taken.

Nothing here writes to the file: every function opens it read-only.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import math
import os
import re
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Pillow names an MPO (a phone's multi-picture JPEG) separately; its first picture is a plain JPEG.
_FORMAT_ALIASES = {"MPO": "JPEG"}
SUPPORTED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")
EXTENSIONS = {
    "JPEG": (".jpg", ".jpeg", ".jpe", ".jfif"),
    "PNG": (".png",),
    "GIF": (".gif",),
    "BMP": (".bmp", ".dib"),
    "WEBP": (".webp",),
    "TIFF": (".tif", ".tiff"),
}
ALPHA_BACKGROUND = (255, 255, 255)
DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS  # Pillow's decompression-bomb limit, 89,478,485 pixels
EXIF_ORIENTATION_TAG = 0x0112

# Reasons a file is skipped: a fixed vocabulary, so reports and JSON can be filtered on them.
EMPTY = "empty file"
NOT_AN_IMAGE = "not an image"
UNSUPPORTED = "unsupported format"
CORRUPT = "truncated or corrupt"
UNREADABLE = "unreadable"
TOO_LARGE = "too large"
SYMLINK_LOOP = "symlink loop"
MISSING = "missing file"
# What Pillow raises on damaged data, depending on the format and where the damage is.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error)
REASONS = (EMPTY, NOT_AN_IMAGE, UNSUPPORTED, CORRUPT, UNREADABLE, TOO_LARGE, SYMLINK_LOOP, MISSING)

# Signatures of image formats Pillow does not open by default, so they read "unsupported", not "not an image".
_OTHER_SIGNATURES = (
    (4, b"ftypheic", "HEIC"), (4, b"ftypheix", "HEIC"), (4, b"ftypmif1", "HEIF"), (4, b"ftypavif", "AVIF"),
    (0, b"<svg", "SVG"), (0, b"\x00\x00\x00\x0cjP  ", "JPEG 2000"), (0, b"\xff\x0a", "JPEG XL"),
)


class BadImage(Exception):
    """A file that cannot be used, with a :data:`REASONS` code and a human detail."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclasses.dataclass(frozen=True, slots=True)
class Header:
    """What the header says about one image file; transient (the scan keeps only arrays of it)."""

    format: str
    mode: str
    width: int
    height: int
    bit_depth: int = 8
    orientation: int = 1
    has_alpha: bool = False
    frames: int = 1
    plain_gif: bool = False  # one frame that fills the canvas, no transparency

    @property
    def needs_pillow(self) -> bool:
        """True when the in-graph JPEG/PNG decoders would give different pixels than :func:`decode`.

        ``tf.io.decode_jpeg`` also reads PNGs and non-animated GIFs (TensorFlow's image decoders read each
        other's formats), and a plain GIF's pixels are Pillow's (tests check it); an animated one raises there,
        and a transparent one is composited here, so those take Pillow."""
        if self.orientation != 1 or self.has_alpha:
            return True
        if self.format == "JPEG":
            return self.mode not in ("RGB", "L")
        if self.format == "GIF":
            return not self.plain_gif
        return self.format != "PNG"


def _stat(path: str) -> os.stat_result:
    try:
        st = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise BadImage(SYMLINK_LOOP, "the path is a symbolic link that points back to itself") from exc
        if exc.errno == errno.ENOENT:
            what = "a broken symbolic link" if os.path.islink(path) else "no such file"
            raise BadImage(MISSING, what) from exc
        raise BadImage(UNREADABLE, f"{type(exc).__name__}: {exc.strerror or exc}") from exc
    if st.st_size == 0:
        raise BadImage(EMPTY, "0 bytes")
    return st


def _unidentified(head: bytes) -> BadImage:
    for offset, signature, name in _OTHER_SIGNATURES:
        if head[offset:offset + len(signature)] == signature:
            return BadImage(UNSUPPORTED, f"{name}; supported: {', '.join(SUPPORTED_FORMATS)}")
    return BadImage(NOT_AN_IMAGE, "the content matches no image format")


def _check_pixels(width: int, height: int, max_pixels: int | None) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise BadImage(TOO_LARGE, f"{width}x{height} = {width * height} pixels > max_pixels={max_pixels}")


def allow_pixels(max_pixels: int | None) -> None:
    """Lets Pillow open images up to ``max_pixels`` (ftkit applies its own limit, configurable per call).

    Pillow refuses images above twice ``PIL.Image.MAX_IMAGE_PIXELS`` before ftkit can look at their size, so
    a limit above Pillow's needs the process-wide one raised; it is never lowered.
    """
    if Image.MAX_IMAGE_PIXELS is None:
        return
    if max_pixels is None or max_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = None if max_pixels is None else max_pixels


def _open(fp, max_pixels: int | None) -> Image.Image:
    head = fp.read(16)
    fp.seek(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(fp)
        except Image.DecompressionBombError as exc:
            # Pillow refuses above twice its own limit before ftkit sees the size; say it as ftkit does below.
            pixels = re.search(r"\((\d+) pixels\)", str(exc))
            raise BadImage(TOO_LARGE, f"{pixels.group(1)} pixels > max_pixels={max_pixels}" if pixels and max_pixels
                           else str(exc)) from exc
        except UnidentifiedImageError as exc:
            raise _unidentified(head) from exc
        except _DECODE_ERRORS as exc:
            raise BadImage(CORRUPT, f"{type(exc).__name__}: {exc}") from exc
    fmt = _FORMAT_ALIASES.get(image.format, image.format)
    if fmt not in SUPPORTED_FORMATS:
        raise BadImage(UNSUPPORTED, f"{image.format}; supported: {', '.join(SUPPORTED_FORMATS)}")
    _check_pixels(*image.size, max_pixels)
    return image


def _orientation(image: Image.Image) -> int:
    if "exif" not in image.info and image.format != "TIFF":
        return 1
    try:
        value = int(image.getexif().get(EXIF_ORIENTATION_TAG, 1))
    except Exception:  # a damaged EXIF block is ignored, like every viewer does
        return 1
    return value if 1 <= value <= 8 else 1


def _header(image: Image.Image, head: bytes, *, count_frames: bool) -> Header:
    fmt = _FORMAT_ALIASES.get(image.format, image.format)
    bit_depth = 8
    if fmt == "PNG" and len(head) > 24:
        bit_depth = head[24]  # IHDR bit depth; Pillow shows a 16-bit RGB PNG as plain "RGB"
    elif image.mode.startswith("I"):
        bit_depth = 16
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    frames = getattr(image, "n_frames", 1) if count_frames else 1
    plain_gif = fmt == "GIF" and not has_alpha and _single_full_frame(image)
    return Header(fmt, image.mode, image.width, image.height, bit_depth, _orientation(image), has_alpha, frames,
                  plain_gif)


def _single_full_frame(image: Image.Image) -> bool:
    """A GIF whose first frame fills the canvas and has no successor (False when unsure)."""
    # The first frame's box, read before is_animated seeks (it skips the frames' data, without decoding it).
    box = tuple(image.tile[0][1]) if image.tile else None
    try:
        return box == (0, 0, image.width, image.height) and not image.is_animated
    except Exception:  # noqa: BLE001 - a damaged later frame (IndexError, struct.error): Pillow decodes it later
        try:
            image.seek(0)
        except Exception:  # noqa: BLE001 - verify="full" and the decode report what is wrong with the file
            pass
        return False


def _load(image: Image.Image, fmt: str) -> None:
    if fmt == "JPEG":
        image.draft(image.mode, (1, 1))  # decode every scan at 1/8 scale: still catches truncation, 8x faster
    try:
        image.load()
    except _DECODE_ERRORS as exc:
        raise BadImage(CORRUPT, f"{type(exc).__name__}: {exc}") from exc


def inspect(path: str | os.PathLike, *, verify: str = "header", max_pixels: int | None = DEFAULT_MAX_PIXELS,
            count_frames: bool = False) -> Header | None:
    """The header of the image at ``path``, or raises :class:`BadImage` saying why it cannot be used.

    ``verify="none"`` only checks the file exists and is not empty (returns ``None``); ``"header"`` reads the
    header (lazy ``Image.open``: no pixel is decoded); ``"full"`` also decodes the pixels (at reduced DCT
    scale for JPEG), which catches truncated and corrupt files.
    """
    path = os.fspath(path)
    _stat(path)
    if verify == "none":
        return None
    try:
        with open(path, "rb") as fp:
            head = fp.read(32)
            fp.seek(0)
            with _open(fp, max_pixels) as image:
                header = _header(image, head, count_frames=count_frames)
                if verify == "full":
                    _load(image, header.format)
    except BadImage:
        raise
    except OSError as exc:
        raise BadImage(UNREADABLE, f"{type(exc).__name__}: {exc.strerror or exc}") from exc
    return header


def _to_rgb(image: Image.Image) -> np.ndarray:
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        values = np.asarray(image, dtype=np.float64)
        if image.mode != "F":
            values = values / 257.0  # 16-bit to 0..255; 65535 / 257 == 255 exactly
        gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1)
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    return np.asarray(image.convert("RGB"))


def decode(data: bytes, *, scale: int = 1, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decodes encoded image bytes to uint8 RGB ``[H, W, 3]`` under the conversions of this module.

    ``scale`` (1, 2, 4 or 8) lets a JPEG decode at a reduced DCT size, at least ``1/scale`` of the full one.
    Raises :class:`BadImage` for anything that cannot be decoded.
    """
    with _open(io.BytesIO(data), max_pixels) as image:
        if image.format in ("JPEG", "MPO") and scale > 1:
            image.draft(image.mode, (math.ceil(image.width / scale), math.ceil(image.height / scale)))
        try:
            image.seek(0)
            upright = ImageOps.exif_transpose(image)
        except _DECODE_ERRORS as exc:
            raise BadImage(CORRUPT, f"{type(exc).__name__}: {exc}") from exc
        return _to_rgb(upright)


def decode_file(path: str | os.PathLike, **kwargs) -> np.ndarray:
    """:func:`decode` for a path."""
    _stat(os.fspath(path))
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise BadImage(UNREADABLE, f"{type(exc).__name__}: {exc.strerror or exc}") from exc
    return decode(data, **kwargs)


def extension_mismatch(path: str, fmt: str) -> bool:
    """True when the file's extension names another format than its content (a PNG named ``.jpg``)."""
    ext = os.path.splitext(path)[1].lower()
    known = {e for exts in EXTENSIONS.values() for e in exts}
    return ext in known and ext not in EXTENSIONS.get(fmt, ())

"""Small images whose display depends on the decoder's policies (EXIF orientation, alpha over white), shared by the
preview and gallery tests."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

RED, BLUE, GREEN, WHITE = (255, 0, 0), (0, 0, 255), (0, 255, 0), (255, 255, 255)
SIZE = 32  # every fixture image is 32x32 upright, so a resize to SIZE is the identity


def _encode(image: Image.Image, fmt: str, **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save)
    return buffer.getvalue()


def _exif_rotated_jpeg() -> bytes:
    """Stored 32 wide x 32 high with red on the left, tagged orientation 6: upright, the red band is on top."""
    pixels = np.zeros((SIZE, SIZE, 3), np.uint8)
    pixels[:, : SIZE // 2] = RED
    pixels[:, SIZE // 2 :] = BLUE
    exif = Image.Exif()
    exif[0x0112] = 6
    return _encode(Image.fromarray(pixels), "JPEG", exif=exif.tobytes(), quality=95)


def _half_transparent_png() -> bytes:
    """Opaque red on the left; on the right, transparent pixels that hide green."""
    pixels = np.zeros((SIZE, SIZE, 4), np.uint8)
    pixels[:, : SIZE // 2] = (*RED, 255)
    pixels[:, SIZE // 2 :] = (*GREEN, 0)
    return _encode(Image.fromarray(pixels, "RGBA"), "PNG")


def write_noise_png(path, seed: int):
    """A 20x20 RGB PNG of seeded noise at ``path`` (folders made): distinct, decodable files for split trees."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(path)
    return path

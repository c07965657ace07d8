"""Thumbnail galleries of images: which ones, in which order, and as self-contained HTML.

Thumbnails are decoded by :mod:`ftkit.data.decode`, under the conversions training applies (EXIF orientation,
alpha over white, 16-bit precision, CMYK), so the gallery shows the image the model was scored on; they are
embedded as small base64 JPEG ``data:`` URIs so a report opens from disk with nothing beside it. A file that
no longer decodes gets a placeholder that says why. Source images are only read, never written.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ftkit.data import decode

THUMB_SIZE = 128
THUMB_QUALITY = 80
PER_CELL = 24
MAX_THUMBNAILS = 600


@dataclass(frozen=True)
class Thumbnail:
    """A gallery image: its ``data:`` URI, or ``None`` and why the file could not be decoded."""

    uri: str | None
    reason: str = ""
    detail: str = ""


def thumbnail(path: str, *, size: int = THUMB_SIZE) -> Thumbnail:
    """The image at ``path`` as training decodes it, shrunk to fit ``size`` pixels, as a JPEG thumbnail."""
    try:
        pixels = decode.decode_file(path, scale=_dct_scale(decode.inspect(path), size))
    except decode.BadImage as bad:
        return Thumbnail(None, bad.reason, bad.detail)
    except Exception as exc:  # noqa: BLE001 - whatever a damaged file raises, the report is still written
        return Thumbnail(None, decode.CORRUPT, f"{type(exc).__name__}: {exc}")
    return pixel_thumbnail(pixels, size=size)


def pixel_thumbnail(pixels: np.ndarray, *, size: int = THUMB_SIZE, enlarge: bool = False) -> Thumbnail:
    """Decoded uint8 pixels (``[H, W]``, ``[H, W, 1]`` or ``[H, W, 3]``) as a JPEG thumbnail fitting ``size``;
    with ``enlarge``, images smaller than that (MNIST's 28x28) are enlarged by a whole factor, pixel for pixel."""
    pixels = np.asarray(pixels)
    image = Image.fromarray(pixels[..., 0] if pixels.ndim == 3 and pixels.shape[-1] == 1 else pixels)
    factor = size // max(image.size)
    if enlarge and factor > 1:
        image = image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=THUMB_QUALITY)
    return Thumbnail("data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"))


def _dct_scale(header: decode.Header | None, size: int) -> int:
    """The largest JPEG DCT downscale (1, 2, 4, 8) that keeps the longer side at twice ``size``, as Pillow's
    own ``thumbnail`` does (its ``reducing_gap``); a photo then decodes at a fraction of its pixels."""
    longer = max(header.width, header.height) if header else 0
    return next((scale for scale in (8, 4, 2) if longer >= 2 * size * scale), 1)


def thumbnails(paths: Sequence[str], *, pixels: Callable[[str], np.ndarray] | None = None,
               workers: int = 4) -> dict[str, Thumbnail]:
    """Thumbnails of ``paths`` keyed by path (decoded in parallel threads); ``pixels(path)`` gives in-memory
    images (MNIST), whose "paths" are identifiers, not files."""
    unique = list(dict.fromkeys(paths))
    if pixels is not None:
        return {path: pixel_thumbnail(pixels(path), enlarge=True) for path in unique}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(zip(unique, pool.map(thumbnail, unique), strict=True))


def misclassified_cells(
    paths: Sequence[str], y_true, probs, class_names: Sequence[str], *, per_cell: int = PER_CELL
) -> list[dict]:
    """For every off-diagonal confusion cell, its images, worst (most confident wrong prediction) first.

    Cells come most frequent first; each keeps at most ``per_cell`` images and its full ``count``.
    """
    y_true = np.asarray(y_true)
    probs = np.asarray(probs)
    y_pred = probs.argmax(axis=1)
    confidence = probs.max(axis=1)
    cells = {}
    for i in np.flatnonzero(y_pred != y_true):
        cells.setdefault((int(y_true[i]), int(y_pred[i])), []).append(int(i))
    result = []
    for (t, p), indices in sorted(cells.items(), key=lambda item: (-len(item[1]), item[0])):
        indices.sort(key=lambda i: (-confidence[i], paths[i]))
        items = [
            {"path": paths[i], "true": class_names[t], "predicted": class_names[p], "confidence": float(confidence[i])}
            for i in indices[:per_cell]
        ]
        result.append({"true": class_names[t], "predicted": class_names[p], "count": len(indices), "items": items})
    return result


def cap_items(cells: list[dict], *, limit: int = MAX_THUMBNAILS) -> int:
    """Trim the cells' item lists in order so at most ``limit`` thumbnails remain; returns how many remain."""
    remaining = limit
    for cell in cells:
        cell["items"] = cell["items"][: max(remaining, 0)]
        remaining -= len(cell["items"])
    return limit - remaining


def tile_html(item: dict, thumb: Thumbnail, *, caption: str) -> str:
    """One thumbnail, or a placeholder saying why there is none, with its caption lines; the full path is the
    tooltip and the last caption line."""
    path = html.escape(item["path"])
    if thumb.uri:
        image = f'<img src="{thumb.uri}" alt="{path}" loading="eager">'
    else:
        why = f"{thumb.reason} ({thumb.detail})" if thumb.detail else thumb.reason
        image = (f'<div class="missing" title="{html.escape(why)}"><span>cannot decode:<br>'
                 f'{html.escape(thumb.reason)}</span></div>')
    return f'<figure class="tile" title="{path}">{image}<figcaption>{caption}<br><code>{path}</code></figcaption></figure>'


def misclassified_tile(item: dict, thumb: Thumbnail) -> str:
    caption = (
        f"true <b>{html.escape(item['true'])}</b>, predicted <b>{html.escape(item['predicted'])}</b> "
        f"({item['confidence']:.1%})"
    )
    return tile_html(item, thumb, caption=caption)

"""Thumbnail galleries of images: which ones, in which order, and as self-contained HTML.

Thumbnails are small JPEGs made with Pillow and embedded as base64 ``data:`` URIs so a report opens from
disk with nothing beside it. Source images are only read, never written.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

THUMB_SIZE = 128
THUMB_QUALITY = 80
PER_CELL = 24
MAX_THUMBNAILS = 600


def thumbnail_data_uri(path: str, *, size: int = THUMB_SIZE) -> str | None:
    """A ``data:image/jpeg;base64,...`` thumbnail no larger than ``size`` pixels, or ``None`` if unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            image.thumbnail((size, size))
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=THUMB_QUALITY)
    except Exception:  # noqa: BLE001 - an unreadable image becomes a text placeholder in the gallery
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def thumbnails(paths: Sequence[str], *, workers: int = 4) -> dict[str, str | None]:
    """Thumbnails of ``paths`` keyed by path (decoded in parallel threads)."""
    unique = list(dict.fromkeys(paths))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(zip(unique, pool.map(thumbnail_data_uri, unique), strict=True))


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


def tile_html(item: dict, uri: str | None, *, caption: str) -> str:
    """One thumbnail with its caption lines; the full path is the tooltip and the last caption line."""
    path = html.escape(item["path"])
    image = (
        f'<img src="{uri}" alt="{path}" loading="eager">'
        if uri
        else '<div class="missing">image unreadable</div>'
    )
    return f'<figure class="tile" title="{path}">{image}<figcaption>{caption}<br><code>{path}</code></figcaption></figure>'


def misclassified_tile(item: dict, uri: str | None) -> str:
    caption = (
        f"true <b>{html.escape(item['true'])}</b>, predicted <b>{html.escape(item['predicted'])}</b> "
        f"({item['confidence']:.1%})"
    )
    return tile_html(item, uri, caption=caption)

"""Export scikit-learn's bundled handwritten digits as a class-per-folder PNG tree (the quick-start data).

The 1,797 8x8 digits of the UCI "Optical Recognition of Handwritten Digits" set ship inside scikit-learn,
so the quick start needs no download. Pixel values 0..16 are scaled to 0..255; the test split is a
stratified, seeded 20%. Run from the repository root: ``python data/export_digits.py`` (idempotent).
"""

from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

OUT = Path(__file__).resolve().parent / "digits"


def main() -> None:
    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    index = np.arange(len(images))
    train_idx, test_idx = train_test_split(index, test_size=0.2, stratify=digits.target, random_state=0)
    for split, ids in (("train", train_idx), ("test", test_idx)):
        for i in sorted(ids):
            folder = OUT / split / str(digits.target[i])
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i], mode="L").save(folder / f"digit_{i:04d}.png")
    print(f"wrote {len(train_idx)} train and {len(test_idx)} test images under {OUT}")


if __name__ == "__main__":
    main()

"""Save the backbone of a finished ftkit run as a standalone weights file (what ``backbone.weights`` loads).

``data/weights/lenet5_mnist_notop.weights.h5``, the quick start's starting point, was made with
``python data/export_backbone_weights.py runs/lenet5_mnist data/weights/lenet5_mnist_notop.weights.h5``
after ``ftkit train recipes/lenet5_mnist.yaml --out runs/lenet5_mnist`` (test accuracy 0.9881).
"""

import argparse
import hashlib
from pathlib import Path

import keras

import ftkit.backbones._preprocessing  # noqa: F401  registers the Preprocess layer of run models
from ftkit.head import BACKBONE_LAYER


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("out", type=Path, help="a .weights.h5 file")
    args = parser.parse_args()
    model = keras.saving.load_model(args.run_dir / "model.keras", compile=False)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    model.get_layer(BACKBONE_LAYER).save_weights(args.out)
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes), sha256 {digest}")


if __name__ == "__main__":
    main()

"""``ftkit augment preview RECIPE --out FILE.png``: look at a recipe's augmentation before training."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "augment", help="inspect a recipe's augmentation",
        description="Look at what a recipe's augment section does to its training images before training: "
                    "`ftkit augment preview RECIPE --out grid.png` writes originals and augmented variants.")
    parser.set_defaults(_parser=parser)
    commands = parser.add_subparsers(dest="augment_command", metavar="SUBCOMMAND")
    preview = commands.add_parser(
        "preview", help="write a PNG grid of training images (first column) and augmented variants",
        description="Write a PNG grid: each row one training image of the recipe (first column) and augmented "
                    "variants of it, drawn by the recipe's augment section."
    )
    preview.add_argument("recipe", help="a training recipe (its training data and augment section are used)")
    preview.add_argument("--out", required=True, help="PNG file to write")
    preview.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                         help="override a recipe value as `ftkit train --set` does, e.g. "
                              "--set augment.ops[0].random_resized_crop.scale=[0.5,1.0]; repeatable")
    preview.add_argument("--samples", type=int, default=4, help="rows: training images to show (default 4)")
    preview.add_argument("--variants", type=int, default=5, help="augmented versions per image (default 5)")
    preview.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"),
                         help="image size (default: the recipe's data.image_size, else 224 224); small images "
                              "(MNIST's 28x28) are drawn enlarged, each pixel a square block")
    preview.set_defaults(func=_preview)


def _preview(args: argparse.Namespace) -> int:
    from ftkit.augment.preview import preview

    grid = preview(args.recipe, out=args.out, samples=args.samples, variants=args.variants,
                   image_size=tuple(args.image_size) if args.image_size else None, overrides=args.overrides)
    (height, width), scale = grid.image_size, grid.scale
    shown = (f"enlarged x{scale} (each pixel a {scale}x{scale} block): {height * scale}x{width * scale} px tiles"
             if scale > 1 else "1:1")
    print(f"wrote {grid.path} ({height}x{width} images, {shown})")
    return 0

"""``ftkit data check ROOT``: the dataset doctor on the terminal (or as JSON); the exit code says whether
the data is usable (0) or not (1)."""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="check an image folder, CSV or MNIST source",
                                   description="Inspect training data without modifying it.")
    parser.set_defaults(_parser=parser)
    sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")

    p = sub.add_parser("check", help="counts, bad files, conversions, tiny images, split leakage and duplicates",
                       description="Report what is in a data source and what is wrong with it, including "
                                   "byte-identical files across splits (leakage), under different classes "
                                   "(conflicting labels: a warning) or within one class (information). Exit "
                                   "code 0: usable; 1: not usable (or, with --strict, anything bad: a bad file, "
                                   "a warning or leakage); 2: a bad argument or a source that cannot be read.")
    p.add_argument("source", metavar="ROOT", help="class-per-folder tree, .csv of path,label[,split], MNIST "
                                                  "folder or .npz")
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON to FILE ('-': stdout only)")
    p.add_argument("--strict", action="store_true",
                   help="any bad file, warning (conflicting labels included) or leakage makes it unusable")
    p.add_argument("--verify", choices=["header", "full"], default="full",
                   help="'full' decodes every image (finds truncated files); 'header' is faster")
    p.add_argument("--val-fraction", type=float, default=0.2, help="validation share carved from train when "
                                                                   "there is no val/ folder (default 0.2)")
    p.add_argument("--test-fraction", type=float, default=0.0, help="test share carved from train when there is "
                                                                    "no test/ folder (default 0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the carved splits")
    p.add_argument("--channels", type=int, choices=[1, 3], default=3, help="channels the backbone takes")
    p.add_argument("--min-side", type=int, default=32, help="report images with a side under this (px)")
    p.add_argument("--max-pixels", type=_max_pixels, default=None,
                   help="decompression-bomb limit in pixels, or 'none' for no limit (default: Pillow's, 89,478,485)")
    p.add_argument("--csv-root", dest="root", metavar="DIR",
                   help="with a CSV ROOT: the folder its relative paths start from (default: the CSV's folder)")
    # The option's first name, kept for scripts; hidden so that help shows one ROOT, the positional.
    p.add_argument("--root", dest="root", help=argparse.SUPPRESS)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_check)


def _max_pixels(text: str) -> int:
    """A positive pixel count, or 'none' (no limit, returned as 0)."""
    if text.strip().lower() == "none":
        return 0
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of pixels or 'none' (no limit); received {text!r}")
    return value


def _check(args: argparse.Namespace) -> int:
    from ftkit.data import decode
    from ftkit.data.doctor import check

    report = check(args.source, val_fraction=args.val_fraction, test_fraction=args.test_fraction,
                   seed=args.seed, verify=args.verify, strict=args.strict, channels=args.channels,
                   min_side=args.min_side,
                   max_pixels=decode.DEFAULT_MAX_PIXELS if args.max_pixels is None else args.max_pixels or None,
                   root=args.root, progress=not args.quiet and sys.stderr.isatty())
    if args.json == "-":
        json.dump(report.to_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(report.to_text())
        if args.json:
            with open(args.json, "w", encoding="utf-8") as fp:
                json.dump(report.to_dict(), fp, indent=2)
    return 0 if report.usable else 1

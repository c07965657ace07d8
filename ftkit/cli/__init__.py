"""The ``ftkit`` command line. It only parses arguments and calls the library.

Each subcommand lives in its own module exposing ``register(subparsers)``, which adds its parser and sets
``func`` to a callable taking the parsed namespace and returning an exit code. Heavy imports (TensorFlow)
happen inside those callables, so ``ftkit --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Order is the order shown in ``ftkit --help``.
_COMMAND_MODULES = [
    "ftkit.cli.models",
]


def build_parser() -> argparse.ArgumentParser:
    from ftkit import __version__

    parser = argparse.ArgumentParser(
        prog="ftkit",
        description="Fine-tune image classifiers: backbones, data, augmentation, training, evaluation.",
    )
    parser.add_argument("--version", action="version", version=f"ftkit {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in _COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        # A command group called without its subcommand (``ftkit models``) prints its own help.
        (getattr(args, "_parser", None) or parser).print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

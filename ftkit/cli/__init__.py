"""The ``ftkit`` command line. It only parses arguments and calls the library.

Each subcommand lives in its own module exposing ``register(subparsers)``, which adds its parser and sets
``func`` to a callable taking the parsed namespace and returning an exit code. Heavy imports (TensorFlow)
happen inside those callables, so ``ftkit --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Order is the order shown in ``ftkit --help``.
_COMMAND_MODULES = [
    "ftkit.cli.data",
    "ftkit.cli.augment",
    "ftkit.cli.models",
    "ftkit.cli.train",
    "ftkit.cli.evaluate",
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
    # TensorFlow's C++ start-up chatter (CPU features, "failed call to cuInit" without a GPU) is noise to a
    # CLI user; set TF_CPP_MIN_LOG_LEVEL yourself to see it.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        # A command group called without its subcommand (``ftkit models``) prints its own help.
        (getattr(args, "_parser", None) or parser).print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:
        # The reader of our output went away (`ftkit data check ROOT --json - | head`): not an error of ours.
        # Point stdout at devnull so that the interpreter's final flush does not raise again (Python's docs,
        # "Note on SIGPIPE").
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except _user_errors() as exc:
        # A user's mistake (unknown name, bad value, missing file) is a message, not a traceback.
        if os.environ.get("FTKIT_DEBUG"):
            raise
        print(f"ftkit {args.command}: error: {exc}", file=sys.stderr)
        return 2


def _user_errors() -> tuple[type[BaseException], ...]:
    from ftkit.backbones import BackboneConflictError, PluginError, UnknownBackboneError

    return (UnknownBackboneError, BackboneConflictError, PluginError, ValueError, FileNotFoundError,
            NotADirectoryError, PermissionError)


if __name__ == "__main__":
    sys.exit(main())

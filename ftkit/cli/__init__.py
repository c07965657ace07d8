"""The ``ftkit`` command line. It only parses arguments and calls the library.

Each subcommand lives in its own module exposing ``register(subparsers)``, which adds its parser and sets
``func`` to a callable taking the parsed namespace and returning an exit code. Heavy imports (TensorFlow)
happen inside those callables, so ``ftkit --help`` stays fast.
"""

from __future__ import annotations

import argparse
import codecs
import difflib
import importlib
import os
import re
import sys

# Order is the order shown in ``ftkit --help``.
_COMMAND_MODULES = [
    "ftkit.cli.data",
    "ftkit.cli.augment",
    "ftkit.cli.models",
    "ftkit.cli.train",
    "ftkit.cli.evaluate",
]


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose "invalid choice" errors suggest the closest choice (``ftkit predcit``: did you mean
    'predict'?). Python 3.14's ``suggest_on_error`` does this; ftkit supports older Pythons."""

    _INVALID_CHOICE = re.compile(r"invalid choice: '(?P<value>[^']*)' \(choose from (?P<choices>.*)\)")

    def error(self, message: str):
        found = self._INVALID_CHOICE.search(message)
        if found:
            choices = re.findall(r"'([^']*)'", found.group("choices"))
            close = difflib.get_close_matches(found.group("value"), choices, n=1)
            if close:
                message += f". Did you mean {close[0]!r}?"
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    from ftkit import __version__

    parser = _Parser(
        prog="ftkit",
        description="Fine-tune image classifiers: backbones, data, augmentation, training, evaluation.",
    )
    parser.add_argument("--version", action="version", version=f"ftkit {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for module_name in _COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


_ESCAPE = "ftkit.escape"


def _escape_unencodable(error: UnicodeEncodeError) -> tuple[str, int]:
    """An encoding error handler: a surrogate escape of an undecodable byte (U+DC80..U+DCFF, os.fsdecode's)
    becomes ``\\xNN``, the byte; any other character the stream cannot encode, its ``\\uNNNN`` escape."""
    text = error.object[error.start:error.end]
    return "".join(f"\\x{ord(c) - 0xDC00:02x}" if 0xDC80 <= ord(c) <= 0xDCFF
                   else c.encode("ascii", "backslashreplace").decode() for c in text), error.end


def main(argv: list[str] | None = None) -> int:
    # TensorFlow's C++ start-up chatter (CPU features, "failed call to cuInit" without a GPU) is noise to a
    # CLI user; set TF_CPP_MIN_LOG_LEVEL yourself to see it.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # A file name that is not UTF-8 (os.fsdecode's surrogate escapes) printed to a UTF-8 terminal would raise
    # mid-output; its undecodable bytes are printed as \xNN instead, as the doctor and the reports show them.
    codecs.register_error(_ESCAPE, _escape_unencodable)
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors=_ESCAPE)
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        # argparse reports a subcommand's unknown flags with the top-level usage; the subcommand's is the useful one.
        _command_parser(parser, args).error(f"unrecognized arguments: {' '.join(unknown)}")
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


def _command_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The innermost parser that ``args`` went through (``ftkit data check``'s for ``data check ...``)."""
    while True:
        actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        chosen = getattr(args, actions[0].dest, None) if actions else None
        if chosen is None:
            return parser
        parser = actions[0].choices[chosen]


def _user_errors() -> tuple[type[BaseException], ...]:
    from ftkit.backbones import BackboneConflictError, PluginError, UnknownBackboneError

    return (UnknownBackboneError, BackboneConflictError, PluginError, ValueError, FileNotFoundError,
            NotADirectoryError, IsADirectoryError, PermissionError)


if __name__ == "__main__":
    sys.exit(main())

"""The `glus` command line: parse arguments, call one library function, report the result.

Every sub-command is a module of :mod:`glus.commands` (``register(sub)`` declares it, ``run(args)`` runs it) named
in :data:`COMMANDS`; each imports its library only when it runs, so ``glus --help`` stays fast. User errors
(:class:`glus.errors.GLUSError`) are printed on one line without a traceback, exit status 2; a
:class:`~glus.errors.ParameterError` names the command's flags instead of the library's parameter names.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Callable, Sequence

from glus.errors import GLUSError, ParameterError

#: The sub-commands, in the order ``glus --help`` lists them: modules of :mod:`glus.commands`.
COMMANDS = ("demo", "app", "segment", "evaluate", "submit", "convert", "infer", "train", "data")


def build_parser(extra: Sequence[Callable[[argparse._SubParsersAction], None]] = ()) -> argparse.ArgumentParser:
    """The ``glus`` parser with every sub-command of :data:`COMMANDS`, then those ``extra`` functions register."""
    from glus.commands import OneLineParser

    parser = OneLineParser(
        prog="glus", description="GLUS referring video object segmentation: segment videos from sentences, train, run and "
                                 "score benchmarks, convert checkpoints.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"glus.commands.{name}").register(sub)
    for register in extra:
        register(sub)
    return parser


def _command_parser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a refused argument (2, its one line already printed)
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        rc = args.func(args)
    except GLUSError as exc:
        if isinstance(exc, ParameterError):
            from glus.commands import flag_names

            exc = exc.named(flag_names(_command_parser(parser, args.command)))
        print(f"glus {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # The machine refused a read or write the checks could not foresee (a full disk, a read-only file system, a
        # path through a regular file): one line naming the file, as for any user error. Writers are atomic, so
        # nothing half-written is left behind.
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"glus {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"glus {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())

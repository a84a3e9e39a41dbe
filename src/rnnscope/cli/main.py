"""Entry point of the `rnnscope` command: builds the parser and registers subcommands.

Each subcommand lives in its own module in this package and exposes
`register(subparsers)`, which adds its parser and sets `func(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from rnnscope import __version__
from rnnscope.cli.common import EXIT_BAD_INPUT, EXIT_OK, cut, error_line, parse_overrides

# Modules of rnnscope.cli, one per subcommand; each adds itself in `register`.
SUBCOMMANDS: tuple[str, ...] = ("demo", "diagnose", "report", "study", "train")


class _Parser(argparse.ArgumentParser):
    """argparse, with bad input reported in one line (no usage block) and exit code 2."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {cut(message)}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="rnnscope",
        description="See how gradients flow back through time in recurrent networks, "
        "diagnose vanishing and exploding gradients, and apply the remedies.",
    )
    parser.add_argument("--version", action="version", version=f"rnnscope {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND",
                                       parser_class=_Parser)
    for name in SUBCOMMANDS:
        importlib.import_module(f"rnnscope.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
    except SystemExit as exit:  # --help, --version, or bad input already reported
        return exit.code if isinstance(exit.code, int) else EXIT_BAD_INPUT
    # Dotted overrides (--task.path=data.csv) go to subcommands that take them.
    overrides = getattr(args, "overrides", None)
    if extra and overrides is None:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if overrides is not None:
        try:
            args.overrides = parse_overrides(extra, sections=overrides)
        except ValueError as error:
            print(f"rnnscope: error: {error_line(error)}", file=sys.stderr)
            return EXIT_BAD_INPUT
    if getattr(args, "func", None) is None:
        parser.print_help()
        return EXIT_OK
    try:
        return args.func(args)
    except (ValueError, TypeError, OSError) as error:
        # Validation errors name the field and the accepted values in one line;
        # OSError: an unreadable input or unwritable --out, named with the reason.
        print(f"rnnscope: error: {error_line(error)}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())

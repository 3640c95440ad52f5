"""What every ``trustvlm`` subcommand shares: the one-line error, the help layout, the dispatch.

This module imports only the standard library, so any ``*/cli.py`` can use it without pulling in
the rest of the command line (or torch) and without an import cycle.
"""

from __future__ import annotations

import argparse
import sys
import textwrap

#: Column where flag descriptions start in every help screen.
HELP_POSITION = 32


class CliError(Exception):
    """A failure that is reported as one line and a non-zero exit."""


def help_formatter(prog: str) -> argparse.HelpFormatter:
    """The help layout of a subcommand: defaults shown, flags aligned.

    Args:
        prog: The program name argparse passes in.

    Returns:
        An ``ArgumentDefaultsHelpFormatter``.
    """
    return argparse.ArgumentDefaultsHelpFormatter(prog, max_help_position=HELP_POSITION)


def positive(kind: type = int):
    """An argparse ``type=`` that takes a number above 0 of `kind` (int: a whole number >= 1), else one error line."""
    expected = "a whole number >= 1" if kind is int else "a number > 0"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = 0
        if not value > 0:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value
    return parse


class ExamplesHelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """The help layout of a subcommand with an examples epilog: defaults shown, description and epilog kept as
    written (wrap a long description with :func:`wrap`)."""

    def __init__(self, prog: str):
        super().__init__(prog, max_help_position=HELP_POSITION)


def wrap(text: str, width: int = 100) -> str:
    """`text` as one paragraph of at most `width` columns (for descriptions the formatter keeps as written)."""
    return textwrap.fill(text, width=width)


def run_handler(args: argparse.Namespace) -> int:
    """Run the subcommand's handler; expected failures become one line on stderr.

    Args:
        args: Parsed arguments with ``command`` (the subcommand's name) and ``handler``.

    Returns:
        The handler's exit status; 1 after a :class:`CliError`, 130 after Ctrl-C.
    """
    try:
        return args.handler(args)
    except CliError as error:
        print(f"trustvlm {args.command}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"trustvlm {args.command}: interrupted", file=sys.stderr)
        return 130

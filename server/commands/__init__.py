"""Extra `examhub` subcommands, one module each.

A module here defines `register(subparsers)`, which adds its parser and sets
`run=<async function (settings, args) -> int>` as its default; `examhub` gives it settings with the
database and Redis URLs already resolved (embedded servers when none are configured). A command that
must not start embedded servers (it talks to a running hub) also sets `storage=False`.
"""

import argparse


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1, with a clear message otherwise."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {value}")
    return value

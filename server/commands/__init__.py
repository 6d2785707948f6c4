"""Extra `examhub` subcommands, one module each.

A module here defines `register(subparsers)`, which adds its parser and sets
`run=<async function (settings, args) -> int>` as its default; `examhub` gives it settings with the
database and Redis URLs already resolved (embedded servers when none are configured). A command that
must not start embedded servers (it talks to a running hub) also sets `storage=False`.
"""

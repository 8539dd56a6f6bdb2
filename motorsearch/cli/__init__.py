"""``python -m motorsearch <command>``: one thin module per command.

Each command module defines ``add_parser(subparsers)`` and ``run(args) -> int`` and imports
heavy libraries (torch, ray, mlflow) inside ``run`` so that ``--help`` stays instant.
An :class:`~motorsearch.errors.InputError` anywhere becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from motorsearch import __version__
from motorsearch.errors import InputError

COMMANDS = ("simulate", "prepare", "train", "predict", "run", "best", "export")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m motorsearch",
        description="Hyperparameter search for a 3D flagellar-motor detector (Ray Tune + Optuna + MLflow).",
    )
    parser.add_argument("--version", action="version", version=f"motorsearch {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"motorsearch.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"motorsearch.cli.{name}":
                raise
            continue  # command not built yet
        module.add_parser(subparsers)
    return parser


def add_overrides(parser: argparse.ArgumentParser) -> None:
    """The ``--set dotted.key=value`` option shared by every command that reads a config."""
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config field, e.g. --set optim.lr=1e-3 (repeatable; type-checked)",
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

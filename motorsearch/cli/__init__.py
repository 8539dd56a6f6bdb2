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

COMMANDS = ("simulate", "prepare", "train", "predict", "run", "best", "confirm", "refit", "export")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m motorsearch",
        description="Hyperparameter search for a 3D flagellar-motor detector (Ray Tune + Optuna + MLflow).",
    )
    parser.add_argument("--version", action="version", version=f"motorsearch {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"motorsearch.cli.{name}").add_parser(subparsers)
    return parser


def add_overrides(parser: argparse.ArgumentParser) -> None:
    """The ``--set dotted.key=value`` option shared by every command that reads a config."""
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config field, e.g. --set optim.lr=1e-3 (repeatable; type-checked)",
    )


def add_tracking_options(parser: argparse.ArgumentParser, *, register: bool = False) -> None:
    """``--tracking-uri`` of the commands that read a search back from MLflow, and ``--register``."""
    if register:
        parser.add_argument("--register", metavar="MODEL_NAME",
                            help="also register it in the MLflow Model Registry under alias 'champion'")
    parser.add_argument("--tracking-uri", metavar="URI",
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in this folder)")


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

"""``python -m motorsearch export [--experiment NAME | --run-id ID] --out best.pt [--register NAME]``.

Writes the best finished trial's model file (see ``motorsearch.tracking.export`` for the pick
and tie rule) with ``best.pt.sha256`` beside it; ``predict --model best.pt`` needs nothing else.
"""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export", help="write the best trial's model file (+ .sha256), optionally register it in MLflow",
        description="Export the best finished trial of a search as one self-contained model file.")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--experiment", metavar="NAME", help="search name (default: the latest search)")
    which.add_argument("--run-id", metavar="ID", help="a search run (its best finished trial) or a trial run")
    parser.add_argument("--out", required=True, metavar="MODEL.pt", help="where to write the model file")
    parser.add_argument("--register", metavar="MODEL_NAME", help="also register it in the MLflow Model Registry "
                                                                 "under alias 'champion'")
    parser.add_argument("--tracking-uri", metavar="URI", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, "
                                                              "else sqlite:///mlflow.db in this folder)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import os

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one file: no progress bar
    from motorsearch.tracking.export import export_best

    exported = export_best(args.out, experiment_name=args.experiment, run_id=args.run_id, register=args.register,
                           tracking_uri=args.tracking_uri)
    pick = exported.pick
    print(f"picked trial {pick.trial_id} (run {pick.run_id}, {pick.status}) of experiment {pick.experiment_name!r}: "
          f"{pick.metric}={pick.value:.4g}")
    print(f"wrote {exported.path} and {exported.checksum.name} (sha256 {exported.sha256})")
    if exported.registered_version is not None:
        print(f"registered as {args.register} version {exported.registered_version}, alias 'champion'")
    return 0

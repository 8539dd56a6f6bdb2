"""``python -m motorsearch export [--experiment NAME | --run-id ID] --out best.pt [--register NAME]``
and ``python -m motorsearch export [--experiment NAME] --ensemble K --out ensemble.pt``.

Writes the best finished trial's model file (see ``motorsearch.tracking.export`` for the pick
and tie rule), or one file holding the top-K trials whose heatmaps are averaged
(``motorsearch.selection.ensemble``), with ``<file>.sha256`` beside it; ``predict --model`` needs
nothing else.
"""

from __future__ import annotations

import argparse

from motorsearch.cli import add_tracking_options


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export", help="write the best trial's model file (+ .sha256), optionally register it in MLflow",
        description="Export the best finished trial of a search as one self-contained model file.")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--experiment", metavar="NAME", help="search name (default: the latest search)")
    which.add_argument("--run-id", metavar="ID", help="a search run (its best finished trial) or a trial run")
    parser.add_argument("--out", required=True, metavar="MODEL.pt", help="where to write the model file")
    parser.add_argument("--ensemble", type=int, metavar="K",
                        help="write one file holding the top-K trials, their heatmaps averaged and the threshold "
                             "calibrated on the validation fold (the confirmed ranking when there is one)")
    add_tracking_options(parser, register=True)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import os

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one file: no progress bar
    if args.ensemble is not None:
        return _ensemble(args)
    from motorsearch.tracking.export import export_best

    exported = export_best(args.out, experiment_name=args.experiment, run_id=args.run_id, register=args.register,
                           tracking_uri=args.tracking_uri)
    pick = exported.pick
    print(f"picked trial {pick.trial_id} (run {pick.run_id}, {pick.status}) of experiment {pick.experiment_name!r}: "
          f"{pick.metric}={pick.value:.4g}" + (f" (ranking: {pick.ranking})" if pick.ranking else ""))
    print(f"wrote {exported.path} and {exported.checksum.name} (sha256 {exported.sha256})")
    if exported.registered_version is not None:
        print(f"registered as {args.register} version {exported.registered_version}, alias 'champion'")
    return 0


def _ensemble(args: argparse.Namespace) -> int:
    from motorsearch.errors import InputError
    from motorsearch.selection.ensemble import describe, export_ensemble

    if args.run_id is not None or args.register is not None:
        raise InputError("--ensemble takes the top trials of a search (--experiment); it cannot be combined with "
                         f"{'--run-id' if args.run_id is not None else '--register'}.")
    for line in describe(export_ensemble(args.out, k=args.ensemble, experiment_name=args.experiment,
                                         tracking_uri=args.tracking_uri)):
        print(line)
    return 0

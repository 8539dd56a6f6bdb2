"""``python -m motorsearch refit [--experiment NAME] --out final.pt [--epochs N] [--register NAME]``.

Trains the search's pick (the confirmed one when the search was confirmed) on every labelled
tomogram for the epochs validation chose, with the threshold of its out-of-fold predictions (see
``motorsearch.selection.refit``), and writes a model file like ``export`` (``.sha256`` beside it,
an MLflow run, optionally a registered version).
"""

from __future__ import annotations

import argparse

from motorsearch.cli import add_tracking_options


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "refit", help="train the search's pick on all labelled tomograms; threshold from out-of-fold predictions",
        description="Refit the best configuration of a search on every labelled tomogram, for the epochs its "
                    "validation chose, with the decision threshold its out-of-fold predictions choose.")
    parser.add_argument("--experiment", metavar="NAME", help="search name (default: the latest search)")
    parser.add_argument("--out", required=True, metavar="MODEL.pt", help="where to write the model file")
    parser.add_argument("--epochs", type=int, metavar="N", help="train N epochs (default: the median best epoch "
                                                                 "over the folds it was validated on)")
    parser.add_argument("--device", metavar="auto|cpu|cuda", help="where to train (default: the config's)")
    add_tracking_options(parser, register=True)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import os

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from motorsearch.selection.refit import refit

    done = refit(args.out, experiment_name=args.experiment, tracking_uri=args.tracking_uri, epochs=args.epochs,
                 register=args.register, device=args.device, progress=True)
    print(f"refit trial {done.source_trial_id} (run {done.source_run_id}; ranking: {done.ranking}) on "
          f"{len(done.train_ids)} labelled tomograms for {done.epochs} epochs (best epochs by fold: "
          f"{done.best_epochs})")
    print(f"threshold {done.threshold:.4g} from out-of-fold predictions on folds {done.oof_folds}: F2 "
          f"{done.oof_f2:.3f}, motors predicted in {done.quantile:.0%} of tomograms")
    print(f"wrote {done.path} and {done.checksum.name} (sha256 {done.sha256}); MLflow run {done.run_id}")
    if done.registered_version is not None:
        print(f"registered as {args.register} version {done.registered_version}, alias 'champion'")
    return 0

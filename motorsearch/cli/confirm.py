"""``python -m motorsearch confirm [--experiment NAME] [--top K] [--folds all|0,1,..]``.

Trains the search's top-K finished configurations again on the other folds, as Ray trials logged
under the search's MLflow parent run, and ranks them by the mean objective over folds (see
``motorsearch.search.confirm``). ``best`` and ``export`` then use that ranking.
"""

from __future__ import annotations

import argparse

from motorsearch.cli import add_tracking_options

DEFAULT_TOP = 3


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "confirm", help="train the top-K configurations of a search on the other folds; rank by the mean",
        description="Confirm a search's best configurations across folds: each of the top-K finished trials is "
                    "trained again on every other fold (Ray trials, the search's resources), and the trials are "
                    "ranked by their mean objective over all folds. best and export then use that ranking.")
    parser.add_argument("--experiment", metavar="NAME", help="search name = MLflow experiment (default: the latest "
                                                             "search at the tracking URI)")
    parser.add_argument("--top", type=int, default=DEFAULT_TOP, metavar="K",
                        help=f"how many of the best finished trials to confirm (default {DEFAULT_TOP})")
    parser.add_argument("--folds", default="all", metavar="all|0,1,..",
                        help="the folds to train on besides the search's own (default: all)")
    parser.add_argument("--address", metavar="auto|HOST:PORT", help="Ray cluster (default: the search's)")
    parser.add_argument("--storage-path", metavar="PATH", help="where Tune keeps the trials (default: the search's)")
    add_tracking_options(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from motorsearch.search.confirm import describe_confirmation, parse_folds, plan_confirmation, run_confirmation
    from motorsearch.tracking.leaderboard import find_search, tracking_client

    folds = parse_folds(args.folds)
    client = tracking_client(args.tracking_uri)
    search = find_search(client, args.experiment)
    plan = plan_confirmation(client, search, top_k=args.top, folds=folds, storage_path=args.storage_path,
                             address=args.address)
    table = run_confirmation(plan)
    print()
    print(describe_confirmation(table, plan.objective))
    lost = table[table["confirmed_folds"] < table["confirmed_folds"].max()]
    if len(lost):
        print(f"{len(lost)} configuration(s) lost a fold (an errored trial) and rank last.")
    print(f"export the confirmed pick with: python -m motorsearch export --experiment {plan.experiment_name} "
          "--out best.pt")
    return 0

"""``python -m motorsearch best [--experiment NAME] [--top K]``: the leaderboard of a search, from MLflow.

Reads the latest search of the experiment (the most recent search anywhere when no
``--experiment``) and prints its trials best first, with their status, best value of the
search's metric, the epoch it was reached and the sampled parameters.
"""

from __future__ import annotations

import argparse

from motorsearch.cli import add_tracking_options


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "best", help="print the leaderboard of a search (read from MLflow)",
        description="Print the trials of the latest search in an MLflow experiment, best first.")
    parser.add_argument("--experiment", metavar="NAME", help="search name = MLflow experiment (default: the latest "
                                                             "search at the tracking URI)")
    parser.add_argument("--top", type=int, default=10, metavar="K", help="rows shown (default 10; 0 = all)")
    add_tracking_options(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    from motorsearch.errors import InputError
    from motorsearch.tracking import schema
    from motorsearch.tracking.leaderboard import (
        confirmed_trials,
        export_ranking,
        find_search,
        leaderboard,
        search_objective,
        tracking_client,
    )

    if args.top < 0:
        raise InputError(f"`--top` cannot be negative, but got --top={args.top}.")
    client = tracking_client(args.tracking_uri)
    search = find_search(client, args.experiment)
    objective = search_objective(search)
    table = leaderboard(client, search)
    name = client.get_experiment(search.info.experiment_id).name
    tags = search.data.tags
    print(f"experiment {name!r}, search run {search.info.run_id} ({tags.get(schema.STATUS, '?')}), "
          f"{len(table)} trials, finished first, ranked by {objective.value_key} ({objective.mode})")
    shown = table if args.top == 0 else table.head(args.top)
    if shown.empty:
        print("(no trials logged yet)")
        return 0
    confirmed = confirmed_trials(table)
    key = schema.confirmed_key(objective.value_key)
    with pd.option_context("display.max_columns", None, "display.width", 200, "display.max_colwidth", 32):
        confirmed_columns = [c for c in shown.columns if c.startswith(schema.CONFIRMED_PREFIX)]  # their own table
        print(shown.drop(columns=["run_id", *confirmed_columns]).assign(run_id=shown["run_id"].str[:12])
              .to_string(index=False))
        if len(confirmed):
            print(f"\nconfirmed ranking of {len(confirmed)} trials (mean {objective.value_key} over "
                  f"{confirmed[schema.CONFIRMED_FOLDS].max():.0f} folds, sd = spread; export picks the first):")
            columns = {schema.CONFIRMED_RANK: "#", "trial_id": "trial", key: "mean", f"{key}_std": "sd",
                       schema.CONFIRMED_FOLDS: "folds", "rank": "search #"}
            print(confirmed[list(columns)].rename(columns=columns).astype({"#": int, "folds": int})
                  .to_string(index=False))
    ranked, ranking = export_ranking(table, objective)
    if len(ranked):
        print(f"best trial ({ranking}): {ranked['trial_id'].iloc[0]} (run {ranked['run_id'].iloc[0]}); export it "
              f"with: python -m motorsearch export --experiment {name} --out best.pt")
    else:
        print("no finished trial yet (export needs one).")
    return 0

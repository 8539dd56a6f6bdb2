"""``python -m motorsearch predict --model MODEL.pt --data DIR --out submission.csv``.

Every tomogram under DIR -> one row of a Kaggle submission (``tomo_id,Motor axis 0,Motor axis 1,
Motor axis 2``, voxels of the ORIGINAL grid, ``-1`` for no motor), with the model's decision
threshold and at most one motor per tomogram. DIR is a Kaggle split folder (``<root>/test`` of
``<tomo_id>/slice_*.jpg``) or a folder of ``*.mrc``/``*.rec`` files or ``*.zarr`` volumes.

Each tomogram is prepared exactly as the training cache prepared its data: resampled from its
spacing to the model's (``preprocess.resample``), normalised the same way, then predicted with
stride-aligned sliding windows; the peak is mapped back with ``preprocess.to_original``. The
spacing of a tomogram comes from the data when it says (Kaggle labels CSV, MRC/zarr headers);
when it does not (the Kaggle test set), the model's test-time policy decides (``test_time`` of
its config: a fixed assumed spacing, or several with the strongest candidate kept), or
``--spacing A`` (fixed at A) / ``--spacing-policy``. ``--tta`` and ``--threshold`` replace the
model's TTA and threshold strategy (``quantile`` predicts a motor in the model's validation
positive rate of the tomograms, ranked by their strongest candidate). The command says which
spacing, policy and threshold it used.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path
from typing import TYPE_CHECKING

from motorsearch.config import DATA_FORMATS, SPACING_POLICIES, THRESHOLD_STRATEGIES, TTA_SIZES

if TYPE_CHECKING:
    from motorsearch.config import TestTimeConfig
    from motorsearch.model_file import LoadedModel



def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict", help="find motors in every tomogram of a folder and write a Kaggle submission CSV",
        description="Run a model file on every tomogram under --data and write a Kaggle submission CSV "
                    "(coordinates in the original voxel grid, -1 for no motor).",
    )
    parser.add_argument("--model", required=True, metavar="MODEL.pt", help="model file written by `train`")
    parser.add_argument("--data", required=True, metavar="DIR",
                        help="a Kaggle split folder (<root>/test) or a folder of MRC / zarr volumes")
    parser.add_argument("--out", required=True, metavar="submission.csv", help="where to write the submission")
    parser.add_argument("--format", choices=DATA_FORMATS, help="layout of --data (default: detected)")
    parser.add_argument("--spacing", type=float, metavar="A",
                        help="Å per voxel for tomograms whose data gives none (default: the model's test-time "
                             "policy, e.g. its training spacing)")
    parser.add_argument("--spacing-policy", choices=SPACING_POLICIES,
                        help="for tomograms of unknown spacing: one assumed spacing (fixed) or several, the "
                             "strongest candidate kept (multiscale); default: the model's")
    parser.add_argument("--tta", type=int, choices=TTA_SIZES, help="test-time augmentation views (default: the model's)")
    parser.add_argument("--threshold", choices=THRESHOLD_STRATEGIES,
                        help="swept: the model's threshold; quantile: a motor in the model's validation positive "
                             "rate of the tomograms (default: the model's)")
    parser.add_argument("--labels", metavar="CSV",
                        help="a solution CSV (Kaggle label columns, with Voxel spacing) to score the submission "
                             "against; its spacings are used where the data gives none")
    parser.add_argument("--patch-size", type=int, nargs=3, metavar=("Z", "Y", "X"),
                        help="sliding-window size in voxels (default: the training patch size)")
    parser.add_argument("--device", metavar="D", help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--threads", type=int, metavar="N", help="torch CPU threads (default: torch's choice)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from motorsearch.errors import ConfigError, DataError

    if args.spacing is not None and not (args.spacing > 0 and math.isfinite(args.spacing)):
        raise ConfigError(f"`--spacing` must be positive, but got --spacing={args.spacing}.")
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"`--threads` must be at least 1, but got --threads={args.threads}.")
    data = Path(args.data)
    if not data.is_dir():
        raise DataError(f"{data}: no such folder (--data).")
    if args.labels is not None and not Path(args.labels).is_file():
        raise DataError(f"{args.labels}: no such file (--labels).")
    out = Path(args.out)
    if out.is_dir():
        raise ConfigError(f"`--out` must be a file path, but got the folder --out={out}.")

    import torch
    from tqdm import tqdm

    from motorsearch.data.kaggle import write_submission_csv
    from motorsearch.model_file import load_model_file
    from motorsearch.predict import Predictor, decide, describe_policy, model_test_time, read_tomograms
    from motorsearch.training.device import select_device

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = select_device(args.device)
    loaded = load_model_file(args.model, device=device)
    test_time = _test_time(args, model_test_time(loaded))
    predictor = Predictor(loaded, device=device, patch_size=args.patch_size, test_time=test_time)
    records, fmt = read_tomograms(data, fmt=args.format)
    if args.labels is not None:  # a solution CSV knows each tomogram's spacing
        from motorsearch.evaluation.scoring import read_solution_csv

        known = read_solution_csv(args.labels)[1]
        records = [r if r.spacing is not None or r.tomo_id not in known else
                   dataclasses.replace(r, spacing=known[r.tomo_id]) for r in records]
    unknown = [r.tomo_id for r in records if r.spacing is None]
    if unknown:
        policy = describe_policy(test_time, predictor.model_spacing)  # ConfigError: nothing to assume
    if test_time.threshold == "quantile":
        _check_quantile(loaded, len(records), args.model)
    print(f"model: {args.model} (threshold {loaded.threshold:.4g}, spacing {predictor.model_spacing} Å, "
          f"window {list(predictor.patch_size)}, {device})")
    if unknown:
        source = "--spacing" if args.spacing is not None else "--spacing-policy" if args.spacing_policy else "the model"
        print(f"spacing: {len(unknown)} of {len(records)} tomograms give none; {policy} ({source})")
    else:
        print(f"spacing: from the data for all {len(records)} tomograms "
              f"({fmt}{' and --labels' if args.labels else ''}); TTA {test_time.tta}")
    if test_time.threshold == "quantile":
        print(f"threshold: quantile, a motor in the {loaded.quantile:.0%} of tomograms with the strongest candidates "
              f"(the rate the validation threshold predicted)")
    else:
        print(f"threshold: swept on validation, {loaded.threshold:.4g}")

    candidates = [predictor.locate(record.load(), spacing=record.spacing)
                  for record in tqdm(records, desc="predicting", unit="tomogram")]
    chosen = decide(candidates, strategy=test_time.threshold, threshold=predictor.threshold,
                    quantile=loaded.quantile)
    predictions = {record.tomo_id: [round(float(v), 2) for v in candidate[0]] if keep else None
                   for record, candidate, keep in zip(records, candidates, chosen, strict=True)}
    out.parent.mkdir(parents=True, exist_ok=True)
    write_submission_csv(out, predictions)
    print(f"submission: {out} ({len(records)} tomograms, motors in {sum(chosen)})")
    if args.labels is not None:
        from motorsearch.evaluation.scoring import score_submission_csv

        score = score_submission_csv(args.labels, out)
        print(f"score against {args.labels}: F2={score.f2:.4f} precision={score.precision:.4f} "
              f"recall={score.recall:.4f}")
    return 0


def _test_time(args: argparse.Namespace, model: TestTimeConfig) -> TestTimeConfig:
    """The model's test-time settings with the command line's replacements."""
    changes: dict = {}
    if args.spacing is not None:
        changes.update(spacing="fixed", assumed_spacing_a=args.spacing)
    if args.spacing_policy is not None:
        changes["spacing"] = args.spacing_policy
    if args.tta is not None:
        changes["tta"] = args.tta
    if args.threshold is not None:
        changes["threshold"] = args.threshold
    return dataclasses.replace(model, **changes)


def _check_quantile(loaded: LoadedModel, n_tomograms: int, model: str) -> None:
    from motorsearch.errors import ConfigError, ModelFileError

    if loaded.quantile is None or not 0.0 < loaded.quantile <= 1.0:
        raise ModelFileError(f"{model}: the quantile threshold needs the validation positive rate in (0, 1], "
                             f"but the model file has quantile={loaded.quantile}; use --threshold swept.")
    if n_tomograms < 2:
        raise ConfigError(f"`--threshold quantile` ranks tomograms against each other and needs at least 2, but "
                          f"got {n_tomograms} tomogram(s) to predict.")

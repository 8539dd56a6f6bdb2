"""``python -m motorsearch predict --model MODEL.pt --data DIR --out submission.csv``.

Every tomogram under DIR -> one row of a Kaggle submission (``tomo_id,Motor axis 0,Motor axis 1,
Motor axis 2``, voxels of the ORIGINAL grid, ``-1`` for no motor), with the model's decision
threshold and at most one motor per tomogram. DIR is a Kaggle split folder (``<root>/test`` of
``<tomo_id>/slice_*.jpg``) or a folder of ``*.mrc``/``*.rec`` files or ``*.zarr`` volumes.

Each tomogram is prepared exactly as the training cache prepared its data: resampled from its
spacing to the model's (``preprocess.resample``), normalised the same way, then predicted with
stride-aligned sliding windows; the peak is mapped back with ``preprocess.to_original``. The
spacing of a tomogram comes from the data when it says (Kaggle labels CSV, MRC/zarr headers),
else from ``--spacing``, else the model's training spacing is assumed; the command says which.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

FORMATS = ("kaggle", "mrc", "zarr")


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
    parser.add_argument("--format", choices=FORMATS, help="layout of --data (default: detected)")
    parser.add_argument("--spacing", type=float, metavar="A",
                        help="Å per voxel for tomograms whose data gives none (default: the model's training spacing)")
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
    from motorsearch.predict import Predictor, read_tomograms
    from motorsearch.training.device import select_device

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = select_device(args.device)
    loaded = load_model_file(args.model, device=device)
    predictor = Predictor(loaded, device=device, patch_size=args.patch_size)
    records, fmt = read_tomograms(data, fmt=args.format)
    fallback, fallback_from = (args.spacing, "--spacing") if args.spacing is not None else (
        predictor.model_spacing, "the model's training spacing")
    if args.labels is not None:  # a solution CSV knows each tomogram's spacing
        from motorsearch.evaluation.scoring import read_solution_csv

        known = read_solution_csv(args.labels)[1]
        records = [r if r.spacing is not None or r.tomo_id not in known else
                   dataclasses.replace(r, spacing=known[r.tomo_id]) for r in records]
    unknown = [r.tomo_id for r in records if r.spacing is None]
    if unknown and fallback is None:
        raise ConfigError(f"{data}: {len(unknown)} tomogram(s) give no voxel spacing and the model was trained on "
                          "native grids; pass --spacing A (Å per voxel).")
    print(f"model: {args.model} (threshold {loaded.threshold:.4g}, spacing {predictor.model_spacing} Å, "
          f"window {list(predictor.patch_size)}, {device})")
    if unknown:
        print(f"spacing: {len(unknown)} of {len(records)} tomograms give none; assuming {fallback:g} Å/voxel "
              f"({fallback_from})")
    else:
        print(f"spacing: from the data for all {len(records)} tomograms "
              f"({fmt}{' and --labels' if args.labels else ''})")

    predictions: dict[str, list[float] | None] = {}
    found = 0
    for record in tqdm(records, desc="predicting", unit="tomogram"):
        spacing = record.spacing if record.spacing is not None else fallback
        motor = predictor.predict(record.load(), spacing=spacing)
        predictions[record.tomo_id] = None if motor is None else [round(float(v), 2) for v in motor]
        found += motor is not None
    out.parent.mkdir(parents=True, exist_ok=True)
    write_submission_csv(out, predictions)
    print(f"submission: {out} ({len(records)} tomograms, motors in {found})")
    if args.labels is not None:
        from motorsearch.evaluation.scoring import score_submission_csv

        score = score_submission_csv(args.labels, out)
        print(f"score against {args.labels}: F2={score.f2:.4f} precision={score.precision:.4f} "
              f"recall={score.recall:.4f}")
    return 0

"""``refit``: the chosen configuration trained on every labelled tomogram.

Which configuration: the first of ``export``'s ranking (the confirmed one when the search was
confirmed). For how long: the epochs validation chose — the median of the configuration's best
epoch (``best_epoch``) over the folds it was validated on (its search run and its confirmation
runs) — unless ``--epochs`` says otherwise; the learning-rate schedule spans those epochs. Which
threshold: the one the out-of-fold predictions choose (:mod:`.out_of_fold`): each fold's best
model scored on the fold it did not see, pooled, swept for F2; the quantile is the fraction of
tomograms it predicts a motor in. A refit has no held-out data of its own, so these out-of-fold
numbers are the model file's metrics (``oof_f2``, ``oof_threshold``, ``oof_quantile``).

The MLflow run (role ``refit``, a child of the search's parent run) holds the parameters, the
training loss per epoch and the model file (``model/model.pt``, its sha256 as a tag); the file
written to ``--out`` is sealed like any model file, with ``.sha256`` beside it.
"""

from __future__ import annotations

import copy
import math
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from motorsearch.errors import ConfigError, InputError


@dataclass
class Refitted:
    """What :func:`refit` wrote and how it chose."""

    path: Path
    checksum: Path
    sha256: str
    run_id: str  # the refit's MLflow run
    source_run_id: str  # the trial whose configuration was refit
    source_trial_id: str
    ranking: str
    epochs: int
    best_epochs: list[int]  # the best epoch on each fold it was validated on
    threshold: float
    quantile: float
    oof_f2: float
    oof_folds: list[int]
    train_ids: list[str] = field(default_factory=list)
    registered_version: str | None = None


def refit(out: str | Path, *, experiment_name: str | None = None, tracking_uri: str | None = None,
          epochs: int | None = None, register: str | None = None, device: str | None = None,
          progress: bool = False) -> Refitted:
    """Refit the search's pick on all labelled tomograms; write ``out`` (+ ``.sha256``) and an MLflow run."""
    from mlflow.entities import Metric, Param

    from motorsearch.config import from_dict
    from motorsearch.model_file import file_sha256, install_model_file, load_model_file, write_model_payload
    from motorsearch.selection.out_of_fold import score_out_of_fold
    from motorsearch.tracking import schema
    from motorsearch.tracking.export import Pick, check_out_path, fetch_best_model, register_model
    from motorsearch.tracking.leaderboard import find_search, rank_search, tracking_client, trial_config
    from motorsearch.training.checkpoint import MODEL_FILE
    from motorsearch.training.trainer import fit

    if epochs is not None and epochs < 1:
        raise ConfigError(f"`--epochs` must be at least 1, but got --epochs={epochs}.")
    out = check_out_path(out)
    client = tracking_client(tracking_uri)
    read = rank_search(client, find_search(client, experiment_name))
    search, objective, name, ranked, ranking = read.search, read.objective, read.name, read.ranked, read.ranking
    if ranked.empty:
        raise InputError(f"experiment {name!r} (search run {search.info.run_id}) has no finished trial with a value "
                         f"of {objective.value_key}; there is no configuration to refit.")
    pick = ranked.iloc[0]
    config = trial_config(client, pick["run_id"])
    fold_runs = _fold_runs(client, search, pick["run_id"])
    best_epochs = [int(run.data.metrics[objective.epoch_key]) for run in fold_runs
                   if objective.epoch_key in run.data.metrics]
    chosen = epochs or (max(1, round(statistics.median(best_epochs))) if best_epochs else int(config["optim"]["epochs"]))
    refit_config = copy.deepcopy(config)
    refit_config["optim"]["epochs"] = chosen
    refit_config.setdefault("validation", {})["every"] = chosen  # nothing is held out: check once, at the end
    cfg = from_dict(refit_config, source=f"refit of trial run {pick['run_id']}")

    with tempfile.TemporaryDirectory(prefix="motorsearch-refit-") as tmp:
        folds = [load_model_file(fetch_best_model(client, run.info.run_id, Path(tmp) / run.info.run_id))
                 for run in fold_runs]
        oof = score_out_of_fold(folds, device=device or "cpu")
        del folds
        tags = {schema.PARENT: search.info.run_id, schema.ROLE: schema.ROLE_REFIT, schema.STATUS: schema.TRIAL_RUNNING,
                schema.CANDIDATE: str(pick["run_id"]), schema.METRIC: objective.metric, schema.MODE: objective.mode}
        run_id = client.create_run(search.info.experiment_id, tags=tags,
                                   run_name=f"{name} refit of trial {pick['trial_id']}").info.run_id
        try:
            client.log_batch(run_id, params=[Param(k, str(v)) for k, v in {
                "epochs": chosen, "best_epochs": best_epochs, "ranking": ranking, "source_run_id": pick["run_id"],
                "oof_folds": oof.folds, "threshold": oof.threshold, "quantile": oof.quantile}.items()])

            def report(epoch: int, metrics: dict[str, float], folder: Path) -> None:
                now = int(time.time() * 1000)
                client.log_batch(run_id, metrics=[Metric(k, float(metrics[k]), now, epoch)
                                                  for k in ("train_loss", "lr") if k in metrics])

            result = fit(cfg, workdir=Path(tmp) / "fit", report=report, device=device, progress=progress,
                         train_on_all=True)
            payload = torch.load(result.last_checkpoint / MODEL_FILE, map_location="cpu", weights_only=True)
            metrics = {"oof_f2": oof.f2, "oof_threshold": oof.threshold, "oof_quantile": oof.quantile,
                       "epochs": float(chosen)}
            payload.update(threshold=oof.threshold, quantile=oof.quantile or None, metrics=metrics,
                           extra={"epoch": chosen, "refit_of": str(pick["run_id"]), "experiment": name,
                                  "ranking": ranking, "oof_folds": oof.folds,
                                  "trained_on": sorted(result.train_ids)})
            staged = write_model_payload(Path(tmp) / MODEL_FILE, payload)
            sha256 = file_sha256(staged)
            client.log_artifact(run_id, str(staged), str(Path(schema.REFIT_MODEL).parent))
            client.log_batch(run_id, metrics=[Metric(k, v if math.isfinite(v) else 1.0, 0, chosen)
                                              for k, v in metrics.items()])
            client.set_tag(run_id, schema.BEST_MODEL_SHA256, sha256)
            checksum = install_model_file(staged, out)
        except BaseException:
            client.set_tag(run_id, schema.STATUS, schema.ERRORED)
            client.set_terminated(run_id, status="FAILED")
            raise
    client.set_tag(run_id, schema.STATUS, schema.FINISHED)
    client.set_terminated(run_id, status="FINISHED")
    refitted = Refitted(path=out, checksum=checksum, sha256=sha256, run_id=run_id, source_run_id=str(pick["run_id"]),
                        source_trial_id=str(pick["trial_id"]), ranking=ranking, epochs=chosen, best_epochs=best_epochs,
                        threshold=oof.threshold, quantile=oof.quantile, oof_f2=oof.f2, oof_folds=oof.folds,
                        train_ids=sorted(result.train_ids))
    if register:
        refitted.registered_version = register_model(
            client, register, Pick(run_id=run_id, trial_id=f"refit of {pick['trial_id']}", experiment_name=name,
                                   metric="oof_f2", mode="max", value=oof.f2, status=schema.FINISHED),
            sha256=sha256, artifact=schema.REFIT_MODEL)
    return refitted


def _fold_runs(client: Any, search: Any, run_id: str) -> list[Any]:
    """The trial run ``run_id`` and its finished confirmation runs, one per fold (the latest)."""
    from motorsearch.tracking import schema

    confirmations = client.search_runs(
        [search.info.experiment_id],
        filter_string=(f"tags.`{schema.PARENT}` = '{search.info.run_id}' and tags.`{schema.ROLE}` = "
                       f"'{schema.ROLE_CONFIRMATION}' and tags.`{schema.CANDIDATE}` = '{run_id}' and "
                       f"tags.`{schema.STATUS}` = '{schema.FINISHED}'"),
        order_by=["attributes.start_time DESC"])
    runs, seen = [client.get_run(run_id)], set()
    for run in confirmations:
        fold = run.data.tags.get(schema.FOLD)
        if fold not in seen:
            seen.add(fold)
            runs.append(run)
    return runs

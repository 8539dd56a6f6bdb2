"""``export --ensemble K``: the top-K trials of a search in one model file, their heatmaps averaged.

The members are the first K trials of ``export``'s ranking (the confirmed one when the search was
confirmed), each the best model file of its run, checked against the sha256 recorded at upload.
They must prepare a tomogram the same way (spacing, normalisation, patch size, stride, ...) and
have been validated on the same data and fold. The ensemble (:class:`MotorEnsemble`, the mean of the
members' probabilities) is then run on that validation fold, with the members' test-time settings
(unknown spacing, TTA) as in the trials, and the decision threshold and quantile are the ones
that score best there, as a trial's are. The file is sealed like any model file
(:func:`motorsearch.model_file.write_model_payload`) with ``.sha256`` beside it; ``predict``
takes it unchanged.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from motorsearch.errors import InputError


@dataclass
class ExportedEnsemble:
    """What :func:`export_ensemble` wrote."""

    path: Path
    checksum: Path
    sha256: str
    experiment_name: str
    ranking: str
    member_run_ids: list[str]
    member_trial_ids: list[str]
    metrics: dict[str, float] = field(default_factory=dict)  # the ensemble on the validation fold
    member_metrics: list[dict[str, float]] = field(default_factory=list)  # each member's, at its best epoch


def export_ensemble(out: str | Path, *, k: int, experiment_name: str | None = None,
                    tracking_uri: str | None = None, device: str | torch.device = "cpu") -> ExportedEnsemble:
    """Write the ensemble of the search's top ``k`` trials to ``out`` (+ ``out.sha256``)."""
    from motorsearch.data.cache import prepare
    from motorsearch.evaluation.validate import validate
    from motorsearch.model.ensemble import MotorEnsemble
    from motorsearch.model_file import (
        ensemble_payload,
        file_sha256,
        install_model_file,
        load_model_file,
        preprocessing_mismatch,
        write_model_payload,
    )
    from motorsearch.tracking.export import check_out_path, fetch_best_model
    from motorsearch.tracking.leaderboard import find_search, rank_search, tracking_client

    if k < 2:
        raise InputError(f"`--ensemble` must be at least 2 models, but got --ensemble={k}.")
    out = check_out_path(out)
    client = tracking_client(tracking_uri)
    search = rank_search(client, find_search(client, experiment_name))
    name, ranked, ranking = search.name, search.ranked, search.ranking
    if len(ranked) < k:
        raise InputError(f"--ensemble {k}: experiment {name!r} has {len(ranked)} trial(s) to choose from "
                         f"({ranking}), fewer than {k}.")
    rows = ranked.head(k).to_dict("records")
    with tempfile.TemporaryDirectory(prefix="motorsearch-ensemble-") as tmp:
        members = [load_model_file(fetch_best_model(client, row["run_id"], Path(tmp) / row["run_id"]))
                   for row in rows]
        for row, member in zip(rows[1:], members[1:], strict=True):
            difference = preprocessing_mismatch(members[0], member)
            if difference is None and member.config.get("data") != members[0].config.get("data"):
                difference = "it was trained and validated on other data or another fold (config `data`)"
            if difference:
                raise InputError(f"--ensemble {k}: trial {row['trial_id']} cannot join trial {rows[0]['trial_id']} "
                                 f"in an ensemble: {difference}.")
        cfg = members[0].experiment_config()
        ensemble = MotorEnsemble([member.model for member in members]).to(device).eval()
        result = validate(ensemble, prepare(cfg.data).val_tomograms(cfg.data.fold), cfg=cfg, device=device)
        payload = ensemble_payload(
            members, threshold=result.threshold, metrics=result.metrics,
            quantile=result.metrics["val_positive_rate"] or None,
            extra={"experiment": name, "ranking": ranking, "member_run_ids": [row["run_id"] for row in rows]})
        staged = write_model_payload(Path(tmp) / "ensemble.pt", payload)
        checksum = install_model_file(staged, out)
    return ExportedEnsemble(path=out, checksum=checksum, sha256=file_sha256(out), experiment_name=name,
                            ranking=ranking, member_run_ids=[row["run_id"] for row in rows],
                            member_trial_ids=[str(row["trial_id"]) for row in rows], metrics=dict(result.metrics),
                            member_metrics=[dict(member.metrics) for member in members])


def describe(exported: ExportedEnsemble, metric: str = "val_f2") -> list[str]:
    """What ``export --ensemble`` prints: the members and the ensemble's score next to theirs."""
    members = ", ".join(f"{trial} ({values.get(metric, float('nan')):.3f})"
                        for trial, values in zip(exported.member_trial_ids, exported.member_metrics, strict=True))
    ensemble = exported.metrics.get(metric, float("nan"))
    return [f"ensemble of {len(exported.member_run_ids)} trials of experiment {exported.experiment_name!r} "
            f"({exported.ranking}): {members} by {metric} at their best epoch",
            f"the ensemble on the same validation fold: {metric}={ensemble:.3f}, val_ap="
            f"{exported.metrics.get('val_ap', float('nan')):.3f}, threshold calibrated there",
            f"wrote {exported.path} and {exported.checksum.name} (sha256 {exported.sha256})"]

"""The Ray Tune trainable: one trial = one ``training.fit`` of the base experiment plus sampled values.

Inside a trial:

- the config is the base experiment (``TrialSetup.base``) with the trial's sampled values set at
  their dotted paths, validated with ``from_dict``;
- PyTorch uses as many threads as the trial's CPUs (``OMP_NUM_THREADS`` too) and exactly the
  GPU(s) Ray assigned: Ray sets ``CUDA_VISIBLE_DEVICES`` so "cuda" is the assigned card, fractions
  included; a trial without a GPU, or whose GPU CUDA cannot see, trains on the CPU; a trial
  with a fraction of a card (``resources.gpu: 0.25``) may use that fraction of its memory
  (``training.device.cap_gpu_memory``): Ray shares cards without splitting their memory;
- training resumes from ``tune.get_checkpoint()`` (a restarted trial, or a resumed search);
- every validation epoch is reported with ``tune.report(metrics, checkpoint=...)``; the metrics
  are the trainer's, the trial's objective so far over all its epochs, those before a restart
  included (``best_val_f2`` and ``best_epoch`` for ``objective: best``; see
  :mod:`motorsearch.objective`), plus where the trial ran (``node_id``, ``gpu_ids``, ``cuda_visible_devices``,
  ``device``), ``resumed_from_epoch`` (0 for a fresh start), ``trial_started_at`` and ``reported_at`` (Unix
  times; ``reported_at`` orders the reports of concurrent trials, finer than Tune's ``timestamp``);
- each start appends one JSON line to ``<storage_path>/<name>/trial_<id>/attempts.jsonl`` (pid,
  node, resume epoch): restarts show there (with a URI ``storage_path``, in Tune's local trial
  folder instead).

Trainer checkpoints are written in ``fit_<trial id>/`` of the trial's working directory (scratch
on the node) and Tune copies each reported one into ``<storage_path>/<name>/trial_<id>/checkpoint_NNNNNN``.
Every trial runs in a new process (``reuse_actors=False`` in the runner): a function trainable
cannot be reset in place, and Ray's reuse after an ASHA stop errored or hung searches.

Fault injection (tests only), read by the driver from the environment:

- ``MOTORSEARCH_FAULT_EPOCH=k`` (``TrialSetup.fault_epoch``) makes each trial's first attempt (the
  one that starts without a checkpoint) kill its own process (``os._exit``) right after reporting
  epoch k, leaving the marker file ``fault_injected`` in the trial folder. Restarted attempts
  resume from a checkpoint and are left alone.
- ``MOTORSEARCH_FAULT_RAISE=path=value`` (``TrialSetup.fault_raise``) makes every attempt of a
  trial whose sampled ``path`` equals ``value`` (compared as text) raise ``RuntimeError`` right
  after reporting epoch 1: an ordinary Python error in a trial, as a bug would raise.
"""

from __future__ import annotations

import json
import os
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from motorsearch.objective import Objective

FAULT_ENV = "MOTORSEARCH_FAULT_EPOCH"
FAULT_RAISE_ENV = "MOTORSEARCH_FAULT_RAISE"
FAULT_MARKER = "fault_injected"
ATTEMPTS_LOG = "attempts.jsonl"


@dataclass(frozen=True)
class TrialSetup:
    """What every trial needs besides its sampled values (passed with ``tune.with_parameters``).

    Attributes:
        base: the base experiment as a nested dict (``ExperimentConfig.to_dict()``), paths absolute.
        objective: the search's objective (metric, mode, best or last).
        cpus: CPUs Ray reserves per trial; PyTorch gets ``max(1, int(cpus))`` threads.
        trial_root: the search folder ``<storage_path>/<name>`` when it is a local path (trial
            folders are ``trial_<id>`` in it); None for a URI.
        fault_epoch, fault_raise: test-only fault injection (see the module docstring); None in
            real searches.
    """

    base: dict[str, Any]
    objective: Objective = Objective()
    cpus: float = 1.0
    trial_root: str | None = None
    fault_epoch: int | None = None
    fault_raise: tuple[str, str] | None = None


def train_trial(config: dict[str, Any], setup: TrialSetup) -> None:
    """Tune function trainable; ``config`` maps dotted config paths to this trial's values."""
    import ray
    import torch
    from ray import tune

    from motorsearch.data.cache import prepare
    from motorsearch.search.space import build_trial_config
    from motorsearch.training.checkpoint import read_checkpoint
    from motorsearch.training.trainer import fit

    started_at = time.time()
    threads = max(1, int(setup.cpus))
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)

    context = tune.get_context()
    trial_id = context.get_trial_id()
    trial_dir = Path(setup.trial_root) / f"trial_{trial_id}" if setup.trial_root else Path(context.get_trial_dir())
    cfg = build_trial_config(setup.base, config, source=f"trial {trial_id}")
    gpu_ids = [str(g) for g in ray.get_gpu_ids()]
    gpu_share = float(context.get_trial_resources().required_resources.get("GPU", 0.0))
    device = "cuda" if gpu_ids and torch.cuda.is_available() else "cpu"
    if gpu_ids and device == "cpu":
        print(f"motorsearch: Ray assigned GPU {','.join(gpu_ids)} but CUDA sees none; training on the CPU.",
              file=sys.stderr)
    where = {
        "node_id": ray.get_runtime_context().get_node_id(),
        "gpu_ids": ",".join(gpu_ids),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
        "device": device,
        "trial_started_at": started_at,
    }

    with ExitStack() as stack:
        checkpoint = tune.get_checkpoint()
        resume_from = Path(stack.enter_context(checkpoint.as_directory())) if checkpoint else None
        resumed = read_checkpoint(resume_from) if resume_from else {"epoch": 0, "history": []}
        resumed_epoch, history = int(resumed["epoch"]), [dict(h) for h in resumed["history"]]
        del resumed  # the checkpoint's tensors
        fault_epoch = setup.fault_epoch if resume_from is None else None
        _log_attempt(trial_dir, {**where, "pid": os.getpid(), "resumed_from_epoch": resumed_epoch})
        cache = prepare(cfg.data)

        def report(epoch: int, metrics: dict[str, float], folder: Path) -> None:
            history.append(metrics)
            tune.report({**metrics, **setup.objective.report(history), **where, "resumed_from_epoch": resumed_epoch,
                         "reported_at": time.time()}, checkpoint=tune.Checkpoint.from_directory(str(folder)))
            _maybe_fail(fault_epoch, epoch, trial_dir)
            if setup.fault_raise and epoch == 1 and str(config.get(setup.fault_raise[0])) == setup.fault_raise[1]:
                raise RuntimeError(f"injected fault: {setup.fault_raise[0]}={setup.fault_raise[1]}")

        fit(cfg, workdir=Path.cwd() / f"fit_{trial_id}", report=report, resume_from=resume_from, cache=cache,
            device=device, metric=setup.objective.metric, mode=setup.objective.mode,
            gpu_fraction=gpu_share if device == "cuda" else None)


def fault_epoch_from_env() -> int | None:
    """``MOTORSEARCH_FAULT_EPOCH`` as an int (None when unset or empty)."""
    text = os.environ.get(FAULT_ENV, "").strip()
    return int(text) if text else None


def fault_raise_from_env() -> tuple[str, str] | None:
    """``MOTORSEARCH_FAULT_RAISE`` as (dotted path, value text); None when unset or empty."""
    text = os.environ.get(FAULT_RAISE_ENV, "").strip()
    if not text:
        return None
    path, _, value = text.partition("=")
    return path.strip(), value.strip()


def read_attempts(trial_dir: str | Path) -> list[dict[str, Any]]:
    """The lines of a trial's ``attempts.jsonl``: one dict per time the trial started training."""
    path = Path(trial_dir) / ATTEMPTS_LOG
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _log_attempt(trial_dir: Path, entry: dict[str, Any]) -> None:
    trial_dir.mkdir(parents=True, exist_ok=True)
    with open(trial_dir / ATTEMPTS_LOG, "a") as handle:  # one short line per start: append is atomic enough
        handle.write(json.dumps(entry) + "\n")


def _maybe_fail(fault_epoch: int | None, epoch: int, trial_dir: Path) -> None:
    if fault_epoch is None or epoch != fault_epoch:
        return
    trial_dir.mkdir(parents=True, exist_ok=True)
    (trial_dir / FAULT_MARKER).write_text(f"killed after reporting epoch {epoch}\n")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(17)

"""Bad input, measured: each case runs one CLI command in-process on a working folder holding valid
inputs with one fault, and checks the contract of ``motorsearch.errors``: exit code 2, one line
``error: ...`` naming the culprit (file, key, row or flag), no traceback, and the folder exactly as
it was (nothing created, nothing half-written: no ``mlflow.db``, ``runs/``, cache or output). A
``run`` refused for bad input never starts Ray.

The table is grouped by what is wrong: the search-space YAML, ``run``'s flags, the data (through
``run``, which reads it before anything else is written), model files (through ``predict``),
experiment YAML (through ``train``), and the other commands' flags.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import ray
import torch
import yaml
from search_support import tiny_dataset, write_space

from motorsearch.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass(frozen=True)
class Workspace:
    """Valid inputs every case starts from (read-only: cases copy what they break)."""

    data: Path  # a tiny Kaggle dataset
    model: Path  # a model file with its .sha256


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    from tracking_helpers import tiny_config

    from motorsearch.model import build_model
    from motorsearch.model_file import save_model_file

    base = tmp_path_factory.mktemp("bad_input")
    cfg = tiny_config()
    model = save_model_file(base / "model.pt", model=build_model(cfg.model), cfg=cfg, threshold=0.5,
                            metrics={"val_f2": 0.5, "epoch": 1})
    return Workspace(data=tiny_dataset(base / "data"), model=model)


# ------------------------------------------------------------------ how a case builds its folder

Build = Callable[[Path, Workspace], list[str]]  # writes the case's inputs into the folder; returns argv


@dataclass(frozen=True)
class Case:
    name: str
    build: Build
    culprit: str  # text the error line must hold: the file, key, row or flag to fix, and the value


def space(folder: Path, ws: Workspace, *, data: Path | None = None, **settings) -> Path:
    """A valid search-space file over ``data`` (default the shared dataset) with ``settings`` changed;
    everything it would write goes under ``folder``. One trial of one epoch, should a case be accepted."""
    settings = {"epochs": 1, "num_samples": 1, **settings}
    return write_space(folder / "space.yaml", data=data or ws.data, cache=folder / "cache", storage=folder / "runs",
                       **settings)


def run_space(*flags: str, **settings) -> Build:
    return lambda folder, ws: ["run", str(space(folder, ws, **settings)), *flags]


def run_parameters(parameters: dict) -> Build:
    return run_space(parameters=parameters)


def run_overrides(overrides: dict) -> Build:
    return run_space(overrides=overrides)


def run_raw_space(text: str) -> Build:
    def build(folder: Path, ws: Workspace) -> list[str]:
        (folder / "space.yaml").write_text(text)
        return ["run", str(folder / "space.yaml")]
    return build


def copy_data(folder: Path, ws: Workspace) -> Path:
    return Path(shutil.copytree(ws.data, folder / "data"))


def run_on_data(change: Callable[[Path], None]) -> Build:
    """``run`` over a copy of the dataset that ``change(root)`` breaks."""
    def build(folder: Path, ws: Workspace) -> list[str]:
        root = copy_data(folder, ws)
        change(root)
        return ["run", str(space(folder, ws, data=root))]
    return build


def prepare_or_train_on_data(name: str, change: Callable[[Path], None]) -> Build:
    """``prepare`` or ``train`` over a copy of the dataset that ``change(root)`` breaks: the cache folder
    it would make (``<folder>/cache``) must not be left behind, lock file included."""
    def build(folder: Path, ws: Workspace) -> list[str]:
        root = copy_data(folder, ws)
        change(root)
        cache = ["--set", f"data.cache_dir={folder / 'cache'}"]
        if name == "prepare":
            return ["prepare", "--data", str(root), *cache]
        path = folder / "experiment.yaml"
        path.write_text(yaml.safe_dump({"device": "cpu", "data": {"root": str(root), "cache_dir": str(folder / "cache")}}))
        return ["train", str(path), "--out", str(folder / "out" / "model.pt")]
    return build


def labels_cell(line: int, column: str, value: str) -> Callable[[Path], None]:
    """Set one cell of ``train_labels.csv`` (line 1 is the header)."""
    def change(root: Path) -> None:
        path = root / "train_labels.csv"
        rows = list(csv.reader(io.StringIO(path.read_text())))
        rows[line - 1][rows[0].index(column)] = value
        path.write_text("".join(",".join(row) + "\n" for row in rows))
    return change


def labels_text(edit: Callable[[str], str | bytes]) -> Callable[[Path], None]:
    def change(root: Path) -> None:
        path = root / "train_labels.csv"
        text = edit(path.read_text())
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return change


def first_motor_line(text: str) -> str:
    return next(line for line in text.splitlines()[1:] if ",-1,-1,-1," not in line)


def train_folder(root: Path, index: int = 0) -> Path:
    return sorted(p for p in (root / "train").iterdir() if p.is_dir())[index]


def slices(root: Path, index: int = 0) -> list[Path]:
    return sorted(train_folder(root, index).glob("slice_*.jpg"))


def predict_with(make_model: Callable[[Path, Workspace], Path], *flags: str, data: str | None = None) -> Build:
    def build(folder: Path, ws: Workspace) -> list[str]:
        model = make_model(folder, ws)
        return ["predict", "--model", str(model), "--data", data or str(ws.data / "test"),
                "--out", str(folder / "out" / "submission.csv"), *flags]
    return build


def shared_model(folder: Path, ws: Workspace) -> Path:
    return ws.model


def model_bytes(change: Callable[[bytes], bytes], *, sidecar: bool = True) -> Callable[[Path, Workspace], Path]:
    def make(folder: Path, ws: Workspace) -> Path:
        path = folder / "model.pt"
        path.write_bytes(change(ws.model.read_bytes()))
        if sidecar and Path(f"{ws.model}.sha256").is_file():
            shutil.copyfile(f"{ws.model}.sha256", f"{path}.sha256")
        return path
    return make


def torch_file(payload: Callable[[], object]) -> Callable[[Path, Workspace], Path]:
    def make(folder: Path, ws: Workspace) -> Path:
        torch.save(payload(), folder / "model.pt")
        return folder / "model.pt"
    return make


class Foreign:
    """An object no model file holds: loading it would need ``weights_only=False``."""


def flip_byte(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:]


def experiment(body: dict | str) -> Build:
    """``train`` on an experiment file (``body``: a mapping, or raw YAML text)."""
    def build(folder: Path, ws: Workspace) -> list[str]:
        path = folder / "experiment.yaml"
        if isinstance(body, str):
            path.write_text(body)
        else:
            path.write_text(yaml.safe_dump({"data": {"root": str(ws.data), "cache_dir": str(folder / "cache")},
                                            **body}))
        return ["train", str(path), "--out", str(folder / "out" / "model.pt")]
    return build


def train_set(*overrides: str) -> Build:
    def build(folder: Path, ws: Workspace) -> list[str]:
        argv = experiment({"device": "cpu"})(folder, ws)
        return [*argv, *(arg for item in overrides for arg in ("--set", item))]
    return build


def command(*argv: str) -> Build:
    """A command whose arguments name files only under the folder (``{folder}``)."""
    return lambda folder, ws: [arg.format(folder=folder, data=ws.data, model=ws.model) for arg in argv]


LR = {"optim.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True}}
CHOICE = {"loss.name": {"type": "categorical", "choices": ["focal", "weighted_bce"]}}

SPACE_CASES = [
    Case("unknown top-level key", run_space(num_sample=4), "unknown key 'num_sample'. Did you mean 'num_samples'?"),
    Case("num_samples 0", run_space(num_samples=0), "num_samples=0"),
    Case("num_samples text", run_space(num_samples="four"), "num_samples"),
    Case("max_concurrent 0", run_space(max_concurrent=0), "max_concurrent"),
    Case("budget_epochs 0", run_space(budget_epochs=0), "budget_epochs=0"),
    Case("budget_epochs fraction", run_space(budget_epochs=2.5), "budget_epochs"),
    Case("max_failures below -1", run_space(max_failures=-2), "max_failures"),
    Case("mode typo", run_space(mode="maximum"), "mode='maximum'"),
    Case("objective typo", run_space(objective="lst"), "Did you mean 'last'?"),
    Case("metric typo", run_space(metric="val_f3"), "metric='val_f3'. Did you mean 'val_f2'?"),
    Case("scheduler type", run_space(scheduler={"type": "hyperband"}), "scheduler.type='hyperband'"),
    Case("scheduler unknown key", run_space(scheduler={"type": "asha", "grace": 1}), "scheduler.grace"),
    Case("reduction factor 1", run_space(scheduler={"type": "asha", "reduction_factor": 1}),
         "scheduler.reduction_factor"),
    Case("grace period past the epochs", run_space(scheduler={"type": "asha", "grace_period": 5}),
         "scheduler.grace_period=5"),
    Case("sampler typo", run_space(searcher={"sampler": "tpee"}), "searcher.sampler='tpee'. Did you mean 'tpe'?"),
    Case("searcher unknown key", run_space(searcher={"sampler": "tpe", "sead": 1}), "searcher.sead"),
    Case("resources gpu 2", run_space(resources={"cpu": 1, "gpu": 2}), "resources.gpu=2"),
    Case("resources cpu 0", run_space(resources={"cpu": 0}), "resources.cpu=0"),
    Case("resources gpu negative", run_space(resources={"cpu": 1, "gpu": -1}), "resources.gpu=-1"),
    Case("resources unknown key", run_space(resources={"gpus": 1}), "Did you mean 'resources.gpu'?"),
    Case("name with a slash", run_space(name="a/b"), "`name` must be a plain folder name"),
    Case("experiment file missing", run_space(experiment="nope.yaml"), "experiment='nope.yaml'"),
    Case("override unknown key", run_overrides({"optim.l": 0.1}), "'optim.l'. Did you mean 'optim.lr'?"),
    Case("override bad value", run_overrides({"optim.lr": -1}), "optim.lr=-1.0"),
    Case("override bad type", run_overrides({"optim.epochs": "many"}), "optim.epochs"),
    Case("override bad precision", run_overrides({"optim.precision": "fp8"}), "optim.precision='fp8'"),
    Case("override bad tta", run_overrides({"test_time.tta": 2}), "test_time.tta=2"),
    Case("override zoom_max below zoom_min", run_overrides({"augment.zoom_max": 0.5}), "augment.zoom_max"),
    Case("override unknown loss", run_overrides({"loss.name": "focl"}), "focl"),
    Case("override unknown preset", run_overrides({"model.preset": "huge"}), "huge"),
    Case("parameters not a mapping", run_parameters(["optim.lr"]), "`parameters` must be a mapping"),
    Case("parameter unknown path", run_parameters({"optim.lrr": LR["optim.lr"]}), "Did you mean 'optim.lr'?"),
    Case("parameter low above high", run_parameters({"optim.lr": {"type": "float", "low": 0.1, "high": 0.01}}),
         "parameters.optim.lr.low=0.1"),
    Case("parameter log from 0", run_parameters({"optim.lr": {"type": "float", "low": 0.0, "high": 0.1,
                                                               "log": True}}), "parameters.optim.lr.low=0.0"),
    Case("parameter type typo", run_parameters({"optim.lr": {"type": "floot", "low": 0.1, "high": 1}}),
         "Did you mean 'float'?"),
    Case("parameter spec key typo", run_parameters({"optim.lr": {"type": "float", "low": 0.1, "hgih": 1}}),
         "parameters.optim.lr.hgih"),
    Case("parameter float on an int field", run_parameters({"optim.epochs": {"type": "float", "low": 1, "high": 4}}),
         "parameters.optim.epochs"),
    Case("parameter int bound fraction", run_parameters({"optim.epochs": {"type": "int", "low": 1.5, "high": 4}}),
         "parameters.optim.epochs.low=1.5"),
    Case("parameter range the config rejects", run_parameters({"optim.lr": {"type": "float", "low": -1.0,
                                                                            "high": 0.01}}), "optim.lr=-1.0"),
    Case("categorical without choices", run_parameters({"loss.name": {"type": "categorical", "choices": []}}),
         "parameters.loss.name.choices=[]"),
    Case("categorical choice typo", run_parameters({"loss.name": {"type": "categorical",
                                                                  "choices": ["focal", "focall"]}}),
         "'focall', which is not one of"),
    Case("categorical choice typo named by a when", run_parameters({
        "loss.name": {"type": "categorical", "choices": ["focal", "weighted_bcee"]},
        "loss.gamma": {"type": "float", "low": 1, "high": 2, "when": {"loss.name": "weighted_bce"}}}),
        "`parameters.loss.name` can take 'weighted_bcee', which is not one of"),
    Case("when on an unknown path", run_parameters({"loss.gamma": {"type": "float", "low": 1, "high": 2,
                                                                   "when": {"loss.nam": "focal"}}}),
         "Did you mean 'loss.name'?"),
    Case("when value not a choice", run_parameters({**CHOICE, "loss.gamma": {
        "type": "float", "low": 1, "high": 2, "when": {"loss.name": "focla"}}}), "but got 'focla'"),
    Case("conditions in a cycle", run_parameters({
        "loss.gamma": {"type": "float", "low": 1, "high": 2, "when": {"loss.alpha": 1.0}},
        "loss.alpha": {"type": "float", "low": 1, "high": 2, "when": {"loss.gamma": 1.0}}}), "cycle"),
    Case("fixed value the config rejects", run_parameters({"optim.lr": {"value": -2.0}}), "optim.lr"),
    Case("YAML syntax error", run_raw_space("name: x\nparameters: {optim.lr: [\n"), "space.yaml"),
    Case("YAML a list", run_raw_space("- name\n- x\n"), "space.yaml"),
    Case("YAML empty", run_raw_space(""), "space.yaml"),
    Case("YAML tab indentation", run_raw_space("name: x\nparameters:\n\toptim.lr: 1\n"), "space.yaml"),
]

RUN_FLAG_CASES = [
    Case("space file missing", command("run", "{folder}/nope.yaml"), "nope.yaml"),
    Case("--num-samples 0", run_space("--num-samples", "0"), "--num-samples=0"),
    Case("--budget-epochs 0", run_space("--budget-epochs", "0"), "--budget-epochs=0"),
    Case("--warm-start-top 0", run_space("--warm-start-top", "0"), "--warm-start-top=0"),
    Case("--name with a slash", run_space("--name", "a/b"), "a/b"),
    Case("--set unknown key", run_space("--set", "optim.lrate=1"), "--set optim.lrate=1"),
    Case("--set bad value", run_space("--set", "optim.lr=-3"), "optim.lr=-3"),
    Case("--set without =", run_space("--set", "optim.lr"), "optim.lr"),
    Case("--resume with nothing to resume", run_space("--resume"), "--resume: no search to resume"),
    Case("--tracking-uri unreachable", run_space("--tracking-uri", "http://127.0.0.1:9"),
         "cannot reach the MLflow tracking server at http://127.0.0.1:9 within 3 s ([Errno 111] Connection refused); "
         "start it (e.g. `mlflow server --host 127.0.0.1 --port 5000`) or fix --tracking-uri."),
    Case("tracking_uri in the space file unreachable", run_space(tracking_uri="http://127.0.0.1:9"),
         "or fix `tracking_uri` in "),
    Case("--tracking-uri under a file", lambda folder, ws: (folder / "notes").write_text("x") and [
        *run_space("--tracking-uri", f"sqlite:///{folder}/notes/m.db")(folder, ws)], "notes is not a folder"),
    Case("--warm-start from a missing database", run_space("--warm-start", "earlier"), "no MLflow database"),
    Case("resources.gpu 1 without a GPU", run_space(resources={"cpu": 1, "gpu": 1}),
         "resources.gpu=1 but the cluster has no GPU"),
    Case("resources.cpu beyond the machine", run_space(resources={"cpu": 512}),
         "resources.cpu=512 but no node has more than"),
    Case("storage_path under a file", lambda folder, ws: (folder / "notes").write_text("x") and [
        "run", str(space(folder, ws, storage_path=str(folder / "notes" / "runs")))], "`storage_path` must be a folder "
        "this machine can write, but "),
    Case("data.cache_dir under a file", lambda folder, ws: (folder / "notes").write_text("x") and [
        *run_overrides({"data.cache_dir": str(folder / "notes" / "cache")})(folder, ws)], "notes is not a folder"),
]

DATA_CASES = [
    Case("data root missing", run_space(overrides={"data.root": "/nonexistent/motors"}), "/nonexistent/motors"),
    Case("train split missing", run_on_data(lambda root: shutil.rmtree(root / "train")), "train: no such folder"),
    Case("train split empty", run_on_data(lambda root: [shutil.rmtree(p) for p in (root / "train").iterdir()]),
         "holds no tomogram folders"),
    Case("labels CSV missing", run_on_data(lambda root: (root / "train_labels.csv").unlink()),
         "train_labels.csv: no such file"),
    Case("labels CSV Latin-1", run_on_data(labels_text(lambda text: text.replace("\n0,tomo_", "\n0,tomo_é", 1)
                                                       .encode("latin-1"))),
         "train_labels.csv line 2: the labels CSV must be UTF-8 text"),
    Case("labels CSV column missing", run_on_data(labels_text(lambda text: text.replace("Voxel spacing", "Spacing"))),
         "missing column(s) 'Voxel spacing'"),
    Case("labels CSV empty", run_on_data(labels_text(lambda text: "")), "missing column(s)"),
    Case("tomo_id empty", run_on_data(labels_cell(2, "tomo_id", "")), "line 2: `tomo_id` is empty"),
    *[Case(f"{column} not a number", run_on_data(labels_cell(2, column, "abc")), f"`{column}` must be a number")
      for column in ("Motor axis 0", "Motor axis 1", "Motor axis 2", "Voxel spacing", "Number of motors",
                     "Array shape (axis 0)")],
    Case("coordinate infinite", run_on_data(labels_cell(2, "Motor axis 1", "inf")), "`Motor axis 1` must be finite"),
    Case("coordinate NaN", run_on_data(labels_cell(2, "Motor axis 2", "nan")), "`Motor axis 2` must be finite"),
    Case("spacing zero", run_on_data(labels_cell(2, "Voxel spacing", "0")), "Voxel spacing=0"),
    Case("spacing negative", run_on_data(labels_cell(3, "Voxel spacing", "-4")), "line 3"),
    Case("motor count negative", run_on_data(labels_cell(2, "Number of motors", "-1")), "Number of motors=-1"),
    Case("motor count fraction", run_on_data(labels_cell(2, "Number of motors", "1.5")), "Number of motors=1.5"),
    Case("shape zero", run_on_data(labels_cell(2, "Array shape (axis 1)", "0")), "`Array shape (axis 1)`"),
    Case("shape fraction", run_on_data(labels_cell(2, "Array shape (axis 2)", "40.5")), "`Array shape (axis 2)`"),
    *[Case(f"{column} outside the array", run_on_data(labels_cell(2, column, "5000")), f"`{column}`=5000 lies outside")
      for column in ("Motor axis 0", "Motor axis 1", "Motor axis 2")],
    Case("coordinate below -0.5", run_on_data(labels_cell(2, "Motor axis 0", "-3")), "`Motor axis 0`=-3"),
    Case("shape disagrees with the slices", run_on_data(labels_cell(2, "Array shape (axis 0)", "999")),
         "Array shape=(999"),
    Case("motor row duplicated", run_on_data(labels_text(lambda text: text + first_motor_line(text) + "\n")),
         "is listed twice (also on line 2)"),
    Case("two rows of a tomogram disagree", run_on_data(labels_text(
        lambda text: text + first_motor_line(text).replace(",1\n", ",1\n").rsplit(",", 2)[0] + ",99.0,1\n")),
        "disagree with an earlier row"),
    Case("row names a tomogram without a folder", run_on_data(labels_text(
        lambda text: text + "9,tomo_absent,-1,-1,-1,10,10,10,15.0,0\n")), "tomo_absent"),
    Case("folder without a row", run_on_data(lambda root: shutil.copytree(train_folder(root), root / "train" /
                                                                          "tomo_extra")), "tomo_extra"),
    Case("slice corrupt", run_on_data(lambda root: slices(root)[5].write_bytes(b"not a jpeg")),
         "slice_0005.jpg: cannot decode the JPEG slice"),
    Case("first slice corrupt", run_on_data(lambda root: slices(root)[0].write_bytes(b"")),
         "slice_0000.jpg: cannot read the JPEG slice"),
    Case("slice truncated", run_on_data(lambda root: slices(root)[3].write_bytes(slices(root)[3].read_bytes()[:40])),
         "slice_0003.jpg"),
    Case("slice missing in the middle", run_on_data(lambda root: slices(root)[2].unlink()), "missing below the highest"),
    Case("prepare: slice corrupt", prepare_or_train_on_data("prepare", lambda root: slices(root)[5].write_bytes(b"x")),
         "slice_0005.jpg: cannot decode the JPEG slice"),
    Case("train: slice corrupt", prepare_or_train_on_data("train", lambda root: slices(root)[5].write_bytes(b"x")),
         "slice_0005.jpg: cannot decode the JPEG slice"),
    Case("slice badly named", run_on_data(lambda root: slices(root)[1].rename(slices(root)[1].with_name("slice_x1.jpg"))),
         "slice files must be named slice_NNNN.jpg"),
    Case("slice numbered twice", run_on_data(lambda root: shutil.copyfile(slices(root)[1], slices(root)[1].with_name(
        "slice_01.jpg"))), "two files for slice 1"),
    Case("tomogram folder without slices", run_on_data(lambda root: [p.unlink() for p in slices(root, 1)]),
         "no slice_NNNN.jpg files"),
]

MODEL_CASES = [
    Case("model file missing", predict_with(lambda folder, ws: folder / "nope.pt"), "nope.pt: no such model file"),
    Case("model file empty", predict_with(model_bytes(lambda data: b"", sidecar=False)), "model.pt"),
    Case("model file garbage", predict_with(model_bytes(lambda data: b"hello" * 100, sidecar=False)),
         "not a readable model file"),
    Case("model file a CSV", predict_with(model_bytes(lambda data: b"tomo_id,Motor axis 0\n", sidecar=False)),
         "not a readable model file"),
    Case("model file truncated", predict_with(model_bytes(lambda data: data[: len(data) // 2], sidecar=False)),
         "model.pt"),
    Case("model file with a flipped byte and its sidecar", predict_with(model_bytes(flip_byte)), "model.pt"),
    Case("model file of someone else's pickle", predict_with(torch_file(lambda: {"net": Foreign()})),
         "it holds a Python object"),
    Case("model file of plain tensors", predict_with(torch_file(lambda: {"weight": torch.zeros(3)})),
         "not a motorsearch model file"),
    Case("model file a list", predict_with(torch_file(lambda: [1, 2, 3])), "not a motorsearch model file"),
    Case("--data missing", predict_with(shared_model, data="/nonexistent/tomograms"), "/nonexistent/tomograms"),
    Case("--spacing 0", predict_with(shared_model, "--spacing", "0"), "--spacing=0.0"),
    Case("--spacing negative", predict_with(shared_model, "--spacing", "-16"), "--spacing=-16.0"),
    Case("--threads 0", predict_with(shared_model, "--threads", "0"), "--threads"),
    Case("--patch-size 0", predict_with(shared_model, "--patch-size", "0", "64", "64"), "--patch-size"),
    Case("--device unknown", predict_with(shared_model, "--device", "tpu"), "tpu"),
    Case("--labels missing", predict_with(shared_model, "--labels", "/nonexistent/labels.csv"),
         "/nonexistent/labels.csv"),
]

EXPERIMENT_CASES = [
    Case("train experiment file missing", command("train", "{folder}/nope.yaml", "--out", "{folder}/out/m.pt"), "nope.yaml"),
    Case("experiment unknown key", experiment({"optim": {"lrate": 0.1}}), "optim.lrate"),
    Case("experiment unknown section", experiment({"optimizer": {"lr": 0.1}}), "optimizer"),
    Case("experiment bad value", experiment({"optim": {"lr": -1}}), "optim.lr=-1"),
    Case("experiment bad type", experiment({"optim": {"epochs": "ten"}}), "optim.epochs"),
    Case("experiment bad scheduler", experiment({"optim": {"scheduler": "sometimes"}}), "optim.scheduler"),
    Case("experiment bad device", experiment({"device": "tpu"}), "tpu"),
    Case("experiment bad patch", experiment({"sampling": {"patch_size": [0, 64, 64]}}), "sampling.patch_size"),
    Case("experiment YAML syntax error", experiment("optim: {lr: [\n"), "experiment.yaml"),
    Case("experiment YAML a list", experiment("- 1\n- 2\n"), "experiment.yaml"),
    Case("train --set unknown key", train_set("optim.lrr=1"), "--set optim.lrr=1"),
    Case("train --set bad value", train_set("optim.epochs=0"), "optim.epochs"),
    Case("train --set without =", train_set("optim.epochs"), "optim.epochs"),
    Case("train: unknown loss (before the cache is built)", train_set("loss.name=focall"),
         "`loss.name` must be one of bce, bce_topk, combined_focal, focal, weighted_bce, but got loss.name='focall'. "
         "Did you mean 'focal'?"),
    Case("train: unknown preset", train_set("model.preset=tinny"), "`model.preset` must be one of"),
    Case("train --threads 0", lambda folder, ws: [*experiment({"device": "cpu"})(folder, ws), "--threads", "0"],
         "--threads"),
]

OTHER_COMMAND_CASES = [
    Case("simulate --n-train 0", command("simulate", "--out", "{folder}/sim", "--n-train", "0"), "--n-train=0"),
    Case("simulate --n-train negative", command("simulate", "--out", "{folder}/sim", "--n-train", "-3"),
         "--n-train=-3"),
    Case("simulate --n-test negative", command("simulate", "--out", "{folder}/sim", "--n-test", "-1"), "--n-test=-1"),
    Case("simulate --difficulty negative", command("simulate", "--out", "{folder}/sim", "--difficulty", "-1"),
         "difficulty"),
    Case("simulate --out a file", lambda folder, ws: (folder / "taken").write_text("mine") and [
        "simulate", "--out", str(folder / "taken")], "taken"),
    Case("best without a database", command("best", "--experiment", "nope"), "no MLflow database"),
    Case("best --tracking-uri unreachable", command("best", "--tracking-uri", "http://127.0.0.1:9"),
         "http://127.0.0.1:9"),
    Case("best --top negative", command("best", "--top", "-1"), "--top"),
    Case("export without a database", command("export", "--experiment", "nope", "--out", "{folder}/m.pt"),
         "no MLflow database"),
    Case("export --tracking-uri unreachable", command("export", "--out", "{folder}/m.pt", "--tracking-uri",
                                                      "http://127.0.0.1:9"), "http://127.0.0.1:9"),
    Case("prepare --config missing", command("prepare", "--config", "{folder}/nope.yaml"), "nope.yaml"),
    Case("prepare --set unknown key", command("prepare", "--data", "{data}", "--set", "data.rooot=x"), "data.rooot"),
]

CASES = SPACE_CASES + RUN_FLAG_CASES + DATA_CASES + MODEL_CASES + EXPERIMENT_CASES + OTHER_COMMAND_CASES


def snapshot(folder: Path) -> dict[str, tuple[int, int] | None]:
    """Every file (size, mtime) and folder (None) under ``folder``."""
    found: dict[str, tuple[int, int] | None] = {}
    for parent, folders, files in os.walk(folder):
        for name in folders:
            found[os.path.relpath(os.path.join(parent, name), folder)] = None
        for name in files:
            stat = os.stat(os.path.join(parent, name))
            found[os.path.relpath(os.path.join(parent, name), folder)] = (stat.st_size, stat.st_mtime_ns)
    return found


def test_the_table_has_at_least_100_cases() -> None:
    assert len(CASES) >= 100
    assert len({case.name for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(case: Case, workspace: Workspace, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "work"
    folder.mkdir()
    monkeypatch.chdir(folder)  # what a command writes by default (mlflow.db, runs/) would land here
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    argv = case.build(folder, workspace)
    capsys.readouterr()
    before = snapshot(folder)

    code = main(argv)
    started_ray = ray.is_initialized()
    ray.shutdown()  # a case wrongly accepted must not change the next one

    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert code == 2, err
    assert "Traceback" not in err
    assert len(errors) == 1 and lines[-1] == errors[0], err  # before it at most a progress bar
    assert all("%|" in line for line in lines[:-1]), err
    assert case.culprit in errors[0]
    assert "weights_only=False" not in errors[0]
    assert snapshot(folder) == before
    assert not started_ray  # refused before Ray started

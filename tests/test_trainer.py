"""The training loop on tiny real data: accumulation, clipping, resume, divergence, checkpoints."""

from pathlib import Path

import pytest
import torch

from motorsearch.config import from_dict
from motorsearch.errors import TrainingDiverged
from motorsearch.losses import build_loss
from motorsearch.model import build_model
from motorsearch.model_file import load_model_file
from motorsearch.objective import REPORTED_METRICS
from motorsearch.training.checkpoint import read_checkpoint
from motorsearch.training.trainer import (
    backward_micro_batch,
    build_optimizer,
    fit,
    optimizer_step,
    restore_scaler,
    steps_per_epoch,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dataset(one_thread, tmp_path_factory):
    from motorsearch.data.cache import prepare
    from motorsearch.data.simulate import simulate_dataset

    base = tmp_path_factory.mktemp("trainer")
    root = simulate_dataset(base / "byu", n_train=6, n_test=0, seed=0, scale=0.3)
    cache = prepare(make_cfg(root, base).data)
    return root, base, cache


def make_cfg(root, base, **sections):
    raw = {
        "device": "cpu",
        "data": {"root": str(root), "cache_dir": str(base / "cache"), "n_folds": 3},
        "sampling": {"patch_size": [32, 64, 64], "batch_size": 2, "patches_per_epoch": 4},
        "model": {"preset": "tiny"},
        "loss": {"name": "weighted_bce", "pos_weight": 5.0},
        "optim": {"epochs": 2, "lr": 1e-3, "warmup_fraction": 0.0, "precision": "fp32"},
        "validation": {"window_batch_size": 1},
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return from_dict(raw)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(folder)["model"]


def assert_same_weights(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=atol, msg=name)


# --- the step's arithmetic on tensors ---------------------------------------------------------------


def test_accumulated_gradient_equals_one_larger_batch():
    torch.manual_seed(0)
    model = build_model(from_dict({}).model)
    loss_fn = build_loss(from_dict({"loss": {"name": "weighted_bce", "pos_weight": 5.0}}).loss)
    images = torch.randn(4, 1, 32, 32, 32)
    targets = torch.rand(4, 1, 2, 2, 2)
    scaler = torch.amp.GradScaler("cpu", enabled=False)

    loss_fn(model(images), targets).backward()
    whole = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    for part in range(2):
        chunk = slice(2 * part, 2 * part + 2)
        backward_micro_batch(loss_fn(model(images[chunk]), targets[chunk]), scaler, 2)
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(parameter.grad, whole[name], rtol=1e-5, atol=1e-7, msg=name)


class Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(3))

    def forward(self, a):
        return (self.w * a).sum()  # gradient w.r.t. w is a


@pytest.mark.parametrize(
    ("grad_clip", "expected_update"),
    [
        (None, [-5.0, -0.5, 0.0]),
        (10.0, [-5.0, -0.5, 0.0]),  # unscaled norm 5.02 < 10: untouched (scaled by 1024 it would be clipped)
        (1.0, [-5.0 / 5.024938, -0.5 / 5.024938, 0.0]),  # the mean gradient clipped once to norm 1
    ],
)
def test_clipping_after_unscaling_once_per_step(grad_clip, expected_update):
    model = Linear()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    # two micro-batches with gradients (10, 0, 0) and (0, 1, 0): mean (5, 0.5, 0), norm 5.0249;
    # clipping each micro-batch instead would give (1, 0.5, 0) / 2 ... a different update
    for a in ([10.0, 0.0, 0.0], [0.0, 1.0, 0.0]):
        backward_micro_batch(model(torch.tensor(a)), scaler, 2)
    norm = optimizer_step(model, optimizer, scaler, grad_clip=grad_clip)
    torch.testing.assert_close(model.w.detach(), torch.tensor(expected_update), rtol=1e-5, atol=1e-6)
    if grad_clip is not None:
        assert float(norm) == pytest.approx(5.024938, rel=1e-5)
    assert model.w.grad is None


def test_two_learning_rate_groups():
    cfg = from_dict({"optim": {"lr": 2e-3, "backbone_lr_ratio": 0.25, "weight_decay": 0.05}})
    model = build_model(cfg.model)
    optimizer = build_optimizer(model, cfg)
    head, backbone = optimizer.param_groups
    assert (head["lr"], backbone["lr"]) == (pytest.approx(2e-3), pytest.approx(5e-4))
    assert head["weight_decay"] == backbone["weight_decay"] == 0.05
    assert len(head["params"]) + len(backbone["params"]) == len(list(model.parameters()))


@pytest.mark.parametrize(("patches", "batch", "per_step", "expected"), [(8, 2, 1, (4, 4)), (8, 2, 3, (4, 2)),
                                                                          (9, 2, 2, (4, 2))])
def test_steps_per_epoch(patches, batch, per_step, expected):
    cfg = from_dict({"sampling": {"patches_per_epoch": patches, "batch_size": batch},
                     "optim": {"batches_per_step": per_step}})
    assert steps_per_epoch(cfg) == expected


# --- whole runs on tiny simulated data ---------------------------------------------------------------


def test_accumulating_micro_batches_trains_like_one_larger_batch(dataset, tmp_path):
    root, base, cache = dataset
    # Adam's first update is about lr * sign(g): where g is near 0 float rounding is amplified to
    # ~1% of lr, so lr 1e-4 keeps the comparison at 1e-6 (the gradients themselves agree to 1e-5
    # relative, see the test above; Adam would hide a missing division, that test would not)
    optim = {"epochs": 1, "lr": 1e-4}
    small = make_cfg(root, base, sampling={"batch_size": 1, "patches_per_epoch": 2},
                     optim={**optim, "batches_per_step": 2})
    large = make_cfg(root, base, sampling={"batch_size": 2, "patches_per_epoch": 2}, optim=optim)
    a = fit(small, workdir=tmp_path / "small", cache=cache)
    b = fit(large, workdir=tmp_path / "large", cache=cache)
    assert read_checkpoint(a.last_checkpoint)["global_step"] == read_checkpoint(b.last_checkpoint)["global_step"] == 1
    assert_same_weights(weights(a.last_checkpoint), weights(b.last_checkpoint), atol=1e-6)


def test_resume_reproduces_the_uninterrupted_run(dataset, tmp_path):
    root, base, cache = dataset
    # drop_path draws from torch's RNG and augmentation from the sampler's: both must resume exactly
    cfg = make_cfg(root, base, optim={"epochs": 3, "warmup_fraction": 0.3}, model={"drop_path": 0.2})
    whole = fit(cfg, workdir=tmp_path / "whole", cache=cache)

    class Crash(Exception):
        pass

    def crash_after_epoch_2(epoch, metrics, folder):
        if epoch == 2:
            raise Crash

    with pytest.raises(Crash):
        fit(cfg, workdir=tmp_path / "parts", cache=cache, report=crash_after_epoch_2)
    checkpoint = tmp_path / "parts" / "checkpoints" / "epoch_0002"
    # resumed in another workdir (as a search does on another node): the best folder comes along
    resumed = fit(cfg, workdir=tmp_path / "elsewhere", cache=cache, resume_from=checkpoint)

    assert_same_weights(weights(whole.last_checkpoint), weights(resumed.last_checkpoint))
    assert [h["epoch"] for h in resumed.history] == [1.0, 2.0, 3.0]
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in whole.history]
    assert read_checkpoint(resumed.last_checkpoint)["global_step"] == 6
    assert resumed.best_epoch == whole.best_epoch
    assert resumed.best_checkpoint.parent == tmp_path / "elsewhere" / "checkpoints"
    assert (resumed.best_checkpoint / "model.pt").is_file()
    assert resumed.best_metrics["val_f2"] == whole.best_metrics["val_f2"]


def test_nan_loss_raises_training_diverged(dataset, tmp_path):
    root, base, cache = dataset
    cfg = make_cfg(root, base, sampling={"patches_per_epoch": 8}, optim={"lr": 1e30, "grad_clip": None, "epochs": 1})
    with pytest.raises(TrainingDiverged, match=r"training diverged at epoch 1 step \d+: loss=(nan|inf)"):
        fit(cfg, workdir=tmp_path, cache=cache)
    assert not (tmp_path / "checkpoints").exists()


def test_checkpoints_kept_only_for_the_best_and_the_last(dataset, tmp_path):
    root, base, cache = dataset
    cfg = make_cfg(root, base, optim={"epochs": 5}, validation={"every": 2})
    reports = []

    def report(epoch, metrics, folder):
        reports.append((epoch, dict(metrics), folder, sorted(p.name for p in folder.iterdir())))

    # "epoch" with mode min: the first validation epoch is best and every later one is worse
    result = fit(cfg, workdir=tmp_path, cache=cache, report=report, metric="epoch", mode="min")
    assert [r[0] for r in reports] == [2, 4, 5]  # every 2 epochs, and always the last
    # the validation picture is drawn for a new best epoch only
    assert [r[3] for r in reports] == [["model.pt", "state.pt", "validation.png"], ["model.pt", "state.pt"],
                                       ["model.pt", "state.pt"]]
    assert result.best_epoch == 2
    assert result.best_checkpoint == tmp_path / "checkpoints" / "epoch_0002"
    assert result.last_checkpoint == tmp_path / "checkpoints" / "epoch_0005"
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["epoch_0002", "epoch_0005"]
    best = load_model_file(result.best_checkpoint / "model.pt")
    assert best.metrics == reports[0][1] and best.extra == {"epoch": 2}
    assert result.best_metrics == reports[0][1]
    assert len(result.history) == 3

    metrics = reports[-1][1]
    expected_keys = {"epoch", "train_loss", "lr", "val_f2", "val_precision", "val_recall", "val_threshold",
                     "val_loss", "val_dice", "val_topk_acc", "val_ap", "val_ap_r90", "val_positive_rate", "epoch_time_s"}
    assert set(metrics) == expected_keys == set(REPORTED_METRICS)
    assert all(isinstance(v, float) and v == v and abs(v) != float("inf") for v in metrics.values())
    assert metrics["lr"] == pytest.approx(1e-3 * 0.01)  # the schedule ends at min_lr_fraction


def test_best_follows_the_metric_direction(dataset, tmp_path):
    root, base, cache = dataset
    cfg = make_cfg(root, base, optim={"epochs": 2})
    result = fit(cfg, workdir=tmp_path, cache=cache, metric="epoch", mode="max")
    assert result.best_epoch == 2 and result.best_checkpoint == result.last_checkpoint
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["epoch_0002"]


def test_a_tie_goes_to_the_later_epoch(dataset, tmp_path):
    root, base, cache = dataset
    cfg = make_cfg(root, base, optim={"epochs": 2, "min_lr_fraction": 1.0})  # constant lr: every epoch ties
    result = fit(cfg, workdir=tmp_path, cache=cache, metric="lr", mode="max")
    assert [h["lr"] for h in result.history] == [1e-3, 1e-3]
    assert result.best_epoch == 2 and result.best_checkpoint == result.last_checkpoint


def fp16_scaler_state() -> dict:
    scaler = torch.amp.GradScaler("cpu", init_scale=512.0, growth_interval=7)
    return scaler.state_dict()


def test_scaler_state_resumes_across_precisions():
    disabled_state = torch.amp.GradScaler("cpu", enabled=False).state_dict()
    assert disabled_state == {}  # what an fp32/bf16/CPU checkpoint holds
    with pytest.raises(RuntimeError, match="empty"):  # the crash restore_scaler avoids
        torch.amp.GradScaler("cpu").load_state_dict(disabled_state)

    enabled = torch.amp.GradScaler("cpu")  # fp32 checkpoint resumed in fp16: a fresh scale
    restore_scaler(enabled, disabled_state)
    assert enabled.state_dict()["scale"] == 65536.0
    restore_scaler(enabled, fp16_scaler_state())  # fp16 -> fp16: the saved scale
    assert enabled.state_dict()["scale"] == 512.0 and enabled.state_dict()["growth_interval"] == 7
    disabled = torch.amp.GradScaler("cpu", enabled=False)  # fp16 checkpoint resumed in fp32
    restore_scaler(disabled, fp16_scaler_state())
    assert disabled.state_dict() == {}


def test_an_fp16_checkpoint_resumes_in_fp32(dataset, tmp_path):
    root, base, cache = dataset
    cfg = make_cfg(root, base, optim={"epochs": 2})
    first = fit(make_cfg(root, base, optim={"epochs": 1}), workdir=tmp_path / "a", cache=cache)
    state = read_checkpoint(first.last_checkpoint)
    state["scaler"] = fp16_scaler_state()  # as a GPU trial in fp16 would have saved it
    torch.save(state, first.last_checkpoint / "state.pt")
    resumed = fit(cfg, workdir=tmp_path / "b", cache=cache, resume_from=first.last_checkpoint)
    assert [h["epoch"] for h in resumed.history] == [1.0, 2.0]
    assert read_checkpoint(resumed.last_checkpoint)["scaler"] == {}


def test_a_trial_stopped_inside_report_leaves_no_model_or_optimizer_alive(dataset, tmp_path, monkeypatch):
    import weakref

    import motorsearch.model

    root, base, cache = dataset
    models = []

    def build_and_watch(cfg):
        model = real_build(cfg)
        models.append(weakref.ref(model))
        return model

    real_build = motorsearch.model.build_model
    monkeypatch.setattr(motorsearch.model, "build_model", build_and_watch)

    def stopped_by_asha(epoch, metrics, folder):
        raise SystemExit(0)  # how Ray stops a pruned function trainable

    try:
        fit(make_cfg(root, base, optim={"epochs": 2}), workdir=tmp_path, cache=cache, report=stopped_by_asha)
    except SystemExit as exc:
        # still inside the handler, the exception and its traceback alive, as in Ray's own
        assert exc.__traceback__ is not None
        assert len(models) == 1 and models[0]() is None
    else:
        pytest.fail("fit did not raise")


@pytest.mark.parametrize(("requested", "expected"), [("auto", "fp32"), ("fp32", "fp32"), ("bf16", "fp32"),
                                                     ("fp16", "fp32")])
def test_cpu_always_trains_in_fp32(requested, expected, capsys):
    from motorsearch.training.device import select_precision

    assert select_precision(requested, torch.device("cpu")) == expected
    note = capsys.readouterr().err
    assert ("uses fp32" in note) == (requested in ("bf16", "fp16"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_asking_for_cuda_without_it_is_a_config_error():
    from motorsearch.errors import ConfigError
    from motorsearch.training.device import select_device

    assert select_device("auto").type == "cpu"
    with pytest.raises(ConfigError, match="no CUDA device is available"):
        select_device("cuda")
    with pytest.raises(ConfigError, match="must be auto, cpu, cuda or cuda:N"):
        select_device("tpu")

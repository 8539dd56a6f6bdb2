"""The one precision rule, GPU memory caps and advice, and RNG state across devices (on a CPU machine)."""

import pytest
import torch

from motorsearch.evaluation.inference import _autocast_dtype
from motorsearch.training.checkpoint import restore_rng_state, rng_state
from motorsearch.training.device import cap_gpu_memory, out_of_memory_advice, resolve_precision, select_precision

CUDA = torch.device("cuda")


def fake_card(monkeypatch, *, native_bf16: bool) -> list[dict]:
    """``torch.cuda.is_bf16_supported`` as a card answers it: a T4 emulates bf16 (True by default,
    False when emulation is excluded); an A100 has it natively. Records how it was asked."""
    calls = []

    def is_bf16_supported(including_emulation: bool = True) -> bool:
        calls.append({"including_emulation": including_emulation})
        return native_bf16 or including_emulation

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    return calls


@pytest.mark.parametrize(("native_bf16", "expected"), [(False, "fp16"), (True, "bf16")])
def test_auto_precision_is_bf16_only_where_the_card_has_it_natively(monkeypatch, native_bf16, expected):
    calls = fake_card(monkeypatch, native_bf16=native_bf16)
    assert resolve_precision("auto", CUDA) == expected
    assert select_precision("auto", CUDA) == expected  # training
    assert _autocast_dtype("auto", CUDA) == {"fp16": torch.float16, "bf16": torch.bfloat16}[expected]  # inference
    assert calls and all(call == {"including_emulation": False} for call in calls)


@pytest.mark.parametrize("requested", ["auto", "fp32", "bf16", "fp16"])
def test_a_cpu_always_resolves_to_fp32_and_an_explicit_cuda_precision_is_kept(monkeypatch, requested):
    fake_card(monkeypatch, native_bf16=False)
    assert resolve_precision(requested, torch.device("cpu")) == "fp32"
    if requested != "auto":
        assert resolve_precision(requested, CUDA) == requested


def test_the_memory_cap_is_the_trials_share_of_one_card(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, d=None: calls.append((f, d)))
    assert cap_gpu_memory(0.25, CUDA) == 0.25
    assert cap_gpu_memory(1.0, CUDA) is None  # a whole card: nothing to cap
    assert cap_gpu_memory(0.25, torch.device("cpu")) is None
    assert calls == [(0.25, CUDA)]


@pytest.mark.parametrize(("phase", "precision", "fraction", "message"), [
    ("training", "bf16", 0.25, "CUDA ran out of memory during training of the 0.25 of the card this trial may use: "
                               "lower `sampling.batch_size` (now 2) or `sampling.patch_size`; with a shared card, "
                               "ask a larger `resources.gpu`."),
    ("validation", "fp32", None, "CUDA ran out of memory during validation: lower `validation.window_batch_size` "
                                 "(now 4), or train in bf16/fp16 (`optim.precision`); with a shared card, ask a "
                                 "larger `resources.gpu`."),
])
def test_out_of_memory_advice_names_what_to_lower(phase, precision, fraction, message):
    assert out_of_memory_advice(phase=phase, batch_size=2, window_batch_size=4, precision=precision,
                                fraction=fraction) == message


def test_cpu_training_saves_no_cuda_rng_and_ignores_one_saved_for_more_devices():
    torch.manual_seed(3)
    state = rng_state(torch.device("cpu"))
    assert "cuda" not in state
    expected = torch.rand(3)
    # a checkpoint from an 8-GPU node (one state per visible device, the old format) resumed on a CPU
    state["cuda"] = [torch.zeros(16, dtype=torch.uint8)] * 8
    restore_rng_state(state, torch.device("cpu"))
    assert torch.equal(torch.rand(3), expected)

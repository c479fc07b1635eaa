"""The CPU backend choice (workers/cpu_backend.py): flags, the missing package, precision, the
parity safety net, which calls the compiled UNet may take, and where conversions are keyed."""

from __future__ import annotations

import logging
import os
from types import SimpleNamespace

import pytest
import torch

from workers import cpu_backend, openvino_backend
from workers.cpu_backend import (BackendUnavailable, CpuBackendOptions, ParityError, choose, has_bf16_units,
                                 install_cpu_backend, is_plain_unet_call)
from workers.errors import EngineError

BF16 = frozenset({"sse4_2", "avx2", "avx512f", "avx512_bf16"})
AMX = frozenset({"sse4_2", "avx2", "amx_bf16", "amx_tile"})
NO_BF16 = frozenset({"sse4_2", "avx2", "avx512f"})


@pytest.mark.parametrize("flags, expected", [(BF16, True), (AMX, True), (NO_BF16, False), (None, False)])
def test_bf16_units_come_from_the_cpu_flags(flags, expected):
    assert has_bf16_units(flags) is expected


@pytest.mark.parametrize("flags, backend, precision, expected", [
    (BF16, "auto", "bf16", ("openvino", "bf16")),
    (AMX, "auto", "f32", ("openvino", "f32")),
    (NO_BF16, "auto", "bf16", ("torch", "f32")),  # no bf16 units: neither OpenVINO by default nor emulated bf16
    (NO_BF16, "openvino", "bf16", ("openvino", "f32")),  # asked for by name: OpenVINO f32
    (None, "auto", "bf16", ("torch", "f32")),  # no /proc/cpuinfo: torch
    (BF16, "torch", "bf16", ("torch", "bf16")),  # torch with bf16 autocast
])
def test_choice_by_flags_and_settings(flags, backend, precision, expected):
    choice = choose(CpuBackendOptions(backend=backend, precision=precision), flags=flags, openvino_missing=None)
    assert (choice.backend, choice.precision) == expected
    if flags is NO_BF16 and precision == "bf16":
        assert any("no bf16 units" in note for note in choice.notes)


def test_missing_openvino_is_a_clear_error_when_asked_for_and_torch_for_auto():
    missing = "the openvino package is not installed (No module named 'openvino')"
    with pytest.raises(BackendUnavailable) as raised:
        choose(CpuBackendOptions(backend="openvino", precision="bf16"), flags=BF16, openvino_missing=missing)
    message = str(raised.value)
    assert "PIXELMILL_CPU_BACKEND=openvino" in message and "pip install openvino==" in message
    assert "PIXELMILL_CPU_BACKEND=torch" in message
    auto = choose(CpuBackendOptions(backend="auto", precision="bf16"), flags=BF16, openvino_missing=missing)
    assert (auto.backend, auto.precision) == ("torch", "bf16") and "not installed" in auto.notes[0]


def test_unknown_settings_are_refused():
    with pytest.raises(EngineError, match="cpu backend"):
        CpuBackendOptions(backend="onnx")
    with pytest.raises(EngineError, match="cpu precision"):
        CpuBackendOptions(precision="fp16")


def test_gpu_engines_and_other_dtypes_are_left_alone():
    pipe = object()  # never touched
    gpu = install_cpu_backend(pipe, model="m", revision=None, device="cuda", dtype=torch.float16,
                              options=CpuBackendOptions(backend="openvino", precision="bf16"))
    assert (gpu.label, gpu.patched) == ("torch-fp16", False)
    bf16_weights = install_cpu_backend(pipe, model="m", revision=None, device="cpu", dtype=torch.bfloat16,
                                       options=CpuBackendOptions(backend="openvino", precision="bf16"))
    assert (bf16_weights.label, bf16_weights.patched) == ("torch-bf16", False)
    plain = install_cpu_backend(pipe, model="m", revision=None, device="cpu", dtype=torch.float32,
                                options=CpuBackendOptions())
    assert (plain.label, plain.patched, plain.key_dtype) == ("torch-f32", False, None)


def _fake_pipe():
    return SimpleNamespace(unet=SimpleNamespace(_compiled_call_impl=None))


def test_missing_package_through_the_hook(monkeypatch):
    monkeypatch.setattr(cpu_backend, "openvino_problem", lambda: "the openvino package is not installed")
    monkeypatch.setattr(cpu_backend, "cpu_flags", lambda: BF16)
    with pytest.raises(BackendUnavailable, match="pip install openvino=="):
        install_cpu_backend(_fake_pipe(), model="m", revision=None, device="cpu", dtype=torch.float32,
                            options=CpuBackendOptions(backend="openvino", precision="f32"))
    auto = install_cpu_backend(_fake_pipe(), model="m", revision=None, device="cpu", dtype=torch.float32,
                               options=CpuBackendOptions(backend="auto", precision="f32"))
    assert auto.label == "torch-f32" and "not installed" in auto.reason


@pytest.mark.parametrize("failure, logged", [
    (ParityError("its fp32 UNet differs from torch by 0.02 on the parity input (limit 0.0001)"), "refusing OpenVINO"),
    (RuntimeError("unsupported operation aten::frobnicate"), "could not convert"),
])
def test_parity_or_conversion_failure_falls_back_to_torch(monkeypatch, caplog, failure, logged):
    def prepare(*args, **kwargs):
        raise failure

    monkeypatch.setattr(cpu_backend, "openvino_problem", lambda: None)
    monkeypatch.setattr(cpu_backend, "cpu_flags", lambda: BF16)
    monkeypatch.setattr(openvino_backend, "prepare", prepare)
    with caplog.at_level(logging.INFO, logger="workers.cpu_backend"):
        info = install_cpu_backend(_fake_pipe(), model="m", revision=None, device="cpu", dtype=torch.float32,
                                   options=CpuBackendOptions(backend="auto", precision="f32"))
    assert (info.name, info.precision, info.patched) == ("torch", "f32", False)
    assert str(failure) in info.reason
    assert any(logged in record.getMessage() and "running torch" in record.getMessage() for record in caplog.records)


def test_only_plain_calls_take_the_compiled_unet():
    unet = SimpleNamespace(peft_config={})
    sample, hidden, t = torch.zeros(2, 4, 8, 8), torch.zeros(2, 77, 32), torch.tensor(500)

    def plain(**kwargs):
        return is_plain_unet_call(unet, sample, t, hidden, (), {"return_dict": False, "timestep_cond": None,
                                                              "cross_attention_kwargs": None,
                                                              "added_cond_kwargs": None, **kwargs}, up_factor=2)

    assert plain()
    assert plain(cross_attention_kwargs={})
    assert not plain(down_block_additional_residuals=[torch.zeros(1)])  # ControlNet
    assert not plain(mid_block_additional_residual=torch.zeros(1))
    assert not plain(cross_attention_kwargs={"scale": 0.5})  # a LoRA scale
    assert not plain(timestep_cond=torch.zeros(2, 4))
    unet.peft_config = {"style": object()}  # a LoRA loaded on the UNet
    assert not plain()
    unet.peft_config = {}
    assert not is_plain_unet_call(unet, sample.half(), t, hidden, (), {}, up_factor=2)
    assert not is_plain_unet_call(unet, sample, torch.tensor([1, 2]), hidden, (), {}, up_factor=2)
    assert is_plain_unet_call(unet, sample, torch.tensor([7, 7]), hidden, (), {}, up_factor=2)


def _module(config: dict):
    return SimpleNamespace(config=config, state_dict=lambda: {"w": torch.ones(2)})


def test_conversions_are_keyed_by_config_weight_files_and_version(tmp_path):
    for part in ("unet", "vae"):
        (tmp_path / part).mkdir()
        (tmp_path / part / "diffusion_pytorch_model.safetensors").write_bytes(b"x" * 10)
    pipe = SimpleNamespace(unet=_module({"in_channels": 4, "_name_or_path": "/somewhere"}),
                           vae=_module({"latent_channels": 4}))
    first = openvino_backend.model_fingerprint(pipe, model=str(tmp_path), revision=None)
    moved = SimpleNamespace(unet=_module({"in_channels": 4, "_name_or_path": "/elsewhere"}), vae=pipe.vae)
    assert openvino_backend.model_fingerprint(moved, model=str(tmp_path), revision=None) == first
    changed = SimpleNamespace(unet=_module({"in_channels": 9}), vae=pipe.vae)
    assert openvino_backend.model_fingerprint(changed, model=str(tmp_path), revision=None) != first
    weights = tmp_path / "unet" / "diffusion_pytorch_model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert openvino_backend.model_fingerprint(pipe, model=str(tmp_path), revision=None) != first
    key = openvino_backend.conversion_key("models/My Model/", first, "2026.4.1")
    assert key == f"My-Model-{first[:16]}-ov2026.4.1-f32"
    assert openvino_backend.conversion_key("org/sd", first, "2027.0.0") != openvino_backend.conversion_key(
        "org/sd", first, "2026.4.1")


def test_the_heartbeat_says_what_is_converting():
    from tasks.heartbeat import WorkerInfo
    from tasks.lifecycle import describe

    openvino_backend._set_status(model="tiny", part="unet", step=1, steps=3, waiting=False)
    try:
        fields = describe()
    finally:
        openvino_backend._set_status()
    assert fields["converting"]["part"] == "unet" and fields["converting"]["elapsed_s"] >= 0
    info = WorkerInfo(hostname="h", pid=1, **fields)  # the heartbeat takes every field describe() gives
    assert info.converting["step"] == 1
    assert openvino_backend.conversion_status() is None

"""How the commands apply models/accel.py: settings resolved for the device, the transformer accelerated
once."""

from __future__ import annotations

import pytest
import torch

from audioloop.config import Settings
from audioloop.errors import SettingsError
from audioloop.job import BACKGROUND_DECODE_MIN_GIB, accel_settings, background_decode
from audioloop.models.accel import DEFAULT_FP8, AccelSettings
from audioloop.render import accelerated, home

CPU = torch.device("cpu")


def test_compile_auto_is_off_on_the_cpu_and_explicit_values_stand() -> None:
    assert accel_settings("auto", "sdpa", False, False, CPU) == AccelSettings(compile=False)
    assert accel_settings(True, "sdpa", False, False, CPU) == AccelSettings(compile=True)
    with pytest.raises(
        SettingsError, match="--attention flash is a CUDA kernel, not for cpu; use --attention sdpa"
    ):
        accel_settings("auto", "flash", False, False, CPU)


def test_fa4_is_one_settings_error_naming_its_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(
        SettingsError, match="--attention fa4 needs a CUDA GPU, not cpu; use --attention sdpa"
    ):
        accel_settings("auto", "fa4", True, False, CPU)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda _device: "NVIDIA A100")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda _device: (8, 0))
    with pytest.raises(SettingsError) as caught:
        accel_settings("auto", "fa4", False, False, torch.device("cuda"))
    assert (
        str(caught.value) == "--attention fa4 needs a Hopper or Blackwell GPU; NVIDIA A100 is sm_80: use sdpa"
    )
    assert caught.value.exit_code == 2


def test_background_decode_auto_needs_a_large_cuda_card_and_no_offload(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cuda = torch.device("cuda")
    total = {"memory": 80 * 2**30}
    monkeypatch.setattr(
        torch.cuda, "get_device_properties", lambda _: type("P", (), {"total_memory": total["memory"]})
    )
    assert background_decode("auto", cuda, offload=False)
    assert not background_decode("auto", cuda, offload=True)
    assert not background_decode("auto", CPU, offload=False)
    total["memory"] = BACKGROUND_DECODE_MIN_GIB * 2**30 - 1
    assert not background_decode("auto", cuda, offload=False)
    assert background_decode(True, cuda, offload=True) and background_decode(True, CPU, offload=False)
    assert not background_decode(False, cuda, offload=False)


@pytest.mark.parametrize(
    ("fp8", "offload", "message"),
    [
        (True, False, "--fp8 needs an NVIDIA GPU with FP8 (Ada/Hopper), not cpu; drop --fp8"),
        (False, True, "--offload needs an NVIDIA GPU, not cpu; drop --offload"),
    ],
)
def test_fp8_and_offload_are_one_line_settings_errors_off_cuda(
    fp8: bool, offload: bool, message: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        accel_settings("auto", "sdpa", fp8, offload, CPU)
    assert str(caught.value) == message and caught.value.exit_code == 2


def test_a_transformer_is_accelerated_once_however_often_it_is_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr("audioloop.render.accelerate", lambda *args: calls.append(args))
    transformer = torch.nn.Linear(2, 2)
    for _ in range(3):
        assert accelerated(transformer, AccelSettings(compile=False), CPU) is transformer
    assert len(calls) == 1


@pytest.mark.parametrize(
    ("fp8", "offload", "where"),
    [(False, False, None), (True, False, "cpu"), (False, True, "cpu"), (True, True, "cpu")],
)
def test_the_transformer_loads_on_the_cpu_whenever_accelerate_must_move_it_block_by_block(
    fp8: bool, offload: bool, where: str | None
) -> None:
    """FP8 and offload both take the bf16 model from the CPU a block at a time (a small card never holds
    it); the rule reads the same from the user's Settings (batch) and the resolved AccelSettings (render)."""
    expected = None if where is None else torch.device(where)
    assert home(Settings(fp8=fp8, offload=offload)) == expected
    assert home(AccelSettings(compile=False, fp8=DEFAULT_FP8 if fp8 else None, offload=offload)) == expected

"""models/flash4.py and models/flash3.py, `--attention fa4` and `--attention fa3`, on the tiny transformer:
refusals with their fixes, the custom ops' shape rule, which calls reach the kernel (each kernel needs a
Hopper GPU and its package: replaced here by SDPA, which FA4 equals to bf16 rounding on the device machine,
bench/attention_fa4.py; bench/attention_fa3.py measures FA3 the same way), FA4's import thread."""

from __future__ import annotations

import copy
import os
import re
import sys
from unittest.mock import MagicMock

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

from audioloop.models import accel, flash3, flash4
from audioloop.models.attention import RotaryAttnProcessor, use_rotary_attention
from tiny_inputs import sample, window_inputs

OWN_KERNELS = pytest.mark.parametrize("own", [flash4, flash3], ids=["fa4", "fa3"])


@pytest.fixture
def kernel(monkeypatch, own) -> list[tuple[torch.Size, ...]]:
    """The forward of `own` (a test's parametrised kernel module) replaced by SDPA on the same [B, T, H, D]
    layout; the shapes of each call, in order."""
    calls: list[tuple[torch.Size, ...]] = []

    def sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        calls.append((query.shape, key.shape, value.shape))
        out = F.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (query, key, value)))
        return out.transpose(1, 2).contiguous()

    monkeypatch.setattr(own, "forward", sdpa)
    return calls


def routed_model(model: torch.nn.Module, name: str) -> torch.nn.Module:
    """A copy with audioloop's RoPE processors and `--attention name`'s routing."""
    fast = copy.deepcopy(model)
    use_rotary_attention(fast)
    accel.set_attention(fast, name)
    return fast


def test_fa4_is_refused_off_cuda_with_the_reason() -> None:
    with pytest.raises(ValueError, match="fa4 needs a CUDA GPU, not cpu"):
        accel.check_device(accel.AccelSettings(attention="fa4"), torch.device("cpu"))


@pytest.mark.parametrize(
    ("own", "gpu", "capability", "wrong_gpu", "no_package"),
    [
        (
            flash4,
            "NVIDIA A100",
            (8, 0),
            "--attention fa4 needs a Hopper or Blackwell GPU; NVIDIA A100 is sm_80: use sdpa",
            "--attention fa4 needs the flash-attn-4 package: pip install 'audioloop[fa4]'",
        ),
        (
            flash3,
            "NVIDIA B200",
            (10, 0),
            "--attention fa3 needs a Hopper GPU; NVIDIA B200 is sm_100: use sdpa",
            "--attention fa3 needs the fa3-fwd package: pip install 'audioloop[fa3]'",
        ),
    ],
    ids=["fa4", "fa3"],
)
def test_the_kernel_names_the_gpu_it_needs_and_the_package_to_install(
    monkeypatch, own, gpu, capability, wrong_gpu, no_package
) -> None:
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda _device: gpu)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda _device: capability)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    assert own.missing(cuda) == wrong_gpu
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda _device: (9, 0))
    monkeypatch.setattr(own.importlib.util, "find_spec", lambda _name: None)
    assert own.missing(cuda) == no_package
    with pytest.raises(ValueError, match=re.escape(no_package)):
        accel.check_device(accel.AccelSettings(attention=own.NAME), cuda)
    monkeypatch.setattr(own.importlib.util, "find_spec", lambda name: name)
    assert own.missing(cuda) is None


def test_fa3_is_refused_off_cuda_and_with_a_cuda_12_torch(monkeypatch) -> None:
    with pytest.raises(ValueError, match="fa3 needs a CUDA GPU, not cpu; use --attention sdpa"):
        accel.check_device(accel.AccelSettings(attention="fa3"), torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda _device: (9, 0))
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    assert flash3.missing(torch.device("cuda")) == (
        "--attention fa3 needs a CUDA 13 build of torch, not CUDA 12.8: use fa4"
    )


@pytest.mark.parametrize("op", [flash4.flash4, flash3.flash3], ids=["fa4", "fa3"])
def test_the_op_takes_the_value_head_size_without_running_the_kernel(op) -> None:
    with FakeTensorMode():
        query, key = torch.empty(2, 300, 4, 128), torch.empty(2, 77, 4, 128)
        out = op(query, key, torch.empty(2, 77, 4, 64))
    assert out.shape == (2, 300, 4, 64) and out.dtype == query.dtype


def test_kernel_cache_goes_under_the_given_dir_unless_the_user_chose_one(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("FLASH_ATTENTION_CUTE_DSL_CACHE_DIR", raising=False)
    monkeypatch.delenv("FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED", raising=False)
    assert flash4.use_kernel_cache(tmp_path / "flash4").is_dir()
    assert os.environ["FLASH_ATTENTION_CUTE_DSL_CACHE_DIR"] == str(tmp_path / "flash4")
    assert os.environ["FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED"] == "1"
    monkeypatch.setenv("FLASH_ATTENTION_CUTE_DSL_CACHE_DIR", "/mine")
    flash4.use_kernel_cache(tmp_path / "other")
    assert os.environ["FLASH_ATTENTION_CUTE_DSL_CACHE_DIR"] == "/mine"


@OWN_KERNELS
def test_the_kernel_takes_every_rope_attention_and_nothing_else(model, own, kernel) -> None:
    fast = routed_model(model, own.NAME)
    processors = {name: m.processor for name, m in fast.named_modules() if hasattr(m, "processor")}
    chosen = {name for name, p in processors.items() if p._attention_backend == own.NAME}
    rotary = {name for name, p in processors.items() if isinstance(p, RotaryAttnProcessor)}
    assert chosen == rotary and len(chosen) == 4 * len(fast.transformer_blocks)
    x = window_inputs()[1]
    torch.testing.assert_close(sample(fast, x), sample(model, x))
    tokens = x["layout"].clean.shape[1]
    video_self = [c for c in kernel if c[0][1] == tokens and c[1][1] == tokens]
    # 2 blocks × 2 steps, one forward a step (NAG acts inside the text attention); 4 RoPE attentions a block
    assert len(video_self) == 2 * 2 and len(kernel) == 4 * len(video_self)


@OWN_KERNELS
def test_the_kernel_inside_the_compiled_blocks_is_one_graph_and_the_same_numbers(model, own, kernel) -> None:
    fast = routed_model(model, own.NAME)
    accel.compile_blocks(fast, backend="aot_eager")  # traces the op through its fake: no real kernel
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters["stats"]
    before = counters["unique_graphs"]
    for x in window_inputs():
        torch.testing.assert_close(sample(fast, x), sample(model, x))
    assert counters["unique_graphs"] - before == 1 and kernel


def fake_package(root, body: str) -> None:
    """A `flash_attn.cute` package under root whose module body is `body`."""
    (root / "flash_attn" / "cute").mkdir(parents=True)
    (root / "flash_attn" / "__init__.py").write_text("")
    (root / "flash_attn" / "cute" / "__init__.py").write_text(body)


@pytest.fixture
def no_flash_attn(monkeypatch):
    """No flash_attn module imported before or kept after the test."""
    for name in ("flash_attn", "flash_attn.cute"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    yield
    for name in ("flash_attn", "flash_attn.cute"):
        sys.modules.pop(name, None)


def test_preload_imports_the_kernels_on_its_own_thread_after_pointing_the_cache(
    tmp_path, monkeypatch, no_flash_attn
) -> None:
    monkeypatch.delenv("FLASH_ATTENTION_CUTE_DSL_CACHE_DIR", raising=False)
    fake_package(
        tmp_path,
        "import os, threading\nthread = threading.current_thread().name\n"
        "cache = os.environ['FLASH_ATTENTION_CUTE_DSL_CACHE_DIR']\n",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    flash4.preload(tmp_path / "cache").join(timeout=30)
    module = sys.modules["flash_attn.cute"]
    assert module.thread == "audioloop-fa4-import"
    assert module.cache == os.fspath(tmp_path / "cache")


def test_a_failed_preload_leaves_the_error_to_the_first_call(tmp_path, monkeypatch, no_flash_attn) -> None:
    fake_package(tmp_path, "raise ImportError('libcuda.so.13: cannot open shared object file')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    thread = flash4.preload(tmp_path / "cache")
    thread.join(timeout=30)
    assert not thread.is_alive() and "flash_attn.cute" not in sys.modules
    with pytest.raises(ImportError, match=r"libcuda\.so\.13"):
        flash4.forward(*(torch.zeros(1, 2, 1, 8) for _ in range(3)))


def test_fa4_import_and_cudnn_first_use_start_early(monkeypatch) -> None:
    started: list = []
    threads: list[dict] = []
    monkeypatch.setattr(flash4, "preload", started.append)
    monkeypatch.setattr(accel.threading, "Thread", lambda **kwargs: threads.append(kwargs) or MagicMock())
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 1)
    accel.start_early(accel.AccelSettings(), cpu, torch.float32)
    assert started == [] and threads == []
    accel.start_early(accel.AccelSettings(attention="fa4"), cpu, torch.float32)
    assert started == [accel.cache_dir() / "flash4"] and threads == []
    accel.start_early(accel.AccelSettings(), cuda, torch.bfloat16)
    assert [(t["target"], t["args"], t["daemon"]) for t in threads] == [
        (accel.first_convolution, (cuda, torch.bfloat16), True)
    ]


def test_cudnn_first_use_leaves_a_missing_device_to_the_render() -> None:
    assert accel.first_convolution(torch.device("cuda"), torch.bfloat16) is None  # this CPU build has none

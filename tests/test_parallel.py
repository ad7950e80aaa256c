"""Sequence parallelism for one window: sharding helpers exactly, then 2 gloo ranks against one process.

The distributed checks run in one 2-process job (spawned once per module) on the tiny LTX-2.3 transformer
with token counts that do not divide by 2; each check's outcome per rank comes back as a file.
"""

from __future__ import annotations

import json
import os
import socket
import traceback
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from audioloop.models.tiny import tiny_transformer
from audioloop.parallel import (
    MULTICAST_OFF,
    TokenShard,
    chunks_to_send,
    gather_along,
    heads_to_seq,
    init_distributed,
    join_received,
    seq_to_heads,
    shard_tokens,
    unshard_tokens,
)
from audioloop.sampling.layout import WindowLayout, first_window, next_window
from audioloop.sampling.nag import NagSettings, nag_attention, nag_text
from audioloop.sampling.sampler import token_timesteps
from audioloop.sampling.sequence_parallel import HOOK_NAME, sequence_parallel
from audioloop.sampling.window import SamplerSettings, sample_window

WORLD = 2
TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}

# --- pure sharding helpers ---------------------------------------------------------------------------------

SIZES = [(1, 1), (1, 4), (5, 2), (6, 2), (7, 3), (45, 2), (9, 4)]


@pytest.mark.parametrize(("tokens", "world"), SIZES)
def test_token_shard_pads_to_the_next_multiple_of_the_world(tokens: int, world: int) -> None:
    shards = [TokenShard(tokens, world, rank) for rank in range(world)]
    local = -(-tokens // world)
    assert all(s.local == local and s.padded == local * world for s in shards)
    assert [s.start for s in shards] == [rank * local for rank in range(world)]


@pytest.mark.parametrize(("tokens", "world"), SIZES)
@pytest.mark.parametrize("dim", [1, 2])
def test_shards_join_to_the_zero_padded_sequence_and_unshard_back(tokens: int, world: int, dim: int) -> None:
    shape = [2, 3, 4]
    shape[dim] = tokens
    x = torch.randn(shape, generator=torch.Generator().manual_seed(tokens))
    pieces = [shard_tokens(x, TokenShard(tokens, world, rank), dim) for rank in range(world)]
    shard = TokenShard(tokens, world, 0)
    assert all(p.shape[dim] == shard.local for p in pieces)
    joined = torch.cat(pieces, dim)
    assert torch.equal(joined.narrow(dim, tokens, shard.padded - tokens).abs().sum(), torch.tensor(0.0))
    assert torch.equal(unshard_tokens(joined, shard, dim), x)


def test_shard_refuses_a_wrong_token_count_and_a_rank_outside_the_world() -> None:
    with pytest.raises(ValueError, match="expected 5 tokens"):
        shard_tokens(torch.zeros(1, 4, 2), TokenShard(5, 2, 0))
    with pytest.raises(ValueError, match="rank"):
        TokenShard(5, 2, 2)


def _exchange(sends: list[torch.Tensor]) -> list[torch.Tensor]:
    """What each rank receives from an all-to-all: chunk r of every rank's send buffer, in rank order."""
    return [torch.stack([send[rank] for send in sends]) for rank in range(len(sends))]


@pytest.mark.parametrize("world", [1, 2, 4])
def test_all_to_all_layout_moves_sequence_shards_to_head_shards_and_back(world: int) -> None:
    x = torch.randn(2, 3 * world, 2 * world, 3, 5)  # [B, S, H, q/k/v, D]
    seq = list(x.chunk(world, dim=1))
    heads = [join_received(r, gather_dim=1) for r in _exchange([chunks_to_send(s, 2, world) for s in seq])]
    assert all(torch.equal(h, x.chunk(world, dim=2)[rank]) for rank, h in enumerate(heads))
    back = [join_received(r, gather_dim=2) for r in _exchange([chunks_to_send(h, 1, world) for h in heads])]
    assert all(torch.equal(b, s) for b, s in zip(back, seq, strict=True))
    with pytest.raises(ValueError, match="does not split"):
        chunks_to_send(torch.zeros(1, 3, 5), 1, 2)


# --- checks run on every rank of a 2-process gloo job -------------------------------------------------------


def _check_collectives(_model: torch.nn.Module) -> None:
    assert all(os.environ[key] == value for key, value in MULTICAST_OFF.items())
    rank = dist.get_rank()
    x = torch.arange(2 * 6 * 4 * 3, dtype=torch.float32).reshape(2, 6, 4, 3)
    local = x.chunk(WORLD, dim=1)[rank]
    heads = seq_to_heads(local)
    assert torch.equal(heads, x.chunk(WORLD, dim=2)[rank])
    assert torch.equal(heads_to_seq(heads), local)
    assert torch.equal(gather_along(local, dim=1), x)


def _rand(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen)


def _layout(kind: str, gen: torch.Generator) -> WindowLayout:
    """45 video tokens either way: 4 latent frames of 3×3 plus a guide frame, or 5 frames and no guide."""
    image = _rand(gen, 1, 8, 1, 3, 3)
    if kind == "next":
        return next_window(_rand(gen, 1, 8, 2, 3, 3), image, lat_frames=4, fps=25.0)
    return first_window(image, lat_frames=5, fps=25.0)


def _forward_inputs(kind: str, nag: NagSettings) -> dict[str, Any]:
    """One call as `sample_window` makes it: frozen audio at timestep 0, per-token timesteps, NAG text."""
    gen = torch.Generator().manual_seed(7)
    layout = _layout(kind, gen)
    text_video = nag_text(_rand(gen, 1, 6, 16), _rand(gen, 1, 6, 16))
    text_audio = _rand(gen, 1, 6, 8)
    if nag.audio:
        text_audio = nag_text(text_audio, _rand(gen, 1, 6, 8))
    sigma = torch.tensor([725.0])
    return {
        "hidden_states": _rand(gen, *layout.clean.shape),
        "audio_hidden_states": _rand(gen, 1, 17, 16),
        "encoder_hidden_states": text_video,
        "audio_encoder_hidden_states": text_audio,
        "timestep": token_timesteps(layout.mask, 0.725),
        "audio_timestep": torch.zeros(1),
        "sigma": sigma,
        "audio_sigma": sigma,
        "video_coords": layout.video_coords,
        "audio_num_frames": 17,
        "use_cross_timestep": True,
        "return_dict": False,
    }


def _check_forward(kind: str, nag: NagSettings) -> Callable[[torch.nn.Module], None]:
    def check(model: torch.nn.Module) -> None:
        inputs = _forward_inputs(kind, nag)
        assert inputs["hidden_states"].shape[1] % WORLD != 0
        with torch.inference_mode(), nag_attention(model, nag):
            video, audio = model(**inputs)
            with sequence_parallel(model):
                par_video, par_audio = model(**inputs)
                as_dict = model(**{**inputs, "return_dict": True})
                scalar = model(**{**inputs, "timestep": torch.tensor([725.0])})[0]
            scalar_ref = model(**{**inputs, "timestep": torch.tensor([725.0])})[0]
        torch.testing.assert_close(par_video, video, **TOLERANCE)
        torch.testing.assert_close(par_audio, audio, **TOLERANCE)
        assert torch.equal(as_dict.sample, par_video) and torch.equal(as_dict.audio_sample, par_audio)
        torch.testing.assert_close(scalar, scalar_ref, **TOLERANCE)

    return check


def _check_window(kind: str) -> Callable[[torch.nn.Module], None]:
    def check(model: torch.nn.Module) -> None:
        gen = torch.Generator().manual_seed(11)
        layout = _layout(kind, gen)
        args = (layout, _rand(gen, 1, 17, 16), _rand(gen, 1, 6, 16), _rand(gen, 1, 6, 8))
        negatives = (_rand(gen, 1, 6, 16), _rand(gen, 1, 6, 8))
        settings = SamplerSettings(nag=NagSettings(audio=True), per_step_adain=(0.3, 0.2))
        reference = _rand(gen, 1, 8, 2, 3, 3)
        one = sample_window(model, *args, *negatives, seed=5, settings=settings, reference=reference)
        with sequence_parallel(model):
            two = sample_window(model, *args, *negatives, seed=5, settings=settings, reference=reference)
        torch.testing.assert_close(two, one, **TOLERANCE)

    return check


def _check_restores_the_model(model: torch.nn.Module) -> None:
    processors = {name: m.processor for name, m in model.named_modules() if hasattr(m, "processor")}
    forward = model.forward
    inputs = _forward_inputs("next", NagSettings())
    with sequence_parallel(model):
        with pytest.raises(ValueError, match="video_coords"):
            model(**{**inputs, "video_coords": None})
        with pytest.raises(ValueError, match="spatio_temporal_guidance_blocks"):
            model(**inputs, spatio_temporal_guidance_blocks=[0])
    assert all(m.processor is processors[name] for name, m in model.named_modules() if name in processors)
    assert model.forward == forward and HOOK_NAME not in model._diffusers_hook.hooks


CHECKS: dict[str, Callable[[torch.nn.Module], None]] = {
    "collectives": _check_collectives,
    "forward_next_window_with_guide_and_nag": _check_forward("next", NagSettings()),
    "forward_first_window_with_audio_nag": _check_forward("first", NagSettings(audio=True)),
    "window_next_equals_one_rank": _check_window("next"),
    "window_first_equals_one_rank": _check_window("first"),
    "refuses_unsupported_calls_and_restores_the_model": _check_restores_the_model,
}


def _worker(rank: int, port: int, out_dir: Path) -> None:
    """One rank: join the gloo job, run every check (recording each outcome), write the outcomes."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    init_distributed(backend="gloo", timeout=timedelta(seconds=60))
    model = tiny_transformer()
    outcomes = {}
    for name, check in CHECKS.items():
        try:
            check(model)
            outcomes[name] = "ok"
        except Exception:
            outcomes[name] = traceback.format_exc()
    (out_dir / f"rank{rank}.json").write_text(json.dumps(outcomes))
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, str]]:
    out_dir = tmp_path_factory.mktemp("sequence_parallel")
    mp.spawn(_worker, args=(_free_port(), out_dir), nprocs=WORLD)
    return [json.loads((out_dir / f"rank{rank}.json").read_text()) for rank in range(WORLD)]


@pytest.mark.parametrize("check", list(CHECKS))
def test_two_ranks(two_ranks: list[dict[str, str]], check: str) -> None:
    for rank, outcomes in enumerate(two_ranks):
        assert outcomes[check] == "ok", f"rank {rank}:\n{outcomes[check]}"

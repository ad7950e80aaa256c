"""Model loading: the in-code tiny model, a saved diffusers-format directory, and hub ids offline."""

import json
import shutil
import socket
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKLLTX2Audio, AutoencoderKLLTX2Video, LTX2VideoTransformer3DModel
from diffusers.pipelines.ltx2.connectors import LTX2TextConnectors
from transformers import Gemma3ForConditionalGeneration

from audioloop.errors import InputError
from audioloop.models import tiny
from audioloop.models.load import REQUIRED, load_components, save_tiny


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("tiny") / "ltx")


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """HF_HUB_OFFLINE=1, and any socket connection fails the test: nothing may reach the network."""

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)


def _transformer_inputs() -> dict[str, object]:
    gen = torch.Generator().manual_seed(0)
    return {
        "hidden_states": torch.randn(1, 12, tiny.VIDEO_LATENT_CHANNELS, generator=gen),
        "audio_hidden_states": torch.randn(1, 5, 16, generator=gen),
        "encoder_hidden_states": torch.randn(1, 16, tiny.VIDEO_DIM, generator=gen),
        "audio_encoder_hidden_states": torch.randn(1, 16, tiny.AUDIO_DIM, generator=gen),
        "timestep": torch.tensor([500.0]),
        "sigma": torch.tensor([500.0]),
        "audio_sigma": torch.tensor([500.0]),
        "num_frames": 2,
        "height": 2,
        "width": 3,
        "fps": 25.0,
        "audio_num_frames": 5,
    }


def _run(transformer: LTX2VideoTransformer3DModel) -> torch.Tensor:
    with torch.inference_mode():
        out = transformer(**_transformer_inputs())
    return torch.cat([out.sample.flatten(), out.audio_sample.flatten()])


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_tiny_builds_in_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    components = load_components("tiny")
    assert components.model_id == "tiny"
    assert components.revision == tiny.REVISION
    assert components.max_sequence_length == tiny.MAX_SEQUENCE_LENGTH
    assert components.device == torch.device("cpu")
    assert list(tmp_path.iterdir()) == []


def test_saved_tiny_loads_through_the_directory_path(tiny_dir: Path, offline: None) -> None:
    components = load_components(str(tiny_dir))
    assert components.model_id == str(tiny_dir)
    assert components.revision.startswith("sha256-")
    assert components.max_sequence_length == tiny.MAX_SEQUENCE_LENGTH
    assert isinstance(components.video_vae, AutoencoderKLLTX2Video)
    assert isinstance(components.audio_vae, AutoencoderKLLTX2Audio)
    assert isinstance(components.connectors, LTX2TextConnectors)
    text_encoder = components.load_text_encoder()
    assert isinstance(text_encoder, Gemma3ForConditionalGeneration)
    _assert_same_weights(components.video_vae, tiny.tiny_video_vae())
    _assert_same_weights(components.audio_vae, tiny.tiny_audio_vae())
    _assert_same_weights(components.connectors, tiny.tiny_connectors())
    _assert_same_weights(text_encoder, tiny.tiny_text_encoder())
    prompt = "a singer on a rooftop"
    assert components.tokenizer(prompt).input_ids == tiny.tiny_tokenizer()(prompt).input_ids


def test_saved_tiny_transformer_matches_the_in_code_one(tiny_dir: Path, offline: None) -> None:
    loaded = load_components(str(tiny_dir)).transformer
    assert isinstance(loaded, LTX2VideoTransformer3DModel)
    reference = _run(tiny.tiny_transformer())
    torch.testing.assert_close(_run(loaded), reference, rtol=1e-5, atol=1e-5)
    # Bit-exact once the weights sit in freshly allocated (aligned) storage: the tiny differences above come
    # from SIMD reduction order over the safetensors buffer's offsets, not from different weights.
    with torch.no_grad():
        for p in loaded.parameters():
            p.data = p.data.clone()
    assert torch.equal(_run(loaded), reference)


def test_missing_component_is_named(tiny_dir: Path, tmp_path: Path, offline: None) -> None:
    broken = shutil.copytree(tiny_dir, tmp_path / "ltx")
    shutil.rmtree(broken / "audio_vae")
    with pytest.raises(InputError) as info:
        load_components(str(broken))
    message = str(info.value)
    assert "missing audio_vae/;" in message
    assert all(f"{name}/" in message.split(";")[1] for name in REQUIRED)
    assert "\n" not in message


def test_uncached_hub_id_fails_offline_without_network(
    offline: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match=r"not in the local Hugging Face cache \(HF_HUB_OFFLINE=1 is set\)"):
        load_components("audioloop-tests/no-such-model")


def test_neither_directory_nor_hub_id(offline: None, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such directory and not a hub id"):
        load_components(str(tmp_path / "no" / "such" / "dir"))


def test_revision_is_stable_and_follows_configs(tiny_dir: Path, tmp_path: Path, offline: None) -> None:
    copy = shutil.copytree(tiny_dir, tmp_path / "ltx")
    first = load_components(str(copy)).revision
    assert load_components(str(copy)).revision == first
    config_path = copy / "transformer" / "config.json"
    config = json.loads(config_path.read_text())
    config["norm_eps"] = 1e-5
    config_path.write_text(json.dumps(config))
    assert load_components(str(copy)).revision != first


def test_the_transformer_can_load_on_its_own_device() -> None:
    components = load_components("tiny", transformer_device="meta")
    assert next(components.transformer.parameters()).device.type == "meta"
    assert next(components.video_vae.parameters()).device.type == "cpu"

"""Prompt encoding: one batched Gemma pass for what is missing, a disk cache for everything else."""

import copy
import dataclasses
import gc
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from audioloop.models import text, tiny
from audioloop.models.load import Components, load_components
from audioloop.models.text import encode_prompts, encode_texts

SCHEDULE = ["a singer in a red coat", "the singer in the rain", ""]


class GemmaSpy:
    """Wraps load_text_encoder: counts builds and forward passes, records batch sizes, tracks liveness."""

    def __init__(self, components: Components) -> None:
        self.load = components.load_text_encoder
        self.builds = 0
        self.batches: list[int] = []
        self.lengths: list[int] = []
        self.alive: list[weakref.ref[torch.nn.Module]] = []

    def __call__(self) -> torch.nn.Module:
        self.builds += 1
        encoder = self.load()
        encoder.register_forward_hook(self._record, with_kwargs=True)
        self.alive.append(weakref.ref(encoder))
        return encoder

    def _record(self, module: torch.nn.Module, args: tuple, kwargs: dict, out: object) -> None:
        self.batches.append(kwargs["input_ids"].shape[0])
        self.lengths.append(kwargs["input_ids"].shape[1])


def _refuse() -> torch.nn.Module:
    raise AssertionError("the text encoder was built on a cache hit")


@pytest.fixture(scope="module")
def tiny_components() -> Components:
    return load_components("tiny")


def _spied(components: Components) -> tuple[Components, GemmaSpy]:
    spy = GemmaSpy(components)
    return dataclasses.replace(components, load_text_encoder=spy), spy


def test_one_batched_pass_for_all_prompts(tiny_components: Components, tmp_path: Path) -> None:
    components, spy = _spied(tiny_components)
    embeddings = encode_prompts(components, SCHEDULE, tmp_path)
    assert (spy.builds, spy.batches) == (1, [3])
    assert list(embeddings) == SCHEDULE
    length = components.max_sequence_length
    assert length == tiny.MAX_SEQUENCE_LENGTH and length % 128 == 0
    for embedding in embeddings.values():
        assert embedding.video.shape == (length, tiny.VIDEO_DIM)
        assert embedding.audio.shape == (length, tiny.AUDIO_DIM)
        assert embedding.video.dtype == embedding.audio.dtype == components.dtype
        assert embedding.video.device == components.device
    assert not torch.equal(embeddings[SCHEDULE[0]].video, embeddings[SCHEDULE[2]].video)
    assert not any(e.video.is_inference() or e.audio.is_inference() for e in embeddings.values())


def _padded_reference(components: Components, texts: list[str]) -> tuple[torch.Tensor, ...]:
    """What diffusers' LTX2Pipeline computes: Gemma over every prompt padded to max_sequence_length."""
    tokens = components.tokenizer(
        texts,
        padding="max_length",
        max_length=components.max_sequence_length,
        truncation=True,
        padding_side="left",
        return_tensors="pt",
    )
    with torch.inference_mode():
        output = components.load_text_encoder()(
            input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, output_hidden_states=True
        )
        hidden = torch.stack(output.hidden_states, dim=-1).flatten(2, 3)
        video, audio, _ = components.connectors(hidden, tokens.attention_mask, padding_side="left")
    return hidden, tokens.attention_mask, video, audio


def test_gemma_runs_on_the_longest_prompt_and_matches_the_padded_pass(tiny_components: Components) -> None:
    texts = ["a singer in a red coat", "the singer in the rain, walking slowly past the lamps", ""]
    components, spy = _spied(tiny_components)
    hidden, mask = text._gemma_hidden_states(components, texts)
    reference, reference_mask, video, audio = _padded_reference(tiny_components, texts)
    longest = max(len(components.tokenizer(t).input_ids) for t in texts)
    assert spy.lengths == [longest] and longest < components.max_sequence_length // 2
    assert torch.equal(mask, reference_mask)
    assert hidden.shape == reference.shape
    real = mask.bool()
    added = components.max_sequence_length - longest
    assert not hidden[:, :added].any()  # the padding Gemma did not see
    torch.testing.assert_close(hidden[real], reference[real], rtol=1e-5, atol=1e-5)
    embeddings = encode_texts(tiny_components, texts)
    torch.testing.assert_close(torch.stack([e.video for e in embeddings]), video, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.stack([e.audio for e in embeddings]), audio, rtol=1e-5, atol=1e-5)


@pytest.fixture
def no_automatic_gc() -> Iterator[None]:
    """The collector off, so that only the code under test can run a collection."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def test_text_encoder_is_freed_before_returning(
    tiny_components: Components, tmp_path: Path, no_automatic_gc: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    collections: list[int] = []
    monkeypatch.setattr(text.gc, "collect", lambda: collections.append(1) or 0)
    components, spy = _spied(tiny_components)
    encode_prompts(components, SCHEDULE, tmp_path)
    assert [ref() for ref in spy.alive] == [None]
    assert collections == []  # freed by reference counting: no full collection was paid for


def test_text_encoder_in_a_reference_cycle_is_collected(
    tiny_components: Components, tmp_path: Path, no_automatic_gc: None
) -> None:
    components, spy = _spied(tiny_components)
    build = components.load_text_encoder

    def cyclic() -> torch.nn.Module:
        encoder = build()
        encoder.__dict__["itself"] = encoder
        return encoder

    encode_prompts(dataclasses.replace(components, load_text_encoder=cyclic), SCHEDULE, tmp_path)
    assert [ref() for ref in spy.alive] == [None]


def test_the_text_stage_never_attends_with_cudnn(tiny_components: Components, tmp_path: Path) -> None:
    seen: list[tuple[str, bool]] = []

    def hooked(module: torch.nn.Module, name: str) -> torch.nn.Module:
        cudnn = torch.backends.cuda.cudnn_sdp_enabled
        module.register_forward_pre_hook(lambda *_: seen.append((name, cudnn())))
        return module

    build = tiny_components.load_text_encoder
    components = dataclasses.replace(
        tiny_components,
        load_text_encoder=lambda: hooked(build(), "gemma"),
        connectors=hooked(copy.deepcopy(tiny_components.connectors), "connectors"),
    )
    encode_prompts(components, SCHEDULE, tmp_path)
    assert seen == [("gemma", False), ("connectors", False)]
    assert torch.backends.cuda.cudnn_sdp_enabled()  # restored after


def test_a_cache_write_that_fails_warns_and_the_encode_goes_on(
    tiny_components: Components, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(tensors: dict, path: Path, metadata: dict) -> None:
        Path(path).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(text, "save_file", full)
    with pytest.warns(RuntimeWarning, match="text cache entry not written"):
        embeddings = encode_prompts(tiny_components, SCHEDULE[:1], tmp_path)
        text.wait_for_writes()
    assert list(embeddings) == SCHEDULE[:1]
    assert list(tmp_path.iterdir()) == []  # no entry and no half-written temporary file


def test_second_run_reads_only_the_cache(tiny_components: Components, tmp_path: Path) -> None:
    first = encode_prompts(tiny_components, SCHEDULE, tmp_path)
    cached = dataclasses.replace(tiny_components, load_text_encoder=_refuse)
    second = encode_prompts(cached, SCHEDULE, tmp_path)
    assert list(second) == SCHEDULE
    for prompt in SCHEDULE:
        assert torch.equal(second[prompt].video, first[prompt].video)
        assert torch.equal(second[prompt].audio, first[prompt].audio)
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".safetensors"] * 3


def test_new_prompt_encodes_only_that_prompt(tiny_components: Components, tmp_path: Path) -> None:
    encode_prompts(tiny_components, SCHEDULE, tmp_path)
    components, spy = _spied(tiny_components)
    embeddings = encode_prompts(components, [*SCHEDULE, "a wide shot of the crowd"], tmp_path)
    assert (spy.builds, spy.batches) == (1, [1])
    assert len(embeddings) == 4


def test_cached_values_equal_fresh_ones_bit_for_bit(tiny_components: Components, tmp_path: Path) -> None:
    encode_prompts(tiny_components, SCHEDULE, tmp_path)
    cached = encode_prompts(
        dataclasses.replace(tiny_components, load_text_encoder=_refuse), SCHEDULE, tmp_path
    )
    fresh = encode_texts(tiny_components, SCHEDULE)
    for prompt, embedding in zip(SCHEDULE, fresh, strict=True):
        assert torch.equal(cached[prompt].video, embedding.video)
        assert torch.equal(cached[prompt].audio, embedding.audio)


def test_duplicate_prompts_are_encoded_once(tiny_components: Components, tmp_path: Path) -> None:
    components, spy = _spied(tiny_components)
    embeddings = encode_prompts(components, ["a fox", "a fox", " a fox ", "", ""], tmp_path)
    assert (spy.builds, spy.batches) == (1, [2])
    assert list(embeddings) == ["a fox", " a fox ", ""]
    assert torch.equal(embeddings["a fox"].video, embeddings[" a fox "].video)


def test_cache_is_keyed_by_model_revision(tiny_components: Components, tmp_path: Path) -> None:
    encode_prompts(tiny_components, SCHEDULE, tmp_path)
    components, spy = _spied(dataclasses.replace(tiny_components, revision="tiny-other"))
    encode_prompts(components, SCHEDULE, tmp_path)
    assert spy.batches == [3]


def test_embeddings_come_back_in_the_components_dtype(tmp_path: Path) -> None:
    components = load_components("tiny", dtype=torch.bfloat16)
    embeddings = encode_prompts(components, SCHEDULE[:1], tmp_path)
    assert embeddings[SCHEDULE[0]].video.dtype == torch.bfloat16
    assert encode_prompts(components, SCHEDULE[:1], tmp_path)[SCHEDULE[0]].audio.dtype == torch.bfloat16

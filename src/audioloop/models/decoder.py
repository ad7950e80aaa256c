"""The LTX-2.3 video decoder's forward with fewer passes over memory: same function, same weights.

The decoder is 558 TFLOP of 3×3×3 convolutions per render decode span (72 latents at 832×480), but stock
diffusers runs ~7 elementwise passes over an activation before each of them: PerChannelRMSNorm (square, mean,
sqrt, divide), SiLU, and the temporal replicate padding (a concatenation copy); the last activations are
[1, 128, 569, 120, 208] (3.6 GB in bf16), and PyTorch adds each conv's bias in a pass of its own. Here the
norm, SiLU and padding before a conv are one pass that also adds the bias of the conv before it (a Triton
kernel on CUDA, `decoder_kernels`; PyTorch elsewhere), and on CUDA activations and conv weights are
channels-last (NDHWC). Measured on an H200 (bench/RESULTS.md): a span decodes in 0.89 s instead of 1.31 s,
the convolutions 11% faster in NDHWC, peak memory 14.9 GiB instead of 23.4 GiB.

A render decodes its song as one time axis that arrives window by window: `Stream` runs the same passes
chunk by chunk, each conv continuing from the last k−1 frames of its input and each resnet's sum from the
input frames its convs had not reached, so every frame is the whole axis's decode up to float rounding and
no frame is decoded twice: a render window's 56 new latents take 87% of the convolutions of the 72-latent
span, 8 latents of margin each side, that it decoded before (0.75 s instead of 0.85 s on an H200), and no
cut is approximate. Its kept frames are copies, a few MB a conv.

Asked for only some of its frames (a pixel context's last frames), a decode walks back from them to the
frames each stage depends on, and crops the activation to those wherever its time resolution changes (at
the start and after each temporal upsampler). Within a resolution every conv pads as in the whole decode,
so a cropped side goes wrong by one frame more per conv, which never reaches the frames kept at the next
crop: the kept frames are the whole decode's up to float rounding. Cropping only there keeps one activation
length per resolution, as the whole decode has; cropping before every conv gave ~40 activation shapes, each
new to cuDNN and Triton in every process (bench/RESULTS.md, seventeenth session).

Only the 2.3 decoder's building blocks are covered (no noise injection, no timestep conditioning, no residual
upsamplers); `supports` says whether a decoder is, `forward` runs it, `Stream` streams it, `install` makes
`forward` the decoder's and `decode` asks an installed decoder for some frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.autoencoder_kl_ltx2 import (
    LTX2VideoCausalConv3d,
    LTX2VideoDecoder3d,
    LTX2VideoResnetBlock3d,
    LTX2VideoUpsampler3d,
)
from torch import Tensor, nn

from audioloop.models import decoder_kernels

RMS_EPS = 1e-8  # PerChannelRMSNorm's


def time_padding(conv: LTX2VideoCausalConv3d, causal: bool) -> tuple[int, int]:
    """Frames replicated before and after the input of a causal conv: k−1 before (causal), or (k−1)/2 each
    side (the 2.3 decoder is not causal)."""
    taps = conv.kernel_size[0] - 1
    return (taps, 0) if causal else (taps // 2, taps // 2)


def pad_time(x: Tensor, before: int, after: int) -> Tensor:
    """[B, C, T, H, W] with its first frame repeated `before` times and its last `after` times."""
    return F.pad(x, (0, 0, 0, 0, before, after), mode="replicate")


def norm_silu_pad(x: Tensor, before: int, after: int) -> Tensor:
    """SiLU of the per-position RMS norm over channels, time-padded: a conv's input in a resnet or at the
    decoder's output. Computed in float32, returned in x's dtype."""
    y = x.float()
    y = y * torch.rsqrt(y.square().mean(dim=1, keepdim=True) + RMS_EPS)
    return pad_time(F.silu(y).to(x.dtype), before, after)


def depth_to_space(x: Tensor, stride: tuple[int, int, int], drop: bool = True) -> Tensor:
    """The upsampler's rearrangement: channels (c, st, sh, sw) → time ×st, height ×sh, width ×sw, then (with
    `drop`) the first st−1 frames dropped (the causal upsampling's extra frames)."""
    b, _, t, h, w = x.shape
    st, sh, sw = stride
    y = x.reshape(b, -1, st, sh, sw, t, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
    return y.reshape(b, -1, t * st, h * sh, w * sw)[:, :, st - 1 if drop else 0 :]


def _triton(x: Tensor) -> bool:
    """Whether x's passes run as `decoder_kernels` (CUDA, with Triton)."""
    return x.is_cuda and decoder_kernels.kernels() is not None


def _conv(conv: nn.Conv3d, x: Tensor) -> tuple[Tensor, Tensor | None]:
    """conv(x) and the bias still to add: with the Triton passes, the next pass adds it (it reads the output
    anyway, where PyTorch would add it in a pass of its own); elsewhere the conv adds it and None is left."""
    if conv.bias is None or not _triton(x):
        return conv(x), None
    return conv._conv_forward(x, conv.weight, None), conv.bias


@dataclass(frozen=True)
class Frames:
    """Frames [start, stop) of a time axis `total` frames long: what a (cropped) activation holds."""

    start: int
    stop: int
    total: int

    def crop(self, x: Tensor, to: Frames) -> Tensor:
        """x, which holds these frames, cut down to the frames `to` (which these contain)."""
        return x[:, :, to.start - self.start : to.stop - self.start]

    def spread(self, st: int) -> Frames:
        """The frames an upsampler of time stride `st` makes of these: the causal upsampling's st−1 extra
        frames are dropped only where these start the axis."""
        start = 0 if self.start == 0 else self.start * st - (st - 1)
        return Frames(start, self.stop * st - (st - 1), self.total * st - (st - 1))


def _pad(
    x: Tensor,
    before: int,
    after: int,
    norm: bool,
    bias: Tensor | None = None,
    head: Tensor | None = None,
) -> Tensor:
    """A conv's input: `head` (frames kept as they are), then x (+ the `bias` `_conv` left), normed and
    SiLU'd first when `norm` (norm_silu_pad), its first frame repeated `before` times and its last `after`
    times; one Triton pass with a channels-last result where `_triton`, else PyTorch."""
    if _triton(x):
        return decoder_kernels.pad_time(x, before, after, RMS_EPS if norm else None, bias, head)
    padded = (norm_silu_pad if norm else pad_time)(x, before, after)
    return padded if head is None else torch.cat([head, padded], dim=2)


def _spread(x: Tensor, stride: tuple[int, int, int], bias: Tensor | None, drop: bool) -> Tensor:
    """depth_to_space of x (+ the `bias` `_conv` left), its first st−1 frames dropped only with `drop`; one
    Triton pass with a channels-last result where `_triton`."""
    if _triton(x):
        return decoder_kernels.depth_to_space(x, stride, bias, drop)
    return depth_to_space(x, stride, drop)


def _frames(x: Tensor, start: int) -> Tensor:
    """x's frames from `start` on, as a tensor of their own (what a stream keeps for its next chunk)."""
    rest = x[:, :, start:]
    return rest.clone(memory_format=torch.channels_last_3d) if x.is_cuda else rest.clone()


class Stream:
    """The fused forward over a time axis that arrives in chunks, in order. Each conv keeps the last k−1
    frames of its input and each resnet the input frames its sum has not reached, so every frame decodes
    as in one decode of the whole axis (up to float rounding) and none is decoded twice; a frame comes out
    once the latents it depends on are in (13.5 latents later for the 2.3 decoder:
    `audioloop.decode.STREAM_REACH`).

    Per chunk the passes are those of a whole decode: the pass before a conv copies the kept frames in
    front of the new ones, and the residual's reads the kept input frames before the new ones.
    """

    def __init__(self, decoder: LTX2VideoDecoder3d, causal: bool | None = None) -> None:
        if not supports(decoder):
            raise ValueError("this video decoder has blocks the fused forward does not cover")
        self._decoder = decoder
        self._causal = causal or decoder.is_causal
        self._stages = [decoder.conv_in, *_middle(decoder), decoder.conv_out]
        self._kept: dict[nn.Module, Tensor] = {}
        self._started: set[nn.Module] = set()
        self._ended = False

    def push(self, z: Tensor, last: bool = False, frames: tuple[int, int] | None = None) -> Tensor | None:
        """Latents [B, C, F, h, w] that follow those pushed before → the pixel frames [B, 3, F', 32h, 32w]
        they complete, NCDHW as diffusers returns them (None while there are none); `last` ends the axis
        and returns every frame still owed. With `frames` (start, stop), only in a stream's one and last
        push: only those frames, each activation cropped in time to what they depend on."""
        if self._ended:
            raise ValueError("this stream's time axis has ended")
        if z.shape[2] == 0:
            raise ValueError("a stream takes at least one latent frame at a time")
        if frames is not None and not (last and not self._kept):
            raise ValueError("frames are chosen only in a stream's one and last push")
        self._ended = last
        x: Tensor | None = decoder_kernels.channels_last(z) if z.is_cuda else z
        patch_t = self._decoder.patch_size_t
        wanted = None if frames is None else _wanted(self._stages, self._causal, z.shape[2], patch_t, frames)
        held = Frames(0, z.shape[2], z.shape[2])
        for k, stage in enumerate(self._stages):
            if wanted is not None and (k == 0 or _time_stride(self._stages[k - 1]) > 1):
                x, held = held.crop(x, wanted[k]), wanted[k]
            x = self._stage(stage, x, last, starts=held.start == 0)
            if x is None:
                return None
            held = held.spread(_time_stride(stage))
        if wanted is not None:
            x = held.crop(x, wanted[-1])
        x = _unpatchify(x, self._decoder.patch_size, patch_t)
        if frames is not None:
            skip = frames[0] - wanted[-1].start * patch_t
            x = x[:, :, skip : skip + frames[1] - frames[0]]
        return x.contiguous()

    def _stage(self, stage: nn.Module, x: Tensor, last: bool, starts: bool) -> Tensor | None:
        """One stage on its input's new frames → its output's new frames (None while there are none);
        `starts`: whether its input starts the time axis (not so in a cropped decode)."""
        if isinstance(stage, LTX2VideoUpsampler3d):
            padded = self._input(stage.conv, x, last, norm=False)
            if padded is None:
                return None
            h, bias = _conv(stage.conv.conv, padded)
            drop = starts and stage not in self._started
            self._started.add(stage)
            return _spread(h, stage.stride, bias, drop)
        if isinstance(stage, LTX2VideoResnetBlock3d):
            return self._resnet(stage, x, last)
        padded = self._input(stage, x, last, norm=stage is self._decoder.conv_out)
        return None if padded is None else stage.conv(padded)  # conv_in, conv_out: their biases too

    def _input(
        self,
        conv: LTX2VideoCausalConv3d,
        x: Tensor | None,
        last: bool,
        norm: bool,
        bias: Tensor | None = None,
    ) -> Tensor | None:
        """conv's input for x, the frames after those it had: what it kept of those (at the start: x's
        first frame repeated), then x, and at the end x's last frame repeated; None while that is shorter
        than the kernel. Keeps its last k−1 frames for the next chunk."""
        if x is None:
            return None
        before, after = time_padding(conv, self._causal)
        head = self._kept.pop(conv, None)
        padded = _pad(x, before if head is None else 0, after if last else 0, norm, bias, head)
        taps = conv.kernel_size[0]
        if not last:
            self._kept[conv] = _frames(padded, max(0, padded.shape[2] - (taps - 1)))
        return padded if padded.shape[2] >= taps else None

    def _resnet(self, block: LTX2VideoResnetBlock3d, x: Tensor, last: bool) -> Tensor | None:
        """LTX2VideoResnetBlock3d.forward without noise or timestep modulation: one fused pass before each
        conv, each conv's bias added by the pass after it; the input frames that the convs' output does not
        reach yet are kept for the sum in the next chunk."""
        padded = self._input(block.conv1, x, last, norm=True)
        h, bias = (None, None) if padded is None else _conv(block.conv1.conv, padded)
        padded = self._input(block.conv2, h, last, norm=True, bias=bias)
        h, bias = (None, None) if padded is None else _conv(block.conv2.conv, padded)
        if block.norm3 is not None:
            x = block.norm3(x.movedim(1, -1)).movedim(-1, 1)
        if block.conv_shortcut is not None:
            x = block.conv_shortcut(x)
        summed = 0 if h is None else h.shape[2]
        head = self._kept.pop(block, None)
        if head is not None and (bias is None or summed < head.shape[2]):
            x, head = torch.cat([head, x], dim=2), None
        held = 0 if head is None else head.shape[2]
        if not last:
            self._kept[block] = _frames(x, summed - held)
        if h is None:
            return None
        if bias is None:
            return h + x[:, :, :summed]
        return decoder_kernels.residual(h, bias, x, head)


def _unpatchify(x: Tensor, p: int, p_t: int) -> Tensor:
    """The decoder's last rearrangement: channels (c, p_t, p, p) → frames, rows and columns."""
    b, _, t, h, w = x.shape
    y = x.reshape(b, -1, p_t, p, p, t, h, w).permute(0, 1, 5, 2, 6, 4, 7, 3)
    return y.flatten(6, 7).flatten(4, 5).flatten(2, 3)


def supports(decoder: LTX2VideoDecoder3d) -> bool:
    """Whether `forward` computes this decoder: no noise injection, timestep conditioning or residual
    upsampling anywhere (true of LTX-2.3's decoder)."""
    if decoder.time_embedder is not None:
        return False
    for module in decoder.modules():
        if isinstance(module, LTX2VideoResnetBlock3d) and (
            module.per_channel_scale1 is not None or module.scale_shift_table is not None
        ):
            return False
        if isinstance(module, LTX2VideoUpsampler3d) and module.residual:
            return False
    return True


def forward(
    decoder: LTX2VideoDecoder3d,
    z: Tensor,
    temb: Tensor | None = None,
    causal: bool | None = None,
    frames: tuple[int, int] | None = None,
) -> Tensor:
    """LTX2VideoDecoder3d.forward for a decoder that `supports` accepts (so `temb` is None): latents
    [B, C, F, h, w] → pixels [B, 3, 8(F−1)+1, 32h, 32w], NCDHW as diffusers returns them; with `frames`
    (start, stop), only those frames, each activation cropped in time to what they depend on."""
    if temb is not None:
        raise ValueError("the fused decoder has no timestep conditioning; decode with the stock forward")
    return Stream(decoder, causal).push(z, last=True, frames=frames)


def _time_stride(stage: nn.Module) -> int:
    """How many times as many frames a stage's output has as its input: an upsampler's time stride, else 1."""
    return stage.stride[0] if isinstance(stage, LTX2VideoUpsampler3d) else 1


def _middle(decoder: LTX2VideoDecoder3d) -> list[nn.Module]:
    """The resnets and upsamplers between conv_in and conv_out, in the order the decoder runs them."""
    stages = list(decoder.mid_block.resnets)
    for block in decoder.up_blocks:
        if block.conv_in is not None:
            stages.append(block.conv_in)
        stages += [*(block.upsamplers or ()), *block.resnets]
    return stages


def _wanted(
    stages: list[nn.Module], causal: bool, latents: int, patch_t: int, frames: tuple[int, int] | None
) -> list[Frames]:
    """The frames each stage's input must hold for the output `frames` (None: all of them), then those the
    last stage's output must: walking back from the output, each stage reads its reach around what is
    wanted of it, up to the ends of the time axis."""
    totals = [latents]
    for stage in stages:
        st = _time_stride(stage)
        totals.append(totals[-1] * st - (st - 1))
    out_frames = totals[-1] * patch_t
    start, stop = (0, out_frames) if frames is None else frames
    if not 0 <= start < stop <= out_frames:
        raise ValueError(f"frames {start}–{stop} are not within the {out_frames} decoded frames")
    wanted = [Frames(start // patch_t, (stop - 1) // patch_t + 1, totals[-1])]
    for stage, total in zip(reversed(stages), reversed(totals[:-1]), strict=True):
        wanted.insert(0, _reads(stage, causal, wanted[0], total))
    return wanted


def _reads(stage: nn.Module, causal: bool, out: Frames, total: int) -> Frames:
    """The frames of a stage's input (`total` long) that its output frames `out` depend on."""
    start, stop = out.start, out.stop
    if isinstance(stage, LTX2VideoUpsampler3d):
        # Output frame j is frame j + st − 1 before the drop, which comes from input frame (j + st − 1)//st.
        st = _time_stride(stage)
        start, stop = (start + st - 1) // st, (stop + st - 2) // st + 1
        convs = [stage.conv]
    elif isinstance(stage, LTX2VideoResnetBlock3d):
        convs = [stage.conv1, stage.conv2]
    else:
        convs = [stage]
    for conv in convs:
        before, after = time_padding(conv, causal)
        start, stop = start - before, stop + after
    return Frames(max(start, 0), min(stop, total), total)


def installed(decoder: LTX2VideoDecoder3d) -> bool:
    """Whether `install` made `forward` this decoder's forward."""
    return "forward" in vars(decoder)


def decode(
    decoder: LTX2VideoDecoder3d, z: Tensor, temb: Tensor | None, frames: tuple[int, int] | None = None
) -> Tensor:
    """decoder(z, temb)'s output frames [start, stop) (all when `frames` is None): an installed decoder
    computes only what they need, another decodes everything and is sliced."""
    if frames is None:
        return decoder(z, temb)
    if installed(decoder):
        return decoder(z, temb, frames=frames)
    return decoder(z, temb)[:, :, frames[0] : frames[1]]


def install(decoder: LTX2VideoDecoder3d) -> bool:
    """Make `forward` the decoder's forward for good, with its conv weights channels-last on CUDA (what its
    activations are there); idempotent, and a no-op returning False for a decoder `supports` refuses."""
    if installed(decoder):
        return True
    if not supports(decoder):
        return False
    if next(decoder.parameters()).is_cuda:
        decoder.to(memory_format=torch.channels_last_3d)
    decoder.forward = partial(forward, decoder)
    return True

"""FlashAttention-3's Hopper forward (fa3-fwd, prebuilt, from the registry) against FA4's (the render's
`--attention fa4`) and PyTorch's SDPA (cuDNN's bf16 kernel) at the video self-attention's shapes: time per
call, TFLOP/s, error against fp32, audioloop's custom op (`models/flash3.py`) inside
`torch.compile(fullgraph=True)`, and FA3's FP8 forward (e4m3 q, k, v with one scale per head; k shifted
by its token mean first, which softmax does not see) for the `--fp8` step.

Errors are ‖out − ref‖/‖ref‖ over the first 1,024 query rows against fp32 attention, for unit-RMS q, k
(flat attention) and q ×4 (peaked). Neither kernel package is an audioloop dependency here: their wheels
travel as `bench/fa3_wheel.sh` and `bench/fa4_wheels.sh` say.

    python bench/attention_fa3.py --out $OUT
"""

from __future__ import annotations

import torch
from torch import Tensor

from attention_fa4 import fa4, random_qkv, run_cases, timer
from attention_fp8 import E4M3_MAX, bf16, reference, rel
from audioloop.models.flash3 import flash3
from timing import Run


def fa3(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """FA3's bf16 forward on [B, T, H, D]."""
    from fa3_fwd_interface import flash_attn_func

    return flash_attn_func(q, k, v)


def per_head(x: Tensor) -> tuple[Tensor, Tensor]:
    """x [B, T, H, D] in e4m3 with one scale per (batch, head), and the [B, H] fp32 descales FA3 takes."""
    amax = x.abs().amax(dim=(1, 3)).float().clamp(min=1e-12)
    scale = (E4M3_MAX / amax)[:, None, :, None]
    return (x.float() * scale).to(torch.float8_e4m3fn), (amax / E4M3_MAX).contiguous()


def fa3_fp8_inputs(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, ...]:
    """e4m3 q, k, v and their descales; k without its mean over tokens, which shifts each query's scores by
    one constant and so leaves softmax unchanged while it narrows k's range."""
    k = k - k.float().mean(dim=1, keepdim=True).to(k.dtype)
    (q8, dq), (k8, dk), (v8, dv) = per_head(q), per_head(k), per_head(v)
    return q8, k8, v8, dq, dk, dv


def fa3_fp8(q8: Tensor, k8: Tensor, v8: Tensor, dq: Tensor, dk: Tensor, dv: Tensor) -> Tensor:
    """FA3's FP8 forward (bf16 out) on quantised inputs."""
    from fa3_fwd_interface import flash_attn_func

    return flash_attn_func(q8, k8, v8, q_descale=dq, k_descale=dk, v_descale=dv)


def case(run: Run, tokens: int, repeats: int) -> dict:
    """Every kernel at one token count: first calls, timings, compiled op, errors."""
    q, k, v = random_qkv(tokens)
    out: dict = {}
    time_it = timer(run, tokens, repeats, out)
    time_it("cudnn bf16 (torch sdpa)", lambda: bf16(q, k, v))
    time_it("fa4 bf16", lambda: fa4(q, k, v))
    time_it("fa3 bf16", lambda: fa3(q, k, v))
    compiled = torch.compile(lambda a, b, c: flash3(a * 1.0, b, c), fullgraph=True)
    time_it("fa3 custom op in torch.compile (q·1 fused before)", lambda: compiled(q, k, v))
    inputs = fa3_fp8_inputs(q, k, v)
    time_it("fa3 fp8 (quantised inputs)", lambda: fa3_fp8(*inputs))
    time_it("quantising q, k, v per head (eager)", lambda: fa3_fp8_inputs(q, k, v))
    for label, scale in (("flat", 1.0), ("peaked", 4.0)):
        qs = (q.float() * scale).to(torch.bfloat16)
        ref = reference(qs, k, v)
        out[f"error {label}"] = {
            "cudnn bf16": rel(bf16(qs, k, v), ref),
            "fa4 bf16": rel(fa4(qs, k, v), ref),
            "fa3 bf16": rel(fa3(qs, k, v), ref),
            "fa3 fp8": rel(fa3_fp8(*fa3_fp8_inputs(qs, k, v)), ref),
        }
        print(f"  error {label}: {out[f'error {label}']}", flush=True)
    out["max |fa3 − cudnn|"] = float((fa3(q, k, v).float() - bf16(q, k, v).float()).abs().max())
    return out


def main() -> None:
    run_cases("attention_fa3", ("fa3_fwd_interface", "flash_attn.cute"), case)


if __name__ == "__main__":
    main()

"""cuDNN's FP8 attention (cudnn-frontend's `sdpa_fp8`, from the registry) against PyTorch's bf16 SDPA at the
video self-attention's shapes: time per call and error against fp32.

Q, K, V are e4m3 with one scale per tensor (amax/448), read in the [B, S, H, D] layout the blocks produce.
O comes back in e4m3 (bf16 O is Blackwell-only), scaled by 448/amax(V), and is dequantised to bf16.
Errors are ‖out − ref‖/‖ref‖ over the first 1,024 query rows against fp32 attention of the unquantised
inputs, for unit-RMS q, k rows (flat attention: the worst case for 8-bit probabilities) and for q scaled
×4 (peaked attention). cudnn-frontend is not an audioloop dependency: fetch its wheel for the device with
`../shared/tools/gpu-wheels nvidia-cudnn-frontend==1.32.0`.

    python bench/attention_fp8.py --out $OUT
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from step_variants import timed
from timing import Run, summary

E4M3_MAX = 448.0
HEADS, DIM = 32, 128
REF_ROWS = 1024
# Probabilities exp(s − m) reach 2⁴ between the kernel's lazy max updates (its rescale threshold): 448/16
# keeps them in e4m3's range.
P_SCALE = E4M3_MAX / 16


def quantize(x: Tensor) -> tuple[Tensor, Tensor]:
    """x in e4m3 with one scale for the tensor, and the descale (amax/448) as a [1, 1, 1, 1] fp32 tensor."""
    amax = x.abs().amax().float().clamp(min=1e-12)
    return (x.float() * (E4M3_MAX / amax)).to(torch.float8_e4m3fn), (amax / E4M3_MAX).view(1, 1, 1, 1)


UIDS = {"q": 0, "k": 1, "v": 2, "o": 3, "dq": 5, "dk": 6, "dv": 7, "ds": 8, "ss": 9, "so": 10, "amax_o": 12}


class CudnnFp8Attention:
    """One built cuDNN graph: e4m3 q, k, v [B, S, H, D] with per-tensor descales → e4m3 o, non-causal."""

    def __init__(self, batch: int, tokens: int, kv_tokens: int, p_scale: float = P_SCALE) -> None:
        import cudnn

        self.cudnn = cudnn
        self.handle = cudnn.create_handle()
        fp8, f32 = cudnn.data_type.FP8_E4M3, cudnn.data_type.FLOAT
        g = cudnn.pygraph(
            io_data_type=fp8, intermediate_data_type=f32, compute_data_type=f32, handle=self.handle
        )
        u = UIDS

        def bshd(uid: int, s: int) -> object:
            stride = (s * HEADS * DIM, DIM, HEADS * DIM, 1)
            return g.tensor(uid=uid, dim=(batch, HEADS, s, DIM), stride=stride, data_type=fp8)

        def scalar(uid: int) -> object:
            return g.tensor(uid=uid, dim=(1, 1, 1, 1), stride=(1, 1, 1, 1), data_type=f32)

        q, k, v = bshd(u["q"], tokens), bshd(u["k"], kv_tokens), bshd(u["v"], kv_tokens)
        o, _, _, amax_o = g.sdpa_fp8(
            q=q, k=k, v=v,
            descale_q=scalar(u["dq"]), descale_k=scalar(u["dk"]), descale_v=scalar(u["dv"]),
            descale_s=scalar(u["ds"]), scale_s=scalar(u["ss"]), scale_o=scalar(u["so"]),
            generate_stats=False, attn_scale=DIM**-0.5, use_causal_mask=False,
        )  # fmt: skip
        o.set_uid(u["o"]).set_output(True).set_dim((batch, HEADS, tokens, DIM)).set_stride(
            (tokens * HEADS * DIM, DIM, HEADS * DIM, 1)
        ).set_data_type(fp8)
        amax_o.set_uid(u["amax_o"]).set_output(True).set_dim((1, 1, 1, 1)).set_stride(
            (1, 1, 1, 1)
        ).set_data_type(f32)
        g.validate()
        g.build_operation_graph()
        g.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
        g.check_support()
        g.build_plans()
        self.graph = g
        self.workspace = torch.empty(g.get_workspace_size(), dtype=torch.uint8, device="cuda")
        one = torch.ones(1, 1, 1, 1, device="cuda")
        self.fixed = {u["ds"]: one / p_scale, u["ss"]: one * p_scale, u["amax_o"]: one.clone()}

    def __call__(self, q8: Tensor, k8: Tensor, v8: Tensor, dq: Tensor, dk: Tensor, dv: Tensor) -> Tensor:
        """o [B, S, H, D] in bf16 from e4m3 q8, k8, v8 [B, S, H, D] and their descales. O is e4m3 on Hopper
        (bf16 O is Blackwell-only), scaled by 448/amax(V): each row of O is a convex combination of V's."""
        u = UIDS
        o = torch.empty(q8.shape, dtype=torch.float8_e4m3fn, device=q8.device)
        pack = {u["q"]: q8, u["k"]: k8, u["v"]: v8, u["dq"]: dq, u["dk"]: dk, u["dv"]: dv, u["o"]: o}
        pack[u["so"]] = 1.0 / dv
        self.cudnn.set_stream(self.handle, torch.cuda.current_stream().cuda_stream)
        self.graph.execute({**pack, **self.fixed}, self.workspace, handle=self.handle)
        return (o.float() * dv).to(torch.bfloat16)


def bf16(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """PyTorch's SDPA (cuDNN's bf16 kernel on Hopper) on [B, S, H, D] views, as the blocks call it."""
    return F.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v))).transpose(1, 2)


def dequantized(*pairs: Tensor) -> list[Tensor]:
    """bf16 tensors from (e4m3, descale) pairs: the error the input rounding alone causes."""
    return [(x8.float() * d).to(torch.bfloat16) for x8, d in zip(pairs[::2], pairs[1::2], strict=True)]


def reference(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """fp32 attention of the first REF_ROWS queries, [B, S, H, D] in and out."""
    qh, kh, vh = (x.float().transpose(1, 2) for x in (q[:, :REF_ROWS], k, v))
    return F.scaled_dot_product_attention(qh, kh, vh).transpose(1, 2)


def rel(out: Tensor, ref: Tensor) -> float:
    """‖out − ref‖ / ‖ref‖ over the reference rows."""
    out = out[:, :REF_ROWS].float()
    return float((out - ref).norm() / ref.norm())


def case(run: Run, tokens: int, repeats: int) -> dict:
    """Both kernels at one token count: timings, quantisation cost, errors for flat and peaked attention."""
    gen = torch.Generator(device="cuda").manual_seed(tokens)
    q, k, v = (
        torch.randn(1, tokens, HEADS, DIM, generator=gen, device="cuda", dtype=torch.bfloat16)
        for _ in range(3)
    )
    fp8 = CudnnFp8Attention(1, tokens, tokens)
    flops = 4 * tokens * tokens * HEADS * DIM
    out: dict = {}
    q8, dq = quantize(q)
    k8, dk = quantize(k)
    v8, dv = quantize(v)
    for name, fn in {
        "cudnn bf16 (torch sdpa)": lambda: bf16(q, k, v),
        "cudnn fp8": lambda: fp8(q8, k8, v8, dq, dk, dv),
    }.items():
        fn()
        t = summary(timed(fn, repeats, run.device))
        out[name] = {**t, "tflops": flops / t["median"] / 1e12}
    out["quantise q, k, v (eager)"] = summary(
        timed(lambda: [quantize(x) for x in (q, k, v)], repeats, run.device)
    )
    wide = CudnnFp8Attention(1, tokens, tokens, p_scale=E4M3_MAX)
    for label, scale in (("flat", 1.0), ("peaked", 4.0)):
        qs = (q.float() * scale).to(torch.bfloat16)
        ref = reference(qs, k, v)
        qs8, dqs = quantize(qs)
        out[f"error {label}"] = {
            "bf16": rel(bf16(qs, k, v), ref),
            "fp8": rel(fp8(qs8, k8, v8, dqs, dk, dv), ref),
            "fp8, P scaled by 448": rel(wide(qs8, k8, v8, dqs, dk, dv), ref),
            "inputs rounded to e4m3 only": rel(bf16(*dequantized(qs8, dqs, k8, dk, v8, dv)), ref),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tokens", default="24960,24570,56320")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--deadline", type=float, default=200.0)
    args = parser.parse_args()
    args.tiny = False
    run = Run(args, "attention_fp8")
    import cudnn

    run.results["cudnn"] = {"backend": cudnn.backend_version_string(), "frontend": cudnn.__version__}
    run.results["torch cudnn"] = torch.backends.cudnn.version()
    for tokens in (int(t) for t in args.tokens.split(",")):
        run.results[str(tokens)] = run.attempt(
            f"{tokens} tokens", lambda t=tokens: case(run, t, args.repeats)
        )
        print(run.results[str(tokens)], flush=True)
    run.save()


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# FlashAttention-4 (flash-attn-4, CuTe DSL) for the GPU machine, which reaches no registry. The CuTe DSL's
# CUDA 13 libraries are a 92 MB wheel, over the 64 MiB one device call carries, so they travel alone, xz'd
# (61 MiB), in a call of their own, and stay unpacked in /tmp/fasite (outside the checkout, which each call
# replaces) while the machine is warm.
#   here:                 bench/fa4_wheels.sh fetch     (the small wheels into .whl/, the libraries into .fa/)
#   call 1, carry .fa:    bench/fa4_wheels.sh unpack    (into /tmp/fasite)
#   call 2, carry .whl:   the usual pip line, then: eval "$(bench/fa4_wheels.sh path)"
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
version=4.8.1
case "${1:-}" in
fetch)
  for p in /.whl/ /.fa/; do grep -qxF "$p" .git/info/exclude || echo "$p" >>.git/info/exclude; done
  get() {
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 "$@"
  }
  get -d .whl flash-attn-4==4.0.0b36 nvidia-cutlass-dsl==$version nvidia-cutlass-dsl-libs-base==$version \
    nvidia-cutlass-dsl-libs-core==$version quack-kernels==0.6.5 apache-tvm-ffi==0.1.15.post2 \
    torch-c-dlpack-ext==0.1.5
  tmp=$(mktemp -d)
  get -d "$tmp" nvidia-cutlass-dsl-libs-cu13==$version
  (cd "$tmp" && python3 -m zipfile -e ./*.whl x && tar cf - -C x nvidia_cutlass_dsl) | xz -9e -T0 >"$tmp/cu13.tar.xz"
  mkdir -p .fa && mv "$tmp/cu13.tar.xz" .fa/ && rm -rf "$tmp"
  du -sh .whl .fa
  ;;
unpack)
  rm -rf /tmp/fasite && mkdir -p /tmp/fasite && tar xJf .fa/cu13.tar.xz -C /tmp/fasite && du -sh /tmp/fasite
  ;;
path)
  test -d /tmp/fasite/nvidia_cutlass_dsl || { echo "no /tmp/fasite: the machine was given back; unpack again" >&2; exit 1; }
  cp -rn /tmp/fasite/nvidia_cutlass_dsl .site/
  echo "export PYTHONPATH=\$PYTHONPATH:$PWD/.site/nvidia_cutlass_dsl/dsl_packages"
  ;;
*)
  echo "usage: bench/fa4_wheels.sh fetch|unpack|path" >&2
  exit 2
  ;;
esac

#!/usr/bin/env bash
# FlashAttention-3's forward (fa3-fwd, prebuilt for CUDA 13 on PyTorch's stable ABI) for the GPU machine,
# which reaches no registry. Its wheel unpacks to a 105 MB library; xz'd it is 9 MB, small enough to travel
# beside .whl/ in one call.
#   here:                        bench/fa3_wheel.sh fetch     (into .fa3/)
#   each call, carry .whl .fa3:  the usual pip line, then: bench/fa3_wheel.sh install   (into .site/)
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
case "${1:-}" in
fetch)
  grep -qxF /.fa3/ .git/info/exclude || echo /.fa3/ >>.git/info/exclude
  tmp=$(mktemp -d)
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 -d "$tmp" fa3-fwd==0.0.3
  (cd "$tmp" && python3 -m zipfile -e ./*.whl x && tar cf - -C x fa3_fwd fa3_fwd_interface.py fa3_fwd_config.py) |
    xz -9 -T0 >"$tmp/fa3.tar.xz"
  mkdir -p .fa3 && mv "$tmp/fa3.tar.xz" .fa3/ && rm -rf "$tmp"
  du -sh .fa3
  ;;
install)
  tar xJf .fa3/fa3.tar.xz -C .site
  ;;
*)
  echo "usage: bench/fa3_wheel.sh fetch|install" >&2
  exit 2
  ;;
esac

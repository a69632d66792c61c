#!/usr/bin/env bash
# Rebuilds the PTX of framewise's CUDA kernels (worker/cuda/*.cu -> worker/cuda/*.ptx, committed
# and embedded in the binary; the NVIDIA driver compiles PTX for the GPU it runs on). Needs
# curl, unzip and g++ (nvcc's host preprocessor); nvcc, its headers and NVVM come from PyPI
# wheels (pinned, sha256-checked) into ~/.cache/framewise/nvcc. The first line of each .ptx
# records the sha256 of the .cu it came from; a unit test (norm_op.rs) fails when they differ.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
dir="${FRAMEWISE_NVCC_DIR:-$HOME/.cache/framewise/nvcc}"
mkdir -p "$dir"
wheels="nvidia-cuda-nvcc 13.0.88 56fe502eb77625a12f25172caa3cdddb4e4c8ba2c8c17dba44b164761b380f03
nvidia-cuda-crt 13.0.88 2c8043c7c9e02492716426e9919fc78d2c5b3b2a7a768a88e952676b08aa55a4
nvidia-cuda-runtime 13.0.96 7f82250d7782aa23b6cfe765ecc7db554bd3c2870c43f3d1821f1d18aebf0548
nvidia-nvvm 13.0.88 c5f41ffeb6466944a026dfa5317d7d85355c119bbec279205d22f1869d1054e0"
nvcc="$dir/x/nvidia/cu13/bin/nvcc"
if [ ! -x "$nvcc" ]; then
  while read -r pkg ver sha; do
    file=$(curl -fsS "https://pypi.org/simple/$pkg/" | grep -o "https://[^\"#]*-$ver-[^\"#]*x86_64[^\"#]*\.whl" | head -1)
    [ -n "$file" ] || { echo "ptx.sh: no x86_64 wheel of $pkg $ver on PyPI" >&2; exit 1; }
    curl -fsS -o "$dir/$pkg.whl" "$file"
    got=$(sha256sum "$dir/$pkg.whl" | cut -d' ' -f1)
    [ "$got" = "$sha" ] || { echo "ptx.sh: $pkg $ver: sha256 $got, expected $sha" >&2; exit 1; }
    unzip -q -o "$dir/$pkg.whl" 'nvidia/*' -d "$dir/x"
  done <<< "$wheels"
fi
for cu in worker/cuda/*.cu; do
  ptx="${cu%.cu}.ptx"
  # compute_75: Turing and every later GPU (CUDA 13's oldest target).
  "$nvcc" -ptx -arch=compute_75 -O3 "$cu" -o "$ptx.tmp"
  { echo "// framewise: built by scripts/ptx.sh from $(basename "$cu") sha256 $(sha256sum "$cu" | cut -d' ' -f1)"
    cat "$ptx.tmp"; } > "$ptx"
  rm -f "$ptx.tmp"
  echo "wrote $ptx"
done

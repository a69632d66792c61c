#!/usr/bin/env bash
# Does int8 pay on this CPU? (issue 7): static (QDQ, calibrated on frames of the demo clip)
# and dynamic quantisation of the style model's convolutions with ONNX Runtime's own tools,
# timed against fp32 with the same threads, PSNR against fp32 on held-out frames.
#   bench/quantize.sh [WIDTHxHEIGHT]     (default 640x360; results go to BENCHMARKS.md by hand)
# Installs ffmpeg and a Python venv (.bench/venv, shared with bench/compare.sh) for the
# benchmark only; the product quantises nothing (variant.rs says why).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/bootstrap.sh >/dev/null
size=${1:-640x360}; w=${size%x*}; h=${size#*x}
. bench/python.sh
bench_python onnxruntime==1.32.0 numpy==2.2.6 onnx==1.23.2 sympy==1.14.0
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
# 12 frames half a second apart: even ones calibrate, odd ones are timed and compared.
ffmpeg -loglevel error -i media/bigbuckbunny.mp4 -vf "fps=2,scale=$w:$h" -frames:v 12 \
  -f rawvideo -pix_fmt rgb24 "$work/frames.rgb"
"$venv/bin/python" bench/quantize.py models/multistyle26.onnx "$work/frames.rgb" "$w" "$h" "$(nproc)" "$work" 2>&1 \
  | grep -v -iE 'warn|histogram|collecting|finding|tensors :|percentile'

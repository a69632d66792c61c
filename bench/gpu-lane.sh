#!/usr/bin/env bash
# The media lane (streamed assembly) on and off, side by side on one GPU node, with x264 alone
# (the slowest stage) measured between the pairs: BENCHMARKS.md, session 16 (calls G11-G13).
# Run on the device machine from the repository root, after the four stash calls of
# bench/gpu-pack.sh's pieces (BENCHMARKS.md), carrying .gpu/fw.tar.zst, .gpu/zstd and
# .gpu/styl-short.mp4. FW_ROUNDS pairs (default 3); each job's log is left in $OUT.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source bench/gpu-setup.sh
x264() {
  echo "== x264 alone ($1)"
  $fw bench-media --input $R/styl-short.mp4 --frames 1125 --streams 8 --chunk-frames 50 --stitch 2>&1 | grep bench-media
}
job() {  # job LANE NAME
  echo "== job lane=$1 ($2)"
  FW_CLIP=clip720-6min.mp4 FW_GPUS=1 FW_PIPELINES=8 \
    FW_LOG=info,framewise_worker::media::decode=debug,framewise_worker::agent=debug \
    FW_ENV="FRAMEWISE_WORKER__DECODER=nvdec FRAMEWISE_WORKER__OPTIMIZE=fused-u8-fp16-norm-nhwc-s2d FRAMEWISE_WORKER__CUDA_GRAPH=true FRAMEWISE_WORKER__MEDIA_LANE=$1" \
    bench/gpu.sh e2e >/dev/null 2>&1
  local log=$OUT/run-$2-lane-$1.log
  cp "$OUT/run-g1-p8-b1.log" "$log"
  sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -o "wrote .*\|output assembled.*\|publish_ms=[0-9]*\|state=Assembling\|state=Succeeded" | grep -v "^state" | sed 's/^/   /'
}
# The first job builds and gates the model variant once (cached for the others).
job true warm
x264 start
for r in $(seq "${FW_ROUNDS:-3}"); do
  # Alternating which goes first.
  if [ $((r % 2)) = 1 ]; then job true r$r; job false r$r; else job false r$r; job true r$r; fi
  x264 "after round $r"
done

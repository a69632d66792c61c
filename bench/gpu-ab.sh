#!/usr/bin/env bash
# Two builds side by side on one GPU node: x264 alone (the slowest stage: `bench-media`, 8
# streams of stylized 720p in 50-frame chunk files) and one job of the 6-minute clip
# (`gpu.sh e2e`, 8 pipelines, NVDEC), each with the new build ($R/framewise) and the old one
# ($R/framewise-old, from .gpu/fw-old.zst: `zstd -19` of an earlier `framewise` binary),
# alternating which goes first (BENCHMARKS.md, session 17, calls H5 and H6).
# Run on the device machine from the repository root after the four stash calls of
# bench/gpu-pack.sh's pieces (BENCHMARKS.md), carrying .gpu/fw.tar.zst, .gpu/zstd,
# .gpu/styl-short.mp4 and .gpu/fw-old.zst (and .gpu/perf.tar.zst with FW_PERF=1).
#   FW_ROUNDS  pairs (default 3)
#   FW_OLD=0   the new build only: x264 alone before and after each job
#   FW_PERF=1  last, one new job profiled with perf over 5 s of its steady state: the CPU by
#              thread kind and library ($OUT/profile.txt)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source bench/gpu-setup.sh
bin() { [ "$1" = old ] && echo "$R/framewise-old" || echo "$R/framewise"; }
x264() {  # x264 BUILD
  echo "== x264 alone ($1)"
  "$(bin "$1")" bench-media --input $R/styl-short.mp4 --frames 1125 --streams 8 --chunk-frames 50 2>&1 \
    | grep "bench-media: encode"
}
job() {  # job BUILD NAME [perf]
  echo "== job $1 ($2)"
  FW_BIN=$(bin "$1") FW_CLIP=clip720-6min.mp4 FW_GPUS=1 FW_PIPELINES=8 \
    FW_ENV="FRAMEWISE_WORKER__DECODER=nvdec FRAMEWISE_WORKER__OPTIMIZE=fused-u8-fp16-norm-nhwc-s2d" \
    bench/gpu.sh e2e > "$OUT/e2e.txt" 2>&1 &
  local b=$! log=$OUT/run-g1-p8-b1.log
  if [ -n "${3:-}" ]; then
    mkdir -p /root/perf && .gpu/zstd -dc .gpu/perf.tar.zst | tar xf - -C /root
    sleep 1; for _ in $(seq 600); do grep -q "job accepted" "$log" 2>/dev/null && break; sleep 0.2; done
    sleep 2.5
    LD_LIBRARY_PATH=/root/perf/lib /root/perf/perf record -F 499 -a -o /root/p.data -- sleep 5 >/dev/null 2>&1
  fi
  wait $b
  sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -o "wrote .*"
  grep -A1 "CPU cores busy" "$OUT/e2e.txt" | tail -1
  mv "$log" "$OUT/run-$1-$2.log"; rm -f "$OUT"/t1 "$OUT"/t2 "$OUT"/util-*.csv
  if [ -n "${3:-}" ]; then
    # Thread names without their digits (appsrc12:src -> appsrc:src), summed per library.
    { LD_LIBRARY_PATH=/root/perf/lib /root/perf/perf report -i /root/p.data --sort comm,dso --stdio 2>/dev/null \
        | grep "%" | awk '{c=$2; gsub(/[0-9]+/,"",c); a[c" "$3]+=$1} END {for (k in a) printf "%6.2f %s\n", a[k], k}' \
        | sort -rn | head -30
      echo "-- by library:"
      LD_LIBRARY_PATH=/root/perf/lib /root/perf/perf report -i /root/p.data --sort dso --stdio 2>/dev/null \
        | grep "%" | head -14; } > "$OUT/profile.txt"
    cat "$OUT/profile.txt"
  fi
}
# The first job builds and gates the model variant (cached for the others).
job new warm
if [ "${FW_OLD:-1}" = 0 ]; then
  for r in $(seq "${FW_ROUNDS:-3}"); do x264 new; job new "r$r"; done
  x264 new
else
  for r in $(seq "${FW_ROUNDS:-3}"); do
    if [ $((r % 2)) = 1 ]; then x264 new; x264 old; job new "r$r"; job old "r$r"
    else x264 old; x264 new; job old "r$r"; job new "r$r"; fi
  done
  x264 new; x264 old
fi
[ "${FW_PERF:-0}" = 1 ] && job new perf perf
exit 0

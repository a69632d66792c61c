#!/usr/bin/env bash
# framewise against the classic pipeline (issue 7), side by side on the same
# clip, model, style and thread count, on this machine's CPU:
#   classic   FFmpeg extracts the audio and writes every frame as a JPEG, a
#             Python script runs onnxruntime on each file (bench/classic/stylize.py),
#             FFmpeg re-encodes the frames (x264, same preset and CRF) and re-attaches the audio
#   ceilings  framewise bench-media (decode alone, encode alone) and bench-model
#             (inference alone, frames in memory), timed before and after the runs
#   framewise `framewise run` end to end with its defaults (on a CPU: embedded.workers
#             workers sharing the cores)
# and the PSNR of framewise's frames against the classic pipeline's.
# FFmpeg and the Python packages are installed here for the benchmark only
# (the product needs neither). Usage: bench/compare.sh [SIZES...] (default 640x360 1280x720)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/bootstrap.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/framewise/target}"

. bench/python.sh
bench_python onnxruntime==1.32.0 numpy==2.2.6 pillow==11.3.0
cargo build --locked --release --bin framewise
fw="$CARGO_TARGET_DIR/release/framewise"
threads=$(nproc)
model=models/multistyle26.onnx
crf=20
preset=superfast
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(640x360 1280x720)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
now() { date +%s.%N; }
fps() { awk -v n="$1" -v a="$2" -v b="$3" 'BEGIN { printf "%.2f", n / (b - a) }'; }

echo "# $(date -u '+%F %H:%M') UTC, $(uname -m), $threads cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
for size in "${sizes[@]}"; do
  w=${size%x*}; h=${size#*x}
  d="$work/$size"; mkdir -p "$d"
  # 20 s of real footage with audio: the demo clip looped and scaled.
  ffmpeg -v error -stream_loop 3 -i media/bigbuckbunny.mp4 -t 20 -vf "scale=$w:$h" \
    -c:v libx264 -preset veryfast -crf 16 -c:a aac -b:a 192k "$d/clip.mp4"
  frames=$(ffprobe -v error -count_packets -select_streams v:0 -show_entries stream=nb_read_packets -of csv=p=0 "$d/clip.mp4")
  rate=$(ffprobe -v error -select_streams v:0 -show_entries stream=r_frame_rate -of csv=p=0 "$d/clip.mp4")
  echo "## $size, $frames frames at $rate fps, with audio, $threads threads"

  "$fw" bench-media --input "$d/clip.mp4" --frames 250
  # Inference alone as the classic pipeline runs it (one session, every thread) and as
  # `framewise run` does by default (embedded.workers = 2 sessions sharing the threads).
  ceilings() {
    "$fw" bench-model --input "$d/clip.mp4" --frames 24 --threads "$threads"
    "$fw" bench-model --input "$d/clip.mp4" --frames 12 --sessions 2 --threads $(( threads > 1 ? threads / 2 : 1 ))
  }
  ceilings

  t0=$(now)
  "$fw" run "$d/clip.mp4" -o "$d/framewise.mp4" --quiet
  t1=$(now)
  echo "framewise run (default workers): $(fps "$frames" "$t0" "$t1") frames/s end to end"

  ceilings

  t0=$(now)
  ffmpeg -v error -i "$d/clip.mp4" -vn -c:a copy "$d/audio.mka"
  mkdir -p "$d/frames" "$d/styled"
  ffmpeg -v error -i "$d/clip.mp4" -q:v 2 "$d/frames/%06d.jpg"
  "$venv/bin/python" bench/classic/stylize.py "$model" "$d/frames" "$d/styled" --threads "$threads"
  ffmpeg -v error -framerate "$rate" -i "$d/styled/%06d.jpg" -i "$d/audio.mka" -map 0:v -map 1:a \
    -c:v libx264 -preset "$preset" -crf "$crf" -pix_fmt yuv420p -c:a copy -shortest "$d/classic.mp4"
  t1=$(now)
  echo "classic pipeline: $(fps "$frames" "$t0" "$t1") frames/s end to end"

  psnr=$(ffmpeg -i "$d/framewise.mp4" -i "$d/classic.mp4" -lavfi "[0:v][1:v]psnr" -f null - 2>&1 \
    | grep -o 'average:[0-9.inf]*' | tail -1 | cut -d: -f2)
  echo "PSNR framewise vs classic: $psnr dB (all frames, average over Y, U, V)"
  for f in framewise classic; do
    n=$(ffprobe -v error -count_packets -select_streams v:0 -show_entries stream=nb_read_packets -of csv=p=0 "$d/$f.mp4")
    a=$(ffprobe -v error -select_streams a -show_entries stream=codec_name -of csv=p=0 "$d/$f.mp4" | head -1)
    echo "$f output: $n frames, audio ${a:-none}"
  done
done

#!/usr/bin/env bash
# The overhead of the Azure Blob storage path (issue 5): one 20 s 720p clip (coarse noise) with audio
# through file:// and through Azure Blob (Azurite on this machine), side by side in one run,
# alternating which goes first. Same coordinator settings, one worker; the input is uploaded
# before the clock starts, the clock stops when `submit --wait` returns (output verified and,
# for blob, uploaded). Knobs:
#   FW_BENCH_ROUNDS (2)          rounds of (file, blob)
#   FW_BENCH_SYNTHETIC_MS (0)    >0: synthetic model (each frame sleeps this long, no inference)
#                                so decode, encode and storage dominate
#   FW_BENCH_MAX_SIZE (0)        >0: stylize a scaled-down copy (--max-size)
#   FW_BENCH_SECONDS (20)        clip length
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/bootstrap.sh --with-test-tools >/dev/null
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/framewise/target}"
cargo build --locked --release --bin framewise 2>&1 | tail -1 >&2
fw="$CARGO_TARGET_DIR/release/framewise"
rounds=${FW_BENCH_ROUNDS:-2}
synthetic=${FW_BENCH_SYNTHETIC_MS:-0}
max_size=${FW_BENCH_MAX_SIZE:-0}
secs=${FW_BENCH_SECONDS:-20}
frames=$((secs * 25))

work=$(mktemp -d /tmp/fw-bench-blob-XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

clip="$work/clip720.mp4"
# Coarse moving noise (320x180 snow scaled up): real-footage-like bitrates, unlike a bouncing ball.
gst-launch-1.0 -q videotestsrc num-buffers=$frames pattern=snow ! video/x-raw,width=320,height=180,framerate=25/1 \
  ! videoscale ! video/x-raw,width=1280,height=720 ! videoconvert ! x264enc speed-preset=veryfast bframes=2 key-int-max=50 bitrate=4000 ! h264parse ! mp4mux name=m \
  ! filesink location="$clip" \
  audiotestsrc num-buffers=$((secs * 25)) samplesperbuffer=1920 wave=sine ! audio/x-raw,rate=48000,channels=2 \
  ! avenc_aac ! aacparse ! m.

az_port=$(free_port)
mkdir -p "$work/azurite"
.deps/azurite/run-blob "$az_port" "$work/azurite" >"$work/azurite.log" 2>&1 &
pids+=($!)
key="Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
echo "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=$key;BlobEndpoint=http://127.0.0.1:$az_port/devstoreaccount1;" >"$work/conn"
for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/$az_port) 2>/dev/null && break; sleep 0.2; done

# One coordinator per storage path, so each run starts from the same state.
start_cluster() { # name work_url -> sets url
  local name=$1 work_url=$2 port http
  port=$(free_port); http=$(free_port)
  mkdir -p "$work/$name"
  cat >"$work/$name/c.toml" <<EOF
[coordinator]
grpc_addr = "127.0.0.1:$port"
http_addr = "127.0.0.1:$http"
data_dir = "$work/$name/state"
work_dir = "$work/$name/work"
logs_dir = "$work/$name/logs"
work_url = "$work_url"
logs_url = "$( [ "$name" = blob ] && echo "az://devstoreaccount1/logs" )"

[storage.accounts.devstoreaccount1]
connection_string_file = "$work/conn"
EOF
  "$fw" coordinator -c "$work/$name/c.toml" >"$work/$name/coordinator.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
  FRAMEWISE_WORKER__SYNTHETIC_MODEL_MS_PER_FRAME=$synthetic FRAMEWISE_WORKER__WORKER_ID="$name-w1" \
    "$fw" worker -c config/worker.toml --coordinator "http://127.0.0.1:$port" >"$work/$name/worker.log" 2>&1 &
  pids+=($!)
  url="http://127.0.0.1:$port"
}
start_cluster file ""
file_url=$url
start_cluster blob "az://devstoreaccount1/work"
blob_url=$url
"$fw" storage -c "$work/blob/c.toml" put "$clip" az://devstoreaccount1/input/clip720.mp4 >&2
sleep 3 # workers load the model

extra=()
[ "$max_size" -gt 0 ] && extra+=(--max-size "$max_size")
run_one() { # kind round -> seconds
  local kind=$1 r=$2 t0 t1 in out url
  if [ "$kind" = file ]; then
    in="$clip"; out="$work/file/out-$r.mp4"; url=$file_url
  else
    in=az://devstoreaccount1/input/clip720.mp4; out=az://devstoreaccount1/output/clip720-$r.mp4; url=$blob_url
  fi
  t0=$(date +%s.%N)
  "$fw" submit "$in" --out "$out" --wait --coordinator "$url" "${extra[@]}" >/dev/null 2>"$work/submit-$kind-$r.err" \
    || { echo "$kind round $r failed:" >&2; cat "$work/submit-$kind-$r.err" >&2; exit 1; }
  t1=$(date +%s.%N)
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }' 
}
mode="real model"
[ "$synthetic" -gt 0 ] && mode="SYNTHETIC model ($synthetic ms/frame: no inference)"
[ "$max_size" -gt 0 ] && mode="$mode, --max-size $max_size"
echo "# $(date -u +%F) $(uname -m), $(nproc) cores; ${secs} s 1280x720 25 fps clip (coarse noise) with AAC audio ($(stat -c %s "$clip") bytes); $mode; 1 worker"
echo "| round | file:// s | Azure Blob (Azurite) s | blob / file |"
echo "|---|---|---|---|"
for r in $(seq "$rounds"); do
  if [ $((r % 2)) = 1 ]; then f=$(run_one file "$r"); b=$(run_one blob "$r"); else b=$(run_one blob "$r"); f=$(run_one file "$r"); fi
  awk -v r="$r" -v f="$f" -v b="$b" 'BEGIN { printf "| %s | %.1f | %.1f | %.2f |\n", r, f, b, b / f }' 
done

#!/usr/bin/env bash
# Peak RSS of a coordinator and a worker as separate processes on one clip (issue 7's
# "worker memory must not grow with the clip's length"). Usage:
#   bench/memory.sh CLIP TAG [MAX_SIZE]     e.g. a 1- and a 10-minute 720p clip made with
#   ffmpeg -stream_loop N -i media/bigbuckbunny.mp4 -c copy -t 600 /tmp/m10.mp4
# Prints the job's time and each process's peak RSS (/usr/bin/time).
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/framewise/target}"
cargo build --locked --release --bin framewise -q
F=$CARGO_TARGET_DIR/release/framewise
clip=$1; tag=$2; max=${3:-96}
d=$(mktemp -d); trap 'rm -rf "$d"' EXIT
export FRAMEWISE_COORDINATOR__DATA_DIR=$d/state FRAMEWISE_COORDINATOR__WORK_DIR=$d/work FRAMEWISE_COORDINATOR__LOGS_DIR=$d/logs
export FRAMEWISE_COORDINATOR__GRPC_ADDR=127.0.0.1:50999 FRAMEWISE_COORDINATOR__HTTP_ADDR=127.0.0.1:0
/usr/bin/time -f "coordinator: %e s, peak RSS %M KB" -o "$d/coord.time" "$F" coordinator -c config/coordinator.toml 2> "$d/coord.log" &
c=$!
sleep 2
/usr/bin/time -f "worker: %e s, peak RSS %M KB" -o "$d/worker.time" "$F" worker -c config/worker.toml --coordinator http://127.0.0.1:50999 2> "$d/worker.log" &
w=$!
sleep 3
t0=$(date +%s)
"$F" submit "$clip" --out "$d/out.mp4" --max-size "$max" --wait --coordinator http://127.0.0.1:50999 | tail -1
t1=$(date +%s)
# /usr/bin/time ignores SIGINT: signal the framewise processes under it.
pkill -INT -P $w framewise; sleep 3
pkill -TERM -P $c framewise; sleep 2
wait
echo "$tag: job $((t1 - t0)) s"; cat "$d/coord.time" "$d/worker.time"

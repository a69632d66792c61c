#!/usr/bin/env bash
# End-to-end speed of `framewise run` next to the inference-only ceiling,
# measured side by side in one run on the same clip, resolution and threads.
# Usage: bench/efficiency.sh [clip] (default: the demo clip, 1280x720, 132 frames)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/bootstrap.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/framewise/target}"
cargo build --locked --release --bin framewise
fw="$CARGO_TARGET_DIR/release/framewise"
clip=${1:-media/bigbuckbunny.mp4}
cores=$(nproc)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

echo "# $(date -u +%F) $(uname -m), $cores cores, clip $clip"
# The machine's speed drifts: time inference alone before, between and after the end-to-end runs.
"$fw" bench-model --input "$clip" --frames 12 --threads "$cores"
for w in 1 2; do
  "$fw" run "$clip" -o "$out/w$w.mp4" --workers "$w" --quiet
  "$fw" bench-model --input "$clip" --frames 12 --threads "$cores"
done

#!/usr/bin/env bash
# Eviction cost (issue 4): framewise's leases and chunk checkpoints against a
# static even split that reruns the whole step when a node dies (MPI-style).
# Synthetic-model workers (each frame sleeps a fixed time: the scheduler, not
# the model, is measured). Knobs: FW_BENCH_WORKERS (6), FW_BENCH_MS_PER_FRAME
# (100), FW_BENCH_FRAMES (750).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/bootstrap.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/framewise/target}"
echo "# $(date -u +%F) $(uname -m), $(nproc) cores"
cargo test --locked --release --test processes eviction_cost_benchmark -- --ignored --nocapture 2>&1 \
  | grep -E '^(eviction cost|\|)'

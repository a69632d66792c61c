#!/usr/bin/env bash
# Coordinator scale (issue 4): FW_BENCH_WORKERS (1000) simulated workers, each
# with its own gRPC connection, lease and commit FW_BENCH_TASKS (100000) small
# segment tasks against one `framewise coordinator` process; then the
# coordinator is SIGKILLed and restarted and the recovery is timed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/bootstrap.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/framewise/target}"
ulimit -n 65536 2>/dev/null || true
echo "# $(date -u +%F) $(uname -m), $(nproc) cores"
cargo test --locked --release --test processes coordinator_scale_benchmark -- --ignored --nocapture 2>&1 \
  | grep -E '^(coordinator scale|\|)|panicked|Error'

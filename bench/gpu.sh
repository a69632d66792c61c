#!/usr/bin/env bash
# The GPU benchmark (issues 7 and 10), run ON the GPU machine from the repository root with
# .gpu/ (made by bench/gpu-pack.sh) carried along. Steps:
#   bench/gpu.sh --stash          copy the .gpu/ort.part.* of this call to /root/parts (repeat per call)
#   bench/gpu.sh --unpack         unpack framewise + GStreamer (and ONNX Runtime once all parts are there)
#   bench/gpu.sh [--check|STEP…]  run the benchmark steps (default: all), results under $OUT
# Each step prints one line per number; nvidia-smi samples GPU utilisation during end-to-end runs.
set -uo pipefail
R=${FW_GPU_ROOT:-/root/fw}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
case "${1:-all}" in
  --stash) mkdir -p /root/parts; cp .gpu/ort.part.* .gpu/clip720*.mp4 /root/parts/ 2>/dev/null; ls -la /root/parts; exit 0 ;;
  --unpack)
    mkdir -p "$R" /root/ort
    .gpu/zstd -dc .gpu/fw.tar.zst | tar xf - -C "$(dirname "$R")"
    cp .gpu/clip720*.mp4 /root/parts/ 2>/dev/null; cp /root/parts/clip720*.mp4 "$R/" 2>/dev/null
    # An earlier build to compare with (FW_BIN=$R/framewise-old), made by hand: zstd -19 of the binary.
    [ -f .gpu/fw-old.zst ] && .gpu/zstd -dqf .gpu/fw-old.zst -o "$R/framewise-old" && chmod +x "$R/framewise-old"
    if ls /root/parts/ort.part.* >/dev/null 2>&1; then
      cat /root/parts/ort.part.* | .gpu/zstd -d --long=27 | tar xf - -C /root/ort && ls -la /root/ort
    fi
    exit 0 ;;
esac
export XDG_RUNTIME_DIR=/tmp  # GStreamer's GL library asks for it
export LD_LIBRARY_PATH=$R/gst/lib:/usr/local/cuda-13.0/targets/x86_64-linux/lib:/usr/lib/x86_64-linux-gnu
export GST_PLUGIN_SYSTEM_PATH=$R/gst/plugins GST_PLUGIN_PATH=$R/gst/plugins
export GST_PLUGIN_SCANNER=$R/gst/gst-plugin-scanner GST_REGISTRY=$R/registry.bin
export ORT_DYLIB_PATH=/root/ort/libonnxruntime.so.1.31.1
export FRAMEWISE_WORKER__MODEL__PATH=$R/multistyle26.onnx FRAMEWISE_WORKER__MODEL_CACHE_DIR=$R/cache
fw=${FW_BIN:-$R/framewise}  # FW_BIN: another build (e.g. the one before a change, side by side)
clip=$R/${FW_CLIP:-clip720.mp4}  # FW_CLIP: another clip carried and unpacked into $R
steps=("$@"); [ "${1:-all}" = all ] && steps=(info media model e2e)
log() { echo "== $*"; }
# The segment log lines of a run, summed: per-frame stage times, and each range's wait for its
# first decoded frame, its warm-up run at the frame size and its first inference (the start-up
# costs; a slow first inference after a warm-up means the session's size changed, inference.rs).
stages() {
  sed 's/\x1b\[[0-9;]*m//g' "$@" | grep -o 'segment stages.*' | awk '
    { for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] += kv[2]; if (kv[2] > mx[kv[1]]) mx[kv[1]] = kv[2] } n++ }
    END { printf "   %d segments: per frame decode_wait %.1f ms, infer %.1f ms, encode %.1f ms, wall %.1f ms\n",
            n, v["decode_wait_ms"]/v["frames"], v["infer_ms"]/v["frames"], v["encode_ms"]/v["frames"], v["wall_ms"]/v["frames"]
          printf "   per range: first frame after %.0f ms (longest %d), first run at its size %.0f ms (longest %d), first inference %.0f ms (longest %d)\n",
            v["first_frame_ms"]/n, mx["first_frame_ms"], v["warm_up_ms"]/n, mx["warm_up_ms"], v["first_infer_ms"]/n, mx["first_infer_ms"] }'
}
for step in "${steps[@]}"; do case $step in
  --check|info)
    log "machine: $(nproc) cores, $(nvidia-smi -L | tr '\n' ';')"
    # Which H.264 decoder decodebin picks (nvh264dec = NVDEC, openh264dec = CPU).
    GST_DEBUG=GST_ELEMENT_FACTORY:4 $fw bench-media --input "$clip" --frames 50 2>&1 \
      | grep -o 'creating element "[a-z0-9]*dec[a-z0-9]*"' | sort | uniq -c
    ;;
  media)
    # FW_MEDIA_ARGS: e.g. --nv12 (decode to NV12, as NVDEC workers do for a model that takes it,
    # with FW_ENV=FRAMEWISE_WORKER__DECODER=nvdec).
    for s in ${FW_STREAMS:-1 4 8}; do env ${FW_ENV:-} $fw bench-media --input "$clip" --frames 300 --streams $s ${FW_MEDIA_ARGS:-}; done ;;
  model)
    for v in off auto; do
      CUDA_VISIBLE_DEVICES=0 FRAMEWISE_LOG=info $fw bench-model --device cuda --optimize $v --sessions 1 --frames 100 --size 1280x720 2>&1 \
        | sed 's/\x1b\[[0-9;]*m//g' | grep -E 'bench-model|passes|chosen|rejected|not faster' | sed 's/^.*variant: //'
    done
    for s in 2 4 8; do
      CUDA_VISIBLE_DEVICES=0 $fw bench-model --device cuda --sessions $s --frames 100 --size 1280x720
    done
    for sb in "1 4" "1 8" "2 4" "4 4" "4 8" "8 4"; do
      set -- $sb
      CUDA_VISIBLE_DEVICES=0 $fw bench-model --device cuda --sessions $1 --batch $2 --frames 96 --size 1280x720
    done
    CUDA_VISIBLE_DEVICES=0 $fw bench-model --device cuda --sessions 8 --frames 200 --size 640x360
    $fw bench-model --device cpu --optimize off --frames 4 --size 1280x720
    $fw bench-model --device cpu --optimize on --frames 4 --size 1280x720
    FRAMEWISE_LOG=info $fw bench-model --device cpu --optimize auto --frames 4 --size 1280x720 2>&1 \
      | sed 's/\x1b\[[0-9;]*m//g' | grep -E 'bench-model|passes|chosen|rejected|not faster' | sed 's/^.*variant: //'
    ;;
  infer-cpu)
    # Inference alone with the worker's variant and 8 sessions, and the CPU it takes per frame
    # (ONNX Runtime launching the kernels, copies): the process's CPU seconds (getrusage) for
    # FW_FRAMES and for 100 frames per session, the difference per extra frame, so model load,
    # gate and cuDNN's search cancel out.
    cpu() {  # frames -> prints the bench line, then "CPU <seconds>"
      CUDA_VISIBLE_DEVICES=0 python3 -c 'import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True)
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print("CPU %.2f" % (r.ru_utime + r.ru_stime))' $fw bench-model --device cuda --optimize ${FW_OPT:-auto} --sessions 8 --frames $1 --size 1280x720 | grep -E "bench-model|CPU"
    }
    n=${FW_FRAMES:-500}
    a=$(cpu 100); b=$(cpu "$n"); echo "$a"; echo "$b"
    echo "$a $b" | grep -o 'CPU [0-9.]*' | awk -v n=$n '{c[NR] = $2} END {printf "   inference CPU: %.2f ms per frame (8 sessions, %d extra frames each)\n", (c[2] - c[1]) * 1000 / ((n - 100) * 8), n - 100}'
    ;;
  variants)
    # The model variants side by side on one GPU: the quality gate's verdict per sample frame
    # (against the original in full fp32), then frames/s with 1, 4 and 8 sessions, with NHWC
    # convolutions off and on; the original once more with TF32 on.
    bm() {
      CUDA_VISIBLE_DEVICES=0 FRAMEWISE_LOG=info $fw bench-model --device cuda --frames ${FW_FRAMES:-100} --size 1280x720 "$@" 2>&1 \
        | sed 's/\x1b\[[0-9;]*m//g' | grep -E 'bench-model|passes|chosen|not faster|rejected|rror' | sed 's/^.*variant: //'
    }
    for nhwc in ${FW_NHWC:-false true}; do
      rm -rf "$R/cache"  # the gate decides again under these settings
      for opt in ${FW_OPTS:-off fused-u8 fused-u8-fp16 fused-u8-tf32}; do
        for s in ${FW_SESSIONS:-1 4 8}; do
          echo "-- nhwc=$nhwc optimize=$opt sessions=$s"
          FRAMEWISE_WORKER__CUDA_PREFER_NHWC=$nhwc bm --optimize $opt --sessions $s
        done
      done
    done
    echo "-- auto: what the worker picks (every variant that passes the gate timed)"
    rm -rf "$R/cache"
    bm --optimize auto --sessions 1 | grep -E 'chosen|bench-model'
    rm -rf "$R/cache"
    ;;
  inproc)
    # Inference alone across the GPUs (issue 10): FW_SESSIONS sessions on one GPU; the same on
    # each GPU in one process; then one process per GPU started together (frames/s summed).
    # Tells contention inside one process (ONNX Runtime, the CUDA driver) from the media stages.
    s=${FW_SESSIONS:-4}; n=$(nvidia-smi -L | wc -l); f=${FW_FRAMES:-300}
    bmi() { env ${FW_ENV:-} CUDA_VISIBLE_DEVICES=$1 $fw bench-model --device cuda --sessions $2 --frames $f --size 1280x720 2>&1 | grep -E 'bench-model|rror'; }
    echo "   1 GPU, $s sessions: $(bmi 0 "$s")"
    echo "   $n GPUs, $s sessions each, one process: $(bmi "$(seq -s, 0 $((n - 1)))" $((s * n)))"
    for g in $(seq 0 $((n - 1))); do bmi "$g" "$s" > "$OUT/inproc-$g.log" & done; wait
    cat "$OUT"/inproc-*.log | sed 's/^/   one process per GPU: /'
    grep -ho '[0-9.]* frames/s' "$OUT"/inproc-*.log | awk '{s += $1} END {printf "   one process per GPU, summed: %.1f frames/s\n", s}'
    ;;
  files)
    # Given model files as they are (FW_MODELS, e.g. made by `framewise optimize-model`):
    # frames/s with FW_SESSIONS sessions each.
    for m in ${FW_MODELS:?}; do
      for s in ${FW_SESSIONS:-1 4 8}; do
        env ${FW_ENV:-} CUDA_VISIBLE_DEVICES=0 FRAMEWISE_WORKER__MODEL__PATH=$m $fw bench-model --device cuda --optimize off \
          --frames 100 --size 1280x720 --sessions $s 2>&1 | sed "s|model original|$(basename $m)|" | grep -E 'bench-model|rror'
      done
    done
    ;;
  profile)
    # GPU time per kernel of the model's runs, with Nsight Compute (ncu, in the CUDA toolkit
    # there): one session, the model file as is (FW_MODEL), the warm-up and cuDNN's algorithm
    # search skipped (FW_SKIP launches), then FW_COUNT kernels summed by name.
    m=${FW_MODEL:-$R/multistyle26.onnx}
    env ${FW_ENV:-} CUDA_VISIBLE_DEVICES=0 FRAMEWISE_WORKER__MODEL__PATH=$m /usr/local/cuda/bin/ncu --metrics gpu__time_duration.sum \
      --csv --launch-skip ${FW_SKIP:-6000} --launch-count ${FW_COUNT:-1500} \
      $fw bench-model --device cuda --optimize off --frames ${FW_FRAMES:-60} --size 1280x720 > "$OUT/ncu.csv" 2> "$OUT/ncu.err"
    tail -3 "$OUT/ncu.err"
    python3 - "$OUT/ncu.csv" <<'PY'
import csv, sys, collections
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 14]
head = rows[0]; k, v, u = head.index("Kernel Name"), head.index("Metric Value"), head.index("Metric Unit")
tot = collections.Counter(); cnt = collections.Counter()
for r in rows[1:]:
    try: x = float(r[v].replace(",", ""))
    except ValueError: continue
    x *= {"nsecond": 1e-3, "ns": 1e-3, "msecond": 1e3, "ms": 1e3}.get(r[u], 1.0)  # -> microseconds
    name = r[k][:90]; tot[name] += x; cnt[name] += 1
all_us = sum(tot.values())
frames = max(1, max((c for n, c in cnt.items() if "Sigmoid" in n), default=1))
print(f"   {sum(cnt.values())} kernels, {all_us/1000:.1f} ms of GPU time, {frames} frames: {all_us/1000/frames:.2f} ms per frame")
for name, us in tot.most_common(25):
    print(f"   {us/all_us*100:5.1f} %  {us/1000/frames:6.3f} ms/frame  {cnt[name]:5d} x  {name}")
PY
    ;;
  e2e)
    for g in ${FW_GPUS:-$(seq 1 "$(nvidia-smi -L | wc -l)")}; do
      for p in ${FW_PIPELINES:-4 8}; do
       for b in ${FW_BATCH:-1}; do
       for bs in ${FW_BLOCKING_SYNC:-true}; do
        # FW_VISIBLE: which GPUs, in which order (e.g. 1,2,3,0: is GPU 0's slowness the card or the index?)
        vis=${FW_VISIBLE:-$(seq -s, 0 $((g - 1)))}
        nvidia-smi --query-gpu=index,utilization.gpu --format=csv,noheader,nounits -lms 250 > "$OUT/util-g$g-p$p-b$b.csv" &
        smi=$!
        env ${FW_ENV:-} CUDA_VISIBLE_DEVICES=$vis FRAMEWISE_WORKER__PIPELINES_PER_GPU=$p FRAMEWISE_LOG=${FW_LOG:-info} FRAMEWISE_WORKER__BATCH_FRAMES=$b \
          FRAMEWISE_COORDINATOR__CHUNK_SECONDS=${FW_CHUNK:-2} FRAMEWISE_WORKER__CUDA_BLOCKING_SYNC=$bs \
          $fw run "$clip" -o "$R/out-g$g-p$p-b$b.mp4" --device cuda --quiet --segment-seconds ${FW_SEGMENT:-20} \
          > "$OUT/run-g$g-p$p-b$b.log" 2>&1 &
        rpid=$!
        # CPU seconds per thread kind over 4 s from 3 s after the job was accepted (the workers'
        # start-up, the variant gate included, comes before it; digits dropped from names).
        for _ in $(seq 600); do grep -q "job accepted" "$OUT/run-g$g-p$p-b$b.log" 2>/dev/null && break; sleep 0.2; done
        sleep 3
        # The run and its worker processes (a child per GPU).
        # "(process)" is the processes' own total, threads that have exited (x264's, a chunk's
        # pipeline's) included; the named kinds are the threads alive at both samples, each
        # thread compared with itself (kind|tid: a chunk's threads come and go under the same
        # names, so sums by name taken at two moments compared different threads).
        snap() { { for q in $rpid $(pgrep -P $rpid); do echo "(process)|$q $(awk '{print $14+$15}' /proc/$q/stat)"; done
            for t in $(for q in $rpid $(pgrep -P $rpid); do echo /proc/$q/task/*; done); do echo "$(tr -d '0-9' < $t/comm | tr ' ' _)|${t##*/} $(awk '{print $14+$15}' $t/stat)"; done; } 2>/dev/null \
          | sort; }
        # The window is timed: reading hundreds of threads' stats takes a while itself.
        # (t_a, t_b: `b` is the batch loop's variable, used for the file names below.)
        t_a=$(date +%s.%N); snap > "$OUT/t1"; sleep 4; t_b=$(date +%s.%N); snap > "$OUT/t2"
        echo "   CPU cores busy by thread kind (over $(awk -v a=$t_a -v b=$t_b 'BEGIN {printf "%.1f", b - a}') s; $(nproc) cores; (process) = all threads):"
        join "$OUT/t1" "$OUT/t2" | awk -v w="$(awk -v a=$t_a -v b=$t_b 'BEGIN {print (b - a) * 100}')" \
          '{split($1, k, "|"); d[k[1]] += ($3 - $2) / w} END {for (n in d) if (d[n] > 0.05) printf "     %-18s %.2f\n", n, d[n]}' \
          | sort -k2 -rn | head -14
        wait $rpid
        grep -h "wrote\|error" "$OUT/run-g$g-p$p-b$b.log" | tail -2
        stages "$OUT/run-g$g-p$p-b$b.log"
        kill $smi
        awk -F', ' '$2 > 0 {s[$1] += $2; n[$1]++} END {for (g in s) printf "   gpu %s busy %.0f%% (mean of samples while running)\n", g, s[g]/n[g]}' "$OUT/util-g$g-p$p-b$b.csv"
        echo "   ^ $g GPU(s), $p pipelines per GPU, batch $b, blocking sync $bs"
       done
       done
      done
    done
    ;;
  fleet)
    # Sustained throughput: a coordinator and one worker process per GPU count, several
    # jobs queued at once (job start and assembly overlap with other jobs' segments).
    jobs=${FW_JOBS:-4}
    for g in ${FW_GPUS:-$(seq 1 "$(nvidia-smi -L | wc -l)")}; do
      d=$R/fleet-g$g; rm -rf "$d"; mkdir -p "$d"
      port=$((51000 + g))
      FRAMEWISE_COORDINATOR__GRPC_ADDR=127.0.0.1:$port FRAMEWISE_COORDINATOR__HTTP_ADDR=127.0.0.1:0 \
        FRAMEWISE_COORDINATOR__DATA_DIR=$d/state FRAMEWISE_COORDINATOR__WORK_DIR=$d/work \
        FRAMEWISE_COORDINATOR__LOGS_DIR=$d/logs FRAMEWISE_COORDINATOR__CHUNK_SECONDS=2 \
        $fw coordinator -c config/coordinator.toml > "$d/coord.log" 2>&1 &
      cpid=$!
      sleep 1
      # FW_SPLIT=1: a `framewise worker` per GPU (by hand) instead of one for all of them (which
      # itself runs a child per GPU unless FW_ENV="FRAMEWISE_WORKER__PROCESS_PER_GPU=false").
      wpids=()
      # FW_PROCS_PER_GPU=N (with FW_SPLIT=1): N worker processes per GPU sharing its pipelines.
      per=${FW_PROCS_PER_GPU:-1}
      if [ "${FW_SPLIT:-0}" = 1 ]; then sets=$(for x in $(seq 0 $((g - 1))); do for k in $(seq 1 "$per"); do echo $x; done; done); else sets=$(seq -s, 0 $((g - 1))); per=1; fi
      k=0
      for vis in $sets; do
        k=$((k + 1))
        env ${FW_ENV:-} CUDA_VISIBLE_DEVICES=$vis FRAMEWISE_WORKER__PIPELINES_PER_GPU=$((${FW_PIPELINES:-4} / per)) \
          $fw worker -c config/worker.toml --coordinator http://127.0.0.1:$port --device cuda > "$d/worker-$vis-$k.log" 2>&1 &
        wpids+=($!)
      done
      want=$((g * ${FW_PIPELINES:-4}))
      for i in $(seq 1 90); do [ "$(cat "$d"/worker-*.log | grep -c "worker registered")" -ge "$want" ] && break; sleep 1; done
      sleep 2
      t0=$(date +%s.%N)
      pids=()
      for j in $(seq 1 "$jobs"); do
        $fw submit "$clip" --out "$d/out$j.mp4" --segment-seconds 20 --wait \
          --coordinator http://127.0.0.1:$port > "$d/submit$j.log" 2>&1 &
        pids+=($!)
      done
      wait "${pids[@]}"
      t1=$(date +%s.%N)
      ok=$(grep -l "wrote" "$d"/submit*.log | wc -l)
      n=$(grep -ho "([0-9]* frames" "$d"/submit*.log | tr -dc '0-9\n' | awk '{s += $1} END {print s + 0}')
      awk -v n="$n" -v a="$t0" -v b="$t1" -v g="$g" -v ok="$ok" -v j="$jobs" \
        -v p="$([ "${FW_SPLIT:-0}" = 1 ] && echo "$per worker(s) per GPU" || echo "one worker")${FW_ENV:+ ($FW_ENV)}" \
        'BEGIN { printf "   fleet: %d GPU(s), %s, %d jobs (%d reported done, %d frames): %.1f s, %.1f frames/s\n", g, p, j, ok, n, b - a, n / (b - a) }'
      tail -1 "$d/submit1.log"
      stages "$d"/worker-*.log
      kill -INT "${wpids[@]}"; sleep 2; kill -TERM $cpid; wait "${wpids[@]}" $cpid 2>/dev/null
    done
    ;;
  scale)
    # Coordinator scale (issue 4) where the simulated workers do not share two cores with the
    # coordinator: the release test binary packed by gpu-pack.sh, its framewise at the path it
    # was built with. Per-thread CPU of the coordinator over 3 s of the first run.
    [ -x "$R/processes-test" ] || { echo "no test binary packed"; exit 2; }
    # FW_COORD_BIN: another framewise build as the coordinator (a before/after in one call);
    # FW_TASKSET: the CPUs everything runs on (e.g. 0-15 for 16 cores of a bigger machine).
    mkdir -p "$(dirname "$(cat "$R/bin-path")")"; ln -sf "${FW_COORD_BIN:-$fw}" "$(cat "$R/bin-path")"
    ulimit -n 65536 2>/dev/null
    for think in ${FW_THINK:-0 200}; do
      CARGO_MANIFEST_DIR=$PWD FW_BENCH_WORKERS=${FW_WORKERS:-1000} FW_BENCH_TASKS=${FW_TASKS:-100000} \
        FW_BENCH_THINK_MS=$think FW_BENCH_CLIENT_THREADS=${FW_CLIENT_THREADS:-8} \
        ${FW_TASKSET:+taskset -c $FW_TASKSET} "$R/processes-test" coordinator_scale_benchmark --ignored --nocapture > "$OUT/scale-$think.log" 2>&1 &
      bpid=$!
      if [ -z "${sampled:-}" ]; then
        sampled=1
        sleep 4
        c=$(pgrep -f "framewise coordinator" | head -1)
        snap() { for t in /proc/$c/task/*; do echo "$(tr ' ' _ < $t/comm) $(awk '{print $14+$15}' $t/stat)"; done 2>/dev/null; }
        snap > "$OUT/t1"; sleep 3; snap > "$OUT/t2"
        echo "   coordinator threads, CPU seconds over 3 s (think $think ms):"
        join <(sort "$OUT/t1" | awk '{a[$1]+=$2} END {for (k in a) print k, a[k]}' | sort) \
             <(sort "$OUT/t2" | awk '{a[$1]+=$2} END {for (k in a) print k, a[k]}' | sort) \
          | awk '{d = ($3 - $2) / 100; if (d > 0.05) printf "     %-16s %.1f\n", $1, d}' | sort -k2 -rn
      fi
      wait $bpid
      grep -E '^(coordinator scale|\|)|panicked' "$OUT/scale-$think.log" | grep -v -- '---'
    done
    ;;
  *) echo "unknown step $step"; exit 2 ;;
esac; done

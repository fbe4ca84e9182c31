#!/usr/bin/env bash
# Issue 16 on a 2-GPU host (nvidia-h100-x2 / nvidia-h200-x2), after .gpu2/install-vllm.sh, in calls of < 10 min:
#   bash benchmarks/gpu_issue16.sh 1 470   # GPU0: one-GPU layouts (4000x256, 4000x512) | GPU1: cells sweep + seed loop
#   bash benchmarks/gpu_issue16.sh 2 560   # both GPUs: auto and TP=2 at 4000x256 (cold), then at 4000x512
#   bash benchmarks/gpu_issue16.sh 3 300   # GPU0: cells one task per cell | then auto+wait if time is left
# Each phase stops at its budget (a measurement cut short is simply missing); what was measured lands in /tmp/b16
# and, tarred without samples and caches, in $OUT. Merge: launcher bench --collect-from ... (benchmarks/README.md).
set -u
. /tmp/vllm-env.sh
# The image lacks submitit (launcher run/submit import it): carry its wheel in .gpu3/ (pip download submitit
# --no-deps -d .gpu3); it is pure Python.
if ls .gpu3/submitit-*.whl >/dev/null 2>&1 && [ ! -d /tmp/vllm-site/submitit ]; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/vllm-site .gpu3/submitit-*.whl
fi
python3 -c "import submitit, vllm, launcher.job.entry" || { echo "imports failed"; exit 1; }
phase=$1
budget=${2:-500}
W=/tmp/b16
mkdir -p "$W"
end=$(( $(date +%s) + budget ))
left() { echo $(( end - $(date +%s) )); }
bench() { timeout "$(left)" python3 -m launcher bench --no-plot --timeout-s 900 "$@"; }
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv > "$W/gpus-$phase.csv" 2>&1
case "$phase" in
  1)
    CUDA_VISIBLE_DEVICES=0 bench --workdir "$W/g0" --results "$W/g0/res" --systems layouts --layouts gpu1 \
      --shapes 4000x256,4000x512 --note "GPU0, while GPU1 ran the cells sweep" > "$W/p1-g0.log" 2>&1 &
    CUDA_VISIBLE_DEVICES=1 bench --workdir "$W/g1" --results "$W/g1/res" --systems cells,cells-seed-loop \
      --cells 4x3x200x256 --cells-measure 2 --note "GPU1, while GPU0 ran the one-GPU layouts" > "$W/p1-g1.log" 2>&1 &
    wait ;;
  2)
    bench --workdir "$W/g01" --results "$W/g01/res" --systems layouts --layouts auto,2 --shapes 4000x256 \
      --note "both GPUs, every layout cold" > "$W/p2a.log" 2>&1
    # 4000x512: auto starts from the one-GPU run's compile cache (same key: TP=1, same sizing); TP=2 compiles
    mkdir -p "$W/g01/compile-cache" && rm -rf "$W/g01/compile-cache/4000x512-auto" && \
      cp -a "$W/g0/compile-cache/4000x512-gpu1" "$W/g01/compile-cache/4000x512-auto" 2>/dev/null
    bench --workdir "$W/g01" --results "$W/g01/res" --systems layouts --layouts auto,2 --shapes 4000x512 \
      --keep-caches --note "both GPUs; auto warm (the one-GPU run's cache), TP=2 cold" > "$W/p2b.log" 2>&1 ;;
  3)
    CUDA_VISIBLE_DEVICES=0 bench --workdir "$W/g0c" --results "$W/g0c/res" --systems cells-task-per-cell \
      --cells 4x3x200x256 --cells-measure 2 --note "GPU0 alone" > "$W/p3a.log" 2>&1
    [ "$(left)" -gt 170 ] && bench --workdir "$W/g01" --results "$W/g01/res" --systems layouts \
      --layouts auto+wait --shapes 4000x256 --note "both GPUs, cold, LAUNCHER_COMPILE_MISS=wait" > "$W/p3b.log" 2>&1 ;;
esac
grep -h '^\[bench\]' "$W"/p"$phase"*.log
tar cf "$OUT/b16-$phase.tar" -C "$W" --exclude='*.jsonl' --exclude=compile-cache --exclude=scratch \
  --exclude='raw-cache*' --exclude=assets --exclude='users' . 2>/dev/null
ls -la "$OUT"
exit 0

#!/usr/bin/env bash
# Issue 28 on ONE H100 (nvidia-h100-x1), after .gpu2/install-vllm.sh (vLLM 0.26.0 in /tmp/vllm-site), in calls of
# < 9.5 minutes. Every call goes on in /tmp/b28 (workdir, compile caches, checkpoints): a step measured by an earlier
# call is skipped, a step cut by the call's budget is redone by the next. Run them back to back on one warm machine.
#   bash benchmarks/gpu_issue28.sh 1 540   # ~8.5 min: cells cold (~200 s; 239.5 s before issue 28), cells-warm (~150 s;
#                                          #   189.7 s before), one cell with each start-up switch off: all-on, overlap,
#                                          #   skip_tokenizer, startup_plan (~35 s each, warm cache)
#   bash benchmarks/gpu_issue28.sh 2 540   # ~7.5 min: the seed loop, 2 of 12 cells (~130 s cold + ~60 s), a checkpoint
#                                          #   with real weights (16 GB written: ~30 s) read by 3 loaders (~35 s each,
#                                          #   page cache dropped), a models: sweep of 2 such checkpoints (~120 s: a cold
#                                          #   compile for them, the load, the swap)
#   bash benchmarks/gpu_issue28.sh 3 540   # optional, ~7 min: one engine per cell, 2 cells (~180 s; for
#                                          #   sweep_vs_task_per_cell), start-up with jit_cache off (~40 s), graphs off
#                                          #   (cold: ~80 s), the swap's second checkpoint alone in a new engine (~110 s:
#                                          #   swap_matches_fresh, the proof that vLLM 0.26 swapped the weights)
# Calls 1 + 2 hold every ratio of the issue but sweep_vs_task_per_cell: ~16 min of GPU wall time; call 3 adds it.
# Each call leaves $OUT/b28-<call>.tar (results.json + results.md of everything measured so far, the runs, the logs;
# no samples, caches or checkpoints). The lead commits res/ as benchmarks/results/<date>-h100-80gb-hbm3-issue28/.
#
# .gpu3/ (carried; not on the GPU host) must hold, from `pip download --no-deps -d .gpu3 ...` (4.4 MB in all):
#   submitit nvidia-ml-py                                 (as for the earlier issues)
#   runai-model-streamer==0.17.1 humanize                 (Run:ai streamer: py3 manylinux_2_28 x86_64 wheel, 0.8 MB;
#                                                          humanize 0.1 MB, which it imports)
#   fastsafetensors==0.5.0                                (cp312 manylinux_2_28 x86_64 wheel, 2.7 MB; its typer
#                                                          requirement is for its CLI, not imported by vLLM's loader)
#   google-re2==1.1.20251105                              (cp312 manylinux_2_28 x86_64 wheel: `import re2`, a core
#                                                          dependency of the launcher since issue 26: spec checks)
# Both are within the ranges vLLM of torch 2.11's era asks for (fastsafetensors >= 0.3.2, runai >= 0.15.7); if one
# does not load on vLLM 0.26, its row says why, and older wheels of those ranges can be tried. A wheel that is
# missing only costs its loader's row (the step says "not installed").
set -u
. /tmp/vllm-env.sh
for spec in submitit:submitit pynvml:nvidia_ml_py re2:google_re2 runai_model_streamer:runai_model_streamer \
            humanize:humanize fastsafetensors:fastsafetensors; do
  module=${spec%%:*} wheel=${spec##*:}
  if ! python3 -c "import $module" 2>/dev/null && ls .gpu3/"$wheel"-*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --target /tmp/vllm-site .gpu3/"$wheel"-*.whl
  fi
done
python3 -c "import submitit, re2, vllm, launcher.job.entry; print('vllm', vllm.__version__)" || { echo "imports failed"; exit 1; }
python3 -c "import runai_model_streamer" 2>/dev/null && echo "runai_model_streamer: yes" || echo "runai_model_streamer: no"
python3 -c "import fastsafetensors" 2>/dev/null && echo "fastsafetensors: yes" || echo "fastsafetensors: no"
call=$1
budget=${2:-540}
W=/tmp/b28
mkdir -p "$W"
end=$(( $(date +%s) + budget ))
left() { echo $(( end - $(date +%s) )); }
bench() {
  timeout "$(left)" python3 -m launcher bench --no-plot --timeout-s 600 --workdir "$W" --results "$W/res" \
    --cells 4x3x200x256 --cells-measure 2 "$@"
}
{ nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv; df -hT /tmp; nproc; free -g; } \
  > "$W/host-$call.txt" 2>&1
case "$call" in
  1)
    bench --systems cells,cells-warm,startup --startup-off all-on,overlap,skip_tokenizer,startup_plan \
      --note "issue 28, call 1: one H100" > "$W/call1.log" 2>&1 ;;
  2)
    # The swap's second checkpoint gets files of its own (read from disk, as in a real sweep) where /tmp has room
    # for both (2 x 16 GB); else it shares the first's shards but the last (the row says which).
    free_gb=$(df -BG --output=avail /tmp | tail -1 | tr -dc 0-9)
    copy=shared; [ "${free_gb:-0}" -ge 45 ] && copy=full
    bench --systems cells-seed-loop,weights,models-swap --loaders vllm,runai_streamer,fastsafetensors \
      --swap-checkpoint "$copy" --note "issue 28, call 2: one H100" > "$W/call2.log" 2>&1 ;;
  mini)
    # When little device time is left (< ~7 min): engine_ready_cold_s / engine_ready_warm_s from a small sweep (2 x 2
    # cells of 50 records: the engine's start dominates, so gpu_busy_fraction here says nothing), and the overlap
    # and skip_tokenizer switches against all on (~35 s each, warm). ~150 s + ~105 s.
    bench --systems cells,cells-warm,startup --cells 2x2x50x256 --startup-off all-on,overlap,skip_tokenizer \
      --note "issue 28, mini call: one H100, little device time left" > "$W/callmini.log" 2>&1 ;;
  micro)
    # When under ~5 min of device time is left: one cell all on (cold: the compile cache is empty), then one cell with
    # the overlap off (warm): vLLM's start-up seconds and worker start -> first request, with and without overlap.
    bench --systems startup --startup-off all-on,overlap \
      --note "issue 28, micro call: one GPU, under 5 min of device time left" > "$W/callmicro.log" 2>&1 ;;
  3)
    bench --systems cells-task-per-cell,startup,models-fresh --startup-off jit_cache,graphs \
      --note "issue 28, call 3: one H100" > "$W/call3.log" 2>&1 ;;
esac
grep -h '^\[bench\]' "$W/call$call.log"
grep -h -A40 '^## Ratios' "$W/res/results.md" 2>/dev/null | head -40
tar cf "$OUT/b28-$call.tar" -C "$W" --exclude='*.jsonl' --exclude='*.parquet' --exclude=units --exclude='*.pkl' \
  --exclude=compile-cache --exclude=scratch --exclude='raw-cache*' --exclude=assets . 2>/dev/null
ls -la "$OUT"
exit 0

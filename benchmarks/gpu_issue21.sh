#!/usr/bin/env bash
# Issue 21 on a 2-GPU host (nvidia-h100-x2 / nvidia-h200-x2), after .gpu2/install-vllm.sh, in one call of < 10 min:
#   bash benchmarks/gpu_issue21.sh [PROMPTS=1000] [BUDGET_S=520]
# TP=2 in one process vs TP=2 as two nnodes=2 rank processes (rank 1 headless on GPU 1, rank 0 LLM.generate on
# GPU 0), Llama-3-8B shape, dummy weights, greedy PROMPTS x 256 (ignore_eos). JSON lands in $OUT. If 1000 prompts
# do not fit (two cold starts), rerun with 500. Hazards (set inside the script for every process): VLLM_HOST_IP
# per rank, NCCL_SOCKET_IFNAME=lo, GLOO_SOCKET_IFNAME=lo, VLLM_PORT unset, VLLM_ALLREDUCE_USE_SYMM_MEM=0.
set -u
. /tmp/vllm-env.sh
unset VLLM_PORT
python3 -c "import vllm, launcher.bench.workload; print('vllm', vllm.__version__)" || { echo "imports failed"; exit 1; }
W=/tmp/b21
mkdir -p "$W"
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv > "$W/gpus.csv" 2>&1
budget=${2:-520}
# the script bounds itself by --budget-s and kills its rank process groups; the outer timeout is a backstop
timeout -k 10 $(( budget + 40 )) python3 benchmarks/multinode_tp_check.py --out "$OUT" --workdir "$W" \
  --prompts "${1:-1000}" --max-tokens 256 --budget-s "$budget" > "$W/check.log" 2>&1
rc=$?
grep '^\[check\]\|^{' "$W/check.log" | cut -c1-1500
for f in single.log rank0.log rank1.log; do [ -f "$W/$f" ] && tail -c 200000 "$W/$f" > "$OUT/$f"; done
cp "$W/check.log" "$W/gpus.csv" "$OUT/" 2>/dev/null
ls -la "$OUT"
exit $rc

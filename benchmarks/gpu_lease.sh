#!/usr/bin/env bash
# On the GPU host, after .gpu2/install-vllm.sh: go on with the issue-9 bench in /tmp/bw for at most $1 seconds
# (a call may run 10 min; the bench skips what an earlier call measured), then tar what is there into $OUT.
#   bash benchmarks/gpu_lease.sh 560          # raw, toolkit (cold + warm), HF, the 1024 sweep point, fp8
#   bash benchmarks/gpu_lease.sh 560 compare  # then: HF vs vLLM greedy on the GPU (benchmarks/gpu_compare.py)
set -u
. /tmp/vllm-env.sh
budget=${1:-560}
# The pack lacks loguru, which compressed-tensors imports as soon as any quantization is asked for: carry its wheel
# in .gpu3/ (pip download loguru --no-deps -d .gpu3) and it is added here.
if ls .gpu3/loguru-*.whl >/dev/null 2>&1 && [ ! -d /tmp/vllm-site/loguru ]; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/vllm-site .gpu3/loguru-*.whl
fi
if [ "${2:-}" = fp8 ]; then  # fp8 beside bf16, both cold, on one machine
  timeout "$budget" python3 -m launcher bench --workdir /tmp/bw8 --results /tmp/bw8/res --no-plot \
    --shapes 1000x256 --systems toolkit,fp8 2>&1 | grep '^\[bench\]'
  tar cf "$OUT/bw8.tar" -C /tmp/bw8 runs logs res 2>/dev/null
  exit 0
fi
if [ "${2:-}" = compare ]; then
  timeout "$budget" python3 -m benchmarks.gpu_compare --workdir /tmp/cmp --out /tmp/bw/compare.json
  tar cf "$OUT/compare.tar" -C /tmp/cmp --exclude=model . ; cp /tmp/bw/compare.json "$OUT/" 2>/dev/null
  exit 0
fi
timeout "$budget" python3 -m launcher bench --workdir /tmp/bw --results /tmp/bw/res --no-plot \
  --shapes 1000x256,4000x512 --systems raw,toolkit,toolkit-warm,hf,sweep,fp8 \
  --sweep-points max_num_seqs=1024 --sweep-shapes 1000x256,4000x512 2>&1 | grep '^\[bench\]'
tar cf "$OUT/bw.tar" -C /tmp/bw runs logs res 2>/dev/null
exit 0

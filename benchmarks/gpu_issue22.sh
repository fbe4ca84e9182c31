#!/usr/bin/env bash
# Issue 22 on one GPU, after .gpu2/install-vllm.sh: the toolkit at 1000x256 (Llama-3-8B shape, dummy weights) with the
# worker's NVML sampler on, so the bench row and the run's summary carry SM utilization, peak memory, GPU-hours and
# cost. .gpu3/ holds submitit's wheel and pynvml.py (the image has neither).
set -u
. /tmp/vllm-env.sh
if ls .gpu3/submitit-*.whl >/dev/null 2>&1 && [ ! -d /tmp/vllm-site/submitit ]; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/vllm-site .gpu3/submitit-*.whl
fi
cp .gpu3/pynvml.py /tmp/vllm-site/ 2>/dev/null
python3 -c "import submitit, vllm, pynvml, launcher.job.entry" || { echo "imports failed"; exit 1; }
W=/tmp/b22
mkdir -p "$W"
timeout "${1:-400}" python3 -m launcher bench --no-plot --timeout-s 600 --workdir "$W" --results "$W/res" \
  --systems toolkit --shapes 1000x256 --note "issue 22: NVML figures in a real run" > "$W/bench.log" 2>&1
rc=$?
cp -r "$W/res" "$OUT/" 2>/dev/null
find "$W" -name summary.json -path "*runs*" -exec cp {} "$OUT/run-summary.json" \; 2>/dev/null
tail -20 "$W/bench.log"
exit $rc

#!/usr/bin/env bash
# The old guide's helper script (inference_with_vllm.sh), for the launcher. Edit the run_vllm_inference calls at the
# bottom, then:  bash configs/examples/inference_with_launcher.sh
#
# Each call runs the old inference_vllm.py command with only the program's name changed (`launcher run`), on this
# machine's GPUs: one engine per GPU (an 8B model fits one), outputs in --output_dir as before (<user>.json and
# inference_summary.json). Dataset names (Chameleons, DMSC, ...) are found in the catalog: `datasets:` in a
# launcher.yaml of this project (configs/examples/launcher.yaml shows one), or pass --scenario_path FILE.
# For a sweep (many datasets x ablation configs) or a cluster, one spec does it all with one engine start per GPU:
# configs/examples/guide-sweep.yaml  (launcher submit configs/examples/guide-sweep.yaml --wait).
set -euo pipefail

run_vllm_inference() {
  local checkpoint=$1 dataset=$2 ablation=$3 output_dir=$4
  shift 4
  launcher run --checkpoint_dir "$checkpoint" --dataset "$dataset" --ablation_config "$ablation" \
    --output_dir "$output_dir" "$@"
}

# checkpoint                                     dataset     ablation config      output dir             other flags
run_vllm_inference outputs/Chameleons_8B_context_sampled_seed42 Chameleons profile_and_context results/Chameleons_context \
  --num_samples 5 --temperature 1.0 --top_p 0.9 --top_k 50 --max_tokens 512 --seed 42
run_vllm_inference outputs/DMSC_8B_history_sampled_seed42 DMSC profile_and_history results/DMSC_history \
  --num_samples 5 --max_tokens 512

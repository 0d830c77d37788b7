#!/usr/bin/env bash
# The extended LR-robustness benchmark on one GPU in one device call: one process per task
# (compiles overlap; they share the sweep cache), then one pass that reads the cache and writes
# the table and figure under $OUT (or ./gpu-out).
#   usage: benchmarks/lr_robustness_gpu.sh [STEPS]
set -uo pipefail
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
steps=${1:-1000}
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.12 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
tasks=$(python3 -c "import sys; sys.path.insert(0, 'benchmarks'); from lr_robustness import EXTENDED_TASKS; print(' '.join(EXTENDED_TASKS))")
controller=(--controller checkpoints/lr-controller-pes-h100 ${EXTRA_CONTROLLER:+--controller "$EXTRA_CONTROLLER"})
pids=()
for task in $tasks; do
  timeout ${TASK_LIMIT:-430} python3 benchmarks/lr_robustness.py --tasks "$task" --steps "$steps" "${controller[@]}" \
    --out "results/lr_robustness_gpu/$task" > "$OUT/lr_robustness_$task.log" 2>&1 & pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done
# the tasks that finished, merged from their folders' JSON (no recomputation)
python3 benchmarks/lr_robustness.py --merge results/lr_robustness_gpu --out results/lr_robustness_gpu > "$OUT/lr_robustness.log" 2>&1
cp results/lr_robustness_gpu/lr_robustness.{md,json,png} "$OUT/" 2>/dev/null
tail -n 25 "$OUT/lr_robustness.log"

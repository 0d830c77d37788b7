#!/usr/bin/env bash
# The GPU job behind checkpoints/generalist, in stages that fit one device call each (results
# under $OUT, or ./gpu-out when OUT is unset). Stages run side by side on one GPU, since each is
# bound by kernel launches rather than arithmetic:
#   train    meta-train configs/meta_train/generalist-gpu.toml for TIME_LIMIT seconds
#   eval     per-task tuned baselines on the `generalisation` suite, and the checkpoint
#            CHECKPOINT (default checkpoints/generalist) untuned and LR-swept
#   w1       W1 update cost of the generalist at 1M / 10M / 124M parameters
# usage: benchmarks/generalist_gpu.sh train,eval [CHECKPOINT]
set -uo pipefail
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
stages=${1:-train,eval}; checkpoint=${2:-checkpoints/generalist}
# PYTHONPATH: benchmarks/*.py run as files, so the repository root is not on their path by itself
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=${MEM_FRACTION:-0.3} PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
lopt() { python3 -c "import sys; from lopt.cli import main; sys.exit(main())" "$@"; }
pids=()
if [[ $stages == *train* ]]; then
  ( lopt meta-train configs/meta_train/generalist-gpu.toml --quiet --set run.time_limit_s=${TIME_LIMIT:-450} \
      --set "run.output_dir='/tmp/generalist-run'" > "$OUT/meta_train.log" 2>&1
    cp /tmp/generalist-run/metrics.jsonl /tmp/generalist-run/*.png "$OUT/" 2>/dev/null
    tar czf "$OUT/best.tgz" -C /tmp/generalist-run best ) & pids+=($!)
fi
if [[ $stages == *eval* ]]; then  # baselines and the learned optimizer in two processes, one cache
  mkdir -p results/generalisation
  ( timeout ${EVAL_LIMIT:-500} python3 -c "import sys; from lopt.cli import main; sys.exit(main())" eval \
      configs/eval/generalisation.toml --quiet --set "learned=[]" > "$OUT/eval_baselines.log" 2>&1 ) & pids+=($!)
  ( timeout ${EVAL_LIMIT:-500} python3 -c "import sys; from lopt.cli import main; sys.exit(main())" eval \
      configs/eval/generalisation.toml --quiet --set "learned=['$checkpoint']" --set "optimizers=['adam']" \
      > "$OUT/eval_learned.log" 2>&1 ) & pids+=($!)
fi
if [[ $stages == *w1* ]]; then
  ( python3 benchmarks/lopt_overhead.py --sizes 124M,10M,1M --optimizers generalist --baselines muon \
      > "$OUT/w1.log" 2>&1 ) & pids+=($!)
fi
for pid in "${pids[@]}"; do wait "$pid"; done
# the whole cache can pass the 16 MiB a returned file may have: split it into 15 MiB parts
[[ $stages == *eval* ]] && split -b 15m <(tar czf - results/generalisation) "$OUT/eval_cache.tgz.part-"
for f in meta_train.log eval_baselines.log eval_learned.log w1.log; do [[ -f $OUT/$f ]] && { echo "== $f"; tail -n 30 "$OUT/$f"; }; done
[[ -f $OUT/metrics.jsonl ]] && { echo "== metrics"; grep validation_score "$OUT/metrics.jsonl" | tail -n 5; }
exit 0

#!/usr/bin/env bash
# `lopt eval configs/eval/zoo.toml` on one GPU in PARTS processes side by side (each tunes a
# share of the registry; runs are launch-bound, so they overlap), plus the update cost of the
# zoo entries named in COST (benchmarks/lopt_overhead.py at 1M / 10M / 124M). The run caches
# come back under $OUT as zoo_cache.tgz: copy them into results/eval/zoo/cache and run
#   lopt eval configs/eval/zoo.toml --set measure_cost=false
# anywhere to rebuild the report from the cache without training.
# usage: OUT=dir PARTS=3 COST=galore,fira [ONLY=0,2] benchmarks/zoo_gpu.sh
set -uo pipefail
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"; PARTS=${PARTS:-3}
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=${MEM_FRACTION:-0.2} PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
lopt() { python3 -c "import sys; from lopt.cli import main; sys.exit(main())" "$@"; }
names=$(python3 -c "import lopt.baselines as b; print(' '.join(b.names()))")
pids=()
for ((part = 0; part < PARTS; part++)); do
  [[ -n ${ONLY:-} && ",$ONLY," != *",$part,"* ]] && continue  # ONLY=1,3: rerun some parts
  share=$(python3 -c "import sys; n = sys.argv[2:]; print(','.join(repr(x) for x in n[int(sys.argv[1])::$PARTS]))" $part $names)
  ( timeout ${EVAL_LIMIT:-540} python3 -c "import sys; from lopt.cli import main; sys.exit(main())" eval configs/eval/zoo.toml \
      --quiet --set "optimizers=[$share]" --set "output_dir='/tmp/zoo-$part'" --set measure_cost=false \
      > "$OUT/zoo_$part.log" 2>&1 ) & pids+=($!)
done
if [[ -n ${COST:-} ]]; then
  ( python3 benchmarks/lopt_overhead.py --sizes 1M,10M,124M --optimizers "" --baselines "$COST" > "$OUT/cost.log" 2>&1 ) & pids+=($!)
fi
for pid in "${pids[@]}"; do wait "$pid"; done
mkdir -p /tmp/zoo-cache && for ((part = 0; part < PARTS; part++)); do cp -r /tmp/zoo-$part/cache/. /tmp/zoo-cache/ 2>/dev/null; done
tar czf "$OUT/zoo_cache.tgz" -C /tmp zoo-cache
for f in "$OUT"/zoo_*.log "$OUT"/cost.log; do [[ -f $f ]] && { echo "== $f"; tail -n 12 "$f"; }; done
exit 0

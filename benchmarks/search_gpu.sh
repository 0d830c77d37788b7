#!/usr/bin/env bash
# Program search on one GPU across device calls: measure the interpreter on the config's proxies
# (optional), run or resume the search for SECONDS_LIMIT, and copy the run folder to $OUT as soon
# as the search stops (carry it back as runs/search-gpu to resume): a call that runs out of time
# in the funnel still returns the search. FINISH=1 also runs the funnel, meta-validation pick,
# simplification and summary (meta_train.search.pipeline.finish).
#   SECONDS_LIMIT=450 MEASURE=1 bash benchmarks/search_gpu.sh
set -euo pipefail
export PYTHONPATH=$PWD
# Compiles persist across device calls (copied to $OUT/jax-cache; carry it back as runs/jax-cache).
export JAX_COMPILATION_CACHE_DIR=$PWD/runs/jax-cache
RUN=runs/search-gpu
if [ "${MEASURE:-0}" = 1 ]; then
  python benchmarks/search_throughput.py --config configs/search/gpu.toml --search-seconds 0 --programs 128 \
    --json "$OUT/w3.json" 2>&1 | grep -v -i warning
fi
python - "$RUN" "${SECONDS_LIMIT:-450}" "${FINISH:-0}" <<'PY'
import os
import shutil
import sys
import time
from pathlib import Path
from lopt.config import load_config
from meta_train.search.config import SearchConfig, config_from_dir
from meta_train.search.job import Search
from meta_train.search.pipeline import finish
run, seconds, final = sys.argv[1], float(sys.argv[2]), sys.argv[3] == "1"
if (Path(run) / "state.json").exists():
    search = Search(config_from_dir(run), resume=True, progress=False)
    print(f"resumed at generation {search.generation}")
else:
    search = Search(load_config(SearchConfig, "configs/search/gpu.toml", [f"run.output_dir='{run}'"]), progress=False)
start = time.perf_counter()
while search.generation < search.config.search.generations and time.perf_counter() - start < seconds:
    search.step()
stats = search.statistics()
print(f"generation {search.generation}: best {search.best.fitness:.4f} (seed {search.seed_fitness:.4f}); "
      f"{stats['children']} children, {stats['trained']} trained; {stats['programs_per_second']:.1f} programs/s, "
      f"{stats['trained_per_second']:.1f} trained/s = {stats['trained_per_second'] * search.config.fitness.inner_steps_per_program:,.0f} "
      f"inner steps/s; time: mutation {stats['share_mutate']:.0%}, probes {stats['share_probe']:.0%}, training {stats['share_train']:.0%}; "
      f"{stats['cache_hit_rate']:.0%} cache hits; search seconds so far {search.counters['seconds']:.0f}")
print("best:", search.best.text.replace("\n", "; "))
if search.best_validated is not None:
    print(f"best validated ({search.best_validated.fitness:.4f}):", search.best_validated.text.replace("\n", "; "))
# Copied before the funnel: a call that times out there still returns the search.
shutil.copytree(run, os.path.join(os.environ["OUT"], "search-gpu"), dirs_exist_ok=True)
if os.path.isdir("runs/jax-cache"):
    shutil.copytree("runs/jax-cache", os.path.join(os.environ["OUT"], "jax-cache"), dirs_exist_ok=True)
sys.stdout.flush()
if final:
    finish(search, ablate=True, tolerance=0.01, progress=False)
PY
cp -r "$RUN/." "$OUT/search-gpu/"
cp -r runs/jax-cache "$OUT/jax-cache" 2>/dev/null || true

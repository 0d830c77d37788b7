#!/usr/bin/env bash
# Program search on one GPU across device calls: measure the interpreter on the config's proxies
# (optional), run or resume the search for SECONDS_LIMIT, and pack the run folder into
# $OUT/search-gpu.tgz and the compile cache into $OUT/jax-cache.tgz.part00, part01, ... (15 MiB
# each: a device call returns at most 8 files of at most 16 MiB) as soon as the search stops;
# unpack with `tar xzf search-gpu.tgz -C runs; cat jax-cache.tgz.part* | tar xz -C runs` and
# carry runs/search-gpu and runs/jax-cache back to resume. A call that runs out of time in the
# funnel still returns the search. FINISH=1 also runs the
# funnel, meta-validation pick, simplification and summary (meta_train.search.pipeline.finish).
# INTERPRETER=kernel starts a new search with that fitness.interpreter; RUN=runs/NAME searches in
# another folder (packed as $OUT/NAME.tgz); OVERRIDES="search.children=512;search.seed=1" starts
# it with those config overrides; CONFIG=configs/search/gpu-matrix.toml starts it from another config
# (the matrix space on a schedule).
#   SECONDS_LIMIT=450 MEASURE=1 INTERPRETER=kernel bash benchmarks/search_gpu.sh
set -euo pipefail
export PYTHONPATH=$PWD
# Compiles persist across device calls (packed with the run; carry runs/jax-cache back).
export JAX_COMPILATION_CACHE_DIR=$PWD/runs/jax-cache
RUN=${RUN:-runs/search-gpu}
if [ "${MEASURE:-0}" = 1 ]; then
  python benchmarks/interpreter_step.py --programs 128 --runs 6 --params 9026 --rounds 2 4 \
    --interpreters scan kernel kernel-tree floor --kernel-blocks 256 1024 --json "$OUT/step.json" 2>&1 | grep -v -i warning
  python benchmarks/proxy_cost.py --config configs/search/gpu.toml --programs 128 --repeats 1 --convs patches \
    --json "$OUT/proxy_cost.json" 2>&1 | grep -v -i warning
  python benchmarks/proxy_cost.py --config configs/search/gpu.toml --programs 128 --repeats 1 --convs lax \
    --variants scan floor --json "$OUT/proxy_cost_lax.json" 2>&1 | grep -v -i warning
  python benchmarks/search_throughput.py --config configs/search/gpu.toml --search-seconds 0 --programs 128 \
    --kernel --json "$OUT/w3.json" 2>&1 | grep -v -i warning
fi
python - "$RUN" "${SECONDS_LIMIT:-450}" "${FINISH:-0}" "${INTERPRETER:-}" "${OVERRIDES:-}" "${CONFIG:-configs/search/gpu.toml}" <<'PY'
import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path
from lopt.config import load_config
from meta_train.search.config import SearchConfig, config_from_dir
from meta_train.search.job import Search
from meta_train.search.pipeline import finish
run, seconds, final, interpreter = sys.argv[1], float(sys.argv[2]), sys.argv[3] == "1", sys.argv[4]
extra = [o for o in sys.argv[5].split(";") if o.strip()]
config_path = sys.argv[6]
ready = time.perf_counter()
if (Path(run) / "state.json").exists():
    # search.workers is not part of what a resume must match: WORKERS sets it (default: the search's own)
    config = config_from_dir(run)
    workers = int(os.environ.get("WORKERS", config.search.workers))
    config = dataclasses.replace(config, search=dataclasses.replace(config.search, workers=workers))
    search = Search(config, resume=True, progress=False)
    print(f"resumed at generation {search.generation}")
else:
    overrides = [f"run.output_dir='{run}'"] + ([f"fitness.interpreter='{interpreter}'"] if interpreter else []) + extra
    search = Search(load_config(SearchConfig, config_path, overrides), progress=False)
start = time.perf_counter()
print(f"ready in {start - ready:.0f} s (precompile and the seed or the relaunch; {search.counters.get('compile_seconds', 0.0):.0f} "
      f"compile-seconds counted so far)", flush=True)
window = (search.inner_steps(), search.counters["seconds"], search.counters.get("compile_seconds", 0.0),
          search.counters["children"])
while search.generation < search.config.search.generations and time.perf_counter() - start < seconds:
    search.step()
    if search.generation % 10 == 0:  # a trace in the call's log, should the call be cut short
        s, c = search.statistics(), search.counters
        now = (search.inner_steps(), c["seconds"], c.get("compile_seconds", 0.0), c["children"])
        spent = max(now[1] - window[1], 1e-9)
        print(f"generation {search.generation}: best {search.best.fitness:.4f}, {s['children']} children, "
              f"{s['trained'] + s['hurdle_stops']} trained, {s['inner_steps_per_second']:,.0f} inner steps/s so far "
              f"(compiling {s['share_compile']:.0%}); last 10 generations: {(now[0] - window[0]) / spent:,.0f} inner steps/s, "
              f"{(now[3] - window[3]) / spent:.0f} children/s, {now[2] - window[2]:.0f} s compiling; "
              f"{time.perf_counter() - start:.0f} s", flush=True)
        window = now
stats = search.statistics()
print(f"generation {search.generation}: best {search.best.fitness:.4f} (seed {search.seed_fitness:.4f}); "
      f"{stats['children']} children, {stats['trained']} trained, {stats['hurdle_stops']} stopped at the hurdle; "
      f"{stats['programs_per_second']:.1f} programs/s, {stats['trained_per_second']:.1f} trained/s, "
      f"{stats['inner_steps_per_second']:,.0f} inner steps/s ({stats['programs_per_second_compiled']:.1f} programs/s, {stats['inner_steps_per_second_compiled']:,.0f} leaving out compiles); "
      f"time: mutation {stats['share_mutate']:.0%}, probes {stats['share_probe']:.0%}, training {stats['share_train']:.0%}, compiling {stats['share_compile']:.0%}; "
      f"{stats['cache_hit_rate']:.0%} cache hits; search seconds so far {search.counters['seconds']:.0f}")
print("best:", search.best.text.replace("\n", "; "))
if search.best_validated is not None:
    print(f"best validated ({search.best_validated.fitness:.4f}):", search.best_validated.text.replace("\n", "; "))
# Copied before the funnel: a call that times out there still returns the search.
def pack():
    out = os.environ["OUT"]
    name = os.path.basename(run.rstrip("/"))
    subprocess.run(["tar", "czf", os.path.join(out, name + ".tgz"), "-C", os.path.dirname(run.rstrip("/")), name], check=True)
    if os.path.isdir("runs/jax-cache"):
        # In parts of 15 MiB (the device tool returns files of at most 16 MiB, 8 in all): without
        # the cache a resumed call spent 155 of its 190 search-seconds compiling again.
        for old in Path(out).glob("jax-cache.tgz.part*"):
            old.unlink()
        cache = os.path.join(out, "jax-cache.tgz")
        subprocess.run(["tar", "czf", cache, "-C", "runs", "jax-cache"], check=True)
        if os.path.getsize(cache) > 5 * 15 * 2**20:
            print(f"compile cache not returned: {os.path.getsize(cache) / 2**20:.0f} MiB packed")
        else:
            subprocess.run(["split", "-b", "15M", "-d", cache, cache + ".part"], check=True)
        os.remove(cache)
pack()
sys.stdout.flush()
if final:
    finish(search, ablate=True, tolerance=0.01, progress=False)
    pack()
PY

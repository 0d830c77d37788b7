#!/usr/bin/env bash
# The found program on the held-out suite on one GPU: put PROGRAM in runs/found-program, run
# `lopt eval CONFIG`, and pack the report and the eval cache into $OUT/NAME.tgz (one file: a device
# call returns at most 8; NAME is the config's output_dir folder name). PROGRAM is either a program
# text (default: the GPU search's simplified best, runs/search-gpu/best.txt), exported with
# LEARNING_RATE (default 1.0) and SCHEDULE (default constant), or a finished search's shipped
# checkpoint folder (RUN/program), which carries its tuned step size and schedule and is copied as
# it is. The eval caches every finished (task, optimizer) sweep, so a call that runs out of time
# resumes: unpack into results/ and carry results/NAME back. TASKS="['a','b']" runs only those
# tasks of the suite (the rest on another machine, into the same cache).
#   PROGRAM=runs/search-gpu/best.txt EVAL_LIMIT=500 bash benchmarks/program_heldout_gpu.sh
#   PROGRAM=runs/search-gpu-matrix/program CONFIG=configs/eval/program-cosine.toml bash benchmarks/program_heldout_gpu.sh
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
lopt() { python3 -c "import sys; from lopt.cli import main; sys.exit(main())" "$@"; }
PROGRAM=${PROGRAM:-runs/search-gpu/best.txt}
CONFIG=${CONFIG:-configs/eval/program.toml}
if [ -d "$PROGRAM" ]; then
  # runs/found-program is replaced only if lopt wrote it (a checkpoint exactly as lopt wrote it)
  python3 -c "import sys, pathlib; from lopt.checkpoint import is_lopt_checkpoint as ok; p = pathlib.Path('runs/found-program')
sys.exit(0 if not p.exists() or ok(p) else 'runs/found-program exists and is not a lopt checkpoint: not replaced')" || exit 2
  rm -rf runs/found-program && mkdir -p runs && cp -r "$PROGRAM" runs/found-program || exit 2
else
  lopt program export "$PROGRAM" runs/found-program --overwrite --learning-rate "${LEARNING_RATE:-1.0}" \
    --schedule "${SCHEDULE:-constant}" || exit 2
fi
NAME=$(python3 -c "import sys, tomllib; print(tomllib.load(open(sys.argv[1], 'rb'))['output_dir'].rstrip('/').split('/')[-1])" "$CONFIG")
EXTRA=()
if [ -n "${TASKS:-}" ]; then EXTRA=(--set "tasks=$TASKS"); fi
timeout "${EVAL_LIMIT:-500}" python3 -c "import sys; from lopt.cli import main; sys.exit(main())" eval "$CONFIG" \
  "${EXTRA[@]}" --quiet 2>&1 | grep -v -i warning | tail -40
tar czf "$OUT/$NAME.tgz" -C results "$NAME"
exit 0

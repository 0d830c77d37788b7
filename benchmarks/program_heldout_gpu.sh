#!/usr/bin/env bash
# The found program on the held-out suite (configs/eval/program.toml) on one GPU: export PROGRAM
# (default: the GPU search's simplified best, runs/search-gpu/best.txt) to runs/found-program,
# run `lopt eval`, and pack the report and the eval cache into $OUT/program-heldout.tgz (one file:
# a device call returns at most 8). The eval caches every finished (task, optimizer) sweep, so a
# call that runs out of time resumes: unpack into results/ and carry results/program back.
#   PROGRAM=runs/search-gpu/best.txt EVAL_LIMIT=500 bash benchmarks/program_heldout_gpu.sh
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
lopt() { python3 -c "import sys; from lopt.cli import main; sys.exit(main())" "$@"; }
lopt program export "${PROGRAM:-runs/search-gpu/best.txt}" runs/found-program --overwrite || exit 2
timeout "${EVAL_LIMIT:-500}" python3 -c "import sys; from lopt.cli import main; sys.exit(main())" eval configs/eval/program.toml \
  --quiet 2>&1 | grep -v -i warning | tail -40
tar czf "$OUT/program-heldout.tgz" -C results program
exit 0

#!/usr/bin/env bash
# Meta-training that learns (issue 38) on one GPU, in stages that fit a device call:
#   throughput  W2-mixed (benchmarks/meta_train_mixed.py) on the generalist's distribution: per-group
#               programs against one fused program, at several population sizes, single-task W2 beside
#   signal      is the PES meta-gradient at theta_0 resolved? (two independent populations)
#   recipes     the recipes of RECIPES (names below) meta-trained side by side for TIME_LIMIT seconds,
#               each scored on the validation tasks every EVAL_EVERY outer steps; packed into
#               $OUT/recipes.tgz (metrics.jsonl, best/, meta_training.png of each)
#   heldout     after the recipes: the one with the best validation score (its best/) and its start
#               (checkpoints/generalist) on the held-out `generalisation` suite, each untuned and LR-swept
#               A recipe resumes where the last call stopped when runs/recipes/NAME is carried back
#               in (its outer/ checkpoint: theta and the outer optimizer's state; fresh workers)
#   continue    recipe CONTINUE's estimator settings from theta INIT_FROM (default runs/recipes/$CONTINUE/best,
#               carried back) for TIME_LIMIT; runs/continue/$CONTINUE resumes from its outer/ when carried
# usage: STAGES=throughput,recipes bash benchmarks/learning_gpu.sh
set -uo pipefail
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
STAGES=${STAGES:-throughput,recipes}
CONFIG=configs/meta_train/generalist-gpu.toml
lopt() { python3 -c "import sys; from lopt.cli import main; sys.exit(main())" "$@"; }

# name -> overrides (the generalist-gpu config's task groups, augmentation and horizons throughout)
# the nominal start (Adam's direction plus the network's correction, 8 schedule knots)
NOMINAL="optimizer.options.init='random' optimizer.options.nominal=true optimizer.options.schedule_knots=8"
# only the output layer, the knots and the step size trained, final-20% objective, sigma 0.03
OUTPUT_LAYER="estimator.trainable='\\[2\\]|schedule|log_learning_rate' estimator.objective_tail=0.2 estimator.sigma=0.03"
declare -A RECIPE=(
  [adam-mean]="optimizer.options.schedule_knots=8"
  [adam-tail]="optimizer.options.schedule_knots=8 estimator.objective_tail=0.2"
  [nominal-tail]="$NOMINAL estimator.objective_tail=0.2"
  [celo2]="optimizer.options.init='random' optimizer.options.schedule='constant' optimizer.options.learning_rate=1e-3"
  [schedule-tail]="optimizer.options.schedule_knots=8 estimator.trainable='schedule|log_learning_rate' estimator.objective_tail=0.2"
  [schedule-mean]="optimizer.options.schedule_knots=8 estimator.trainable='schedule|log_learning_rate'"
  # the network alone (step length frozen): is its meta-gradient resolved once the step length's
  # far larger loss differences no longer ride on every perturbation?
  [adam-net]="optimizer.options.schedule_knots=8 estimator.trainable='layers' estimator.objective_tail=0.2"
  [nominal-net]="$NOMINAL estimator.trainable='layers' estimator.objective_tail=0.2"
  [nominal-net-tbptt]="$NOMINAL estimator.trainable='layers' estimator.objective_tail=0.2 estimator.kind='truncated_backprop'"
  [adam-net-tbptt]="optimizer.options.schedule_knots=8 estimator.trainable='layers' estimator.objective_tail=0.2 estimator.kind='truncated_backprop'"
  # the parts whose PES meta-gradient is resolved at the start (signal): the network's output
  # layer (at sigma 0.03) and the step length, on the nominal start
  [nominal-out]="$NOMINAL $OUTPUT_LAYER"
  # the output-layer recipe with memorisation no longer rewarded (losses floored at 1e-3 of the
  # episode's first loss), or the meta-loss on held-out batches
  [nominal-out-floor]="$NOMINAL $OUTPUT_LAYER estimator.relative_floor=1e-3"
  [nominal-out-test]="$NOMINAL $OUTPUT_LAYER estimator.meta_loss_split='test'"
  # the whole network on held-out batches (next after nominal-out-test)
  [nominal-net-test]="$NOMINAL estimator.trainable='layers|schedule|log_learning_rate' estimator.objective_tail=0.2 estimator.sigma=0.03 estimator.meta_loss_split='test'"
  [nominal-net-s03]="$NOMINAL estimator.trainable='layers' estimator.objective_tail=0.2 estimator.sigma=0.03"
)
sets() { for o in $1; do printf -- '--set\n%s\n' "$o"; done; }

if [[ $STAGES == *throughput* ]]; then
  timeout ${THROUGHPUT_LIMIT:-300} python3 benchmarks/meta_train_mixed.py throughput --workers ${WORKERS:-128,512,1024} \
    ${BOTH---both} --single 256 --reps 3 --steps 3 2>&1 | grep -v -i warning | tee "$OUT/w2_mixed.log"
fi
pids=()
if [[ $STAGES == *signal* ]]; then
  for name in ${SIGNALS:-adam-tail nominal-tail}; do
    mapfile -t extra < <(sets "${RECIPE[$name]}")
    ( XLA_PYTHON_CLIENT_MEM_FRACTION=0.15 timeout ${SIGNAL_LIMIT:-300} python3 benchmarks/meta_train_mixed.py signal \
        --steps ${SIGNAL_STEPS:-12} "${extra[@]}" --set estimator.num_workers=${WORKERS_RUN:-256} \
        > "$OUT/signal-$name.log" 2>&1 ) & pids+=($!)
  done
fi
if [[ $STAGES == *recipes* ]]; then
  for name in ${RECIPES:-adam-mean adam-tail nominal-tail celo2}; do
    mapfile -t extra < <(sets "${RECIPE[$name]}")
    ( XLA_PYTHON_CLIENT_MEM_FRACTION=${MEM_FRACTION:-0.15} lopt meta-train $CONFIG --quiet "${extra[@]}" \
        --set estimator.num_workers=${WORKERS_RUN:-256} --set run.time_limit_s=${TIME_LIMIT:-300} \
        --set outer.steps=${OUTER_STEPS:-3000} --set run.eval_every=${EVAL_EVERY:-25} \
        --set run.checkpoint_every=${EVAL_EVERY:-25} --set "run.output_dir='runs/recipes/$name'" \
        --set run.validation_seeds=3 --set outer.learning_rate=${OUTER_LR:-3e-4} \
        > "$OUT/recipe-$name.log" 2>&1 ) & pids+=($!)
  done
fi
if [[ $STAGES == *continue* ]]; then
  # theta from INIT_FROM (default: the recipe's best/ carried back; or a shipped checkpoint such as
  # checkpoints/generalist-metatrained-h100), the recipe's estimator settings, a fresh outer Adam
  name=$CONTINUE
  est=""; for o in ${RECIPE[$name]}; do [[ $o == estimator.* ]] && est+=" $o"; done
  mapfile -t extra < <(sets "$est")
  lopt meta-train $CONFIG --quiet --set "optimizer.init_from='${INIT_FROM:-runs/recipes/$name/best}'" "${extra[@]}" \
    --set estimator.num_workers=${WORKERS_RUN:-256} --set run.time_limit_s=${TIME_LIMIT:-480} \
    --set outer.steps=${OUTER_STEPS:-3000} --set run.eval_every=${EVAL_EVERY:-25} \
    --set run.checkpoint_every=${EVAL_EVERY:-25} --set outer.learning_rate=${OUTER_LR:-3e-4} \
    --set run.validation_seeds=3 --set "run.output_dir='runs/continue/$name'" > "$OUT/continue-$name.log" 2>&1
fi
for pid in "${pids[@]}"; do wait "$pid"; done
if [[ $STAGES == *heldout* ]]; then
  winner=$(python3 - <<'PY'
import json, pathlib
best = {}
for log in pathlib.Path("runs/recipes").glob("*/metrics.jsonl"):
    scores = [json.loads(l).get("validation_score") for l in log.read_text().splitlines()]
    scores = [s for s in scores if s is not None]
    if scores and (log.parent / "best").exists():
        best[log.parent.name] = min(scores)
print(min(best, key=best.get) if best else "")
PY
)
  echo "held-out: validation picks $winner"
  if [[ -n $winner ]]; then
    # two processes, each half of the suite (the GPU is launch-bound, so they overlap)
    halves=("['digits-mlp-relu256x3','mnist1d-mlp-relu128x4','mnist1d-mlp-silu512','digits-mlp-gelu32x6','mnist1d-mlp-tanh256x2','digits-mlp-relu128x2-mse','regression-mlp-relu128x2*5']"
            "['digits-conv-32-64-128','mnist1d-conv-64-128','pytext-transformer-64x3','pytext-transformer-128x2','regression-mlp-relu128x2','mnist1d-mlp-gelu128x3*5']")
    hp=()
    for i in 0 1; do
      ( XLA_PYTHON_CLIENT_MEM_FRACTION=0.4 timeout ${HELDOUT_LIMIT:-240} python3 -c "import sys; from lopt.cli import main; sys.exit(main())" eval \
        configs/eval/generalisation.toml --quiet --set "learned=['runs/recipes/$winner/best', 'checkpoints/generalist']" \
        --set "optimizers=['adam']" --set "tasks=${halves[$i]}" --set "output_dir='results/heldout$i'" > "$OUT/heldout$i.log" 2>&1
        cp results/heldout$i/results.json "$OUT/heldout$i.json" 2>/dev/null ) & hp+=($!)
    done
    for pid in "${hp[@]}"; do wait "$pid"; done
    for i in 0 1; do tail -n 40 "$OUT/heldout$i.log" | grep -v -i warning; done
  fi
fi
for f in "$OUT"/signal-*.log; do [[ -f $f ]] && { echo "== $f"; grep -v -i warning "$f" | tail -n 14; }; done
for d in runs/recipes/* runs/continue/*; do
  [[ -f $d/metrics.jsonl ]] || continue
  echo "== $d"; grep validation_score "$d/metrics.jsonl" | python3 -c "
import json, sys
rows = [json.loads(l) for l in sys.stdin]
print(' '.join(f\"{r['step']}:{r['validation_score']:.3f}\" for r in rows))"
  grep inner_steps_per_s "$d/metrics.jsonl" | tail -n 1 | cut -c1-300
done
tar czf "$OUT/recipes.tgz" --exclude=checkpoints runs/recipes runs/continue 2>/dev/null
exit 0

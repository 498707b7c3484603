#!/usr/bin/env bash
# The quickstart, end to end: check -> base eval -> train -> tuned eval -> generate.
# Run through `make demo` (which sets up .venv first). Outputs go to demo-out/.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${DEMO_OUT:-demo-out}
DATA=examples/meeting-notes
MODEL=${DEMO_MODEL:-smollm2-135m}
EPOCHS=${DEMO_EPOCHS:-1}  # one epoch of 150 examples takes ~6 min on 2 CPU cores
GEN="--max-new-tokens 200"
start=$(date +%s)
mkdir -p "$OUT"
export TUNESMITH_REGISTRY="${TUNESMITH_REGISTRY:-$OUT/registry.db}"  # the demo's runs, kept apart from yours

echo "== 1/5 check the examples"
tunesmith data check "$DATA/train.jsonl" "$DATA/val.jsonl" "$DATA/test.jsonl"

echo "== 2/5 measure the base model on the held-out test set"
tunesmith eval --model "$MODEL" --data "$DATA/test.jsonl" --style "$DATA/style.yaml" --out "$OUT/base" $GEN --quiet

echo "== 3/5 fine-tune with LoRA (loss on the notes only)"
tunesmith train --model "$MODEL" --data "$DATA" --out "$OUT/run" --epochs "$EPOCHS" --batch-size 4 --overwrite

echo "== 4/5 measure the tuned model on the same test set"
tunesmith eval --adapter "$OUT/run" --data "$DATA/test.jsonl" --style "$DATA/style.yaml" --out "$OUT/tuned" \
  --baseline "$OUT/base/results.json" $GEN --quiet

echo "== 5/5 use it: notes for the first test transcript"
head -n 1 "$DATA/test.jsonl" > "$OUT/one.jsonl"
tunesmith generate --adapter "$OUT/run" --input "$OUT/one.jsonl" $GEN

echo
echo "== the runs the demo registered (tunesmith runs show ID for one in full)"
tunesmith runs

echo
echo "demo finished in $(( $(date +%s) - start ))s; results in $OUT/"
